"""
A KL penalty toward a frozen reference policy, as in RLHF (Ziegler et al. 2019, https://arxiv.org/abs/1909.08593;
Ouyang et al. 2022): fine-tune a pretrained policy on a reward while β·KL(π ‖ π_ref) keeps it near the reference.

Two placements:

- ``"reward"`` (reward shaping, as in RLHF): each reward becomes ``r_t - β·(log π(a_t|s_t) - log π_ref(a_t|s_t))``,
  with the behaviour policy's log-probability of the action taken (a one-sample estimate of KL(π ‖ π_ref)),
  applied before GAE;
- ``"loss"``: ``β·mean_s KL(π(·|s) ‖ π_ref(·|s))`` added to the policy loss, exact (closed form, summed over action
  dimensions) for the Categorical and Gaussian families.

β is fixed, scheduled, or adapted toward a target KL by the proportional controller of Ziegler et al. (2019).
The reference is frozen: never trained and never saved inside the model. A path is recorded and reloaded with the
model; a policy object given directly must be given again after ``load()`` (``set_reference_policy``).
"""

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.save_util import load_from_zip_file

from sb3_trust.common.kl import rollout_kl
from sb3_trust.common.policy_utils import frozen_copy

REFERENCE_KL_MODES = ("reward", "loss")


def shaped_rewards(rewards: np.ndarray, log_prob: np.ndarray, reference_log_prob: np.ndarray, coef: float) -> np.ndarray:
    """
    RLHF reward shaping: ``r - β·(log π(a|s) - log π_ref(a|s))``.

    :param rewards: rewards
    :param log_prob: log π(a|s) of the actions taken, under the policy that took them
    :param reference_log_prob: log π_ref(a|s)
    :param coef: β
    :return: shaped rewards
    """
    return rewards - coef * (log_prob - reference_log_prob)


@dataclass(frozen=True)
class ProportionalKLController:
    """
    The adaptive KL coefficient of Ziegler et al. (2019), section 2.2 (as in trl's ``AdaptiveKLController``):
    ``e = clip(KL / target - 1, -0.2, 0.2)``, ``β ← β·(1 + e·n / horizon)`` where ``n`` is the number of samples since
    the last update.

    :param target: KL target
    :param horizon: the horizon of the controller, in samples
    """

    target: float
    horizon: int = 10_000

    def update(self, coef: float, kl: float, n_samples: int) -> float:
        """
        :param coef: current β
        :param kl: measured mean KL(π ‖ π_ref)
        :param n_samples: samples since the last update
        :return: new β
        """
        error = float(np.clip(kl / self.target - 1.0, -0.2, 0.2))
        return float(coef * (1.0 + error * n_samples / self.horizon))


def _policy_from_saved_model(path: str, device: th.device | str) -> ActorCriticPolicy:
    """
    Build the policy stored in an SB3 model file (any on-policy SB3/sb3-contrib/sb3_trust algorithm) without the
    algorithm class. Building a policy initialises weights with the torch RNG: the caller restores it.
    """
    data, params, _ = load_from_zip_file(path, device=device, print_system_info=False)
    if data is None or params is None or "policy" not in params:
        raise ValueError(f"`reference_policy={path!r}` holds no policy parameters")
    policy_class = data["policy_class"]
    if not (isinstance(policy_class, type) and issubclass(policy_class, ActorCriticPolicy)):
        raise TypeError(f"`reference_policy={path!r}` holds a {policy_class}, not an ActorCriticPolicy")
    # As BaseAlgorithm builds it: use_sde is stored beside policy_kwargs, not inside them
    policy = policy_class(
        data["observation_space"],
        data["action_space"],
        lambda _: 0.0,
        use_sde=data.get("use_sde", False),
        **data.get("policy_kwargs", {}),
    )
    policy.load_state_dict(params["policy"])
    return policy.to(device)


def fingerprint(policy: ActorCriticPolicy) -> str:
    """
    :param policy: a policy
    :return: a short hash of its parameters, to recognise the reference after a reload
    """
    digest = hashlib.sha256()
    for name, value in sorted(policy.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class ReferencePolicy:
    """
    The frozen reference policy π_ref.

    :param reference: a path to a saved SB3 model (``.zip``), an SB3 model, or an ``ActorCriticPolicy``
    :param observation_space: the algorithm's observation space (must match the reference's)
    :param action_space: the algorithm's action space (must match the reference's)
    :param device: torch device
    """

    def __init__(
        self,
        reference: "str | os.PathLike | BaseAlgorithm | ActorCriticPolicy",
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str,
    ) -> None:
        if isinstance(reference, (str, os.PathLike)):
            if not os.path.exists(reference) and not os.path.exists(f"{reference}.zip"):
                raise ValueError(f"`reference_policy={reference!r}`: no such file")
            with th.random.fork_rng(devices=[]):  # building a policy must not change the training's random stream
                policy = _policy_from_saved_model(str(reference), device)
        elif isinstance(reference, BaseAlgorithm):
            policy = reference.policy  # type: ignore[assignment]
        else:
            policy = reference  # type: ignore[assignment]
        if not isinstance(policy, ActorCriticPolicy):
            raise TypeError(
                f"`reference_policy` must be a path to a saved model, an SB3 model or an ActorCriticPolicy, "
                f"got {type(reference).__name__}"
            )
        if policy.observation_space != observation_space or policy.action_space != action_space:
            raise ValueError(
                f"`reference_policy` has observation space {policy.observation_space} and action space "
                f"{policy.action_space}, but the env has {observation_space} and {action_space}: they must be equal"
            )
        self.policy = frozen_copy(policy).to(device)
        self.fingerprint = fingerprint(self.policy)
        self.action_space = action_space

    def distribution(self, obs: Any) -> Distribution:
        """:return: π_ref(·|obs) as an SB3 distribution (valid until the next call)"""
        with th.no_grad():
            return self.policy.get_distribution(obs)

    def rollout_log_prob(self, rollout_buffer: RolloutBuffer) -> np.ndarray:
        """
        :param rollout_buffer: a full rollout buffer, not yet flattened (``[n_steps, n_envs, ...]``)
        :return: log π_ref(a_t|s_t) for every step of the rollout, shape ``[n_steps, n_envs]``
        """
        n_steps, n_envs = rollout_buffer.buffer_size, rollout_buffer.n_envs
        observations = rollout_buffer.observations
        if isinstance(observations, dict):
            obs: Any = {
                key: th.as_tensor(value.reshape(n_steps * n_envs, *value.shape[2:])) for key, value in observations.items()
            }
        else:
            obs = th.as_tensor(observations.reshape(n_steps * n_envs, *observations.shape[2:]))
        actions = th.as_tensor(rollout_buffer.actions.reshape(n_steps * n_envs, -1))
        if isinstance(self.action_space, spaces.Discrete):
            actions = actions.long().flatten()
        with th.no_grad():
            log_prob = self.distribution(obs).log_prob(actions)
        return log_prob.cpu().numpy().reshape(n_steps, n_envs)

    def rollout_kl(self, policy: ActorCriticPolicy, rollout_buffer: RolloutBuffer) -> float:
        """
        :param policy: the policy being trained
        :param rollout_buffer: a full, flattened rollout buffer
        :return: mean exact KL(π ‖ π_ref) over the states of the rollout
        """
        return rollout_kl(policy, self.policy, rollout_buffer)


def shape_rollout_rewards(
    reference: ReferencePolicy,
    rollout_buffer: RolloutBuffer,
    policy: ActorCriticPolicy,
    last_obs: Any,
    last_episode_starts: np.ndarray,
    coef: float,
) -> float:
    """
    Apply the RLHF reward shaping to a freshly collected rollout and recompute GAE, exactly as SB3's
    ``collect_rollouts`` computed it (same last values and dones).

    :param reference: π_ref
    :param rollout_buffer: the rollout buffer, full, not yet flattened
    :param policy: the policy that collected the rollout
    :param last_obs: the observation after the last step (``algo._last_obs``)
    :param last_episode_starts: the dones of the last step (``algo._last_episode_starts``)
    :param coef: β
    :return: the share of reward removed by the penalty, ``sum(β·(log π - log π_ref)) / sum(|r|)``
    """
    reference_log_prob = reference.rollout_log_prob(rollout_buffer)
    original = rollout_buffer.rewards.copy()
    rollout_buffer.rewards = shaped_rewards(original, rollout_buffer.log_probs, reference_log_prob, coef).astype(
        original.dtype
    )
    with th.no_grad():
        obs, _ = policy.obs_to_tensor(last_obs)
        last_values = policy.predict_values(obs)  # type: ignore[arg-type]
    rollout_buffer.compute_returns_and_advantage(last_values=last_values, dones=last_episode_starts)
    removed = float(np.sum(original - rollout_buffer.rewards))
    return removed / max(float(np.sum(np.abs(original))), 1e-8)


# --- The algorithm side, shared by TrustPPO and TrustTRPO ------------------------------------------------------------
# The algorithm keeps these attributes (saved with the model unless said otherwise):
#   reference_policy (path or None), reference_kl_coef, reference_kl_mode, reference_kl_target, reference_kl_horizon,
#   reference_policy_fingerprint, _reference_kl_coef (current β);
#   not saved: _reference (the frozen ReferencePolicy), _reference_object (an object given instead of a path).
REFERENCE_EXCLUDED_SAVE_PARAMS = ("_reference", "_reference_object", "reference_kl_coef_schedule")


REFERENCE_KWARGS = ("reference_kl_coef", "reference_kl_mode", "reference_kl_target", "reference_kl_horizon")


def check_reference_kwargs(given: Mapping[str, Any]) -> None:
    """
    Validate the reference-KL keywords (``ValueError``/``TypeError`` naming the keyword).

    :param given: ``reference_policy`` and the ``REFERENCE_KWARGS`` (e.g. the constructor's ``locals()``)
    """
    from sb3_trust.common.validation import check_choice, check_number

    reference_policy, coef, target = given["reference_policy"], given["reference_kl_coef"], given["reference_kl_target"]
    if reference_policy is not None and not isinstance(reference_policy, (str, os.PathLike, BaseAlgorithm, ActorCriticPolicy)):
        raise TypeError(
            "`reference_policy` must be None, a path to a saved model, an SB3 model or an ActorCriticPolicy, "
            f"got {type(reference_policy).__name__}"
        )
    check_number("reference_kl_coef", coef, low=0.0, allow_schedule=True)
    check_choice("reference_kl_mode", given["reference_kl_mode"], REFERENCE_KL_MODES)
    check_number("reference_kl_target", target, low=0.0, low_inclusive=False, allow_none=True)
    check_number("reference_kl_horizon", given["reference_kl_horizon"], low=1, integer=True)
    if target is not None and callable(coef):
        raise ValueError(
            f"`reference_kl_coef` must be a float (the initial β) when `reference_kl_target` is set, got {coef!r}"
        )


def set_reference_source(algo: Any, reference_policy: Any) -> None:
    """
    Record where the reference policy comes from: a path is saved with the model (``reference_policy``), an object is
    not (``_reference_object``).

    :param algo: the algorithm
    :param reference_policy: path, model, policy or None
    """
    is_path = isinstance(reference_policy, (str, os.PathLike))
    algo.reference_policy = os.fspath(reference_policy) if is_path else None
    algo._reference_object = None if is_path else reference_policy


def init_reference(algo: Any, given: Mapping[str, Any]) -> None:
    """
    Store the reference settings on the algorithm (from ``__init__``).

    :param algo: the algorithm
    :param given: the constructor's keywords: ``reference_policy`` (path, model, policy or None) and the
        ``REFERENCE_KWARGS``
    """
    check_reference_kwargs(given)
    for name in REFERENCE_KWARGS:
        setattr(algo, name, given[name])
    set_reference_source(algo, given["reference_policy"])
    algo.reference_policy_fingerprint = None
    coef = given["reference_kl_coef"]
    algo._reference_kl_coef = float(coef(1.0) if callable(coef) else coef)
    algo._reference = None


def setup_reference(algo: Any) -> None:
    """
    Build the frozen reference (from ``_setup_model``; also after ``load()``, from the recorded path).
    A reference given as an object is not saved: after ``load()`` it must be attached with ``set_reference_policy``.
    """
    from stable_baselines3.common.utils import FloatSchedule

    algo.reference_kl_coef_schedule = FloatSchedule(algo.reference_kl_coef)
    source = algo._reference_object if algo._reference_object is not None else algo.reference_policy
    if source is None:
        algo._reference = None
        return
    reference = ReferencePolicy(source, algo.observation_space, algo.action_space, algo.device)
    recorded = algo.reference_policy_fingerprint
    if recorded is not None and recorded != reference.fingerprint:
        from sb3_trust.common.messages import warn

        warn(
            f"The reference policy at {algo.reference_policy!r} is not the one this model was trained with "
            f"(fingerprint {reference.fingerprint}, recorded {recorded}): put the original file back at that path, or "
            "call set_reference_policy(...) with the policy to continue from (the new one is then recorded)"
        )
    algo.reference_policy_fingerprint = reference.fingerprint
    algo._reference = reference


def reference_active(algo: Any) -> bool:
    """
    :return: whether a reference KL is configured; raises if one was configured but is not attached (after load)
    """
    if algo._reference is not None:
        return True
    if algo.reference_policy_fingerprint is not None:
        raise ValueError(
            f"This model was trained with a reference policy given as an object (fingerprint "
            f"{algo.reference_policy_fingerprint}), which is not saved with the model: attach it with "
            "model.set_reference_policy(...) before training"
        )
    return False


def current_reference_coef(algo: Any) -> float:
    """:return: β for this update (scheduled, fixed, or the adaptive controller's current value)"""
    from sb3_trust.common.validation import check_schedule_value

    if algo.reference_kl_target is None:
        value = algo.reference_kl_coef_schedule(algo._current_progress_remaining)
        algo._reference_kl_coef = check_schedule_value("reference_kl_coef", value)
    return algo._reference_kl_coef


def after_collection(algo: Any) -> None:
    """
    Reward shaping (``reference_kl_mode="reward"``) of the rollout just collected, before the update.
    """
    if not reference_active(algo) or algo.reference_kl_mode != "reward":
        return
    coef = current_reference_coef(algo)
    # β = 0 shapes nothing: the rollout's returns stay as collected
    share = 0.0
    if coef != 0:
        share = shape_rollout_rewards(
            algo._reference, algo.rollout_buffer, algo.policy, algo._last_obs, algo._last_episode_starts, coef
        )
    algo.logger.record("train/ref_reward_share", share)


def after_update(algo: Any) -> None:
    """
    Measure KL(π ‖ π_ref) over the rollout after the update, log it, and adapt β toward the target if set.
    """
    if not reference_active(algo):
        return
    kl = algo._reference.rollout_kl(algo.policy, algo.rollout_buffer)
    algo.logger.record("train/ref_kl", kl)
    algo.logger.record("train/ref_kl_coef", algo._reference_kl_coef)
    if algo.reference_kl_target is not None:
        n_samples = algo.rollout_buffer.buffer_size * algo.rollout_buffer.n_envs
        controller = ProportionalKLController(algo.reference_kl_target, algo.reference_kl_horizon)
        algo._reference_kl_coef = controller.update(algo._reference_kl_coef, kl, n_samples)
