"""
The optional accelerator: a faster computation of what the reference path computes, for the models it can run.

This module is its whole interface; nothing outside ``sb3_trust.accel`` imports anything else from it.

- ``can_run(model, part)`` says whether the accelerator can run ``part`` of ``model`` (``"collect"``: the rollout
  collection of TrustPPO and TrustTRPO; ``"train"``: TrustPPO's minibatch step, TrustTRPO's (and TrustNPG's) update),
  and if not, why (a reason string).
- ``collector(model)`` returns an object whose ``collect_rollouts(model, env, callback, rollout_buffer,
  n_rollout_steps) -> bool`` has the semantics of SB3's ``OnPolicyAlgorithm.collect_rollouts``.
- ``ppo_step(model)`` returns a ``PPOStep``: ``begin_update(old_policy)`` at the start of each update, then one call
  per minibatch, ``step(rollout_data, settings) -> MinibatchStats``, which does what TrustPPO's reference step does
  (loss, k3 early stop, non-finite check, gradient clipping, the optimizer's Adam step, in place on the policy's own
  parameters and optimizer state).
- ``trpo_step(model)`` returns a ``TRPOStep``: ``actor_problem(batch) -> ActorProblem`` (the surrogate, its gradient,
  the damped Fisher-vector product in closed form and the line search's evaluation, for TrustTRPO's CG and line search)
  and ``critic_step(actor_params) -> (value_losses, n_skipped)`` (the critic's epochs of minibatch Adam steps, in place
  on the policy's parameters and optimizer state, minibatches drawn from the rollout buffer as the reference path does).
- ``ACCELERATED_LOSSES``: the names of TrustPPO's registry that the accelerator implements. Any other loss is trained
  by the reference path.

The accelerator needs the ``fast`` extra (Numba, SciPy and threadpoolctl). Without it, or with ``SB3_TRUST_ACCEL=0`` in the
environment, ``can_run`` gives the reason and everything runs on the reference path. It declines models with
invalid-action masking (``use_masking``): the reference path runs them. It trains no model with a trust-region
projection (TrustPPO's ``projection``; it still collects their rollouts).
"""

import importlib
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the implementations import Numba; this module must import without it
    from sb3_trust.accel.collect import Collector
    from sb3_trust.accel.step import PPOStep
    from sb3_trust.accel.trpo import TRPOStep

ACCELERATED_LOSSES: frozenset[str] = frozenset({"clip", "kl_penalty", "unclipped"})
PARTS = ("collect", "train")
VF_CLIP_MODES = ("sb3", "max")
KL_CONVENTIONS = ("paper", "contrib")


def unavailable_reason() -> str | None:
    """
    :return: why the accelerator cannot run at all (disabled, or its dependencies missing), or ``None``
    """
    if os.environ.get("SB3_TRUST_ACCEL") == "0":
        return "disabled by SB3_TRUST_ACCEL=0"
    for module in ("numba", "scipy", "threadpoolctl"):
        try:
            importlib.import_module(module)
        except ImportError as error:
            return f'{module} is missing (pip install "sb3-trust[fast]"): {error}'
    return None


def _model_reason(model: Any) -> str | None:
    """:return: why the accelerator cannot run the model's collection (and its forward pass at all), or ``None``"""
    # Imported here: SB3 and torch are cheap to have, but this module is imported by everything
    from stable_baselines3.common.buffers import RolloutBuffer

    from sb3_trust.accel.network import policy_reason

    if getattr(model, "use_masking", False):
        return "action masks (the accelerator does not mask)"
    device = getattr(model, "device", None)
    if getattr(device, "type", None) != "cpu":
        return f"device {device} (the accelerator runs on the CPU)"
    reason = policy_reason(model.policy)
    if reason is not None:
        return reason
    buffer = getattr(model, "rollout_buffer", None)
    if type(buffer) is not RolloutBuffer:
        return f"rollout buffer {type(buffer).__name__} (the accelerator fills SB3's RolloutBuffer)"
    return None


def _optimizer_reason(policy: Any) -> str | None:
    """:return: why the accelerator cannot take the optimizer's steps, or ``None``"""
    import torch as th

    from sb3_trust.accel.network import policy_parameters

    optimizer = getattr(policy, "optimizer", None)
    if type(optimizer) is not th.optim.Adam:
        return f"optimizer {type(optimizer).__name__} (the accelerator implements th.optim.Adam)"
    if th.get_default_dtype() != th.float32:
        return f"default dtype {th.get_default_dtype()} (the accelerator keeps Adam's step in float32)"
    in_groups: set[int] = set()
    for group in optimizer.param_groups:
        for option in ("amsgrad", "maximize", "capturable", "differentiable"):
            if group.get(option, False):
                return f"Adam({option}=True) (the accelerator implements plain Adam)"
        in_groups.update(id(param) for param in group["params"])
    state = optimizer.state
    names = {id(param): name for name, param in policy.named_parameters()}
    for param in policy_parameters(policy):
        if id(param) not in in_groups:
            return f"parameter {names[id(param)]} is not in the optimizer's param groups"
        if not param.requires_grad:
            return f"parameter {names[id(param)]} does not require grad"
        if param in state and len(state[param]) > 0:
            entries = state[param]
            if set(entries) != {"step", "exp_avg", "exp_avg_sq"}:
                return f"Adam state with {sorted(entries)} (the accelerator keeps step, exp_avg, exp_avg_sq)"
            step = entries["step"]
            if not isinstance(step, th.Tensor) or step.dtype != th.float32 or step.dim() != 0 or step.device.type != "cpu":
                return "Adam's step is not a float32 CPU scalar tensor"
            for key in ("exp_avg", "exp_avg_sq"):
                moment = entries[key]
                if moment.dtype != th.float32 or moment.shape != param.shape or not moment.is_contiguous():
                    return f"Adam's {key} is not a contiguous float32 tensor of its parameter's shape"
    return None


def _reference_loss_reason(model: Any) -> str | None:
    """:return: the reason if the model places a reference KL in its loss, else ``None``"""
    if getattr(model, "_reference", None) is not None and getattr(model, "reference_kl_mode", None) == "loss":
        return "the reference KL in the loss (reference_kl_mode='loss')"
    return None


def _trpo_train_reason(model: Any) -> str | None:
    """:return: why the accelerator cannot run a TrustTRPO (or TrustNPG) model's update, or ``None``"""
    kl_convention = getattr(model, "kl_convention", None)
    if kl_convention not in KL_CONVENTIONS:
        return f"kl_convention {kl_convention!r} (the accelerator implements paper, contrib)"
    return _reference_loss_reason(model) or _optimizer_reason(model.policy)


def _train_reason(model: Any) -> str | None:
    """:return: why the accelerator cannot take the model's minibatch steps (TrustPPO) or update (TrustTRPO), or ``None``"""
    if hasattr(model, "cg_damping"):
        return _trpo_train_reason(model)
    if not hasattr(model, "policy_loss"):
        return "the accelerator trains TrustPPO, TrustTRPO and TrustNPG only"
    if model.policy_loss not in ACCELERATED_LOSSES:
        implemented = ", ".join(sorted(ACCELERATED_LOSSES))
        return f"policy_loss {model.policy_loss!r} (the accelerator implements {implemented})"
    if getattr(model, "projection", None) is not None:
        return f"projection {model.projection!r} (the accelerator does not project; the reference path trains it)"
    vf_clip_mode = getattr(model, "vf_clip_mode", None)
    if vf_clip_mode not in VF_CLIP_MODES:
        return f"vf_clip_mode {vf_clip_mode!r} (the accelerator implements sb3, max)"
    return _reference_loss_reason(model) or _optimizer_reason(model.policy)


def can_run(model: Any, part: str) -> str | None:
    """
    :param model: a TrustPPO or TrustTRPO model with its policy and rollout buffer built
    :param part: ``"collect"`` or ``"train"``
    :return: ``None`` if the accelerator can run that part of the model, else the reason why not
    """
    if part not in PARTS:
        raise ValueError(f"`part` must be one of {PARTS}, got {part!r}")
    reason = unavailable_reason() or _model_reason(model)
    if reason is None and part == "train":
        reason = _train_reason(model)
    return reason


def collector(model: Any) -> "Collector":
    """
    :param model: a model with ``can_run(model, "collect") is None``
    :return: an object whose ``collect_rollouts(model, env, callback, rollout_buffer, n_rollout_steps) -> bool`` has
        the semantics of SB3's ``OnPolicyAlgorithm.collect_rollouts``
    """
    reason = can_run(model, "collect")
    if reason is not None:
        raise ValueError(f"the accelerator cannot collect for this model: {reason}")
    from sb3_trust.accel.collect import Collector

    return Collector(model)


def ppo_step(model: Any) -> "PPOStep":
    """
    :param model: a TrustPPO model with ``can_run(model, "train") is None``
    :return: its minibatch step (``begin_update(old_policy)`` at the start of each update, then
        ``step(rollout_data, settings) -> MinibatchStats`` per minibatch)
    """
    reason = can_run(model, "train")
    if reason is not None:
        raise ValueError(f"the accelerator cannot train this model: {reason}")
    from sb3_trust.accel.step import PPOStep

    return PPOStep(model)


def trpo_step(model: Any) -> "TRPOStep":
    """
    :param model: a TrustTRPO (or TrustNPG) model with ``can_run(model, "train") is None``
    :return: its update (``actor_problem(batch) -> ActorProblem``, ``critic_step(actor_params) -> (value_losses,
        n_skipped)``)
    """
    reason = can_run(model, "train")
    if reason is not None:
        raise ValueError(f"the accelerator cannot train this model: {reason}")
    from sb3_trust.accel.trpo import TRPOStep

    return TRPOStep(model)
