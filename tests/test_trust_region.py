"""Unit tests of the trust-region maths in ``sb3_trust.common.trust_region``."""

import math

import numpy as np
import pytest
import torch as th
from hypothesis import event, given, settings
from hypothesis import strategies as st
from sb3_contrib.common.utils import conjugate_gradient_solver
from stable_baselines3.common.distributions import CategoricalDistribution, DiagGaussianDistribution, kl_divergence

from sb3_trust.common.kl import exact_kl
from sb3_trust.common.trust_region import (
    LineSearchResult,
    apply_fixed_step,
    backtracking_line_search,
    conjugate_gradient,
    fisher_vector_product_fn,
    flat_grad,
    get_flat_params,
    kl_fisher_vector_product_fn,
    max_step_size,
    set_flat_params_,
)

th.set_num_threads(1)


def random_spd(n: int, generator: th.Generator, condition: float = 10.0) -> th.Tensor:
    """Random symmetric positive-definite matrix (float64) with eigenvalues in [1, condition]."""
    q, _ = th.linalg.qr(th.randn(n, n, generator=generator, dtype=th.float64))
    eigenvalues = th.linspace(1.0, condition, n, dtype=th.float64)
    return q @ th.diag(eigenvalues) @ q.T


# ----------------------------------------------------------------------------------------------------------------------
# flat_grad, flat parameters


def test_flat_grad_layout_and_unused_parameters():
    a = th.tensor([1.0, 2.0], requires_grad=True)
    b = th.tensor([[3.0], [4.0]], requires_grad=True)
    unused = th.ones(3, requires_grad=True)
    out = (a**2).sum() + 3 * b.sum()
    grad = flat_grad(out, [a, unused, b])
    assert th.equal(grad, th.tensor([2.0, 4.0, 0.0, 0.0, 0.0, 3.0, 3.0]))


def test_flat_params_round_trip():
    params = [th.randn(2, 3), th.randn(4)]
    flat = get_flat_params(params)
    assert flat.shape == (10,)
    new = th.arange(10.0)
    set_flat_params_(params, new)
    assert th.equal(get_flat_params(params), new)
    # get_flat_params is a copy
    new += 1
    assert th.equal(get_flat_params(params), th.arange(10.0))
    with pytest.raises(ValueError, match="elements"):
        set_flat_params_(params, th.zeros(11))


# ----------------------------------------------------------------------------------------------------------------------
# Conjugate gradient


@settings(deadline=None, max_examples=30)
@given(n=st.integers(1, 12), seed=st.integers(0, 2**31 - 1), random_init=st.booleans())
def test_cg_solves_random_spd_systems(n, seed, random_init):
    generator = th.Generator().manual_seed(seed)
    a = random_spd(n, generator)
    b = th.randn(n, generator=generator, dtype=th.float64)
    x0 = 1e-4 * th.randn(n, generator=generator, dtype=th.float64) if random_init else None
    # In exact arithmetic CG converges in n iterations; allow a few more for rounding
    x, residual_norm = conjugate_gradient(lambda v: a @ v, b, max_iter=n + 5, residual_tol=1e-20, x0=x0)
    expected = th.linalg.solve(a, b)
    assert th.allclose(x, expected, rtol=1e-8, atol=1e-8)
    assert residual_norm == pytest.approx(th.linalg.norm(b - a @ x).item(), abs=1e-8)
    if x0 is not None:
        assert x is not x0


def test_cg_is_contribs_solver_with_the_same_initial_point():
    generator = th.Generator().manual_seed(3)
    a = random_spd(20, generator, condition=1e3).float()
    b = th.randn(20, generator=generator)
    for max_iter in (1, 5, 15):
        th.manual_seed(0)
        expected = conjugate_gradient_solver(lambda v: a @ v, b, max_iter=max_iter)
        rng_after_contrib = th.get_rng_state()
        th.manual_seed(0)
        x, _ = conjugate_gradient(lambda v: a @ v, b, max_iter=max_iter, x0=1e-4 * th.randn_like(b))
        assert th.equal(x, expected)
        assert th.equal(th.get_rng_state(), rng_after_contrib)


def test_cg_zero_rhs_and_truncation():
    a = th.eye(3, dtype=th.float64)
    x, residual_norm = conjugate_gradient(lambda v: a @ v, th.zeros(3, dtype=th.float64))
    assert th.equal(x, th.zeros(3, dtype=th.float64))
    assert residual_norm == 0.0
    # One iteration on a diagonal system: the reported residual is the true one
    a = th.diag(th.tensor([1.0, 10.0], dtype=th.float64))
    b = th.tensor([1.0, 1.0], dtype=th.float64)
    x, residual_norm = conjugate_gradient(lambda v: a @ v, b, max_iter=1)
    assert residual_norm == pytest.approx(th.linalg.norm(b - a @ x).item())
    assert residual_norm > 1e-3


# ----------------------------------------------------------------------------------------------------------------------
# Fisher-vector products against explicitly built Fisher matrices


class TinyNet:
    """obs (3) -> tanh(W1 obs + b1) (4) -> W2 h + b2 (out), written with explicit parameters (float64)."""

    def __init__(self, n_out: int, generator: th.Generator, log_std_dim: int = 0):
        shapes = [(4, 3), (4,), (n_out, 4), (n_out,)] + ([(log_std_dim,)] if log_std_dim else [])
        self.params = [(0.5 * th.randn(shape, generator=generator, dtype=th.float64)).requires_grad_() for shape in shapes]
        self.shapes = shapes

    def unflatten(self, flat: th.Tensor) -> list[th.Tensor]:
        out, offset = [], 0
        for shape in self.shapes:
            n = math.prod(shape)
            out.append(flat[offset : offset + n].view(shape))
            offset += n
        return out

    @staticmethod
    def head(params: list[th.Tensor], obs: th.Tensor) -> th.Tensor:
        w1, b1, w2, b2 = params[:4]
        return th.tanh(obs @ w1.T + b1) @ w2.T + b2


def categorical_fisher(net: TinyNet, obs: th.Tensor) -> th.Tensor:
    """F = mean_s J_sᵀ (diag(p_s) - p_s p_sᵀ) J_s with J_s = d logits_s / dθ (the Fisher matrix of a softmax)."""
    flat0 = get_flat_params(net.params)
    jacobian = th.autograd.functional.jacobian(lambda flat: TinyNet.head(net.unflatten(flat), obs), flat0)  # [N, n, P]
    with th.no_grad():
        probs = th.softmax(TinyNet.head(net.params, obs), dim=-1)
    middle = th.diag_embed(probs) - probs.unsqueeze(-1) * probs.unsqueeze(-2)
    return th.einsum("sap,sab,sbq->pq", jacobian, middle, jacobian) / obs.shape[0]


def gaussian_fisher(net: TinyNet, obs: th.Tensor) -> th.Tensor:
    """
    F = mean_s J_μᵀ diag(1/σ²) J_μ + J_logσᵀ diag(2) J_logσ: the Fisher matrix of N(μ, σ²) is 1/σ² for μ and 2 for
    log σ (no cross terms); log σ is a state-independent parameter here.
    """
    flat0 = get_flat_params(net.params)
    jacobian = th.autograd.functional.jacobian(lambda flat: TinyNet.head(net.unflatten(flat), obs), flat0)  # [N, d, P]
    log_std = net.params[-1].detach()
    fisher = th.einsum("sap,a,saq->pq", jacobian, th.exp(-2 * log_std), jacobian) / obs.shape[0]
    d = log_std.numel()
    fisher[-d:, -d:] += 2 * th.eye(d, dtype=th.float64)
    return fisher


def _kl_and_params(kind: str, convention: str, seed: int):
    generator = th.Generator().manual_seed(seed)
    obs = th.randn(7, 3, generator=generator, dtype=th.float64)
    if kind == "categorical":
        net = TinyNet(3, generator)
        dist = CategoricalDistribution(3)
        new = dist.proba_distribution(TinyNet.head(net.params, obs))
        old = CategoricalDistribution(3).proba_distribution(TinyNet.head(net.params, obs).detach())
        fisher = categorical_fisher(net, obs)
    else:
        net = TinyNet(2, generator, log_std_dim=2)
        new = DiagGaussianDistribution(2).proba_distribution(TinyNet.head(net.params, obs), net.params[-1])
        old = DiagGaussianDistribution(2).proba_distribution(TinyNet.head(net.params, obs).detach(), net.params[-1].detach())
        fisher = gaussian_fisher(net, obs)
    if convention == "paper":
        kl = exact_kl(old, new).mean()
    else:
        kl = kl_divergence(new, old).mean()
        if kind == "gaussian":
            fisher = fisher / 2  # contrib averages the KL over the 2 action dimensions
    return kl, net.params, fisher, generator


@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
@pytest.mark.parametrize("convention", ["paper", "contrib"])
@pytest.mark.parametrize("damping", [0.0, 0.1])
def test_fisher_vector_product_matches_explicit_fisher(kind, convention, damping):
    kl, params, fisher, generator = _kl_and_params(kind, convention, seed=0)
    n_params = fisher.shape[0]
    fvp = kl_fisher_vector_product_fn(kl, params, damping)
    for _ in range(3):
        vector = th.randn(n_params, generator=generator, dtype=th.float64)
        expected = fisher @ vector + damping * vector
        assert th.allclose(fvp(vector), expected, rtol=1e-9, atol=1e-12)
    # The Fisher matrix is positive semi-definite, the damped one positive definite
    assert th.linalg.eigvalsh(fisher).min() > -1e-10


def test_fisher_vector_product_from_kl_gradient():
    kl, params, fisher, generator = _kl_and_params("gaussian", "paper", seed=1)
    grad_kl = flat_grad(kl, params, create_graph=True)
    # The KL gradient vanishes at θ_old
    assert th.allclose(grad_kl, th.zeros_like(grad_kl), atol=1e-12)
    vector = th.randn(fisher.shape[0], generator=generator, dtype=th.float64)
    assert th.allclose(fisher_vector_product_fn(grad_kl, params, 0.5)(vector), fisher @ vector + 0.5 * vector)


# ----------------------------------------------------------------------------------------------------------------------
# Maximal step size


def test_max_step_size():
    s = th.tensor([1.0, 2.0])
    fs = th.tensor([2.0, 1.0])  # sᵀFs = 4
    assert max_step_size(0.01, s, fs) == pytest.approx(math.sqrt(2 * 0.01 / 4))
    # Then the quadratic KL model at β s is exactly δ
    beta = max_step_size(0.02, s, fs)
    assert 0.5 * beta**2 * 4 == pytest.approx(0.02)
    assert max_step_size(0.01, s, -fs) is None
    assert max_step_size(0.01, s, th.zeros(2)) is None
    assert max_step_size(0.01, s, th.tensor([math.nan, 1.0])) is None
    assert max_step_size(0.01, s, th.tensor([math.inf, 1.0])) is None
    tiny = th.tensor([1e-200], dtype=th.float64)
    assert max_step_size(0.01, tiny, tiny) is None  # sᵀFs underflows to 0
    small = th.tensor([1e-155], dtype=th.float64)
    assert max_step_size(0.01, small, small) is None  # sᵀFs = 1e-310 > 0, but β overflows


# ----------------------------------------------------------------------------------------------------------------------
# Line search


class QuadraticProblem:
    """
    Surrogate L(θ) = gᵀΔ - ½ curvature ΔᵀHΔ and KL(θ) = ½ kl_scale ΔᵀAΔ with Δ = θ - θ_0, evaluated in float32 like
    the algorithm; the search direction is A⁻¹g, possibly perturbed.
    """

    def __init__(self, seed: int, n: int, kl_scale: float, curvature: float, direction_noise: float):
        generator = th.Generator().manual_seed(seed)
        self.params = [th.randn(n // 2 + 1, generator=generator), th.randn(n - n // 2, 1, generator=generator)]
        self.theta0 = get_flat_params(self.params)
        size = self.theta0.numel()
        self.a = random_spd(size, generator).float()
        self.h = random_spd(size, generator).float()
        self.g = th.randn(size, generator=generator)
        self.kl_scale, self.curvature = kl_scale, curvature
        self.direction = th.linalg.solve(self.a, self.g) + direction_noise * th.randn(size, generator=generator)

    def evaluate(self) -> tuple[th.Tensor, th.Tensor]:
        delta = get_flat_params(self.params) - self.theta0
        surrogate = self.g @ delta - 0.5 * self.curvature * delta @ self.h @ delta
        return surrogate, 0.5 * self.kl_scale * delta @ self.a @ delta


@settings(deadline=None, max_examples=200)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(2, 8),
    kl_scale=st.floats(0.01, 100.0),
    curvature=st.floats(0.0, 100.0),
    direction_noise=st.floats(0.0, 3.0),
    max_kl=st.floats(1e-4, 0.1),
    max_step_factor=st.floats(0.1, 10.0),
    shrinking_factor=st.floats(0.05, 0.95),
    max_iter=st.integers(1, 12),
    strict_kl=st.booleans(),
)
def test_line_search_properties(
    seed, n, kl_scale, curvature, direction_noise, max_kl, max_step_factor, shrinking_factor, max_iter, strict_kl
):
    problem = QuadraticProblem(seed, n, kl_scale, curvature, direction_noise)
    s = problem.direction
    beta = max_step_factor * math.sqrt(2 * max_kl / float(s @ problem.a @ s))
    original = [p.clone() for p in problem.params]
    result = backtracking_line_search(
        problem.params,
        s,
        beta,
        problem.evaluate,
        0.0,
        max_kl,
        expected_improvement_rate=float(problem.g @ s),
        shrinking_factor=shrinking_factor,
        max_iter=max_iter,
        strict_kl=strict_kl,
    )
    surrogate, kl = (float(v) for v in problem.evaluate())
    event(f"success={result.success}, backtracked={result.n_backtracks > 0}")
    if result.success:
        # Never accepts a step outside the trust region or one that does not improve the surrogate
        assert kl < max_kl if strict_kl else kl <= max_kl
        assert result.kl == kl
        assert result.surrogate_improvement == surrogate > 0
        assert 0 <= result.n_backtracks < max_iter
        fraction = 1.0
        for _ in range(result.n_backtracks):
            fraction *= shrinking_factor
        assert result.step_fraction == fraction
        assert th.equal(get_flat_params(problem.params), problem.theta0 + (fraction * beta) * s)
        assert result.expected_improvement == pytest.approx(fraction * beta * float(problem.g @ s))
    else:
        # Restores the original parameters bit for bit
        assert all(th.equal(p, q) for p, q in zip(problem.params, original, strict=True))
        assert result == LineSearchResult(False, max_iter, 0.0, 0.0, 0.0, 0.0)


def test_line_search_accepts_full_step_when_possible():
    problem = QuadraticProblem(0, 4, kl_scale=1.0, curvature=0.0, direction_noise=0.0)
    s = problem.direction
    beta = 0.9 * math.sqrt(2 * 0.01 / float(s @ problem.a @ s))
    result = backtracking_line_search(problem.params, s, beta, problem.evaluate, 0.0, 0.01)
    assert result.success and result.n_backtracks == 0 and result.step_fraction == 1.0
    assert result.kl == pytest.approx(0.81 * 0.01, rel=1e-4)


def test_line_search_shrinks_until_inside_the_trust_region():
    problem = QuadraticProblem(1, 4, kl_scale=1.0, curvature=0.0, direction_noise=0.0)
    s = problem.direction
    beta = 3.0 * math.sqrt(2 * 0.01 / float(s @ problem.a @ s))  # KL(β s) = 9 δ, needs 0.5^2 → 0.25² · 9 < 1
    result = backtracking_line_search(problem.params, s, beta, problem.evaluate, 0.0, 0.01, shrinking_factor=0.5)
    assert result.success and result.n_backtracks == 2 and result.step_fraction == 0.25
    assert result.kl == pytest.approx(9 * 0.0625 * 0.01, rel=1e-4)


def test_line_search_reverts_when_the_surrogate_never_improves():
    params = [th.randn(3), th.randn(2, 2)]
    original = [p.clone() for p in params]
    calls = []

    def evaluate():
        calls.append(get_flat_params(params))
        return th.tensor(-1.0), th.tensor(0.0)

    result = backtracking_line_search(params, th.randn(7), 1e-3, evaluate, 0.0, 0.01, max_iter=4)
    assert not result.success and result.n_backtracks == 4 and len(calls) == 4
    assert all(th.equal(p, q) for p, q in zip(params, original, strict=True))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_line_search_rejects_non_finite(bad):
    params = [th.randn(3)]
    original = params[0].clone()
    result = backtracking_line_search(params, th.randn(3), 1.0, lambda: (th.tensor(1.0), th.tensor(bad)), 0.0, 0.01)
    assert not result.success and th.equal(params[0], original)
    result = backtracking_line_search(params, th.randn(3), 1.0, lambda: (th.tensor(bad), th.tensor(0.0)), 0.0, 0.01)
    assert result.success == (bad == math.inf)  # NaN surrogate rejected, +inf is an improvement


def test_line_search_kl_boundary():
    def exactly_delta():
        return 1.0, 0.01

    params = [th.zeros(2)]
    assert not backtracking_line_search(params, th.ones(2), 1.0, exactly_delta, 0.0, 0.01, strict_kl=True).success
    assert th.equal(params[0], th.zeros(2))
    assert backtracking_line_search(params, th.ones(2), 1.0, exactly_delta, 0.0, 0.01).success
    assert th.equal(params[0], th.ones(2))


def test_apply_fixed_step():
    params = [th.zeros(2), th.zeros(1)]
    result = apply_fixed_step(params, th.tensor([1.0, 2.0, 3.0]), 0.5, lambda: (-1.0, 0.5), 0.0, expected_improvement_rate=2.0)
    # No line search: the step is taken even if the surrogate decreases and the KL is large
    assert result == LineSearchResult(True, 0, 1.0, 0.5, -1.0, 1.0)
    assert th.equal(get_flat_params(params), th.tensor([0.5, 1.0, 1.5]))
    result = apply_fixed_step(params, th.ones(3), 1.0, lambda: (math.nan, 0.0), 0.0)
    assert not result.success
    assert th.equal(get_flat_params(params), th.tensor([0.5, 1.0, 1.5]))


def test_line_search_on_a_policy_keeps_kl_within_radius():
    """End to end on a tiny categorical policy: CG direction, max step, line search with the exact KL."""
    generator = th.Generator().manual_seed(0)
    net = TinyNet(3, generator)
    obs = th.randn(64, 3, generator=generator, dtype=th.float64)
    actions = th.randint(0, 3, (64,), generator=generator)
    advantages = th.randn(64, generator=generator, dtype=th.float64)
    old = CategoricalDistribution(3).proba_distribution(TinyNet.head(net.params, obs).detach())
    old_log_prob = old.log_prob(actions)

    def surrogate_and_kl():
        new = CategoricalDistribution(3).proba_distribution(TinyNet.head(net.params, obs))
        return (advantages * th.exp(new.log_prob(actions) - old_log_prob)).mean(), exact_kl(old, new).mean()

    surrogate, kl = surrogate_and_kl()
    g = flat_grad(surrogate, net.params, retain_graph=True)
    fvp = kl_fisher_vector_product_fn(kl, net.params, 0.01)
    s, _ = conjugate_gradient(fvp, g, max_iter=20)
    beta = max_step_size(0.01, s, fvp(s))
    result = backtracking_line_search(
        net.params, s, beta, surrogate_and_kl, surrogate.item(), 0.01, expected_improvement_rate=float(g @ s)
    )
    assert result.success
    assert 0 < result.kl <= 0.01
    assert result.surrogate_improvement > 0
    # The linear model is a good predictor for a small step
    assert result.surrogate_improvement == pytest.approx(result.expected_improvement, rel=0.3)
    assert np.isfinite(get_flat_params(net.params).numpy()).all()
