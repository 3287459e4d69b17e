"""
The trust-region projections (Otto et al., ICLR 2021; ``sb3_trust.common.projections``) and TrustPPO's ``projection``:
each projection satisfies its bounds per state and leaves the states inside unchanged, its gradient equals finite
differences, its solution equals a brute-force constrained optimisation (scipy), and in TrustPPO the settings are
checked, saved, logged and declined by the accelerator; (``expensive``) learning on Pendulum-v1 with the zoo's config.
"""

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import configure

from sb3_trust import TrustPPO, accel
from sb3_trust.common.projections import PROJECTIONS, TrustRegionProjection

NAMES = sorted(PROJECTIONS)
MEAN_BOUND, COV_BOUND = 0.05, 0.01
# Smaller bounds for the gradient checks, so that about half of their few states are projected
GRAD_MEAN_BOUND, GRAD_COV_BOUND = 0.02, 0.005
SMALL = dict(n_steps=64, batch_size=32, n_epochs=2, seed=0, device="cpu", policy_kwargs=dict(net_arch=[16]))


def gaussians(n_states: int = 8, dim: int = 3, seed: int = 0, dtype: th.dtype = th.float64) -> tuple[th.Tensor, ...]:
    """
    :return: ``(mean, std, old_mean, old_std)``: random Gaussians, about half of the states outside the bounds, the
        first state well inside both
    """
    generator = th.Generator().manual_seed(seed)

    def randn(scale: float) -> th.Tensor:
        return scale * th.randn(n_states, dim, generator=generator, dtype=dtype)

    old_mean, old_std = randn(1.0), th.exp(randn(0.3))
    mean, std = old_mean + old_std * randn(0.25), old_std * th.exp(randn(0.1))
    mean[0], std[0] = old_mean[0] + 1e-3 * old_std[0], old_std[0] * 1.001
    return mean, std, old_mean, old_std


# Oracle distances, written out from their definitions (not the module's functions): d(new, old) per state
def mahalanobis_np(mean, old_mean, old_std):
    return float(np.sum(((mean - old_mean) / old_std) ** 2))


ORACLE_COV = {
    # ‖Σ - Σ_old‖²_F
    "frobenius": lambda std, old: float(np.sum((std**2 - old**2) ** 2)),
    # W2 covariance part scaled by Σ_old⁻¹: tr(Σ_old⁻¹ (Σ + Σ_old - 2 (Σ^½ Σ_old Σ^½)^½)), diagonal
    "w2": lambda std, old: float(np.sum((std**2 + old**2 - 2 * std * old) / old**2)),
    # covariance part of KL(N(·, Σ) ‖ N(·, Σ_old)): ½ (tr(Σ_old⁻¹ Σ) - d + log |Σ_old| / |Σ|)
    "kl": lambda std, old: float(0.5 * (np.sum(std**2 / old**2) - len(std) + np.sum(np.log(old**2) - np.log(std**2)))),
}
MEAN_SCALE = {"frobenius": 1.0, "w2": 1.0, "kl": 0.5}


@pytest.mark.parametrize("name", NAMES)
def test_bounds_hold_per_state_and_inside_is_unchanged(name):
    mean, std, old_mean, old_std = gaussians(n_states=64)
    projected_mean, projected_std = PROJECTIONS[name].project(mean, std, old_mean, old_std, MEAN_BOUND, COV_BOUND)
    for i in range(len(mean)):
        args = [x[i].numpy() for x in (mean, std, old_mean, old_std, projected_mean, projected_std)]
        m, s, om, os_, pm, ps = args
        mean_before, cov_before = MEAN_SCALE[name] * mahalanobis_np(m, om, os_), ORACLE_COV[name](s, os_)
        mean_after, cov_after = MEAN_SCALE[name] * mahalanobis_np(pm, om, os_), ORACLE_COV[name](ps, os_)
        if mean_before > MEAN_BOUND:  # outside: projected onto the boundary (the optimum of a convex problem is there)
            assert mean_after == pytest.approx(MEAN_BOUND, rel=1e-9)
        else:  # inside: unchanged, bit for bit
            assert np.array_equal(pm, m)
        if cov_before > COV_BOUND:
            assert cov_after == pytest.approx(COV_BOUND, rel=1e-9)
        else:
            assert np.array_equal(ps, s)
    # the random cases have states of every kind
    before = PROJECTIONS[name].distances(mean, std, old_mean, old_std)
    assert (before[0] > MEAN_BOUND).any() and (before[0] < MEAN_BOUND).any()
    assert (before[1] > COV_BOUND).any() and (before[1] < COV_BOUND).any()


@pytest.mark.parametrize("name", NAMES)
def test_bounds_hold_in_float32(name):
    mean, std, old_mean, old_std = gaussians(n_states=256, seed=1, dtype=th.float32)
    projected_mean, projected_std = PROJECTIONS[name].project(mean, std, old_mean, old_std, MEAN_BOUND, COV_BOUND)
    mean_after, cov_after = PROJECTIONS[name].distances(projected_mean, projected_std, old_mean, old_std)
    assert projected_mean.dtype == projected_std.dtype == th.float32
    assert mean_after.max() <= MEAN_BOUND * (1 + 1e-5) and cov_after.max() <= COV_BOUND * (1 + 1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_equals_finite_differences(name):
    mean, std, old_mean, old_std = gaussians(n_states=6, dim=2, seed=2)

    def project(mean: th.Tensor, std: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        return PROJECTIONS[name].project(mean, std, old_mean, old_std, GRAD_MEAN_BOUND, GRAD_COV_BOUND)

    before = PROJECTIONS[name].distances(mean, std, old_mean, old_std)
    assert (before[1] > GRAD_COV_BOUND).sum() >= 2 and (before[0] > GRAD_MEAN_BOUND).sum() >= 2  # the projection is active
    # central differences (eps 1e-6, float64) against the analytic Jacobian, every input to every output
    inputs = (mean.clone().requires_grad_(), std.clone().requires_grad_())
    assert th.autograd.gradcheck(project, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


class Wrapped:
    """The attribute of SB3's ``DiagGaussianDistribution`` that the layer reads (and replaces in its copy)"""

    def __init__(self, mean: th.Tensor, std: th.Tensor):
        self.distribution = th.distributions.Normal(mean, std)


@pytest.mark.parametrize("name", NAMES)
def test_loss_gradient_through_the_layer_equals_finite_differences(name):
    # What TrustPPO differentiates, as functions of the network's mean and log std: log π̃(a|s), through the layer
    mean, std, old_mean, old_std = gaussians(n_states=6, dim=2, seed=3)
    actions = mean + std * th.randn(mean.shape, generator=th.Generator().manual_seed(0), dtype=mean.dtype)

    def log_likelihood(mean: th.Tensor, log_std: th.Tensor) -> th.Tensor:
        layer = TrustRegionProjection(name, GRAD_MEAN_BOUND, GRAD_COV_BOUND, coef=0.0)
        projected, _ = layer(Wrapped(mean, log_std.exp()), Wrapped(old_mean, old_std))
        return projected.distribution.log_prob(actions).sum()

    inputs = (mean.clone().requires_grad_(), std.log().clone().requires_grad_())
    assert th.autograd.gradcheck(log_likelihood, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_regression_loss_gradient_equals_finite_differences(name):
    # α·mean d(π, sg(π̃)): π̃ is a constant target (no gradient through it), π the network's output
    mean, std, old_mean, old_std = gaussians(n_states=6, dim=2, seed=4)
    coef = 3.0
    layer = TrustRegionProjection(name, GRAD_MEAN_BOUND, GRAD_COV_BOUND, coef=coef)
    inputs = (mean.clone().requires_grad_(), std.log().clone().requires_grad_())
    projected, regression = layer(Wrapped(inputs[0], inputs[1].exp()), Wrapped(old_mean, old_std))
    analytic = th.autograd.grad(regression, inputs)
    target_mean, target_std = (x.detach().numpy() for x in (projected.distribution.mean, projected.distribution.stddev))
    assert regression.item() > 0  # some states were projected

    def oracle(mean: np.ndarray, log_std: np.ndarray) -> float:
        total = 0.0
        for i in range(len(mean)):
            total += MEAN_SCALE[name] * mahalanobis_np(mean[i], target_mean[i], target_std[i])
            total += ORACLE_COV[name](np.exp(log_std[i]), target_std[i])
        return coef * total / len(mean)

    point, eps = [x.detach().numpy() for x in inputs], 1e-6
    for which in range(2):
        numeric = np.zeros_like(point[which])
        for index in np.ndindex(*numeric.shape):
            up, down = [x.copy() for x in point], [x.copy() for x in point]
            up[which][index] += eps
            down[which][index] -= eps
            numeric[index] = (oracle(*up) - oracle(*down)) / (2 * eps)
        np.testing.assert_allclose(analytic[which].numpy(), numeric, rtol=1e-5, atol=1e-7)


def brute_force(objective, constraint, bound: float, start: np.ndarray) -> np.ndarray:
    """:return: ``argmin objective(x)`` subject to ``constraint(x) ≤ bound``, by SLSQP"""
    optimize = pytest.importorskip("scipy.optimize")
    result = optimize.minimize(
        objective,
        start,
        method="SLSQP",
        constraints=[{"type": "ineq", "fun": lambda x: bound - constraint(x)}],
        options=dict(ftol=1e-10, maxiter=500),
    )
    assert result.success, result.message
    return result.x


# The objectives d(π̃, π) of the paper's eq. 2, per part, as functions of the projected parameters
ORACLE_COV_OBJECTIVE = {
    "frobenius": lambda std, target, old: float(np.sum((std**2 - target**2) ** 2)),
    # W2 between Σ̃ and Σ, scaled by Σ_old⁻¹ (diagonal): Σ_i (σ̃_i - σ_i)² / σ_old,i²
    "w2": lambda std, target, old: float(np.sum((std - target) ** 2 / old**2)),
    # KL(π̃ ‖ π), covariance part
    "kl": lambda std, target, old: ORACLE_COV["kl"](std, target),
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seed", range(4))
def test_solution_equals_brute_force_optimisation(name, seed):
    mean, std, old_mean, old_std = (x[1:].numpy() for x in gaussians(n_states=4, dim=2, seed=10 + seed))
    projected_mean, projected_std = PROJECTIONS[name].project(
        *(th.as_tensor(x) for x in (mean, std, old_mean, old_std)), MEAN_BOUND, COV_BOUND
    )
    for i in range(len(mean)):
        m, s, om, os_ = mean[i], std[i], old_mean[i], old_std[i]
        # the mean: min (μ̃ - μ)ᵀ Σ_old⁻¹ (μ̃ - μ) s.t. scale·M(μ̃) ≤ ε_μ (the objective in the old metric, as the paper)
        expected_mean = brute_force(
            lambda x, m=m, os_=os_: mahalanobis_np(x, m, os_),
            lambda x, om=om, os_=os_: MEAN_SCALE[name] * mahalanobis_np(x, om, os_),
            MEAN_BOUND,
            om.copy(),
        )
        np.testing.assert_allclose(projected_mean[i].numpy(), expected_mean, rtol=1e-5, atol=1e-6)
        # the covariance: min d(Σ̃, Σ) s.t. d(Σ̃, Σ_old) ≤ ε_Σ, over the standard deviations (kept positive by the start
        # at σ_old and the constraint)
        expected_std = brute_force(
            lambda x, s=s, os_=os_: ORACLE_COV_OBJECTIVE[name](x, s, os_),
            lambda x, os_=os_: ORACLE_COV[name](x, os_),
            COV_BOUND,
            os_.copy(),
        )
        np.testing.assert_allclose(projected_std[i].numpy(), expected_std, rtol=1e-5, atol=1e-6)


def test_kl_projection_interpolates_the_precisions():
    # Paper, section 4.3: Σ̃⁻¹ = (Σ⁻¹ + η Σ_old⁻¹) / (1 + η) with one η per state, the same for every dimension
    mean, std, old_mean, old_std = gaussians(n_states=32, dim=4, seed=5)
    _, projected_std = PROJECTIONS["kl"].project(mean, std, old_mean, old_std, MEAN_BOUND, COV_BOUND)
    weight = (projected_std**-2 - std**-2) / (old_std**-2 - std**-2)  # t = η / (1 + η), per dimension
    outside = PROJECTIONS["kl"].distances(mean, std, old_mean, old_std)[1] > COV_BOUND
    assert outside.any()
    t = weight[outside]
    assert th.allclose(t, t[:, :1].expand_as(t), rtol=1e-8) and ((t > 0) & (t < 1)).all()


# --- in TrustPPO ------------------------------------------------------------------------------------------------------


def learn_logged(model: TrustPPO, total_timesteps: int) -> dict:
    """:return: what the last update logged"""
    logger = configure(folder=None, format_strings=[])
    model.set_logger(logger)
    model.learn(total_timesteps)
    return dict(logger.name_to_value)


@pytest.mark.parametrize("name", NAMES)
def test_bounds_hold_in_training_and_are_logged(name, tmp_path):
    # a large learning rate, so that the unprojected policy leaves the trust region
    kwargs = dict(projection=name, projection_mean_bound=0.02, projection_cov_bound=0.002, projection_coef=2.0)
    model = TrustPPO("MlpPolicy", "Pendulum-v1", policy_loss="unclipped", learning_rate=0.05, **SMALL, **kwargs)
    logged = learn_logged(model, 128)
    assert model.train_backend == "reference"
    assert 0.0 < logged["train/projection_fraction"] <= 1.0
    assert logged["train/projection_mean_before"] > logged["train/projection_mean_after"]
    assert logged["train/projection_mean_after_max"] <= 0.02 * (1 + 1e-5)
    assert logged["train/projection_cov_after_max"] <= 0.002 * (1 + 1e-4)
    model.save(tmp_path / "model")
    loaded = TrustPPO.load(tmp_path / "model", device="cpu")
    for key, value in kwargs.items():
        assert getattr(loaded, key) == value, key
    assert loaded._projection is not None and loaded._projection.mean_bound == 0.02
    loaded.set_env(make_vec_env("Pendulum-v1", n_envs=1, seed=0))
    assert "train/projection_fraction" in learn_logged(loaded, 64)


def test_projection_that_never_binds_is_the_unprojected_loss():
    # bounds no state reaches: π̃ = π bit for bit and the regression loss is 0 with a 0 gradient
    plain = TrustPPO("MlpPolicy", "Pendulum-v1", policy_loss="unclipped", backend="reference", **SMALL).learn(128)
    for name in NAMES:
        far = dict(projection=name, projection_mean_bound=1e9, projection_cov_bound=1e9)
        projected = TrustPPO("MlpPolicy", "Pendulum-v1", policy_loss="unclipped", **far, **SMALL).learn(128)
        for param, expected in zip(projected.policy.parameters(), plain.policy.parameters(), strict=True):
            assert th.allclose(param, expected, rtol=0, atol=1e-6), name


def test_accelerator_declines_projected_models():
    if accel.unavailable_reason() is not None:
        pytest.skip(f"the accelerator is unavailable: {accel.unavailable_reason()}")
    model = TrustPPO("MlpPolicy", "Pendulum-v1", policy_loss="unclipped", projection="kl", **SMALL)
    reason = accel.can_run(model, "train")
    assert reason is not None and "projection 'kl'" in reason and "reference path" in reason
    with pytest.raises(ValueError, match="projection 'kl'"):
        TrustPPO("MlpPolicy", "Pendulum-v1", projection="kl", backend="accelerated", **SMALL)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(projection="trpl"), ValueError, r"`projection` must be one of \('frobenius', 'w2', 'kl'\), got 'trpl'"),
        (dict(projection=2), TypeError, "`projection` must be one of"),
        (dict(projection="kl", projection_mean_bound=0.0), ValueError, "`projection_mean_bound` must be in"),
        (dict(projection="kl", projection_cov_bound=-1e-3), ValueError, "`projection_cov_bound` must be in"),
        (dict(projection="kl", projection_cov_bound="0.01"), TypeError, "`projection_cov_bound` must be a number"),
        (dict(projection="w2", projection_coef=-1.0), ValueError, "`projection_coef` must be in"),
        (dict(projection="w2", use_sde=True), ValueError, "gSDE"),
    ],
)
def test_bad_keywords(kwargs, error, match):
    with pytest.raises(error, match=match):
        TrustPPO("MlpPolicy", "Pendulum-v1", **{**SMALL, **kwargs})


def test_discrete_actions_are_refused():
    with pytest.raises(TypeError, match=r"CategoricalDistribution.*Discrete actions are not supported"):
        TrustPPO("MlpPolicy", "CartPole-v1", projection="frobenius", **SMALL)


# --- learning, with the zoo's configs ---------------------------------------------------------------------------------


# Pendulum-v1: a random policy scores about -1200. With the keys' config (n_steps 128 × 4 envs, no gSDE), seed 0:
# KL -151 and W2 -236 at 30k steps, Frobenius -699 at 30k and -191 at 50k (its absolute covariance bound lets the
# variance shrink slowly from 1). 50k: half the zoo's 1e5, as for the other variants (tests/test_ppo_variants.py)
PENDULUM_BUDGET, PENDULUM_THRESHOLD = 50_000, -400.0


@pytest.mark.expensive
@pytest.mark.parametrize("name", NAMES)
def test_pendulum_learns(name):
    yaml = pytest.importorskip("yaml")
    zoo = pytest.importorskip("sb3_trust.zoo")
    key = f"trust_ppo_proj_{name}"
    with open(zoo.default_config_path(key)) as file:
        entry = dict(yaml.load(file, Loader=yaml.UnsafeLoader)["Pendulum-v1"])
    n_envs = entry.pop("n_envs", 1)
    for unused in ("n_timesteps", "policy"):
        entry.pop(unused, None)
    kwargs = {k: zoo.parse_schedule(k, v) if isinstance(v, str) and k.startswith("learning") else v for k, v in entry.items()}
    model = TrustPPO("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=n_envs, seed=0), seed=0, device="cpu", **kwargs)
    model.learn(PENDULUM_BUDGET)
    mean_return, _ = evaluate_policy(model, make_vec_env("Pendulum-v1", n_envs=1, seed=1000), n_eval_episodes=10)
    assert mean_return >= PENDULUM_THRESHOLD
