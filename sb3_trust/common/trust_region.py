"""
Trust-region maths for TRPO and the natural policy gradient (NPG): flat gradients, conjugate gradient,
Fisher-vector products, the natural-gradient step size and the backtracking line search.

All functions work on flat vectors laid out like ``parameters`` (concatenated ``reshape(-1)``, in order), and
each is unit-tested in isolation (``tests/test_trust_region.py``). Only the line search and ``apply_fixed_step``
write to the parameters they are given.

References: Schulman et al. 2015 (TRPO, appendix C), https://arxiv.org/abs/1502.05477, and sb3-contrib's
``conjugate_gradient_solver`` / ``flat_grad`` (``sb3_contrib/common/utils.py``), which ``conjugate_gradient`` reproduces
operation by operation when given the same initial point.
"""

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch as th
from stable_baselines3.common.type_aliases import PyTorchObs


def flat_grad(
    output: th.Tensor,
    parameters: Sequence[th.Tensor],
    create_graph: bool = False,
    retain_graph: bool | None = None,
) -> th.Tensor:
    """
    Gradient of a scalar ``output`` w.r.t. ``parameters``, flattened and concatenated in the order of ``parameters``.
    Unlike sb3-contrib's ``flat_grad``, a parameter ``output`` does not depend on contributes zeros (instead of being
    dropped), so the result always has the layout of ``parameters``.

    :param output: scalar to differentiate
    :param parameters: tensors that require grad
    :param create_graph: build the graph of the derivative (for higher-order derivatives)
    :param retain_graph: keep the graph of ``output`` (``None``: same as ``create_graph``, as in PyTorch)
    :return: flat gradient, shape ``[sum(p.numel())]``
    """
    grads = th.autograd.grad(output, parameters, create_graph=create_graph, retain_graph=retain_graph, allow_unused=True)
    return th.cat([(th.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, parameters, strict=True)])


def get_flat_params(parameters: Sequence[th.Tensor]) -> th.Tensor:
    """
    :param parameters: tensors
    :return: a detached copy of ``parameters``, flattened and concatenated
    """
    return th.cat([p.detach().reshape(-1) for p in parameters]).clone()


def set_flat_params_(parameters: Sequence[th.Tensor], flat: th.Tensor) -> None:
    """
    Copy ``flat`` into ``parameters`` in place (no autograd tracking), the inverse of ``get_flat_params``.

    :param parameters: tensors to overwrite
    :param flat: values, laid out like ``get_flat_params(parameters)``
    """
    offset = 0
    with th.no_grad():
        for param in parameters:
            n_elements = param.numel()
            param.copy_(flat[offset : offset + n_elements].view_as(param))
            offset += n_elements
    if offset != flat.numel():
        raise ValueError(f"`flat` has {flat.numel()} elements but the parameters have {offset}")


def conjugate_gradient(
    matrix_vector_product: Callable[[th.Tensor], th.Tensor],
    b: th.Tensor,
    max_iter: int = 10,
    residual_tol: float = 1e-10,
    x0: th.Tensor | None = None,
) -> tuple[th.Tensor, float]:
    """
    Approximately solve ``A x = b`` for a symmetric positive-definite ``A`` given only ``v -> A v``, with at most
    ``max_iter`` conjugate-gradient iterations, stopping early once ``‖r‖² < residual_tol``.

    With ``x0 = 1e-4 * th.randn_like(b)`` this performs the same operations, in the same order, as sb3-contrib's
    ``conjugate_gradient_solver`` (which draws that initial point itself, consuming the torch RNG).
    With ``x0=None`` it starts from zero, as in the TRPO paper, and saves one matrix-vector product.

    :param matrix_vector_product: function ``v -> A v``
    :param b: right-hand side (1-d)
    :param max_iter: maximum number of iterations (``A v`` products, plus one when ``x0`` is given)
    :param residual_tol: tolerance on the squared residual norm for stopping early
    :param x0: initial point (not modified), ``None`` for zero
    :return: the approximate solution, and the norm of the (recursively updated) residual ``b - A x`` at the end,
        for diagnostics
    """
    if x0 is None:
        x = th.zeros_like(b)
        residual = b.clone()
    else:
        x = x0.clone()
        residual = b - matrix_vector_product(x)
    residual_squared_norm = th.matmul(residual, residual)
    if residual_squared_norm < residual_tol:
        # Avoid 0 / 0 in alpha when b (the gradient) is tiny
        return x, math.sqrt(residual_squared_norm.item())

    p = residual.clone()
    for i in range(max_iter):
        a_dot_p = matrix_vector_product(p)
        alpha = residual_squared_norm / p.dot(a_dot_p)
        x += alpha * p
        # contrib returns before this update on the last iteration; x is the same, the residual is only for diagnostics
        residual -= alpha * a_dot_p
        new_residual_squared_norm = th.matmul(residual, residual)
        if i == max_iter - 1 or new_residual_squared_norm < residual_tol:
            return x, math.sqrt(new_residual_squared_norm.item())
        beta = new_residual_squared_norm / residual_squared_norm
        residual_squared_norm = new_residual_squared_norm
        p = residual + beta * p
    return x, math.sqrt(residual_squared_norm.item())  # only reached with max_iter=0


def fisher_vector_product_fn(
    grad_kl: th.Tensor, parameters: Sequence[th.Tensor], damping: float
) -> Callable[[th.Tensor], th.Tensor]:
    """
    Damped Fisher-vector product ``v -> F v + damping * v`` by double backpropagation: ``F`` is the Hessian of the
    mean KL at θ_old, so ``F v = ∇(∇KL · v)``.

    :param grad_kl: flat gradient of the mean KL w.r.t. ``parameters``, computed with ``create_graph=True``
    :param parameters: the parameters ``grad_kl`` was taken w.r.t.
    :param damping: Tikhonov damping added to the diagonal (``cg_damping``)
    :return: the function ``v -> (F + damping I) v``
    """

    def fisher_vector_product(vector: th.Tensor) -> th.Tensor:
        jacobian_vector_product = (grad_kl * vector).sum()
        return flat_grad(jacobian_vector_product, parameters, retain_graph=True) + damping * vector

    return fisher_vector_product


def kl_fisher_vector_product_fn(
    kl: th.Tensor, parameters: Sequence[th.Tensor], damping: float
) -> Callable[[th.Tensor], th.Tensor]:
    """
    ``fisher_vector_product_fn`` from the mean KL itself.

    :param kl: scalar mean KL between the (detached) old policy and the current one, at θ = θ_old
    :param parameters: the parameters to take the Fisher matrix w.r.t.
    :param damping: Tikhonov damping
    :return: the function ``v -> (F + damping I) v``
    """
    grad_kl = flat_grad(kl, parameters, create_graph=True)
    return fisher_vector_product_fn(grad_kl, parameters, damping)


def max_step_size(max_kl: float, direction: th.Tensor, fisher_direction: th.Tensor) -> float | None:
    """
    The step length β such that the quadratic model of the KL at ``θ + β s`` equals ``max_kl``:
    ``β = sqrt(2 δ / sᵀ F s)`` (TRPO paper, appendix C).

    :param max_kl: trust-region radius δ
    :param direction: search direction ``s`` (the CG solution of ``F s = g``)
    :param fisher_direction: ``F s``
    :return: β, or ``None`` if ``sᵀ F s`` is not a positive finite number or β is not finite
    """
    s_f_s = float(th.matmul(direction, fisher_direction))
    if not math.isfinite(s_f_s) or s_f_s <= 0.0:
        return None
    step = math.sqrt(2 * max_kl / s_f_s)
    return step if math.isfinite(step) else None


class LineSearchResult(NamedTuple):
    """
    Outcome of a trust-region step. All quantities refer to the step actually applied, so they are 0 when no step
    was applied (failure).

    :param success: whether a step was applied
    :param n_backtracks: number of step shrinkages before acceptance (``max_iter`` on failure)
    :param step_fraction: accepted fraction of the maximal step (``shrinking_factor ** n_backtracks``, 0 on failure)
    :param kl: KL (as measured by the ``evaluate`` function) of the accepted step
    :param surrogate_improvement: surrogate objective after the step minus before
    :param expected_improvement: what the linear model predicts, ``gᵀ Δθ``
    """

    success: bool
    n_backtracks: int
    step_fraction: float
    kl: float
    surrogate_improvement: float
    expected_improvement: float


def backtracking_line_search(
    parameters: Sequence[th.Tensor],
    direction: th.Tensor,
    max_step: float,
    evaluate: Callable[[], tuple[th.Tensor | float, th.Tensor | float]],
    surrogate_before: float,
    max_kl: float,
    *,
    expected_improvement_rate: float = 0.0,
    shrinking_factor: float = 0.8,
    max_iter: int = 10,
    strict_kl: bool = False,
) -> LineSearchResult:
    """
    Try ``θ = θ_0 + α β s`` for ``α = 1, c, c², …`` (``max_iter`` tries) and keep the first step whose mean KL is
    within the trust region (``kl <= max_kl``, or ``kl < max_kl`` with ``strict_kl`` as sb3-contrib) **and** that
    improves the surrogate (``surrogate > surrogate_before``). NaN never passes either test. If no step is accepted,
    the parameters are restored to θ_0 exactly (bit for bit).

    The trial parameters are ``θ_0 + (α β) s``, computed as sb3-contrib does.

    :param parameters: parameters to update in place
    :param direction: search direction ``s`` (flat)
    :param max_step: β, the maximal step length (see ``max_step_size``)
    :param evaluate: returns ``(surrogate, kl)`` at the current parameters; called under ``th.no_grad()``
    :param surrogate_before: surrogate objective at θ_0
    :param max_kl: trust-region radius δ
    :param expected_improvement_rate: ``gᵀ s``, for the predicted improvement ``α β gᵀ s`` of the accepted step
    :param shrinking_factor: c in (0, 1)
    :param max_iter: number of tries
    :param strict_kl: accept only ``kl < max_kl`` (sb3-contrib) instead of ``kl <= max_kl``
    :return: the outcome
    """
    original = get_flat_params(parameters)
    step_fraction = 1.0
    with th.no_grad():
        for n_backtracks in range(max_iter):
            step = step_fraction * max_step
            set_flat_params_(parameters, original + step * direction)
            surrogate, kl = (float(value) for value in evaluate())
            kl_ok = kl < max_kl if strict_kl else kl <= max_kl
            if kl_ok and surrogate > surrogate_before:
                return LineSearchResult(
                    True, n_backtracks, step_fraction, kl, surrogate - surrogate_before, step * expected_improvement_rate
                )
            step_fraction *= shrinking_factor
        set_flat_params_(parameters, original)
    return LineSearchResult(False, max_iter, 0.0, 0.0, 0.0, 0.0)


def apply_fixed_step(
    parameters: Sequence[th.Tensor],
    direction: th.Tensor,
    step: float,
    evaluate: Callable[[], tuple[th.Tensor | float, th.Tensor | float]],
    surrogate_before: float,
    *,
    expected_improvement_rate: float = 0.0,
) -> LineSearchResult:
    """
    The natural-policy-gradient step: ``θ = θ_0 + β s`` with no line search. The surrogate and KL after the step are
    evaluated for diagnostics only; the step is undone (exactly) only if either is not finite.

    :param parameters: parameters to update in place
    :param direction: search direction ``s`` (flat)
    :param step: β
    :param evaluate: returns ``(surrogate, kl)`` at the current parameters; called under ``th.no_grad()``
    :param surrogate_before: surrogate objective at θ_0
    :param expected_improvement_rate: ``gᵀ s``
    :return: the outcome (``n_backtracks`` is 0, ``step_fraction`` 1 unless undone)
    """
    original = get_flat_params(parameters)
    with th.no_grad():
        set_flat_params_(parameters, original + step * direction)
        surrogate, kl = (float(value) for value in evaluate())
        if not (math.isfinite(surrogate) and math.isfinite(kl)):
            set_flat_params_(parameters, original)
            return LineSearchResult(False, 0, 0.0, 0.0, 0.0, 0.0)
    return LineSearchResult(True, 0, 1.0, kl, surrogate - surrogate_before, step * expected_improvement_rate)


class ActorBatch(NamedTuple):
    """
    The samples of an actor step: observations, actions, their old log-likelihoods, (normalised) advantages, and the
    action masks (``None`` without masking).
    """

    observations: PyTorchObs
    actions: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    action_masks: th.Tensor | None = None


class ActorStepStats(NamedTuple):
    """What an actor step did (``step``: the line search's or the fixed step's result)."""

    policy_objective: float
    step: LineSearchResult
    kl: float  # KL(π_old ‖ π_new) summed over action dims, mean over states, of the step applied
    step_size: float
    cg_residual: float
    skipped: bool


class ActorProblem(NamedTuple):
    """The actor step's quantities at θ_old."""

    actor_params: list[th.Tensor]
    policy_objective: th.Tensor  # surrogate at θ_old (scalar)
    objective_grad: th.Tensor  # its flat gradient
    fisher_vector_product: Callable[[th.Tensor], th.Tensor]  # v -> (F + cg_damping I) v
    evaluate: Callable[[], tuple[th.Tensor, th.Tensor]]  # (surrogate, constraint KL) at the current parameters
    paper_kl: list[float] | None  # filled by `evaluate` with KL(π_old ‖ π_new) when the constraint KL is another one
