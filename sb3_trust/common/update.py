"""
The values one PPO update trains with, and what one minibatch step reports: the contract between TrustPPO's loop and
whatever computes a minibatch step (its own reference step, or the accelerator's).
"""

from dataclasses import dataclass, field
from typing import NamedTuple


@dataclass(frozen=True)
class LossSettings:
    """
    The settings of one update, with every schedule already evaluated and checked.

    :param policy_loss: the name of the policy loss in TrustPPO's registry (``sb3_trust.ppo.losses.POLICY_LOSSES``)
    :param loss_kwargs: the keywords the registry entry takes, with their values for this update (e.g. ``clip_range``)
    :param clip_range: ε of the clipped surrogate, also used for the logged clip fraction whatever the loss
    :param clip_range_vf: ε_v of value clipping, or ``None``
    :param vf_clip_mode: ``"sb3"`` or ``"max"``
    :param ent_coef: entropy coefficient
    :param vf_coef: value-loss coefficient
    :param normalize_advantage: normalise the advantages per minibatch
    :param max_grad_norm: the global gradient norm is clipped to this value
    :param max_approx_kl: ``1.5 * target_kl`` (SB3's early stop: a minibatch whose k3 KL estimate exceeds it is not
        applied and the update ends), or ``None``
    :param reference_coef: β of the reference KL when it is in the loss (``reference_kl_mode="loss"``), else 0
    """

    policy_loss: str
    loss_kwargs: dict[str, float] = field(default_factory=dict)
    clip_range: float = 0.2
    clip_range_vf: float | None = None
    vf_clip_mode: str = "sb3"
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    normalize_advantage: bool = True
    max_grad_norm: float = 0.5
    max_approx_kl: float | None = None
    reference_coef: float = 0.0

    def trust_region(self) -> tuple[float, float]:
        """:return: ``(ε_low, ε_high)`` of ``train/clip_fraction``: the loss's own, else ``(clip_range, clip_range)``"""
        kwargs = self.loss_kwargs
        return kwargs.get("clip_range_low", self.clip_range), kwargs.get("clip_range_high", self.clip_range)


class MinibatchStats(NamedTuple):
    """
    What one minibatch step reports (all Python floats, measured before the optimizer step).

    :param policy_loss: the policy loss
    :param value_loss: the value loss
    :param entropy_loss: ``-mean(entropy)``
    :param loss: the total loss
    :param approx_kl: k3 estimate ``mean((r - 1) - log r)`` of KL(π_old ‖ π)
    :param clip_fraction: fraction of samples with ``|r - 1| > clip_range``
    :param value_clip_fraction: fraction of samples whose value change was clipped (0 without value clipping)
    :param ratio_max: largest ratio ``r``
    :param ratio_mean: mean ratio
    :param applied: whether the step was applied (``False``: the ``max_approx_kl`` early stop)
    """

    policy_loss: float
    value_loss: float
    entropy_loss: float
    loss: float
    approx_kl: float
    clip_fraction: float
    value_clip_fraction: float
    ratio_max: float
    ratio_mean: float
    applied: bool
