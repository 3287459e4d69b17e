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
}
