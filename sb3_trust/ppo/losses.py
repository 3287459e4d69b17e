"""
TrustPPO's policy losses: one small pure function per variant, and one registry entry naming it.

A loss takes the probability ratios ``r = π(a|s) / π_old(a|s)`` and the (normalised) advantages ``A`` of a minibatch,
plus the keywords its entry lists, and returns the loss to minimise. ``TrustPPO.train()`` calls
``POLICY_LOSSES[self.policy_loss](ratio, advantages, **keywords)`` and nothing else decides which loss runs.

Adding a variant is one function and one entry here. Its keywords are attributes of the model (a float or a schedule
of the progress remaining, evaluated and checked at every update); ``needs_kl`` asks for the exact per-state
KL(π_old ‖ π), passed as ``kl``. The accelerator (``sb3_trust.accel``) declares the names it implements; any other
loss is trained by the reference path, with autograd.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch as th


def clipped_surrogate_loss(ratio: th.Tensor, advantages: th.Tensor, *, clip_range: float) -> th.Tensor:
    """
    PPO-clip (Schulman et al. 2017, eq. 7), SB3's formula: ``-mean(min(r·A, clip(r, 1-ε, 1+ε)·A))``.

    :param ratio: π(a|s) / π_old(a|s)
    :param advantages: advantages
    :param clip_range: ε
    :return: the loss
    """
    policy_loss_1 = advantages * ratio
    policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
    return -th.min(policy_loss_1, policy_loss_2).mean()


def dual_clip_loss(ratio: th.Tensor, advantages: th.Tensor, *, clip_range: float, dual_clip: float) -> th.Tensor:
    """
    Dual-clip PPO (Ye et al., "Mastering Complex Control in MOBA Games with Deep Reinforcement Learning", AAAI 2020):
    for ``A < 0`` the clipped surrogate is further bounded below by ``c·A``, so that a very large ratio on a bad action
    cannot make the loss unbounded (its gradient is then 0): ``-mean(A < 0 ? max(min(r·A, clip(r)·A), c·A) : min(...))``.

    :param ratio: π(a|s) / π_old(a|s)
    :param advantages: advantages
    :param clip_range: ε
    :param dual_clip: c > 1 (the paper uses 3)
    :return: the loss
    """
    clipped = th.min(advantages * ratio, advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range))
    return -th.where(advantages < 0, th.max(clipped, dual_clip * advantages), clipped).mean()


def asymmetric_clip_loss(
    ratio: th.Tensor, advantages: th.Tensor, *, clip_range_low: float, clip_range_high: float
) -> th.Tensor:
    """
    Asymmetric clipping, "Clip-Higher" (DAPO, Yu et al. 2025, arXiv:2503.14476):
    ``-mean(min(r·A, clip(r, 1-ε_low, 1+ε_high)·A))``.
    A larger ``ε_high`` lets the probability of unlikely good actions grow further (DAPO: ε_low = 0.2, ε_high = 0.28).
    With ``ε_low = ε_high = ε`` it is PPO-clip, bit for bit.

    :param ratio: π(a|s) / π_old(a|s)
    :param advantages: advantages
    :param clip_range_low: ε_low
    :param clip_range_high: ε_high
    :return: the loss
    """
    policy_loss_1 = advantages * ratio
    policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range_low, 1 + clip_range_high)
    return -th.min(policy_loss_1, policy_loss_2).mean()


def spo_loss(ratio: th.Tensor, advantages: th.Tensor, *, clip_range: float) -> th.Tensor:
    """
    Simple Policy Optimization (Xie et al., ICML 2025, arXiv:2401.16025v9, its objective):
    ``-mean(r·A - |A| / (2ε) · (r - 1)²)``, no clipping. Its gradient in ``r``, ``A - |A|·(r - 1)/ε``, vanishes at
    ``r = 1 ± ε`` (the sign of A deciding which) and pulls the ratio back beyond it, instead of being zeroed by a clip.
    This is the published version and the one of the authors' code (``compute_policy_loss`` in
    https://github.com/MyRepositories-hub/Simple-Policy-Optimization, ``mujoco/trainer.py``); arXiv versions up to v6
    had a different objective (a clipped KL), not implemented here.

    :param ratio: π(a|s) / π_old(a|s)
    :param advantages: advantages
    :param clip_range: ε > 0, the trust region's half-width
    :return: the loss
    :raise ValueError: if ε is not positive (e.g. a ``clip_range`` schedule that reached 0)
    """
    if clip_range <= 0:
        raise ValueError(f"SPO divides by ε: `clip_range` must be > 0, got {clip_range} (a schedule that reached 0?)")
    return -(advantages * ratio - advantages.abs() * (ratio - 1) ** 2 / (2 * clip_range)).mean()


def outside_trust_region(ratio: th.Tensor, low: float, high: float) -> th.Tensor:
    """
    :param ratio: π(a|s) / π_old(a|s)
    :param low: ε_low
    :param high: ε_high
    :return: the fraction of ratios outside ``[1 - low, 1 + high]`` (the logged ``train/clip_fraction``); with
        ``low = high = ε`` exactly SB3's ``mean(|r - 1| > ε)``
    """
    return th.mean(((ratio - 1 > high) | (1 - ratio > low)).float())


def surrogate_loss(ratio: th.Tensor, advantages: th.Tensor) -> th.Tensor:
    """
    The unclipped importance-sampled surrogate (the CPI objective, PPO paper eq. 6): ``-mean(r·A)``.

    :param ratio: π(a|s) / π_old(a|s)
    :param advantages: advantages
    :return: the loss
    """
    return -(advantages * ratio).mean()


def kl_penalty_loss(ratio: th.Tensor, advantages: th.Tensor, *, kl: th.Tensor, kl_coef: float) -> th.Tensor:
    """
    PPO-Penalty (PPO paper eq. 8): ``-mean(r·A) + β·mean(KL(π_old ‖ π))``, the KL exact and summed over action
    dimensions.

    :param ratio: π(a|s) / π_old(a|s)
    :param advantages: advantages
    :param kl: KL(π_old ‖ π) per state
    :param kl_coef: β
    :return: the loss
    """
    return surrogate_loss(ratio, advantages) + kl_coef * kl.mean()


@dataclass(frozen=True)
class PolicyLoss:
    """
    A registry entry.

    :param fn: the loss function
    :param keywords: the model attributes it takes as keywords (each a float or a schedule)
    :param needs_kl: whether it takes ``kl``, the exact KL(π_old ‖ π) per state
    :param formula: one line for the docs' variant table
    """

    fn: Callable[..., th.Tensor]
    keywords: tuple[str, ...] = ()
    needs_kl: bool = False
    formula: str = ""

    def __call__(self, ratio: th.Tensor, advantages: th.Tensor, **kwargs: th.Tensor | float) -> th.Tensor:
        return self.fn(ratio, advantages, **kwargs)


POLICY_LOSSES: dict[str, PolicyLoss] = {
    "clip": PolicyLoss(clipped_surrogate_loss, ("clip_range",), formula="-mean(min(r·A, clip(r, 1-ε, 1+ε)·A))"),
    "kl_penalty": PolicyLoss(kl_penalty_loss, ("kl_coef",), needs_kl=True, formula="-mean(r·A) + β·mean KL(π_old‖π)"),
    "unclipped": PolicyLoss(surrogate_loss, formula="-mean(r·A)"),
    "dual_clip": PolicyLoss(
        dual_clip_loss, ("clip_range", "dual_clip"), formula="-mean(A<0 ? max(min(r·A, clip(r, 1-ε, 1+ε)·A), c·A) : min(…))"
    ),
    "clip_higher": PolicyLoss(
        asymmetric_clip_loss, ("clip_range_low", "clip_range_high"), formula="-mean(min(r·A, clip(r, 1-ε_low, 1+ε_high)·A))"
    ),
    "spo": PolicyLoss(spo_loss, ("clip_range",), formula="-mean(r·A - |A|/(2ε)·(r-1)²)"),
}
