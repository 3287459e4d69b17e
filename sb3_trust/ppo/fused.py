"""
TrustPPO's fused minibatch step: the closed-form loss and gradient of ``sb3_trust.ppo.analytic`` and SB3's optimizer
step (gradient-norm clipping, then Adam) with every element-wise part in three C functions
(``fused_kernels.c``), and the matrix products in torch.

For a 64×64 MLP the closed-form path spends most of a minibatch on about a hundred small torch operations (the
distribution, the log-likelihood, the ratio, the clipped surrogate, the value loss, their derivatives, the activation
derivatives, the norm of the gradient, Adam), each costing a few microseconds of dispatch for a few hundred numbers.
Here each of those groups is one call: ``ppo_head`` (loss terms and derivatives with respect to the actor's output,
the critic's output and ``log_std``), ``activation_backward`` (tanh or ReLU, in place), and ``clip_adam_step``
(``clip_grad_norm_`` and ``torch.optim.Adam.step()`` on all parameters at once, their gradients written by the
products straight into one flat buffer).

The formulas, and their order of floating-point operations per element, are those of the closed-form path; the sums
are accumulated in double precision, so results differ from it (and from SB3 PPO) in the last bits, as the
closed-form path's already do: ``tests/test_ppo_parity.py`` holds TrustPPO to SB3 PPO's parameters with this path
enabled, and ``tests/test_ppo_fused.py`` compares each function with its torch counterpart.

For networks of Linear layers each followed by ReLU or by nothing (HalfCheetah's zoo config), ``FusedPPO.epoch``
runs a whole epoch in one call (``ppo_epoch``): the permutation's minibatches, the forward and backward products, the
head and the optimizer step, in C. Its products call the BLAS functions that ``th.addmm``/``th.mm`` (MKL's ``sgemm_``)
and ``np.matmul`` (OpenBLAS's ``cblas_sgemm``) call, with the same arguments, so that its results are those of the
per-minibatch path bit for bit (``tests/test_ppo_fused.py``); this removes the ~350 µs of Python and dispatch per
minibatch that remain around the kernels. Tanh networks keep the per-minibatch path: their ``tanh`` is NumPy's
(``numpy_tanh_``), as in collection. So does ``target_kl``, whose early stop is decided between minibatches.

The C file is compiled on first use with the system's C compiler into a cache directory (see
``sb3_trust.common.kernels``). Without a compiler (or with ``SB3_TRUST_NO_KERNELS=1``) TrustPPO uses the closed-form
torch path and says so once (a ``UserWarning``).
"""

import ctypes
import os
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch as th
from torch.optim import optimizer as torch_optimizer

from sb3_trust.common.fast_fisher import ChainLayer, numpy_tanh_
from sb3_trust.common.fast_rollout import FlatRollout
from sb3_trust.common.fused_policy import NumpyFusedActorCritic
from sb3_trust.common.kernels import compile_and_load
from sb3_trust.common.kernels import warn_unavailable_once as warn_kernel_unavailable_once
from sb3_trust.ppo.analytic import AnalyticPPO, MinibatchTerms

SOURCE = Path(__file__).with_name("fused_kernels.c")
# Largest action dimension of a diagonal Gaussian the head kernel takes (its per-dimension arrays are on the stack)
MAX_GAUSSIAN_DIM = 64
# Products of at most this many multiply-adds go to NumPy's BLAS when it runs on one thread (``numpy_product_limit``)
NUMPY_PRODUCT_WORK = 1 << 19
# Indices of the scalars ppo_head writes
POLICY_LOSS, VALUE_LOSS, ENTROPY_LOSS, LOSS, VALUE_CLIP_FRACTION, N_SCALARS = range(6)

# The C functions' signatures (see ``sb3_trust.common.kernels.compile_and_load``)
_SIGNATURES = {
    "activation_backward": "- ppin",
    "column_sums": "- piip",
    "ppo_head": "- iinppppiiidndnddppdppdpppppp",
    "clip_adam_step": "n ippppppdfdddddnp",
    "ppo_epoch": "i ppiipppp",
}
_POINTER, _I64 = ctypes.c_void_p, ctypes.c_int64

_kernels: ctypes.CDLL | None = None
_kernels_error: str | None = None
# The BLAS functions ``ppo_epoch`` calls (``blas_functions``): not looked up yet, or (sgemm_, cblas_sgemm) or None
_blas: tuple[int, int] | bool | None = False


def load_kernels() -> ctypes.CDLL | None:
    """
    :return: the compiled kernels (compiled on first use and cached, see ``sb3_trust.common.kernels``), or ``None`` if
        they cannot be had (no compiler, a failed compilation, ``SB3_TRUST_NO_KERNELS=1``);
        ``kernels_unavailable_reason()`` then says why
    """
    global _kernels, _kernels_error
    if _kernels is not None or _kernels_error is not None:
        return _kernels
    _kernels, _kernels_error = compile_and_load(SOURCE, _SIGNATURES)
    return _kernels


def kernels_unavailable_reason() -> str | None:
    """:return: why ``load_kernels()`` returned ``None`` (``None`` if it did not, or was not called)"""
    return _kernels_error


def warn_unavailable_once() -> None:
    """Say once per process that TrustPPO falls back to the slower closed-form torch path, and why."""
    warn_kernel_unavailable_once("fused PPO kernels", _kernels_error, "using the slower torch path")


def numpy_product_limit() -> int:
    """
    The largest product (in multiply-adds) that ``chain_vjp_into`` gives to NumPy's BLAS rather than ``th.mm``.

    NumPy's lower call overhead wins for small products, torch's BLAS for large ones (measured here on one thread:
    NumPy faster up to 64×64×64, ``th.mm`` faster from 256×64×64 and 64×256×256 on, by 20-40 %). NumPy is used only
    where it runs on one thread, so that one process never takes more cores than torch is given: products of at most
    ``NumpyFusedActorCritic.MAX_NUMPY_WORK`` multiply-adds (OpenBLAS's own threshold, measured here), or up to
    ``NUMPY_PRODUCT_WORK`` when its threads are pinned to one (``OPENBLAS_NUM_THREADS=1``, or ``OMP_NUM_THREADS=1``
    without it, as the benchmark runner sets them). Read once per update (``FusedPPO.begin``).

    :return: the limit
    """
    pinned = os.environ.get("OPENBLAS_NUM_THREADS", os.environ.get("OMP_NUM_THREADS")) == "1"
    return NUMPY_PRODUCT_WORK if pinned else min(NUMPY_PRODUCT_WORK, NumpyFusedActorCritic.MAX_NUMPY_WORK)


def _loaded_library(directory: str, fragment: str) -> str | None:
    """
    :param directory: the name of the folder the library lies in
    :param fragment: part of its file name
    :return: the path of a shared library loaded in this process that matches both, or ``None``
    """
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = Path(line.split(maxsplit=5)[-1].strip())
                if path.is_absolute() and path.parent.name == directory and fragment in path.name:
                    return str(path)
    except OSError:
        pass
    return None


def blas_functions() -> tuple[int, int] | None:
    """
    The addresses of the two BLAS functions that make TrustPPO's minibatch products: MKL's ``sgemm_`` in torch's
    library (what ``th.addmm`` and ``th.mm`` call on the CPU) and OpenBLAS's ``cblas_sgemm`` with 64-bit integers in
    NumPy's (what ``np.matmul`` calls), so that ``ppo_epoch`` makes the same calls as ``FusedPPO.terms``.

    :return: ``(sgemm_, cblas_sgemm)``, or ``None`` if torch is not built with MKL or NumPy not with the 64-bit-integer
        SciPy OpenBLAS (``ppo_epoch`` is then not used)
    """
    global _blas
    if _blas is not False:
        return _blas  # type: ignore[return-value]
    _blas = None
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]  # type: ignore[index]
        numpy_path = _loaded_library("numpy.libs", "scipy_openblas64_")
        if (
            th.backends.mkl.is_available()
            and blas.get("name") == "scipy-openblas"
            and "USE64BITINT" in blas.get("openblas configuration", "")
            and numpy_path is not None
        ):
            torch_library = ctypes.CDLL(str(Path(th.__file__).parent / "lib" / "libtorch_cpu.so"))
            sgemm = ctypes.cast(torch_library.sgemm_, _POINTER).value
            cblas_sgemm = ctypes.cast(ctypes.CDLL(numpy_path).scipy_cblas_sgemm64_, _POINTER).value
            if sgemm and cblas_sgemm:
                _blas = (sgemm, cblas_sgemm)
    except (OSError, AttributeError, KeyError, TypeError):
        pass
    return _blas  # type: ignore[return-value]


class _Chain(ctypes.Structure):
    """``Chain`` of ``fused_kernels.c``."""

    _fields_ = [
        ("n_layers", _I64),
        ("weights", _POINTER),
        ("biases", _POINTER),
        ("features", _POINTER),
        ("relu", _POINTER),
        ("outputs", _POINTER),
        ("input_grads", _POINTER),
        ("weight_grads", _POINTER),
        ("bias_grads", _POINTER),
    ]


class _EpochPlan(ctypes.Structure):
    """``EpochPlan`` of ``fused_kernels.c``."""

    _fields_ = [
        ("sgemm", _POINTER),
        ("small_sgemm", _POINTER),
        ("small_work", _I64),
        ("actor", _Chain),
        ("critic", _Chain),
        ("table", _POINTER),
        ("rows", _POINTER),
        ("width", _I64),
        ("act_col", _I64),
        ("val_col", _I64),
        ("k", _I64),
        ("categorical", ctypes.c_int),
        ("log_std", _POINTER),
        ("grad_log_std", _POINTER),
        ("grad_out", _POINTER),
        ("grad_values", _POINTER),
        *((name, _POINTER) for name in ("old_a", "old_b", "ref_a", "ref_b")),
        *((name, _POINTER) for name in ("old_rows_a", "old_rows_b", "ref_rows_a", "ref_rows_b")),
        *((name, ctypes.c_double) for name in ("clip_range", "clip_range_vf", "ent_coef", "vf_coef", "kl_coef", "ref_coef")),
        ("normalize_advantage", ctypes.c_int),
        ("vf_max_mode", ctypes.c_int),
        ("n_tensors", _I64),
        *((name, _POINTER) for name in ("params", "exp_avgs", "exp_avg_sqs", "steps", "sizes", "grad")),
        *((name, ctypes.c_double) for name in ("max_norm", "lr", "beta1", "beta2", "eps", "weight_decay")),
        ("maximize", ctypes.c_int),
    ]


def relu_layers(chain: Sequence[ChainLayer]) -> list[tuple[int, th.Tensor, th.Tensor | None, bool]] | None:
    """
    :param chain: a chain
    :return: its Linear layers as ``(position in the chain, weight, bias, followed by ReLU)``, or ``None`` if it has
        another activation (``ppo_epoch`` takes Linear layers each followed by ReLU or by nothing)
    """
    layers: list[tuple[int, th.Tensor, th.Tensor | None, bool]] = []
    for i, layer in enumerate(chain):
        if isinstance(layer, str):
            if layer != "relu" or not layers or layers[-1][3]:
                return None
            layers[-1] = (*layers[-1][:3], True)
        else:
            layers.append((i, layer[0], layer[1], False))
    return layers if layers and not layers[-1][3] else None


class Workspace:
    """
    Float32 buffers for a minibatch's intermediate results, made once per (name, shape) and overwritten at every
    minibatch. Besides saving the allocations, this keeps the process's heap from growing: tens of freshly allocated
    64 KB intermediates per minibatch fragmented glibc's heap, and peak RSS grew by 10-20 MB over SB3 PPO's on
    HalfCheetah's 256×256 zoo config.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[object, ...], th.Tensor] = {}

    def get(self, key: tuple[object, ...], rows: int, columns: int) -> th.Tensor:
        """
        :param key: what the buffer is for
        :param rows: rows
        :param columns: columns
        :return: a [rows, columns] float32 buffer (its content is whatever was last written to it)
        """
        buffer = self._buffers.get((*key, rows, columns))
        if buffer is None:
            buffer = self._buffers[(*key, rows, columns)] = th.empty(rows, columns)
        return buffer


def chain_forward_into(chain: Sequence[ChainLayer], x: th.Tensor, cache: list[th.Tensor], numpy_tanh: bool,
                       work: Workspace, name: str) -> th.Tensor:  # fmt: skip
    """
    ``sb3_trust.common.fast_fisher.chain_forward`` (the same operations, and ``cache`` filled the same way) with every
    intermediate result written into a buffer of ``work``: ``th.addmm(b, x, W.T, out=...)`` (what ``F.linear`` calls),
    the activations in place.

    :param chain: the chain
    :param x: input [batch, in_features]
    :param cache: filled with the input of each Linear layer and the output of each activation
    :param numpy_tanh: evaluate ``tanh`` with NumPy (``numpy_tanh_``), as ``chain_forward``
    :param work: the buffers
    :param name: the chain's name in ``work``
    :return: output [batch, out_features] (a buffer of ``work``)
    """
    for i, layer in enumerate(chain):
        if isinstance(layer, str):  # after a Linear layer: x is a buffer of work
            if layer == "relu":
                x = x.relu_()
            else:
                x = numpy_tanh_(x) if numpy_tanh else x.tanh_()
            cache.append(x)
            continue
        cache.append(x)
        weight, bias = layer
        out = work.get((name, i), x.shape[0], weight.shape[0])
        if bias is None:
            th.mm(x, weight.t(), out=out)
        else:
            th.addmm(bias, x, weight.t(), out=out)
        x = out
    return x


def chain_vjp_into(kernels: ctypes.CDLL, chain: Sequence[ChainLayer], cache: Sequence[th.Tensor], grad: th.Tensor,
                   out: Sequence[th.Tensor], numpy_limit: int, work: Workspace, name: str) -> None:  # fmt: skip
    """
    ``sb3_trust.common.fast_fisher.chain_vjp`` writing the gradients into ``out`` (the same products; the activation
    derivatives by ``activation_backward``, in place on the intermediate gradients; the bias gradients by
    ``column_sums``; the intermediate gradients into buffers of ``work``). The products of the hidden layers (the
    weight gradient ``grad.T @ input``, with the batch as the inner dimension, and the input gradient) of at most
    ``numpy_limit`` multiply-adds are computed by NumPy's BLAS (up to 2.5 times faster than ``th.mm`` for the weight
    gradient of a layer with a few inputs, measured here), the larger ones and the head's by ``th.mm``.

    :param kernels: the compiled kernels
    :param chain: the chain
    :param cache: filled by ``chain_forward`` (contiguous activation outputs)
    :param grad: d loss / d output [batch, out_features] (overwritten)
    :param out: the gradients' destinations, in the order of ``chain_parameters``
    :param numpy_limit: ``numpy_product_limit()``
    :param work: the buffers
    :param name: the chain's name in ``work``
    """
    k = len(out)
    last = len(chain) - 1
    first_linear = next(i for i, layer in enumerate(chain) if not isinstance(layer, str))
    for i in range(last, first_linear - 1, -1):
        layer, saved = chain[i], cache[i]
        if isinstance(layer, str):
            kernels.activation_backward(grad.data_ptr(), saved.data_ptr(), grad.numel(), layer == "relu")
            continue
        weight, bias = layer
        if bias is not None:
            k -= 1
            kernels.column_sums(grad.data_ptr(), grad.shape[0], grad.shape[1], out[k].data_ptr())
        k -= 1
        numpy = i != last and grad.shape[0] * weight.numel() <= numpy_limit
        if numpy:
            np.matmul(grad.numpy().T, saved.numpy(), out=out[k].numpy())
        else:
            th.mm(grad.t(), saved, out=out[k])
        if i > first_linear:
            input_grad = work.get((name, "grad", i), grad.shape[0], weight.shape[1])
            if numpy:
                np.matmul(grad.numpy(), weight.detach().numpy(), out=input_grad.numpy())
            else:
                th.mm(grad, weight, out=input_grad)
            grad = input_grad


def _pointers(params: tuple[th.Tensor, th.Tensor] | None) -> tuple[int | None, int | None]:
    """
    :param params: a distribution's parameters on the minibatch ([n, k] each), or ``None``
    :return: their data pointers (the rows gathered for a minibatch are contiguous float32 tensors)
    """
    if params is None:
        return None, None
    first, second = params
    assert first.is_contiguous() and second.is_contiguous() and first.dtype == second.dtype == th.float32
    return first.data_ptr(), second.data_ptr()


class HeadSettings(NamedTuple):
    """The loss's settings for one update, as ``ppo_head`` takes them (``FusedPPO.terms`` and ``plan_epochs``)."""

    clip_range: float | None  # ε of PPO-clip, or None for the unclipped surrogate (policy_loss "unclipped"/"kl_penalty")
    clip_range_vf: float | None
    vf_clip_mode: str  # "sb3" or "max"
    ent_coef: float
    vf_coef: float
    normalize_advantage: bool
    kl_coef: float = 0.0  # β of the KL penalty (applied when π_old's parameters are given)
    reference_coef: float = 0.0  # β of the reference KL (applied when π_ref's parameters are given)


class FusedMinibatch(NamedTuple):
    """A minibatch as rows of the rollout's table (``FlatRollout.table``), and their indices in the rollout."""

    rows: th.Tensor
    indices: th.Tensor


class FusedAdam:
    """
    ``clip_grad_norm_`` then ``optimizer.step()`` for a ``th.optim.Adam`` with one parameter group, by ``clip_adam_step``
    on the optimizer's own state tensors. ``bind`` reads them (call it at every update: ``load()``,
    ``set_parameters()`` and the restore after a failed update replace them); it returns ``False`` when the optimizer
    cannot be bypassed (another optimizer, hooks, a replaced ``step``, several groups, amsgrad, AdamW, a tensor
    learning rate, or the state not created yet).

    :param kernels: the compiled kernels
    :param parameters: the parameters, in the order of their gradients in the flat buffer
    """

    def __init__(self, kernels: ctypes.CDLL, parameters: Sequence[th.Tensor]):
        self.kernels = kernels
        self.parameters = list(parameters)
        self.sizes = (_I64 * len(self.parameters))(*(param.numel() for param in self.parameters))
        self._tensors: list[th.Tensor] = []  # what the pointers point to, kept alive while bound
        self._pointers: tuple[Any, ...] = ()
        self._hyperparameters: tuple[float, ...] = ()
        self.norm = th.zeros(())

    def bind(self, optimizer: th.optim.Optimizer) -> bool:
        """
        :param optimizer: the policy's optimizer
        :return: whether ``step`` may be used until the next ``bind``
        """
        self._tensors, self._pointers = [], ()
        if (
            type(optimizer) is not th.optim.Adam
            or "step" in vars(optimizer)
            or optimizer._optimizer_step_pre_hooks
            or optimizer._optimizer_step_post_hooks
            or torch_optimizer._global_optimizer_pre_hooks
            or torch_optimizer._global_optimizer_post_hooks
            or len(optimizer.param_groups) != 1
        ):
            return False
        group = optimizer.param_groups[0]
        if (
            group["amsgrad"]
            or group.get("decoupled_weight_decay")
            or group.get("differentiable")
            or group.get("capturable")
            or not all(isinstance(group[name], float | int) for name in ("lr", "eps", "weight_decay"))
            or {id(param) for param in group["params"]} != {id(param) for param in self.parameters}
        ):
            return False
        lists: list[list[th.Tensor]] = [[], [], [], []]
        for param in self.parameters:
            state = optimizer.state.get(param, {})
            tensors = [param, state.get("exp_avg"), state.get("exp_avg_sq"), state.get("step")]
            for tensor in tensors:
                if not (
                    isinstance(tensor, th.Tensor)
                    and tensor.dtype == th.float32
                    and tensor.device.type == "cpu"
                    and tensor.is_contiguous()
                ):
                    return False
            if tensors[3].numel() != 1 or tensors[1].shape != param.shape or tensors[2].shape != param.shape:  # type: ignore[union-attr]
                return False
            for destination, tensor in zip(lists, tensors, strict=True):
                destination.append(tensor)  # type: ignore[arg-type]
        n = len(self.parameters)
        self._pointers = tuple((_POINTER * n)(*(tensor.data_ptr() for tensor in tensors)) for tensors in lists)
        self._tensors = [tensor for tensors in lists for tensor in tensors]
        beta1, beta2 = group["betas"]
        self._hyperparameters = (
            float(group["lr"]),
            float(beta1),
            float(beta2),
            float(group["eps"]),
            float(group["weight_decay"]),
        )
        self._maximize = bool(group["maximize"])
        return True

    def step(self, grad: th.Tensor, loss: th.Tensor, max_norm: float) -> bool:
        """
        Clip the gradient's norm to ``max_norm`` and take the Adam step, unless ``loss + norm`` is not finite.

        :param grad: the flat gradient (the parameters' gradients one after the other), scaled in place
        :param loss: the minibatch's loss (scalar)
        :param max_norm: SB3's ``max_grad_norm``
        :return: whether the step was taken; the gradient's norm before clipping is in ``self.norm``
        """
        lr, beta1, beta2, eps, weight_decay = self._hyperparameters
        params, exp_avgs, exp_avg_sqs, steps = self._pointers
        failed = self.kernels.clip_adam_step(
            len(self.parameters),
            params,
            exp_avgs,
            exp_avg_sqs,
            steps,
            self.sizes,
            grad.data_ptr(),
            max_norm,
            float(loss),
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            self._maximize,
            self.norm.data_ptr(),
        )
        return not failed


class FusedPPO:
    """
    One TrustPPO minibatch by the fused kernels: ``terms`` (forward products in torch, ``ppo_head``, backward products
    written into one flat gradient) and the optimizer step (``FusedAdam``, or, when the optimizer cannot be bypassed,
    the closed-form path's clipping and ``DirectAdam`` on the same gradient).

    :param kernels: the compiled kernels
    :param analytic: the closed-form path of the same policy (its chains, positions and distribution)
    :param parameters: the policy's parameters (the order of the flat gradient)
    """

    def __init__(self, kernels: ctypes.CDLL, analytic: AnalyticPPO, parameters: Sequence[th.Tensor]):
        self.kernels = kernels
        self.analytic = analytic
        self.parameters = list(parameters)
        self.grad = th.zeros(sum(param.numel() for param in self.parameters))
        self.grads = [
            flat.view_as(param)
            for flat, param in zip(self.grad.split([param.numel() for param in self.parameters]), self.parameters, strict=True)
        ]
        self.actor_grads = [self.grads[i] for i in analytic._actor_positions]
        self.critic_grads = [self.grads[i] for i in analytic._critic_positions]
        self.log_std_grad = None if analytic._log_std_position is None else self.grads[analytic._log_std_position]
        self.adam = FusedAdam(kernels, self.parameters)
        self.adam_bound = self.rebound = False
        self._head_buffers: tuple[th.Tensor, th.Tensor] | None = None
        self.work = Workspace()
        # ppo_epoch's plan for the current update (``plan_epochs``), the ctypes arrays and tensors it points to
        self._plan: _EpochPlan | None = None
        self._plan_arrays: list[Any] = []
        self._tables: tuple[Any, ...] = ()
        self._max_grad_norm = 0.0

    @staticmethod
    def supports(analytic: AnalyticPPO, parameters: Sequence[th.Tensor]) -> bool:
        """
        :param analytic: the closed-form path
        :param parameters: the policy's parameters
        :return: whether the fused kernels compute this policy's loss (float32 parameters on the CPU, at most
            ``MAX_GAUSSIAN_DIM`` Gaussian action dimensions); every ``policy_loss`` and the reference KL are supported
        """
        if not all(param.dtype == th.float32 and param.device.type == "cpu" and param.is_contiguous() for param in parameters):
            return False
        head = analytic.actor[-1]
        assert not isinstance(head, str)
        return analytic.is_categorical or head[0].shape[0] <= MAX_GAUSSIAN_DIM

    def begin(self, optimizer: th.optim.Optimizer, rollout: FlatRollout, batch_size: int | None) -> bool:
        """
        Prepare an update: read the rollout table's layout, bind the optimizer's state, size the head's buffers.

        :param optimizer: the policy's optimizer
        :param rollout: this update's rollout
        :param batch_size: the minibatch size (``None``: the whole rollout)
        :return: whether the update can go through ``minibatches`` and ``terms`` (its rollout is one float32 table)
        """
        if not rollout.same_dtype:
            return False
        widths = rollout.splits
        # (table width, first action column, first of the columns old values / old log-probs / advantages / returns)
        self._layout = (sum(widths), widths[0], widths[0] + widths[1])
        self._numpy_limit = numpy_product_limit()
        self.adam_bound = self.adam.bind(optimizer)
        self.rebound = False  # whether bind was tried again after a step of the closed-form path
        head = self.analytic.actor[-1]
        assert not isinstance(head, str)
        rows = rollout.n_samples if batch_size is None else min(batch_size, rollout.n_samples)
        if self._head_buffers is None or self._head_buffers[0].shape[0] < rows:
            self._head_buffers = (th.empty(rows, head[0].shape[0]), th.empty(rows, 1))
        return True

    def minibatches(self, rollout: FlatRollout, batch_size: int | None) -> Generator[FusedMinibatch, None, None]:
        """
        ``FlatRollout.minibatches`` as rows of the rollout's table: the same permutation (one ``np.random.permutation``
        per epoch, as ``RolloutBuffer.get()``), without splitting the rows into fields. Each minibatch's rows are
        gathered into the same buffer of ``work`` (not the whole shuffled epoch: that buffer would be as large as the
        rollout), so a minibatch is valid only until the next one is drawn.

        :param rollout: the rollout (``begin`` returned ``True`` for it)
        :param batch_size: minibatch size (``None``: the whole rollout)
        :return: generator of minibatches
        """
        permutation = th.as_tensor(np.random.permutation(rollout.n_samples), device=rollout.device)
        if batch_size is None:
            batch_size = rollout.n_samples
        batch = self.work.get(("minibatch",), min(batch_size, rollout.n_samples), rollout.table.shape[1])
        for start in range(0, rollout.n_samples, batch_size):
            indices = permutation[start : start + batch_size]
            rows = batch[: indices.shape[0]]
            th.index_select(rollout.table, 0, indices, out=rows)
            yield FusedMinibatch(rows, indices)

    def _chain_plan(self, chain: Sequence[ChainLayer], grads: Sequence[th.Tensor], rows: int, name: str) -> _Chain | None:
        """
        :param chain: the actor's or critic's chain
        :param grads: its gradients' destinations (``actor_grads`` or ``critic_grads``)
        :param rows: the largest minibatch
        :param name: the chain's name in ``work`` (the buffers of ``chain_forward_into`` and ``chain_vjp_into``)
        :return: the chain for ``ppo_epoch``, or ``None`` if it does not take it (``relu_layers``)
        """
        layers = relu_layers(chain)
        if layers is None:
            return None
        n = len(layers)
        features = [layers[0][1].shape[1], *(weight.shape[0] for _, weight, _, _ in layers)]
        outputs, input_grads, weight_grads, bias_grads = [], [], [], []
        k = 0
        for index, (position, weight, bias, _) in enumerate(layers):
            outputs.append(self.work.get((name, position), rows, weight.shape[0]).data_ptr())
            input_grads.append(self.work.get((name, "grad", position), rows, weight.shape[1]).data_ptr() if index else None)
            weight_grads.append(grads[k].data_ptr())
            bias_grads.append(None if bias is None else grads[k + 1].data_ptr())
            k += 1 if bias is None else 2
        arrays = (
            (_POINTER * n)(*(weight.data_ptr() for _, weight, _, _ in layers)),
            (_POINTER * n)(*(None if bias is None else bias.data_ptr() for _, _, bias, _ in layers)),
            (_I64 * (n + 1))(*features),
            (ctypes.c_int * n)(*(relu for _, _, _, relu in layers)),
            *((_POINTER * n)(*pointers) for pointers in (outputs, input_grads, weight_grads, bias_grads)),
        )
        self._plan_arrays.extend(arrays)
        return _Chain(n, *(ctypes.cast(array, _POINTER) for array in arrays))

    def plan_epochs(
        self,
        rollout: FlatRollout,
        batch_size: int | None,
        settings: HeadSettings,
        old: tuple[th.Tensor, th.Tensor] | None,
        reference: tuple[th.Tensor, th.Tensor] | None,
        max_grad_norm: float,
    ) -> bool:
        """
        Prepare ``epoch`` for this update (after ``begin``).

        :param rollout: the rollout
        :param batch_size: the minibatch size (``None``: the whole rollout)
        :param settings: the loss's settings
        :param old: π_old's parameters on the whole rollout (``[n_samples, k]`` each), for the KL penalty, or ``None``
        :param reference: π_ref's parameters on the whole rollout, for the reference KL, or ``None``
        :param max_grad_norm: SB3's ``max_grad_norm``
        :return: whether ``epoch`` can run this update's epochs: the BLAS functions are found (``blas_functions``), the
            chains are Linear layers each followed by ReLU or by nothing (Tanh chains keep ``terms``: their ``tanh`` is
            NumPy's), and π_old's and π_ref's parameters are ``[n_samples, k]`` float32 tables
        """
        self._plan, self._plan_arrays = None, []
        blas = blas_functions()
        if blas is None or self._head_buffers is None:
            return False
        for params in (old, reference):
            if params is not None and not all(
                param.dtype == th.float32 and param.is_contiguous() and param.shape[0] == rollout.n_samples for param in params
            ):
                return False
        rows = rollout.n_samples if batch_size is None else min(batch_size, rollout.n_samples)
        analytic = self.analytic
        actor = self._chain_plan(analytic.actor, self.actor_grads, rows, "actor")
        critic = self._chain_plan(analytic.critic, self.critic_grads, rows, "critic")
        if actor is None or critic is None:
            return False
        width, action_column, value_column = self._layout
        k = self._head_buffers[0].shape[1]
        gathered = [self.work.get(("epoch", name), rows, k).data_ptr() for name in ("old_a", "old_b", "ref_a", "ref_b")]
        log_std = analytic.log_std
        self._plan = _EpochPlan(
            *blas,
            self._numpy_limit,
            actor,
            critic,
            rollout.table.data_ptr(),
            self.work.get(("minibatch",), rows, width).data_ptr(),
            width,
            action_column,
            value_column,
            k,
            analytic.is_categorical,
            None if log_std is None else log_std.data_ptr(),
            None if self.log_std_grad is None else self.log_std_grad.data_ptr(),
            self._head_buffers[0].data_ptr(),
            self._head_buffers[1].data_ptr(),
            *_pointers(old),
            *_pointers(reference),
            *(gathered[:2] if old is not None else (None, None)),
            *(gathered[2:] if reference is not None else (None, None)),
            -1.0 if settings.clip_range is None else settings.clip_range,
            -1.0 if settings.clip_range_vf is None else settings.clip_range_vf,
            settings.ent_coef,
            settings.vf_coef,
            settings.kl_coef,
            settings.reference_coef,
            settings.normalize_advantage,
            settings.vf_clip_mode == "max",
        )
        self._max_grad_norm = max_grad_norm
        self._tables = (rollout.table, old, reference)  # what the plan points to, kept alive
        return True

    def epoch(self, rollout: FlatRollout, batch_size: int | None, slots: tuple[th.Tensor, th.Tensor, th.Tensor]) -> int:
        """
        One epoch of minibatches by ``ppo_epoch`` (``plan_epochs`` returned ``True``, and the optimizer is bound): the same
        permutation (``np.random.permutation``) and the same results as ``minibatches``, ``terms`` and ``FusedAdam.step``
        minibatch after minibatch.

        :param rollout: the rollout
        :param batch_size: the minibatch size (``None``: the whole rollout)
        :param slots: where the epoch's ratios ``[n_samples]``, log-ratios ``[n_samples]`` and scalars
            ``[n_minibatches, N_SCALARS]`` go (``UpdateStats.next_epoch``)
        :return: -1 if every minibatch's step was taken, else the index of the first minibatch whose loss or gradient
            norm is not finite (its step and the later ones were not taken; the norm is in ``adam.norm``)
        """
        assert self._plan is not None and self.adam_bound
        plan, adam = self._plan, self.adam
        plan.n_tensors = len(adam.parameters)
        plan.params, plan.exp_avgs, plan.exp_avg_sqs, plan.steps = (ctypes.cast(array, _POINTER) for array in adam._pointers)
        plan.sizes, plan.grad = ctypes.cast(adam.sizes, _POINTER), self.grad.data_ptr()
        plan.lr, plan.beta1, plan.beta2, plan.eps, plan.weight_decay = adam._hyperparameters
        plan.max_norm, plan.maximize = self._max_grad_norm, adam._maximize
        permutation = np.random.permutation(rollout.n_samples).astype(np.int64, copy=False)
        batch = rollout.n_samples if batch_size is None else batch_size
        ratio, log_ratio, scalars = slots
        return self.kernels.ppo_epoch(
            ctypes.byref(plan),
            permutation.ctypes.data,
            rollout.n_samples,
            batch,
            ratio.data_ptr(),
            log_ratio.data_ptr(),
            scalars.data_ptr(),
            adam.norm.data_ptr(),
        )

    @th.no_grad()
    def terms(
        self,
        batch: FusedMinibatch,
        settings: HeadSettings,
        old: tuple[th.Tensor, th.Tensor] | None = None,
        reference: tuple[th.Tensor, th.Tensor] | None = None,
        stats_out: tuple[th.Tensor, th.Tensor, th.Tensor] | None = None,
    ) -> MinibatchTerms:
        """
        :param batch: the minibatch (``minibatches``)
        :param settings: the loss's settings
        :param old: π_old's parameters on the minibatch, for the KL penalty ``kl_coef · mean(KL(π_old ‖ π))`` added to
            the policy loss (``policy_loss="kl_penalty"``), or ``None``
        :param reference: π_ref's parameters on the minibatch, for the term ``reference_coef · mean(KL(π ‖ π_ref))``
            (the loss placement of the reference KL), or ``None``
        :param stats_out: where the ratios ``[n]``, log-ratios ``[n]`` and scalars ``[N_SCALARS]`` are written (the returned
            terms are views of them), or ``None`` for new tensors
        :return: the terms; the gradient is in ``self.grad`` (``grads`` are its per-parameter views)
        """
        analytic = self.analytic
        rows = batch.rows
        n = rows.shape[0]
        width, action_column, value_column = self._layout
        observations = rows[:, :action_column]
        actor_cache: list[th.Tensor] = []
        critic_cache: list[th.Tensor] = []
        out = chain_forward_into(analytic.actor, observations, actor_cache, analytic.numpy_tanh, self.work, "actor")
        values = chain_forward_into(analytic.critic, observations, critic_cache, analytic.numpy_tanh, self.work, "critic")
        assert self._head_buffers is not None
        grad_out, grad_values = self._head_buffers[0][:n], self._head_buffers[1][:n]
        ratio, log_ratio, scalars = (th.empty(n), th.empty(n), th.empty(N_SCALARS)) if stats_out is None else stats_out
        log_std = analytic.log_std
        self.kernels.ppo_head(
            n,
            out.shape[1],
            analytic.is_categorical,
            out.data_ptr(),
            None if log_std is None else log_std.data_ptr(),
            values.data_ptr(),
            rows.data_ptr(),
            width,
            action_column,
            value_column,
            -1.0 if settings.clip_range is None else settings.clip_range,
            settings.normalize_advantage,
            -1.0 if settings.clip_range_vf is None else settings.clip_range_vf,
            settings.vf_clip_mode == "max",
            settings.ent_coef,
            settings.vf_coef,
            *_pointers(old),
            settings.kl_coef,
            *_pointers(reference),
            settings.reference_coef,
            grad_out.data_ptr(),
            grad_values.data_ptr(),
            None if self.log_std_grad is None else self.log_std_grad.data_ptr(),
            ratio.data_ptr(),
            log_ratio.data_ptr(),
            scalars.data_ptr(),
        )
        limit, work = self._numpy_limit, self.work
        chain_vjp_into(self.kernels, analytic.actor, actor_cache, grad_out, self.actor_grads, limit, work, "actor")
        chain_vjp_into(self.kernels, analytic.critic, critic_cache, grad_values, self.critic_grads, limit, work, "critic")
        policy_loss, value_loss, entropy_loss, loss, value_clip_fraction = scalars.unbind()
        return MinibatchTerms(loss, policy_loss, value_loss, entropy_loss, ratio, log_ratio, value_clip_fraction, self.grads)
