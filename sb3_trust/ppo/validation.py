"""
TrustPPO's keyword checks, run before anything is built: SB3 asserts, we raise ``ValueError``/``TypeError`` naming the
parameter, the value and what is allowed.
"""

from collections.abc import Mapping
from typing import Any

from stable_baselines3.common.utils import ConstantSchedule

from sb3_trust.common.losses import VF_CLIP_MODES
from sb3_trust.common.projections import check_projection_kwargs
from sb3_trust.common.validation import check_choice, check_common_on_policy_kwargs, check_number
from sb3_trust.ppo.losses import POLICY_LOSSES

# Lower bounds of the values of the loss keywords that are model attributes, checked at every update (default: none)
KEYWORD_LOWER_BOUNDS = {"dual_clip": 1.0, "clip_range_low": 0.0, "clip_range_high": 0.0}


def check_trust_ppo_kwargs(given: Mapping[str, Any]) -> None:
    """
    :param given: the keywords given to ``TrustPPO.__init__`` (its ``locals()``)
    """
    check_common_on_policy_kwargs(given)
    check_number("n_epochs", given["n_epochs"], low=1, integer=True)
    check_number("clip_range", given["clip_range"], low=0.0, low_inclusive=False, allow_schedule=True)
    clip_range_vf = given["clip_range_vf"]
    check_number("clip_range_vf", clip_range_vf, low=0.0, low_inclusive=False, allow_schedule=True, allow_none=True)
    check_number("ent_coef", given["ent_coef"], allow_schedule=True)
    check_number("vf_coef", given["vf_coef"], low=0.0)
    check_number("max_grad_norm", given["max_grad_norm"], low=0.0, low_inclusive=False)
    check_number("target_kl", given["target_kl"], low=0.0, low_inclusive=False, allow_none=True)
    policy_loss, kl_coef, adaptive_kl_target = given["policy_loss"], given["kl_coef"], given["adaptive_kl_target"]
    check_choice("policy_loss", policy_loss, POLICY_LOSSES)
    check_number("kl_coef", kl_coef, low=0.0, allow_schedule=True)
    check_number("adaptive_kl_target", adaptive_kl_target, low=0.0, low_inclusive=False, allow_none=True)
    check_choice("vf_clip_mode", given["vf_clip_mode"], VF_CLIP_MODES)
    if given["normalize_advantage"] and given["batch_size"] < 2:
        raise ValueError(
            f"`batch_size` must be greater than 1 when `normalize_advantage=True`, got {given['batch_size']} "
            "(see https://github.com/DLR-RM/stable-baselines3/issues/440)"
        )
    if adaptive_kl_target is not None and not POLICY_LOSSES[policy_loss].needs_kl:
        raise ValueError(
            f"`adaptive_kl_target={adaptive_kl_target}` adapts the KL penalty, so it needs a KL-penalty loss such as "
            f"`policy_loss='kl_penalty'`, got `policy_loss={policy_loss!r}`"
        )
    if adaptive_kl_target is not None and callable(kl_coef):
        raise ValueError(
            f"`kl_coef` must be a float (the initial β) when `adaptive_kl_target` is set, got the schedule {kl_coef!r}"
        )
    check_variant_kwargs(given)
    check_projection_kwargs(given)
    if given["vf_clip_mode"] != "sb3" and clip_range_vf is None:
        raise ValueError(f"`vf_clip_mode={given['vf_clip_mode']!r}` needs a `clip_range_vf`, got None")


def check_variant_kwargs(given: Mapping[str, Any]) -> None:
    """
    The keywords of dual-clip, clip-higher, the KL-adaptive learning rate and the value function's learning rate.

    :param given: the keywords given to ``TrustPPO.__init__`` (its ``locals()``)
    """
    check_number("dual_clip", given["dual_clip"], low=1.0, low_inclusive=False)
    for name in ("clip_range_low", "clip_range_high"):
        check_number(name, given[name], low=0.0, low_inclusive=False, allow_schedule=True, allow_none=True)
    check_number("vf_learning_rate", given["vf_learning_rate"], low=0.0, allow_schedule=True, allow_none=True)
    target, bounds = given["adaptive_lr_kl_target"], given["adaptive_lr_bounds"]
    check_number("adaptive_lr_kl_target", target, low=0.0, low_inclusive=False, allow_none=True)
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise TypeError(f"`adaptive_lr_bounds` must be a pair (low, high), got {bounds!r}")
    check_number("adaptive_lr_bounds[0]", bounds[0], low=0.0, low_inclusive=False)
    check_number("adaptive_lr_bounds[1]", bounds[1], low=bounds[0])
    # rl-zoo3 wraps a float learning_rate in a ConstantSchedule: that is a constant
    if target is not None and callable(given["learning_rate"]) and not isinstance(given["learning_rate"], ConstantSchedule):
        raise ValueError(
            "`learning_rate` must be a float (the initial learning rate) when `adaptive_lr_kl_target` is set, got the "
            f"schedule {given['learning_rate']!r}"
        )
