"""
The settings of one TrustPPO update (every schedule evaluated at the current progress and checked, and the keywords
of the configured loss of the registry ``sb3_trust.ppo.losses.POLICY_LOSSES``), and the rules that adapt β and the
learning rate to the KL of each update.
"""

from typing import Any

import numpy as np

from sb3_trust.common.kl import AdaptiveKLController
from sb3_trust.common.learning_rates import AdaptiveLearningRate
from sb3_trust.common.reference import current_reference_coef, reference_active
from sb3_trust.common.update import LossSettings
from sb3_trust.common.validation import check_schedule_value
from sb3_trust.ppo.losses import POLICY_LOSSES
from sb3_trust.ppo.validation import KEYWORD_LOWER_BOUNDS


def loss_settings(model: Any) -> LossSettings:
    """
    :param model: the TrustPPO model (``model._kl_coef`` is set to the ``kl_coef`` schedule's value when β is not adaptive)
    :return: this update's settings, every schedule evaluated (at ``model._current_progress_remaining``) and checked
    """
    progress = model._current_progress_remaining
    clip_range = check_schedule_value("clip_range", model.clip_range(progress))
    clip_range_vf = None
    if model.clip_range_vf is not None:
        clip_range_vf = check_schedule_value("clip_range_vf", model.clip_range_vf(progress))
    if model.adaptive_kl_target is None:
        model._kl_coef = check_schedule_value("kl_coef", model.kl_coef_schedule(progress))
    current = {"clip_range": clip_range, "kl_coef": model._kl_coef}
    loss_kwargs = {}
    for name in POLICY_LOSSES[model.policy_loss].keywords:
        if name not in current:
            # A keyword of a registered loss: a model attribute (float or schedule); None: clip_range (ε_low, ε_high)
            value = getattr(model, name)
            value = value(progress) if callable(value) else value
            low = KEYWORD_LOWER_BOUNDS.get(name, -np.inf)
            current[name] = clip_range if value is None else check_schedule_value(name, value, low=low)
        loss_kwargs[name] = current[name]
    reference_coef = 0.0
    if reference_active(model) and model.reference_kl_mode == "loss":
        reference_coef = current_reference_coef(model)
    return LossSettings(
        policy_loss=model.policy_loss,
        loss_kwargs=loss_kwargs,
        clip_range=clip_range,
        clip_range_vf=clip_range_vf,
        vf_clip_mode=model.vf_clip_mode,
        ent_coef=check_schedule_value("ent_coef", model.ent_coef_schedule(progress), low=-np.inf),
        vf_coef=model.vf_coef,
        normalize_advantage=model.normalize_advantage,
        max_grad_norm=model.max_grad_norm,
        max_approx_kl=None if model.target_kl is None else 1.5 * model.target_kl,
        reference_coef=reference_coef,
    )


def adapt_to_kl(model: Any, kl: float) -> None:
    """
    The adaptive rules, after an update, from its exact KL(π_old ‖ π_new): the penalty's β (``adaptive_kl_target``) and
    the actor's learning rate (``adaptive_lr_kl_target``; set in the optimizer by the next update's
    ``_update_learning_rate``).

    :param model: the TrustPPO model (``model._kl_coef`` and ``model._adaptive_learning_rate`` are updated)
    :param kl: the update's exact KL
    """
    if model.adaptive_kl_target is not None:
        model._kl_coef = AdaptiveKLController(model.adaptive_kl_target).update(model._kl_coef, kl)
    if model.adaptive_lr_kl_target is not None:
        rule = AdaptiveLearningRate(model.adaptive_lr_kl_target, *model.adaptive_lr_bounds)
        model._adaptive_learning_rate = rule.update(model._adaptive_learning_rate, kl)
