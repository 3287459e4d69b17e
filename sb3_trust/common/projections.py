"""
Differentiable trust-region projections for diagonal Gaussian policies (Otto, Becker, Vien, Ziesche, Neumann,
"Differentiable Trust Region Layers for Deep Reinforcement Learning", ICLR 2021, arXiv:2101.09207), written from the
paper's derivation for diagonal covariances (the equations below are ours, in the paper's notation; the authors'
AGPL-licensed code was not used).

For every state, the new Gaussian π = N(μ, diag σ²) is replaced by the Gaussian π̃ closest to it (in the projection's
own distance) inside the trust region around the old one, π_old = N(μ_old, diag σ_old²) (the paper's per-state
projection problem):

    π̃ = argmin d_mean(π̃, π) + d_cov(π̃, π)  subject to  d_mean(π̃, π_old) ≤ ε_μ  and  d_cov(π̃, π_old) ≤ ε_Σ,

the mean and the covariance separately, each bound exactly per state. A state already inside is unchanged. The
projection is differentiable, so the policy loss is taken through π̃; a regression loss pulls the network's own π
toward π̃ (the paper's "successive policy updates"), because the next rollout uses the network's unprojected policy as π_old.

The distances (per state, summed over action dimensions; M = (μ - μ_old)ᵀ Σ_old⁻¹ (μ - μ_old), the Mahalanobis
distance under the old covariance):

============ ================= ======================================================================================
projection   mean              covariance
============ ================= ======================================================================================
frobenius    M                 ‖Σ - Σ_old‖²_F = Σ_i (σ_i² - σ_old,i²)²
w2           M                 tr(I + Σ_old⁻¹Σ - 2 Σ_old^-½ Σ^½) = Σ_i (σ_i / σ_old,i - 1)² (the W2 distance scaled by
                               Σ_old⁻¹; for diagonal covariances, which commute, it is the closed form of the paper)
kl           M / 2             the covariance part of KL(π ‖ π_old): ½ Σ_i (σ_i² / σ_old,i² - 1 - log(σ_i² / σ_old,i²))
============ ================= ======================================================================================

The solutions:

- mean (the same for the three): with the objective also measured in Σ_old's metric, the problem is the Euclidean
  projection onto a ball in whitened coordinates: ``μ̃ = (μ + ω μ_old) / (1 + ω)``, ``1 + ω = sqrt(d_mean / ε_μ)``
  where ``d_mean > ε_μ``;
- Frobenius covariance: ``Σ̃ = (Σ + η Σ_old) / (1 + η)``, ``1 + η = sqrt(d_cov / ε_Σ)``;
- W2 covariance (the paper's closed form for commuting covariances): the same interpolation between the square roots,
  ``Σ̃^½ = (Σ^½ + η Σ_old^½) / (1 + η)``, ``1 + η = sqrt(d_cov / ε_Σ)``;
- KL covariance: the interpolation of the precisions (natural parameters),
  ``Σ̃⁻¹ = (Σ⁻¹ + η Σ_old⁻¹) / (1 + η)``, with η ≥ 0 the per-state root of ``d_cov(Σ̃(η), Σ_old) = ε_Σ`` (the
  stationarity condition of the paper's dual). It has no closed form: ``kl_covariance_projection`` finds it by
  Newton's method safeguarded by bisection on ``t = η / (1 + η) ∈ [0, 1]`` (d_cov decreases monotonically along the
  path) and differentiates it implicitly: ``dt/dλ = -(∂g/∂λ) / (∂g/∂t)`` at the root, ``g(t, λ) = d_cov(Σ̃(t)) - ε_Σ``.

Not implemented: the paper's entropy control (an extra bound on the entropy's decrease) and full covariances.
"""

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch as th
from stable_baselines3.common.distributions import DiagGaussianDistribution, Distribution

from sb3_trust.common.validation import check_choice, check_number

# Largest number of steps of the search for the KL covariance multiplier (safeguarded Newton; a handful suffice)
KL_SEARCH_STEPS = 60


def mahalanobis(mean: th.Tensor, old_mean: th.Tensor, old_std: th.Tensor) -> th.Tensor:
    """
    :param mean: μ, shape ``[batch, dim]``
    :param old_mean: μ_old
    :param old_std: σ_old (Σ_old = diag σ_old²)
    :return: ``(μ - μ_old)ᵀ Σ_old⁻¹ (μ - μ_old)`` per state, shape ``[batch]``
    """
    return (((mean - old_mean) / old_std) ** 2).sum(dim=-1)


def frobenius_cov_distance(std: th.Tensor, old_std: th.Tensor) -> th.Tensor:
    """:return: ``‖Σ - Σ_old‖²_F`` per state, for ``Σ = diag std²``"""
    return ((std**2 - old_std**2) ** 2).sum(dim=-1)


def w2_cov_distance(std: th.Tensor, old_std: th.Tensor) -> th.Tensor:
    """:return: the covariance part of the W2 distance scaled by Σ_old⁻¹, ``Σ_i (σ_i / σ_old,i - 1)²``, per state"""
    return ((std / old_std - 1) ** 2).sum(dim=-1)


def kl_cov_distance(std: th.Tensor, old_std: th.Tensor) -> th.Tensor:
    """:return: the covariance part of KL(N(·, diag std²) ‖ N(·, diag old_std²)) per state"""
    ratio = (std / old_std) ** 2
    return 0.5 * (ratio - 1 - th.log(ratio)).sum(dim=-1)


def _interpolate(value: th.Tensor, old: th.Tensor, distance: th.Tensor, bound: float) -> th.Tensor:
    """
    :param value: the new parameter (mean, variance or standard deviation), shape ``[batch, dim]``
    :param old: the old one
    :param distance: a distance from old to new that is quadratic in ``value - old``, per state
    :param bound: its bound
    :return: ``old + (value - old) / (1 + ω)`` with ``1 + ω = sqrt(distance / bound)`` where ``distance > bound`` (the
        interpolation that puts the distance exactly on the bound), ``value`` itself elsewhere
    """
    outside = distance > bound
    # The unused branch must stay finite: its gradient is multiplied by 0, and 0·inf would be NaN
    safe = th.where(outside, distance, th.full_like(distance, bound))
    factor = th.sqrt(bound / safe).unsqueeze(-1)
    return th.where(outside.unsqueeze(-1), old + factor * (value - old), value)


def mean_projection(mean: th.Tensor, old_mean: th.Tensor, old_std: th.Tensor, bound: float, scale: float = 1.0) -> th.Tensor:
    """
    The mean projection: ``μ̃ = μ_old + (μ - μ_old) / (1 + ω)``, ``(1 + ω)² = scale·M / ε_μ`` where ``scale·M > ε_μ``.

    :param mean: μ, shape ``[batch, dim]``
    :param old_mean: μ_old
    :param old_std: σ_old
    :param bound: ε_μ
    :param scale: the mean distance is ``scale·M`` (1 for Frobenius and W2, ½ for the KL)
    :return: μ̃
    """
    return _interpolate(mean, old_mean, scale * mahalanobis(mean, old_mean, old_std), bound)


def frobenius_covariance_projection(std: th.Tensor, old_std: th.Tensor, bound: float) -> th.Tensor:
    """
    The Frobenius projection for diagonal covariances: ``Σ̃ = Σ_old + (Σ - Σ_old) / (1 + η)``,
    ``(1 + η)² = ‖Σ - Σ_old‖²_F / ε_Σ``.

    :param std: σ, shape ``[batch, dim]``
    :param old_std: σ_old
    :param bound: ε_Σ
    :return: σ̃ (a convex combination of two positive variances stays positive)
    """
    return th.sqrt(_interpolate(std**2, old_std**2, frobenius_cov_distance(std, old_std), bound))


def w2_covariance_projection(std: th.Tensor, old_std: th.Tensor, bound: float) -> th.Tensor:
    """
    The W2 projection for diagonal (commuting) covariances: ``σ̃ = σ_old + (σ - σ_old) / (1 + η)``,
    ``(1 + η)² = Σ_i (σ_i / σ_old,i - 1)² / ε_Σ``.

    :param std: σ, shape ``[batch, dim]``
    :param old_std: σ_old
    :param bound: ε_Σ
    :return: σ̃
    """
    return _interpolate(std, old_std, w2_cov_distance(std, old_std), bound)


def _kl_path(t: th.Tensor, precision: th.Tensor, old_precision: th.Tensor) -> th.Tensor:
    """:return: the precisions ``(1 - t)·λ + t·λ_old`` of the KL projection's path, ``t = η / (1 + η)``"""
    return (1 - t) * precision + t * old_precision


def _kl_constraint(precision: th.Tensor, old_precision: th.Tensor) -> th.Tensor:
    """:return: the covariance part of KL(N(·, λ⁻¹) ‖ N(·, λ_old⁻¹)) per state, from precisions"""
    ratio = old_precision / precision
    return 0.5 * (ratio - 1 - th.log(ratio)).sum(dim=-1)


def _kl_excess_and_slope(
    t: th.Tensor, precision: th.Tensor, old_precision: th.Tensor, bound: float
) -> tuple[th.Tensor, th.Tensor]:
    """
    :return: ``g(t) = KL_cov(Σ̃(t) ‖ Σ_old) - ε_Σ`` and ``∂g/∂t = Σ_i ∂g/∂λ̃_i · (λ_old,i - λ_i)``, with
        ``∂g/∂λ̃_i = ½ (1 - λ_old,i / λ̃_i) / λ̃_i``, per state (shape ``[batch, 1]``; ∂g/∂t < 0 where g > -ε_Σ)
    """
    path = _kl_path(t, precision, old_precision)
    excess = _kl_constraint(path, old_precision).unsqueeze(-1) - bound
    slope = (0.5 * (1 - old_precision / path) / path * (old_precision - precision)).sum(dim=-1, keepdim=True)
    return excess, slope


def kl_covariance_projection(std: th.Tensor, old_std: th.Tensor, bound: float) -> th.Tensor:
    """
    The KL covariance projection: ``Σ̃⁻¹ = (1 - t)·Σ⁻¹ + t·Σ_old⁻¹`` with, per state,
    ``t = η / (1 + η)`` the root of ``g(t) = KL_cov(Σ̃(t) ‖ Σ_old) - ε_Σ`` where ``KL_cov(Σ ‖ Σ_old) > ε_Σ``
    (else ``t = 0``: unchanged).

    The root is found without gradients by Newton's method kept inside a bisection bracket (g decreases from
    ``KL_cov(Σ ‖ Σ_old)`` at t = 0 to 0 at t = 1);
    its gradient is the implicit function theorem's, ``dt/dλ = -(∂g/∂λ) / (∂g/∂t)``, obtained by one Newton step
    ``t = t* - g(t*, λ) / ∂g/∂t(t*)`` taken with autograd on ``λ`` and ``∂g/∂t`` held constant (its value changes by
    ``g(t*) ≈ 0``, its derivative in λ is exactly the implicit one).

    :param std: σ, shape ``[batch, dim]``
    :param old_std: σ_old (no gradient is taken through it)
    :param bound: ε_Σ
    :return: σ̃
    """
    precision, old_precision = std**-2, old_std.detach() ** -2
    with th.no_grad():
        # Newton's method on t in float64, kept inside the bracket [low, high] of the root (bisection when a step
        # leaves it), until |g| ≤ 1e-8·ε_Σ (the differentiable Newton step below squares that error): about 4 steps
        lam, lam_old = precision.double(), old_precision.double()
        distance = _kl_constraint(lam, lam_old).unsqueeze(-1)
        outside = distance > bound
        low, high = th.zeros_like(distance), th.ones_like(distance)
        # Start where the quadratic approximation of the KL, g(t) + ε ≈ (1 - t)²·KL_cov(Σ ‖ Σ_old), puts the root;
        # the states inside stay at t = 0 (their bracket is [0, 0])
        root = th.where(outside, 1 - th.sqrt(bound / distance.clamp(min=bound)), low)
        for _ in range(KL_SEARCH_STEPS):
            excess, slope = _kl_excess_and_slope(root, lam, lam_old, bound)
            if not bool((excess.abs() > 1e-8 * bound)[outside].any()):
                break
            low, high = th.where(excess > 0, root, low), th.where(excess > 0, high, root)
            newton = root - excess / slope
            root = th.where((newton >= low) & (newton <= high), newton, (low + high) / 2)
        else:
            slope = _kl_excess_and_slope(root, lam, lam_old, bound)[1]
        slope = th.where(outside, slope, -th.ones_like(slope))  # the Newton step below then adds exactly 0 there
        root_t, slope_t, outside_t = root.to(std.dtype), slope.to(std.dtype), outside
    residual = _kl_constraint(_kl_path(root_t, precision, old_precision), old_precision).unsqueeze(-1) - bound
    residual = th.where(outside_t, residual, th.zeros_like(residual))
    t = root_t - residual / slope_t
    return th.where(outside_t, _kl_path(t, precision, old_precision) ** -0.5, std)


@dataclass(frozen=True)
class Projection:
    """
    A registry entry: the covariance projection, its distance, and the scale of the mean's Mahalanobis distance.

    :param cov_projection: ``(std, old_std, bound) -> projected std``
    :param cov_distance: ``(std, old_std) -> distance per state``
    :param mean_scale: the mean distance is ``mean_scale·M``
    :param formula: one line for the docs' variant table
    """

    cov_projection: Callable[[th.Tensor, th.Tensor, float], th.Tensor]
    cov_distance: Callable[[th.Tensor, th.Tensor], th.Tensor]
    mean_scale: float = 1.0
    formula: str = ""

    def project(
        self, mean: th.Tensor, std: th.Tensor, old_mean: th.Tensor, old_std: th.Tensor, mean_bound: float, cov_bound: float
    ) -> tuple[th.Tensor, th.Tensor]:
        """:return: ``(μ̃, σ̃)``, π projected onto the trust region around π_old (``[batch, dim]`` each)"""
        return mean_projection(mean, old_mean, old_std, mean_bound, self.mean_scale), self.cov_projection(
            std, old_std, cov_bound
        )

    def distances(
        self, mean: th.Tensor, std: th.Tensor, old_mean: th.Tensor, old_std: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor]:
        """:return: ``(d_mean, d_cov)`` of π from π_old, per state"""
        return self.mean_scale * mahalanobis(mean, old_mean, old_std), self.cov_distance(std, old_std)


PROJECTIONS: dict[str, Projection] = {
    "frobenius": Projection(
        frobenius_covariance_projection,
        frobenius_cov_distance,
        formula="μ̃ = μ_old + (μ-μ_old)·√(ε_μ/M); Σ̃ = Σ_old + (Σ-Σ_old)·√(ε_Σ/‖Σ-Σ_old‖²_F)",
    ),
    "w2": Projection(
        w2_covariance_projection,
        w2_cov_distance,
        formula="μ̃ as Frobenius; Σ̃^½ = Σ_old^½ + (Σ^½-Σ_old^½)·√(ε_Σ/Σ(σ/σ_old-1)²)",
    ),
    "kl": Projection(
        kl_covariance_projection,
        kl_cov_distance,
        mean_scale=0.5,
        formula="μ̃ as Frobenius with M/2; Σ̃⁻¹ = (1-t)·Σ⁻¹ + t·Σ_old⁻¹, t: root of KL_cov(Σ̃‖Σ_old) = ε_Σ",
    ),
}


def check_projection_kwargs(given: dict[str, Any]) -> None:
    """
    :param given: the keywords given to ``TrustPPO.__init__`` (its ``locals()``)
    """
    projection = given["projection"]
    if projection is not None:
        check_choice("projection", projection, PROJECTIONS)
    check_number("projection_mean_bound", given["projection_mean_bound"], low=0.0, low_inclusive=False)
    check_number("projection_cov_bound", given["projection_cov_bound"], low=0.0, low_inclusive=False)
    check_number("projection_coef", given["projection_coef"], low=0.0)
    if projection is not None and given["use_sde"]:
        raise ValueError(
            f"`projection={projection!r}` projects diagonal Gaussians with a state-independent log std; gSDE "
            "(`use_sde=True`) is not supported: use `use_sde=False`"
        )


class TrustRegionProjection:
    """
    The projection of a TrustPPO model (``projection``): projects each minibatch's action distribution onto the trust
    region around π_old, returns the regression loss, and keeps the statistics of the update for the logs.

    :param name: ``"frobenius"``, ``"w2"`` or ``"kl"``
    :param mean_bound: ε_μ
    :param cov_bound: ε_Σ
    :param coef: α, the coefficient of the regression loss ``α·mean(d_mean(π, sg(π̃)) + d_cov(π, sg(π̃)))`` (sg: no
        gradient), measured with the projection's own distances, π̃ in the place of π_old
    """

    def __init__(self, name: str, mean_bound: float, cov_bound: float, coef: float):
        self.name, self.entry = name, PROJECTIONS[name]
        self.mean_bound, self.cov_bound, self.coef = mean_bound, cov_bound, coef
        self._sums: dict[str, float] = {}
        self._max: dict[str, float] = {}
        self._count = 0

    @classmethod
    def for_model(cls, model: Any) -> "TrustRegionProjection | None":
        """
        :param model: a TrustPPO model with its policy built
        :return: its projection, or ``None`` when ``model.projection`` is ``None``
        :raise TypeError: unless the policy's action distribution is SB3's (unsquashed) ``DiagGaussianDistribution``
        """
        name = model.projection
        if name is None:
            return None
        distribution = model.policy.action_dist
        if type(distribution) is not DiagGaussianDistribution:
            raise TypeError(
                f"`projection={name!r}` projects Gaussian policies (SB3's DiagGaussianDistribution, a Box action space "
                f"without gSDE or squashing); this policy's action distribution is {type(distribution).__name__}. "
                "Discrete actions are not supported: the paper's projections are for Gaussians."
            )
        return cls(name, model.projection_mean_bound, model.projection_cov_bound, model.projection_coef)

    def __call__(self, distribution: Distribution, old_distribution: Distribution) -> tuple[Distribution, th.Tensor]:
        """
        :param distribution: π, the policy's distribution on the minibatch (with its autograd history)
        :param old_distribution: π_old on the same observations
        :return: π̃ (a ``DiagGaussianDistribution`` whose log-probabilities and entropy are differentiable through the
            projection) and the regression loss ``α·mean d(π, sg(π̃))``
        """
        normal, old_normal = distribution.distribution, old_distribution.distribution
        mean, std = normal.mean, normal.stddev
        old_mean, old_std = old_normal.mean.detach(), old_normal.stddev.detach()
        projected_mean, projected_std = self.entry.project(mean, std, old_mean, old_std, self.mean_bound, self.cov_bound)
        projected = copy.copy(distribution)
        projected.distribution = th.distributions.Normal(projected_mean, projected_std)
        target_mean, target_std = projected_mean.detach(), projected_std.detach()
        regression = sum(self.entry.distances(mean, std, target_mean, target_std)).mean()  # type: ignore[union-attr]
        with th.no_grad():
            before = self.entry.distances(mean, std, old_mean, old_std)
            after = self.entry.distances(target_mean, target_std, old_mean, old_std)
            changed = (before[0] > self.mean_bound) | (before[1] > self.cov_bound)
            self._count += len(changed)
            sums = dict(fraction=changed, mean_before=before[0], mean_after=after[0], cov_before=before[1], cov_after=after[1])
            for key, value in sums.items():
                self._sums[key] = self._sums.get(key, 0.0) + value.double().sum().item()
            for key, value in dict(mean_after_max=after[0], cov_after_max=after[1]).items():
                self._max[key] = max(self._max.get(key, 0.0), value.max().item())
        return projected, self.coef * regression

    def record(self, logger: Any) -> None:
        """
        Log the update's statistics (``train/projection_*``) and reset them: the fraction of states projected (mean or
        covariance), the mean distances from π_old of the network's π (before) and of π̃ (after), over every state of
        every minibatch of the update, and the largest distances after (``*_after_max``, at most the bounds).

        :param logger: the model's SB3 logger
        """
        if self._count:
            for key, value in self._sums.items():
                logger.record(f"train/projection_{key}", value / self._count)
            for key, value in self._max.items():
                logger.record(f"train/projection_{key}", value)
        self._sums, self._max, self._count = {}, {}, 0
