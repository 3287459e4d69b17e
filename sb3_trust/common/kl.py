"""
Exact KL divergences between SB3 action distributions, and the adaptive KL-coefficient controller.

Conventions used throughout ``sb3_trust`` (see the docs, docs/variants.md, "Semantics, where libraries differ"):

- ``exact_kl(p, q)`` is KL(p ‖ q), computed in closed form from the distributions' parameters and
  **summed over independent action dimensions**, so it returns one value per state (shape ``[batch]``).
  SB3's own ``kl_divergence`` does *not* sum the dimensions of a diagonal Gaussian (it returns
  ``[batch, action_dim]``), which makes ``.mean()`` the per-dimension KL.
- The PPO penalty and the TRPO trust region use KL(π_old ‖ π_new), the direction of the PPO and TRPO papers.
- With action masks (sb3-contrib's maskable distributions), KL(p ‖ q) = Σ_{a valid under p} p(a) (log p(a) - log q(a)):
  a masked action has p(a) = 0 and contributes 0·log 0 = 0 (never NaN), whatever its logit (-1e8 or -inf).
- SB3's ``policy.get_distribution()`` returns the *same* object on every call; take the old distribution from a
  separate (frozen) policy, or copy it, before calling it again.
"""

from dataclasses import dataclass

import torch as th
from sb3_contrib.common.maskable.distributions import (
    MaskableCategorical,
    MaskableCategoricalDistribution,
    MaskableMultiCategoricalDistribution,
)
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
    MultiCategoricalDistribution,
    StateDependentNoiseDistribution,
)
from stable_baselines3.common.policies import ActorCriticPolicy
from torch.distributions import kl_divergence as th_kl_divergence

from sb3_trust.common.masking import mask_kwargs
from sb3_trust.common.rollout import iterate_rollout_in_order

_SUMMED_OVER_DIMS = (DiagGaussianDistribution, StateDependentNoiseDistribution, BernoulliDistribution)


def masked_categorical_kl(p: th.distributions.Categorical, q: th.distributions.Categorical) -> th.Tensor:
    """
    KL(p ‖ q) of two categoricals over the actions that p allows: ``Σ_a p(a) (log p(a) - log q(a))`` with the terms of
    p's masked actions set to 0 *before* the product (0·log 0 = 0), so that neither the value nor its first and second
    derivatives can be NaN, even with -inf logits. Without a mask on p, its zero-probability actions are those terms.

    :param p: first distribution (its ``masks``, if any, say which actions are valid)
    :param q: second distribution
    :return: KL per state, shape ``[batch]``
    """
    masks = p.masks if isinstance(p, MaskableCategorical) else None
    support = p.probs > 0 if masks is None else masks
    log_ratio = th.where(support, p.logits - q.logits, th.zeros_like(p.logits))
    return (p.probs * log_ratio).sum(dim=-1)


def exact_kl(p: Distribution, q: Distribution) -> th.Tensor:
    """
    Closed-form KL(p ‖ q) between two SB3 distributions of the same type, summed over action dimensions.

    :param p: first distribution (the "old" policy for KL(π_old ‖ π_new))
    :param q: second distribution
    :return: KL per state, shape ``[batch]``
    """
    gaussians = (DiagGaussianDistribution, StateDependentNoiseDistribution)
    if type(p) is not type(q) and not (isinstance(p, gaussians) and isinstance(q, gaussians)):
        raise TypeError(f"exact_kl needs two distributions of the same type, got {type(p).__name__} and {type(q).__name__}")
    if isinstance(p, MaskableMultiCategoricalDistribution):  # and MaskableBernoulliDistribution
        assert isinstance(q, MaskableMultiCategoricalDistribution)
        per_dim = [masked_categorical_kl(p_i, q_i) for p_i, q_i in zip(p.distributions, q.distributions, strict=True)]
        return th.stack(per_dim, dim=1).sum(dim=1)
    if isinstance(p, MaskableCategoricalDistribution):
        return masked_categorical_kl(p.distribution, q.distribution)  # type: ignore[attr-defined]
    if isinstance(p, MultiCategoricalDistribution):
        assert isinstance(q, MultiCategoricalDistribution)
        per_dim = [th_kl_divergence(p_i, q_i) for p_i, q_i in zip(p.distribution, q.distribution, strict=True)]
        return th.stack(per_dim, dim=1).sum(dim=1)
    if isinstance(p, CategoricalDistribution):
        return th_kl_divergence(p.distribution, q.distribution)  # type: ignore[arg-type]
    if isinstance(p, _SUMMED_OVER_DIMS):
        kl = th_kl_divergence(p.distribution, q.distribution)  # type: ignore[arg-type]
        return kl.sum(dim=-1) if kl.dim() > 1 else kl
    raise TypeError(f"No closed-form KL for distribution {type(p).__name__}")


def rollout_kl(p: ActorCriticPolicy, q: ActorCriticPolicy, rollout_buffer: RolloutBuffer) -> float:
    """
    :param p: first policy (π_old for KL(π_old ‖ π_new))
    :param q: second policy
    :param rollout_buffer: a full rollout buffer that ``get()`` has flattened (with a ``MaskableRolloutBuffer``, both
        distributions are masked with its masks)
    :return: the mean over the rollout's states of ``exact_kl(p, q)`` (no random numbers consumed)
    """
    total, count = 0.0, 0
    with th.no_grad():
        for samples in iterate_rollout_in_order(rollout_buffer):
            # SB3 reuses one distribution object per policy: p's is read before q's forward pass (p is not q)
            masks = mask_kwargs(samples)
            kl = exact_kl(p.get_distribution(samples.observations, **masks), q.get_distribution(samples.observations, **masks))
            total += kl.sum().item()
            count += len(kl)
    return total / max(count, 1)


def approx_kl_k3(log_ratio: th.Tensor) -> th.Tensor:
    """
    The "k3" sample estimator of KL(π_old ‖ π_new) used by SB3 PPO for early stopping:
    ``mean((r - 1) - log r)`` with ``r = π_new(a|s) / π_old(a|s)`` and ``a ~ π_old``.
    See http://joschu.net/blog/kl-approx.html

    :param log_ratio: ``log π_new(a|s) - log π_old(a|s)``
    :return: scalar estimate
    """
    return th.mean((th.exp(log_ratio) - 1) - log_ratio)


@dataclass(frozen=True)
class AdaptiveKLController:
    """
    The adaptive penalty rule of the PPO paper (Schulman et al. 2017, section 4), applied once per policy update:
    with ``d`` the mean KL(π_old ‖ π_new) over the rollout after the update,
    ``β ← β · factor`` if ``d > tolerance · target``, ``β ← β / factor`` if ``d < target / tolerance``,
    and β is then clipped to ``[min_coef, max_coef]``.

    :param target: the KL target d_targ (> 0)
    :param tolerance: the 1.5 of the paper
    :param factor: the 2 of the paper
    :param min_coef: lower bound on β
    :param max_coef: upper bound on β
    """

    target: float
    tolerance: float = 1.5
    factor: float = 2.0
    min_coef: float = 1e-4
    max_coef: float = 1e4

    def update(self, kl_coef: float, kl: float) -> float:
        """
        :param kl_coef: current β
        :param kl: mean KL measured after the update
        :return: the new β
        """
        if kl > self.tolerance * self.target:
            kl_coef = kl_coef * self.factor
        elif kl < self.target / self.tolerance:
            kl_coef = kl_coef / self.factor
        return float(min(max(kl_coef, self.min_coef), self.max_coef))
