"""
Closed-form derivatives of SB3's MLP policies for TRPO: the surrogate gradient and the Fisher-vector product of the
actor, and the value-regression gradient of the critic, computed with explicit Jacobian-vector and vector-Jacobian
products through the Linear/Tanh/ReLU chain instead of autograd.

The Fisher matrix of the mean KL between the old and the new policy (its Hessian at θ_old) is a Gauss-Newton matrix:
``F = mean_s J_sᵀ M_s J_s`` with ``J_s`` the Jacobian of the distribution's parameters at state ``s`` and ``M_s`` the
Fisher matrix of the action distribution in those parameters:

- Categorical, on the (unnormalised) logits: ``M = diag(p) - p pᵀ``;
- diagonal Gaussian N(μ, σ²) with a state-independent ``log σ``: ``1/σ²`` on μ, ``2`` on each ``log σ``, no cross
  term (KL summed over action dimensions).

So ``F v`` is one forward-mode pass (``J v``), a multiplication by ``M`` and one reverse-mode pass (``Jᵀ u``),
reusing the activations of a single forward pass at θ_old. This is the same matrix as the double-backward product
``∇(∇KL · v)`` of ``sb3_trust.common.trust_region.fisher_vector_product_fn`` (the terms of the exact Hessian that
double backpropagation adds are multiplied by ``π_new - π_old = 0`` at θ_old) but the floating-point operations
differ, so the results agree to rounding, not bit for bit. TrustTRPO uses it only in the default ``"paper"`` KL
convention; ``"contrib"`` keeps the double-backward product for bit-parity with sb3-contrib.

The critic's gradient (``AnalyticCritic``) is the same reverse-mode pass on the value branch: bit-identical to
autograd's with ``th.tanh``. Two options trade the last bits for speed (TrustTRPO enables them in the ``"paper"``
convention only): ``numpy_tanh`` (NumPy's vectorised ``tanh``, about ten times faster than ``th.tanh`` on a CPU, as
accurate), and, with a fused ``th.optim.Adam``, calling torch's fused Adam kernel directly on the optimizer's state
(the same kernel and arguments as ``optimizer.step()``: that one is bit-identical).

Everything here runs under ``th.no_grad()`` (no autograd graph is built) and is checked against autograd, against
double backpropagation and against explicitly built Fisher matrices in ``tests/test_fast_fisher.py`` and
``tests/test_trust_region.py``.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch as th
from torch.nn import functional as F
from torch.optim import optimizer as torch_optimizer

from sb3_trust.common.fast_policy import FastActorCritic, Layer, kl_from_params

_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))
_tanh_backward = th.ops.aten.tanh_backward.default
_threshold_backward = th.ops.aten.threshold_backward.default

# A Linear layer as (weight, bias), or an activation: "tanh" or "relu"
ChainLayer = tuple[th.Tensor, th.Tensor | None] | str


def chain_from_layers(layers: Sequence[Layer], head: th.nn.Linear) -> list[ChainLayer]:
    """
    :param layers: ``FastActorCritic.pi_layers`` or ``vf_layers`` (``(linear, None)`` or ``(None, activation)``)
    :param head: the last Linear layer (``action_net`` or ``value_net``)
    :return: the chain, holding references to the modules' parameters (so it always sees their current values)
    """
    chain: list[ChainLayer] = []
    for linear, activation in layers:
        if linear is not None:
            chain.append((linear.weight, linear.bias))
        elif activation is th.tanh:
            chain.append("tanh")
        elif activation is th.relu:
            chain.append("relu")
        else:
            raise ValueError(f"unsupported activation {activation}")
    chain.append((head.weight, head.bias))
    return chain


def chain_parameters(chain: Sequence[ChainLayer]) -> list[th.Tensor]:
    """
    :param chain: the chain
    :return: its parameters in order (weight, then bias if any, for each Linear layer)
    """
    params: list[th.Tensor] = []
    for layer in chain:
        if not isinstance(layer, str):
            params.append(layer[0])
            if layer[1] is not None:
                params.append(layer[1])
    return params


def numpy_tanh_(x: th.Tensor) -> th.Tensor:
    """
    ``tanh`` in place with numpy's vectorised implementation, about 10 times faster than ``th.tanh`` on a CPU for
    batches of hundreds of rows, and as accurate (within 1 ulp of the exact value) but not bit-identical to it.
    Falls back to ``th.tanh`` (not in place) for tensors numpy cannot share (not on the CPU, tracked by autograd,
    not contiguous, not float32/64).

    :param x: a tensor that nothing else uses (overwritten)
    :return: ``tanh(x)``
    """
    if x.device.type != "cpu" or x.requires_grad or not x.is_contiguous() or x.dtype not in (th.float32, th.float64):
        return th.tanh(x)
    array = x.numpy()
    np.tanh(array, out=array)
    return x


def chain_forward(
    chain: Sequence[ChainLayer], x: th.Tensor, cache: list[th.Tensor] | None = None, numpy_tanh: bool = False
) -> th.Tensor:
    """
    The chain's output, with the same operations as the ``nn.Sequential`` modules (``F.linear``, ``th.tanh``,
    ``th.relu``), or with ``numpy_tanh_`` for ``tanh``.

    :param chain: the chain
    :param x: input [batch, in_features]
    :param cache: if given, filled with what the derivatives need: the input of each Linear layer and the output of
        each activation
    :param numpy_tanh: use ``numpy_tanh_`` (faster, last-bit differences) instead of ``th.tanh``
    :return: output [batch, out_features]
    """
    fresh = False  # whether x is an intermediate result (that numpy_tanh_ may overwrite)
    for layer in chain:
        if isinstance(layer, str):
            if layer == "tanh":
                x = numpy_tanh_(x) if numpy_tanh and fresh else th.tanh(x)
            else:
                x = th.relu(x)
            fresh = True
            if cache is not None:
                cache.append(x)
        else:
            if cache is not None:
                cache.append(x)
            x = F.linear(x, layer[0], layer[1])
            fresh = True
    return x


def chain_vjp(chain: Sequence[ChainLayer], cache: Sequence[th.Tensor], grad_output: th.Tensor) -> list[th.Tensor]:
    """
    Reverse mode: the gradient w.r.t. the chain's parameters of ``sum(grad_output * output)``.

    :param chain: the chain
    :param cache: filled by ``chain_forward``
    :param grad_output: [batch, out_features]
    :return: gradients in the order of ``chain_parameters``
    """
    grads: list[th.Tensor] = []
    grad = grad_output
    first_linear = next(i for i, layer in enumerate(chain) if not isinstance(layer, str))
    for i in range(len(chain) - 1, first_linear - 1, -1):
        layer, saved = chain[i], cache[i]
        if isinstance(layer, str):
            grad = _tanh_backward(grad, saved) if layer == "tanh" else _threshold_backward(grad, saved, 0)
            continue
        weight, bias = layer
        if bias is not None:
            grads.append(grad.sum(0))
        grads.append(grad.t().mm(saved))
        if i > first_linear:
            grad = grad.mm(weight)
    grads.reverse()
    return grads


def chain_jvp(chain: Sequence[ChainLayer], cache: Sequence[th.Tensor], tangents: Sequence[th.Tensor]) -> th.Tensor:
    """
    Forward mode: the directional derivative of the chain's output along a direction of its parameters.

    :param chain: the chain
    :param cache: filled by ``chain_forward``
    :param tangents: the direction, one tensor per parameter, in the order of ``chain_parameters``
    :return: [batch, out_features]
    """
    tangent: th.Tensor | None = None
    k = 0
    for layer, saved in zip(chain, cache, strict=True):
        if isinstance(layer, str):
            if tangent is not None:
                tangent = _tanh_backward(tangent, saved) if layer == "tanh" else _threshold_backward(tangent, saved, 0)
            continue
        weight, bias = layer
        d_weight = tangents[k]
        d_bias = tangents[k + 1] if bias is not None else None
        k += 1 if bias is None else 2
        out = F.linear(saved, d_weight, d_bias)
        tangent = out if tangent is None else th.addmm(out, tangent, weight.t())
    assert tangent is not None
    return tangent


class AnalyticActor:
    """
    TRPO's actor quantities for a chain of Linear/Tanh/ReLU layers followed by a Categorical or diagonal-Gaussian
    distribution, in the ``"paper"`` KL convention (KL(π_old ‖ π_new) summed over action dimensions, mean over
    states): the surrogate and its gradient at θ_old (``prepare``), the damped Fisher-vector product
    (``fisher_vector_product_fn``), and the surrogate and KL at the current parameters for the line search
    (``evaluate``, one forward pass).

    Parameters are flat vectors laid out like ``parameters`` (any order of the chain's parameters and ``log_std``).

    :param chain: the actor's chain (``chain_from_layers(pi_layers, action_net)``), ending with the distribution's
        parameters (logits or mean)
    :param log_std: the Gaussian's state-independent ``log σ`` (``None`` for a Categorical)
    :param parameters: all of the chain's parameters and ``log_std``, in the order of the flat vectors
    :param numpy_tanh: evaluate ``tanh`` with ``numpy_tanh_`` (faster, last-bit differences)
    """

    def __init__(
        self,
        chain: Sequence[ChainLayer],
        log_std: th.Tensor | None,
        parameters: Sequence[th.Tensor],
        numpy_tanh: bool = False,
    ):
        self.chain = list(chain)
        self.numpy_tanh = numpy_tanh
        self.log_std = log_std
        self.is_categorical = log_std is None
        self.parameters = list(parameters)
        own = [*chain_parameters(self.chain), *([] if log_std is None else [log_std])]
        position = {id(param): i for i, param in enumerate(self.parameters)}
        if len(own) != len(self.parameters) or any(id(param) not in position for param in own):
            raise ValueError("`parameters` must hold exactly the chain's parameters and `log_std`")
        self._chain_positions = [position[id(param)] for param in chain_parameters(self.chain)]
        self._log_std_position = None if log_std is None else position[id(log_std)]
        self._sizes = [param.numel() for param in self.parameters]
        self._shapes = [param.shape for param in self.parameters]

    # ------------------------------------------------------------------------------------------------------------------
    # Distribution

    def _distribution(self, out: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """Same operations as ``FastActorCritic.distribution_params``."""
        if self.is_categorical:
            logits = out - out.logsumexp(dim=-1, keepdim=True)
            return logits, F.softmax(logits, dim=-1)
        assert self.log_std is not None
        return out, th.ones_like(out) * self.log_std.exp()

    def _log_prob(self, params: tuple[th.Tensor, th.Tensor]) -> th.Tensor:
        """Same operations as ``FastActorCritic.log_prob_entropy`` (log-likelihood only)."""
        if self.is_categorical:
            return params[0].gather(-1, self._action_index).squeeze(-1)
        mean, std = params
        log_prob = -((self._actions - mean) ** 2) / (2 * std**2) - std.log() - _LOG_SQRT_2PI
        return log_prob.sum(dim=1)

    # ------------------------------------------------------------------------------------------------------------------
    # Surrogate and its gradient at θ_old

    @th.no_grad()
    def prepare(
        self, observations: th.Tensor, actions: th.Tensor, old_log_prob: th.Tensor, advantages: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor]:
        """
        Take the current parameters as θ_old: one forward pass, kept for the Fisher-vector products.

        :param observations: [batch, obs_dim] (float)
        :param actions: Categorical: indices [batch] or [batch, 1] (any dtype); Gaussian: [batch, action_dim]
        :param old_log_prob: log-likelihood of the actions when they were collected [batch]
        :param advantages: (normalised) advantages [batch]
        :return: the surrogate ``mean(A · π(a|s) / π_old(a|s))`` (scalar tensor) and its flat gradient
        """
        self._cache: list[th.Tensor] = []
        self._observations = observations
        self._old_log_prob = old_log_prob
        self._advantages = advantages
        if self.is_categorical:
            self._action_index = actions.long().reshape(-1, 1)
        else:
            self._actions = actions
        out = chain_forward(self.chain, observations, self._cache, self.numpy_tanh)
        self._old = self._distribution(out)
        ratio = th.exp(self._log_prob(self._old) - old_log_prob)
        objective = (advantages * ratio).mean()

        n = observations.shape[0]
        # d objective / d log π(a_i|s_i)
        weight = (advantages * ratio / n).unsqueeze(-1)
        log_std_grad = None
        if self.is_categorical:
            # d log π(a|s) / d logits = onehot(a) - p
            probs = self._old[1]
            grad_out = (-weight) * probs
            grad_out.scatter_add_(1, self._action_index, weight)
            self._probs = probs
            self._probs_over_n = probs / n
        else:
            mean, std = self._old
            variance = std**2
            diff = self._actions - mean
            grad_out = weight * diff / variance
            # d log π / d log σ = (a - μ)² / σ² - 1
            log_std_grad = (weight * (diff**2 / variance - 1)).sum(0)
            # M / n on the mean: 1 / (n σ²), the same for every state (state-independent σ)
            self._inverse_variance_over_n = (1.0 / (n * variance[0])).unsqueeze(0)
        grads = chain_vjp(self.chain, self._cache, grad_out)
        return objective, self._flatten(grads, log_std_grad)

    def _flatten(self, chain_grads: Sequence[th.Tensor], log_std_grad: th.Tensor | None) -> th.Tensor:
        pieces: list[th.Tensor | None] = [None] * len(self.parameters)
        for position, grad in zip(self._chain_positions, chain_grads, strict=True):
            pieces[position] = grad
        if self._log_std_position is not None:
            assert log_std_grad is not None
            pieces[self._log_std_position] = log_std_grad
        return th.cat([piece.reshape(-1) for piece in pieces])  # type: ignore[union-attr]

    # ------------------------------------------------------------------------------------------------------------------
    # Fisher-vector product at θ_old

    def fisher_vector_product(self, vector: th.Tensor) -> th.Tensor:
        """
        ``F v`` at θ_old (the parameters of the last ``prepare``), undamped.

        :param vector: flat direction
        :return: flat ``F v``
        """
        with th.no_grad():
            pieces = vector.split(self._sizes)
            tangents = [pieces[i].view(self._shapes[i]) for i in self._chain_positions]
            tangent = chain_jvp(self.chain, self._cache, tangents)
            if self.is_categorical:
                # (diag(p) - p pᵀ) t / n
                u = self._probs_over_n * (tangent - (tangent * self._probs).sum(-1, keepdim=True))
            else:
                u = tangent * self._inverse_variance_over_n
            grads = chain_vjp(self.chain, self._cache, u)
            log_std_part = None if self._log_std_position is None else 2.0 * pieces[self._log_std_position]
            return self._flatten(grads, log_std_part)

    def fisher_vector_product_fn(self, damping: float) -> Callable[[th.Tensor], th.Tensor]:
        """
        :param damping: Tikhonov damping (``cg_damping``)
        :return: ``v -> (F + damping I) v`` at θ_old
        """

        def damped(vector: th.Tensor) -> th.Tensor:
            product = self.fisher_vector_product(vector)
            return product.add_(vector, alpha=damping) if damping else product

        return damped

    # ------------------------------------------------------------------------------------------------------------------
    # Line search

    @th.no_grad()
    def evaluate(self) -> tuple[th.Tensor, th.Tensor]:
        """
        :return: the surrogate and the mean KL(π_old ‖ π_new) (summed over action dimensions) at the current
            parameters, on the batch of the last ``prepare``
        """
        new = self._distribution(chain_forward(self.chain, self._observations, numpy_tanh=self.numpy_tanh))
        ratio = th.exp(self._log_prob(new) - self._old_log_prob)
        kl = kl_from_params(self._old, new, self.is_categorical).mean()
        return (self._advantages * ratio).mean(), kl

    def release(self) -> None:
        """Drop the batch and the activations kept since ``prepare``."""
        names = (
            "_cache",
            "_observations",
            "_old_log_prob",
            "_advantages",
            "_action_index",
            "_actions",
            "_old",
            "_probs",
            "_probs_over_n",
        )
        for name in names:
            self.__dict__.pop(name, None)


class DirectAdam:
    """
    ``optimizer.step()`` for gradients given as a list, without going through ``.grad`` and the optimizer's per-call
    bookkeeping: with a fused ``th.optim.Adam`` (``fused=True``) and no optimizer hooks, torch's fused Adam kernel is
    called directly on the optimizer's own state (the same kernel and arguments as ``optimizer.step()``, so the same
    result, bit for bit). Otherwise (another optimizer, hooks, a ``step`` method replaced on the optimizer object, or
    the first step, which creates the state) the gradients are put in ``.grad`` and ``optimizer.step()`` is called.

    :param optimizer: the optimizer
    :param parameters: the parameters stepped, in the order of the gradients given to ``step`` (the optimizer's other
        parameters must have no gradient); frozen ones (``requires_grad=False``) are left alone
    """

    def __init__(self, optimizer: th.optim.Optimizer, parameters: Sequence[th.Tensor]):
        self.optimizer = optimizer
        self.parameters = list(parameters)
        self._groups: list[tuple[dict[str, Any], list[int], list[list[th.Tensor]]]] | None = None

    def reset(self) -> None:
        """Read the optimizer's state again at the next step (call it when the state may have been replaced)."""
        self._groups = None

    def _read_groups(self) -> list[tuple[dict[str, Any], list[int], list[list[th.Tensor]]]] | None:
        """
        :return: for each parameter group, the group, the positions of its trainable parameters among ours, and the
            lists (parameters, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps) for the fused kernel; or ``None`` if the
            optimizer cannot be bypassed (not a fused Adam, hooks, a replaced ``step``, or state not initialised yet)
        """
        optimizer = self.optimizer
        if (
            type(optimizer) is not th.optim.Adam
            or "step" in vars(optimizer)  # the user replaced this optimizer's step(): call it
            or not hasattr(th, "_fused_adam_")
            or optimizer._optimizer_step_pre_hooks
            or optimizer._optimizer_step_post_hooks
            or torch_optimizer._global_optimizer_pre_hooks
            or torch_optimizer._global_optimizer_post_hooks
        ):
            return None
        groups = []
        positions = {id(param): i for i, param in enumerate(self.parameters) if param.requires_grad}
        for group in optimizer.param_groups:
            if not group.get("fused") or group.get("differentiable") or group.get("capturable"):
                return None
            mine = [param for param in group["params"] if id(param) in positions]
            if not mine:
                continue
            states = [optimizer.state.get(param, {}) for param in mine]
            if any("exp_avg" not in state for state in states):
                return None  # the first step initialises the state
            lists = [
                mine,
                [state["exp_avg"] for state in states],
                [state["exp_avg_sq"] for state in states],
                [state["max_exp_avg_sq"] for state in states] if group["amsgrad"] else [],
                [state["step"] for state in states],
            ]
            groups.append((group, [positions[id(param)] for param in mine], lists))
        return groups

    def step(self, grads: Sequence[th.Tensor]) -> None:
        """
        :param grads: the gradients, in the order of ``parameters`` (ignored for frozen parameters)
        """
        if self._groups is None:
            self._groups = self._read_groups()
        if self._groups is None:
            for param, grad in zip(self.parameters, grads, strict=True):
                if param.requires_grad:
                    param.grad = grad
            self.optimizer.step()
            for param in self.parameters:
                param.grad = None
            self._groups = self._read_groups()  # the first step may have created the state
            return
        for group, positions, (params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps) in self._groups:
            beta1, beta2 = group["betas"]
            kernel = th._fused_adamw_ if group.get("decoupled_weight_decay") else th._fused_adam_
            th._foreach_add_(steps, 1)
            kernel(
                params,
                [grads[i] for i in positions],
                exp_avgs,
                exp_avg_sqs,
                max_exp_avg_sqs,
                steps,
                amsgrad=group["amsgrad"],
                lr=group["lr"],
                beta1=float(beta1),
                beta2=float(beta2),
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=group["maximize"],
                grad_scale=None,
                found_inf=None,
            )


class AnalyticCritic:
    """
    The critic's MSE regression step with the gradient computed by ``chain_vjp`` (no autograd): the same loss and
    gradient as ``F.mse_loss(returns, values.flatten()).backward()`` (bit for bit with ``th.tanh``).

    With a fused ``th.optim.Adam`` (``fused=True``) and no optimizer hooks, the step calls torch's fused Adam kernel
    directly on the optimizer's own state (the same kernel and arguments as ``optimizer.step()``, so the same result,
    without its per-call bookkeeping); otherwise it sets the parameters' ``.grad`` and calls ``optimizer.step()``.

    :param chain: the critic's chain (``chain_from_layers(vf_layers, value_net)``)
    :param optimizer: the optimizer that steps the critic's parameters (its other parameters must have no gradient)
    :param numpy_tanh: evaluate ``tanh`` with ``numpy_tanh_`` (faster, last-bit differences)
    """

    def __init__(self, chain: Sequence[ChainLayer], optimizer: th.optim.Optimizer, numpy_tanh: bool = False):
        self.chain = list(chain)
        self.optimizer = optimizer
        self.parameters = chain_parameters(self.chain)
        self.numpy_tanh = numpy_tanh
        self._adam = DirectAdam(optimizer, self.parameters)

    @th.no_grad()
    def loss_and_gradient(self, observations: th.Tensor, returns: th.Tensor) -> tuple[th.Tensor, list[th.Tensor]]:
        """
        :param observations: [batch, obs_dim] (float)
        :param returns: regression targets [batch]
        :return: the MSE loss and its gradient w.r.t. the chain's parameters (in ``chain_parameters`` order)
        """
        squared_error, grads = self._squared_error_and_gradient(observations, returns.unsqueeze(-1))
        return squared_error / returns.shape[0], grads

    def _squared_error_and_gradient(self, observations: th.Tensor, returns: th.Tensor) -> tuple[th.Tensor, list[th.Tensor]]:
        """
        :param returns: regression targets [batch, 1]
        :return: the sum of the squared errors, and the gradient of their mean (as ``F.mse_loss``'s backward:
            ``2 (values - returns) / batch``, then ``chain_vjp``)
        """
        cache: list[th.Tensor] = []
        values = chain_forward(self.chain, observations, cache, self.numpy_tanh)
        diff = values - returns
        flat = diff.view(-1)
        squared_error = th.dot(flat, flat)
        return squared_error, chain_vjp(self.chain, cache, diff.mul_(2.0 / diff.shape[0]))

    def begin(self) -> None:
        """Call before a series of ``step``: clears the gradients and (re)reads the optimizer's state."""
        self.optimizer.zero_grad()
        self._adam.reset()

    def step(self, observations: th.Tensor, returns: th.Tensor) -> float:
        """
        One optimizer step on the MSE loss, skipped if the loss is not finite. Frozen parameters
        (``requires_grad=False``) get no gradient. Call ``begin()`` before a series of steps.

        :param observations: [batch, obs_dim] (float)
        :param returns: regression targets [batch]
        :return: the loss before the step
        """
        with th.no_grad():
            return self._step(observations, returns.unsqueeze(-1), any(param.requires_grad for param in self.parameters))

    def epoch(self, observations: th.Tensor, returns: th.Tensor, permutation: th.Tensor, batch_size: int) -> list[float]:
        """
        ``step`` on each minibatch ``permutation[start : start + batch_size]`` of the data, in order.

        :param observations: [n_samples, obs_dim] (float)
        :param returns: regression targets [n_samples]
        :param permutation: order of the samples
        :param batch_size: minibatch size
        :return: the losses of the minibatches
        """
        trainable = any(param.requires_grad for param in self.parameters)
        returns_column = returns.unsqueeze(-1)
        with th.no_grad():
            return [
                self._step(
                    observations.index_select(0, indices := permutation[start : start + batch_size]),
                    returns_column.index_select(0, indices),
                    trainable,
                )
                for start in range(0, permutation.shape[0], batch_size)
            ]

    def _step(self, observations: th.Tensor, returns: th.Tensor, trainable: bool) -> float:
        """``step`` with ``returns`` as a column [batch, 1]"""
        squared_error, grads = self._squared_error_and_gradient(observations, returns)
        value = squared_error.item() / returns.shape[0]
        if trainable and math.isfinite(value):
            self._adam.step(grads)
        return value


def analytic_actor(fast: FastActorCritic, numpy_tanh: bool = False) -> AnalyticActor | None:
    """
    :param fast: the lean path of a supported policy
    :param numpy_tanh: evaluate ``tanh`` with ``numpy_tanh_`` (faster, last-bit differences)
    :return: the closed-form actor of ``fast.policy``, its parameters (the flat layout) in ``policy.parameters()``
        order, or ``None`` if one of them is frozen (``requires_grad=False``: not an actor parameter then)
    """
    assert fast.pi_layers is not None
    chain = chain_from_layers(fast.pi_layers, fast.action_net)
    log_std = None if fast.is_categorical else fast.policy.log_std
    own = {id(param) for param in [*chain_parameters(chain), *([] if log_std is None else [log_std])]}
    parameters = [param for param in fast.policy.parameters() if id(param) in own]
    if len(parameters) != len(own) or not all(param.requires_grad for param in parameters):
        return None
    return AnalyticActor(chain, log_std, parameters, numpy_tanh)


def analytic_critic(fast: FastActorCritic, numpy_tanh: bool = False) -> AnalyticCritic:
    """
    :param fast: the lean path of a supported policy
    :param numpy_tanh: evaluate ``tanh`` with ``numpy_tanh_`` (faster, last-bit differences)
    :return: the closed-form critic of ``fast.policy``, stepping its optimizer
    """
    assert fast.vf_layers is not None
    return AnalyticCritic(chain_from_layers(fast.vf_layers, fast.value_net), fast.policy.optimizer, numpy_tanh)


def analytic_fisher_vector_product_fn(actor: AnalyticActor, damping: float) -> Callable[[th.Tensor], th.Tensor]:
    """
    :param actor: a prepared ``AnalyticActor``
    :param damping: Tikhonov damping (``cg_damping``)
    :return: ``v -> (F + damping I) v`` at θ_old
    """
    return actor.fisher_vector_product_fn(damping)
