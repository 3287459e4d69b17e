"""
The rollout-collection forward pass of a lean-path policy (``FastActorCritic``) with the actor and the critic
evaluated as **one** network: the first Linear layers of both branches stacked, the deeper ones and the two heads
block-diagonal. A batch of a few observations (one per env) costs about as much as its number of operations, so this
halves the cost of the network, and the Gaussian log-likelihood uses constants computed once per rollout.

``NumpyFusedActorCritic`` evaluates the fused network with NumPy (small batches on the CPU), the random draws still
coming from torch's RNG.

The values, actions and log-likelihoods are the same as ``FastActorCritic.forward``'s, and so are the random draws
(same calls on the same RNG), but the different matrix shapes and the precomputed constants change the rounding:
results agree to the last bits, not bit for bit. TrustTRPO uses it only in the default ``"paper"`` convention; the
``"contrib"`` convention keeps ``FastActorCritic`` (bit-identical to SB3).
"""

import ctypes
import math
from pathlib import Path

import numpy as np
import torch as th
from torch.nn import functional as F

from sb3_trust.common.fast_fisher import chain_from_layers
from sb3_trust.common.fast_policy import FastActorCritic
from sb3_trust.common.kernels import compile_and_load, warn_unavailable_once

_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))
COLLECT_SOURCE = Path(__file__).with_name("collect_kernels.c")
_COLLECT_SIGNATURES = {"actor_critic_forward": "- pipppppp", "tanh_inplace": "- pi"}
# The activations of a dense layer (``_dense_layers``): their codes in collect_kernels.c, their torch functions
_ACTIVATION_CODES = {None: 0, "tanh": 1, "relu": 2}
_ACTIVATIONS = {None: None, "tanh": th.tanh, "relu": th.relu}
# A Linear layer and the activation after it: (weight, bias or None, "tanh", "relu" or None)
DenseLayer = tuple[th.Tensor, th.Tensor | None, str | None]
# Fixed entries of a plan before its layers (P_LAYERS in collect_kernels.c)
_PLAN_HEADER = 7

_collect_kernels: ctypes.CDLL | None = None
_collect_kernels_error: str | None = None


def load_collect_kernels() -> ctypes.CDLL | None:
    """
    :return: ``collect_kernels.c`` compiled and loaded (see ``sb3_trust.common.kernels``), or ``None`` where it cannot
        be (no compiler, ``SB3_TRUST_NO_KERNELS=1``): ``NumpyFusedActorCritic`` then evaluates the network with NumPy
    """
    global _collect_kernels, _collect_kernels_error
    if _collect_kernels is None and _collect_kernels_error is None:
        _collect_kernels, _collect_kernels_error = compile_and_load(COLLECT_SOURCE, _COLLECT_SIGNATURES)
    return _collect_kernels


def _structure(layers: list) -> list[object] | None:
    """The activation functions of a layer list, with ``None`` for each Linear layer."""
    return [activation if linear is None else None for linear, activation in layers]


def _dense_layers(layers: list, head: th.nn.Linear) -> list[DenseLayer]:
    """
    :param layers: ``FastActorCritic.pi_layers`` or ``vf_layers``
    :param head: ``action_net`` or ``value_net``
    :return: the branch as Linear layers, each with the activation after it (``chain_from_layers`` regrouped), the
        head last (no activation)
    """
    dense: list[DenseLayer] = []
    for layer in chain_from_layers(layers, head):
        if isinstance(layer, str):
            weight, bias, _ = dense[-1]
            dense[-1] = (weight, bias, layer)
        else:
            dense.append((*layer, None))
    return dense


def _bias(weight: th.Tensor, bias: th.Tensor | None) -> th.Tensor:
    """:return: the bias of a Linear layer, zeros if it has none"""
    return bias if bias is not None else th.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)


class FusedActorCritic(FastActorCritic):
    """
    ``FastActorCritic`` whose ``forward`` (used by ``collect_rollouts_fast``) runs the fused network.
    Call ``refresh()`` whenever the policy's parameters may have changed (before each rollout): the fused weights are
    copies. Use ``can_fuse(fast)`` first: both branches must have the same sequence of layers (widths may differ).

    :param policy: the policy (see ``FastActorCritic``)
    """

    @staticmethod
    def can_fuse(fast: FastActorCritic) -> bool:
        """
        :param fast: the lean path of a policy
        :return: whether its actor and critic branches have the same sequence of Linear layers and activations
        """
        assert fast.pi_layers is not None and fast.vf_layers is not None
        return _structure(fast.pi_layers) == _structure(fast.vf_layers)

    def refresh(self) -> None:
        """Read the policy's current parameters (the fused weights are rebuilt at the next ``forward``)."""
        self._fused: list[tuple[th.Tensor, th.Tensor, object]] | None = None
        self._split = self.action_net.out_features
        if not self.is_categorical:
            with th.no_grad():
                std = self.policy.log_std.exp()
                self._std = std
                # log N(a; μ, σ) = Σ -(a - μ)² / (2σ²) - Σ (log σ + log √(2π))
                self._neg_half_inverse_variance = -0.5 / std**2
                self._log_normaliser = (std.log() + _LOG_SQRT_2PI).sum()

    def _branches(self) -> tuple[list[DenseLayer], list[DenseLayer]]:
        """:return: the actor's and the critic's dense layers (``_dense_layers``), referencing the current parameters"""
        assert self.pi_layers is not None and self.vf_layers is not None
        return _dense_layers(self.pi_layers, self.action_net), _dense_layers(self.vf_layers, self.value_net)

    def _fuse(self) -> list[tuple[th.Tensor, th.Tensor, object]]:
        """:return: the fused network's layers (weight, bias, activation), copies of the current parameters"""
        fused: list[tuple[th.Tensor, th.Tensor, object]] = []
        with th.no_grad():
            for i, (pi, vf) in enumerate(zip(*self._branches(), strict=True)):
                if i == 0:
                    weight = th.cat([pi[0], vf[0]])  # same input: stacked
                else:
                    weight = th.block_diag(pi[0], vf[0])  # inputs side by side: block-diagonal
                fused.append((weight, th.cat([_bias(*pi[:2]), _bias(*vf[:2])]), _ACTIVATIONS[pi[2]]))
        return fused

    def forward(self, obs: th.Tensor, deterministic: bool = False) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """
        ``FastActorCritic.forward`` on the fused network (same random draws, last-bit differences); call it under
        ``th.no_grad()`` after ``refresh()``.

        :param obs: observations
        :param deterministic: take the mode instead of sampling
        :return: actions, values [batch, 1] and log-likelihood of the actions [batch]
        """
        if self._fused is None:
            self._fused = self._fuse()
        x = obs.float().flatten(1)
        for weight, bias, activation in self._fused:
            x = F.linear(x, weight, bias)
            if activation is not None:
                x = activation(x)  # type: ignore[operator]
        out, values = x[:, : self._split], x[:, self._split :]
        if self.is_categorical:
            if deterministic:
                actions = th.argmax(out, dim=1)
            else:
                actions = th.multinomial(F.softmax(out, dim=-1), 1, True).view(-1)
            log_prob = F.log_softmax(out, dim=-1).gather(1, actions.view(-1, 1)).view(-1)
            return actions, values, log_prob
        if deterministic:
            actions = out.contiguous()
        else:
            # Normal.rsample(): loc + eps * scale with eps = empty(shape).normal_()
            actions = th.addcmul(out, th.empty(out.shape, dtype=out.dtype, device=out.device).normal_(), self._std)
        diff = actions - out
        log_prob = th.mv(diff * diff, self._neg_half_inverse_variance) - self._log_normaliser
        return actions, values, log_prob


def _numpy_layer(x: np.ndarray, weight_t: np.ndarray, bias: np.ndarray, activation: str | None) -> np.ndarray:
    """``activation(x @ weight_t + bias)`` in NumPy (float32), in place after the product."""
    x = x @ weight_t
    x += bias
    if activation == "tanh":
        np.tanh(x, out=x)
    elif activation == "relu":
        np.maximum(x, 0, out=x)
    return x


class NumpyFusedActorCritic(FusedActorCritic):
    """
    ``FusedActorCritic`` evaluated with NumPy on the CPU (float32): for the few observations of a collection step, a
    NumPy operation costs a fraction of a torch operation's dispatch, and the smaller code footprint leaves the
    environment's step faster too. The random draws are still torch's (same calls on the same RNG as SB3), the results
    agree to the last bits. Returns torch tensors sharing NumPy's memory. Only the first Linear layers are stacked;
    the deeper layers and the heads of the two branches are multiplied apart, not block-diagonally.

    Batches whose matrix products are large enough for NumPy's BLAS to use several threads (``batch × in × out`` above
    ``MAX_NUMPY_WORK``) go through ``FusedActorCritic.forward`` instead, so that torch's thread setting is respected.

    :param policy: the policy (see ``FastActorCritic``), on the CPU
    """

    # OpenBLAS multiplies on one thread up to this many multiply-adds (rows x weight size), measured here
    MAX_NUMPY_WORK = 131072

    def refresh(self) -> None:
        super().refresh()
        assert self.pi_layers is not None and self.vf_layers is not None
        pi_linears = [linear for linear, _ in self.pi_layers if linear is not None]
        vf_linears = [linear for linear, _ in self.vf_layers if linear is not None]
        # The largest product per row: the stacked first layers, or one layer of a branch (multiplied apart)
        first = [pi_linears[0], vf_linears[0]] if pi_linears else [self.action_net, self.value_net]
        largest = max(
            sum(linear.weight.numel() for linear in first),
            *(linear.weight.numel() for linear in [*pi_linears[1:], *vf_linears[1:], self.action_net, self.value_net]),
        )
        self._max_rows = self.MAX_NUMPY_WORK // largest
        if not self.is_categorical:
            self._numpy_std = self._std.detach().numpy()
            self._numpy_neg_half_inverse_variance = self._neg_half_inverse_variance.detach().numpy()
            self._numpy_log_normaliser = self._log_normaliser.detach().numpy()
        self._build_plan()
        self._numpy_first: tuple[np.ndarray, np.ndarray, object] | None = None  # copied when first needed

    def _copy_numpy_weights(self) -> None:
        """The NumPy network (without the kernel): transposed copies of the weights, the first layers stacked."""
        pi, vf = self._branches()
        with th.no_grad():
            # The first layer stacked (same input); after it, the two branches apart (block-diagonal products would
            # multiply zeros, and grow past the single-threaded size sooner)
            first_weight = th.cat([pi[0][0], vf[0][0]]).t().contiguous().numpy()
            first_bias = th.cat([_bias(*pi[0][:2]), _bias(*vf[0][:2])]).numpy()
            self._numpy_first = (first_weight, first_bias, pi[0][2])
            # None: no hidden layer, the first layer is the stacked heads
            self._numpy_split = pi[0][0].shape[0] if len(pi) > 1 else None
            self._numpy_branches = tuple(
                [
                    (weight.t().contiguous().numpy(), _bias(weight, bias).detach().numpy(), activation)
                    for weight, bias, activation in branch[1:]
                ]
                for branch in (pi, vf)
            )

    def _build_plan(self) -> None:
        """
        The network for ``collect_kernels.c`` (see its header): the transposed weights and the biases copied into
        buffers made once and overwritten at every ``refresh`` (no memory is allocated per rollout), or
        ``self._kernel = None`` without the kernel (one warning per process).
        """
        kernels = load_collect_kernels()
        self._kernel = None if kernels is None else kernels.actor_critic_forward
        if self._kernel is None:
            warn_unavailable_once("the collection kernel", _collect_kernels_error, "collecting with the NumPy network")
            return
        pi, vf = self._branches()
        layers = [*pi, *vf]
        if getattr(self, "_plan_buffers", None) is None:
            # float32 buffers the plan points to: weights transposed [in, out], biases, scratch, the Gaussian's constants
            self._weights = [np.empty(weight.shape[::-1], dtype=np.float32) for weight, _, _ in layers]
            self._biases = [np.empty(weight.shape[0], dtype=np.float32) for weight, _, _ in layers]
            scratch = np.empty(2 * max(weight.shape[0] for weight, _, _ in layers), dtype=np.float32)
            # (std, -1 / (2 std²), the log-normaliser), or none for a Categorical (0 pointers in the plan)
            sizes = () if self.is_categorical else (self._split, self._split, 1)
            self._gaussian = [np.empty(size, dtype=np.float32) for size in sizes]
            self._plan_buffers = [*self._weights, *self._biases, scratch, *self._gaussian]
            gaussian = [buffer.ctypes.data for buffer in self._gaussian] or [0, 0, 0]
            header = [len(pi), len(vf), self._split, scratch.ctypes.data, *gaussian]
            assert len(header) == _PLAN_HEADER
            entries = [
                value
                for (_, _, activation), weight, bias in zip(layers, self._weights, self._biases, strict=True)
                for value in (weight.ctypes.data, bias.ctypes.data, *weight.shape, _ACTIVATION_CODES[activation])
            ]
            self._plan = np.array([*header, *entries], dtype=np.int64)
            self._plan_pointer = self._plan.ctypes.data
            self._noise: dict[int, tuple[th.Tensor, int]] = {}
        with th.no_grad():
            for (weight, bias, _), weight_t, bias_buffer in zip(layers, self._weights, self._biases, strict=True):
                th.from_numpy(weight_t).copy_(weight.t())
                th.from_numpy(bias_buffer).copy_(_bias(weight, bias))
            if not self.is_categorical:
                constants = (self._std, self._neg_half_inverse_variance, self._log_normaliser.reshape(1))
                for buffer, tensor in zip(self._gaussian, constants, strict=True):
                    th.from_numpy(buffer).copy_(tensor)

    def supports_batch(self, n_rows: int) -> bool:
        """
        :param n_rows: number of observations per call
        :return: whether ``forward_numpy`` serves such a batch (single-threaded BLAS), after ``refresh()``
        """
        return n_rows <= self._max_rows

    def forward(self, obs: th.Tensor, deterministic: bool = False) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """
        See ``FusedActorCritic.forward``.
        """
        if not self.supports_batch(obs.shape[0]) or obs.device.type != "cpu":
            return super().forward(obs, deterministic)
        actions, values, log_prob = self.forward_numpy(obs.numpy(), deterministic)
        return th.from_numpy(actions), th.from_numpy(values), th.from_numpy(log_prob)

    def forward_numpy(self, obs: np.ndarray, deterministic: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """
        ``forward`` on NumPy arrays (for a batch that ``supports_batch``).

        :param obs: observations [batch, ...]
        :param deterministic: take the mode instead of sampling
        :return: actions (Categorical: int64 [batch]; Gaussian: float32 [batch, action_dim]), values [batch, 1] and
            log-likelihood of the actions [batch]
        """
        x = obs.reshape(obs.shape[0], -1).astype(np.float32, copy=False)
        if self._kernel is not None:
            return self._forward_kernel(x, deterministic)
        if self._numpy_first is None:
            self._copy_numpy_weights()
        if self._numpy_split is None:  # no hidden layer: the first layer is the stacked heads
            x = _numpy_layer(x, *self._numpy_first)
            out, values = x[:, : self._split], x[:, self._split :]
        else:
            x = _numpy_layer(x, *self._numpy_first)
            out, values = x[:, : self._numpy_split], x[:, self._numpy_split :]
            for layer in self._numpy_branches[0]:
                out = _numpy_layer(out, *layer)
            for layer in self._numpy_branches[1]:
                values = _numpy_layer(values, *layer)
        if self.is_categorical:
            return self._categorical(out, values, deterministic)
        if deterministic:
            actions_np = out.copy()
        else:
            # Normal.rsample(): loc + eps * scale with eps = empty(shape).normal_()
            noise = th.empty(out.shape, dtype=th.float32).normal_().numpy()
            actions_np = noise * self._numpy_std
            actions_np += out
        diff = actions_np - out
        log_prob = (diff * diff) @ self._numpy_neg_half_inverse_variance - self._numpy_log_normaliser
        return actions_np, values, log_prob

    def _forward_kernel(self, x: np.ndarray, deterministic: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``forward_numpy`` by ``collect_kernels.c`` (one call; the random draws the same calls on torch's RNG)."""
        x = np.ascontiguousarray(x)
        n, k = x.shape[0], self._split
        # One block for every output: out [n, k], values [n, 1], actions [n, k], log-likelihoods [n]
        block = np.empty(n * (2 * k + 2), dtype=np.float32)
        address, size = block.ctypes.data, block.itemsize
        out, values = block[: n * k].reshape(n, k), block[n * k : n * (k + 1)].reshape(n, 1)
        if self.is_categorical:
            # out <- log-probabilities, then the probabilities; the actions drawn from them with torch's RNG
            probs_address = address + size * n * (k + 1)
            self._kernel(self._plan_pointer, n, x.ctypes.data, None, address, address + size * n * k, probs_address, None)
            probs = th.from_numpy(block[n * (k + 1) : n * (2 * k + 1)].reshape(n, k))
            # Categorical.sample(): multinomial(probs, 1, True); the mode: argmax
            actions = (th.argmax(probs, dim=1) if deterministic else th.multinomial(probs, 1, True).view(-1)).numpy()
            return actions, values, out[np.arange(n), actions]
        noise_address = None
        if not deterministic:
            if n not in self._noise:
                noise = th.empty((n, k), dtype=th.float32)
                self._noise[n] = (noise, noise.data_ptr())
            noise, noise_address = self._noise[n]
            # Normal.rsample(): eps = empty(shape).normal_(); the same draws as a new tensor of this shape
            noise.normal_()
        actions_address = address + size * n * (k + 1)
        self._kernel(self._plan_pointer, n, x.ctypes.data, noise_address, address, address + size * n * k, actions_address,
                     actions_address + size * n * k)  # fmt: skip
        return block[n * (k + 1) : n * (2 * k + 1)].reshape(n, k), values, block[n * (2 * k + 1) :]

    def _categorical(self, out: np.ndarray, values: np.ndarray, deterministic: bool) -> tuple[np.ndarray, ...]:
        """The actions and their log-likelihoods from the logits ``out`` (the random draws: torch's multinomial)."""
        shifted = out - out.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        total = exp.sum(axis=1, keepdims=True)
        probs = th.from_numpy(exp / total)
        if deterministic:
            actions = th.argmax(probs, dim=1).numpy()
        else:
            # Categorical.sample(): multinomial(probs, 1, True)
            actions = th.multinomial(probs, 1, True).view(-1).numpy()
        log_prob = np.take_along_axis(shifted, actions.reshape(-1, 1), axis=1).reshape(-1) - np.log(total[:, 0])
        return actions, values, log_prob
