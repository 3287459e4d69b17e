"""
Invalid-action masking, with sb3-contrib's interface (``MaskablePPO``), as a setting of TrustPPO and TrustTRPO.

- The env gives the masks: its ``action_masks()`` method, or sb3-contrib's ``ActionMasker`` wrapper (read with
  ``sb3_contrib.common.maskable.utils.get_action_masks``); one boolean per action (``MultiDiscrete``: the sub-spaces'
  masks concatenated; ``MultiBinary(n)``: two per binary action), True for a valid action.
- ``use_masking`` (``"auto"`` by default: on when the env has ``action_masks()`` or the policy is maskable) selects
  sb3-contrib's maskable policies (``MlpPolicy`` -> ``MaskableActorCriticPolicy``, ...) and rollout buffers
  (``MaskableRolloutBuffer``, ``MaskableDictRolloutBuffer``); ``collect_masked_rollouts`` is ``MaskablePPO``'s
  collection, with the masks checked.
- The algorithms pass the buffer's masks to ``evaluate_actions`` / ``get_distribution`` (``mask_kwargs``); the KL of
  masked distributions is in ``sb3_trust.common.kl`` (masked actions contribute ``0·log 0 = 0``).
"""

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.common.maskable.buffers import MaskableDictRolloutBuffer, MaskableRolloutBuffer
from sb3_contrib.common.maskable.policies import (
    MaskableActorCriticCnnPolicy,
    MaskableActorCriticPolicy,
    MaskableMultiInputActorCriticPolicy,
)
from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy, MultiInputActorCriticPolicy
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

MASKABLE_SPACES = (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
# SB3's policy classes (what "MlpPolicy", "CnnPolicy" and "MultiInputPolicy" name) and their maskable counterparts
MASKABLE_POLICIES: dict[type, type[MaskableActorCriticPolicy]] = {
    ActorCriticPolicy: MaskableActorCriticPolicy,
    ActorCriticCnnPolicy: MaskableActorCriticCnnPolicy,
    MultiInputActorCriticPolicy: MaskableMultiInputActorCriticPolicy,
}
MASKABLE_BUFFERS = (MaskableRolloutBuffer, MaskableDictRolloutBuffer)


def mask_sizes(action_space: spaces.Space) -> list[int]:
    """
    :param action_space: a ``Discrete``, ``MultiDiscrete`` or ``MultiBinary`` space
    :return: the number of mask entries of each independent action dimension (the mask is their concatenation)
    """
    if isinstance(action_space, spaces.Discrete):
        return [int(action_space.n)]
    if isinstance(action_space, spaces.MultiDiscrete):
        return [int(n) for n in action_space.nvec.flatten()]
    assert isinstance(action_space, spaces.MultiBinary)
    return [2] * int(np.prod(action_space.n))


def setup_masking(algorithm: Any, use_masking: bool | str) -> None:
    """
    Resolve ``use_masking`` and, when it is on, choose the maskable policy class (and check the rollout buffer's).
    Called in the algorithm's ``__init__`` after ``OnPolicyAlgorithm.__init__`` (before ``_setup_model``); sets
    ``algorithm.use_masking`` (a bool, saved with the model).

    :param algorithm: a TrustPPO or TrustTRPO model
    :param use_masking: ``True``, ``False`` or ``"auto"`` (on when the env has ``action_masks()`` or the policy is a
        ``MaskableActorCriticPolicy``)
    :raise ValueError: for an env without ``action_masks()``, an action space, policy or buffer
        that cannot mask
    """
    name = type(algorithm).__name__
    policy_class, env = algorithm.policy_class, algorithm.env
    maskable_policy = is_maskable_policy(policy_class)
    if env is None:  # load(): the saved setting and classes are restored after __init__
        algorithm.use_masking = maskable_policy if use_masking == "auto" else bool(use_masking)
        return
    if use_masking == "auto":
        masks_available = isinstance(algorithm.action_space, MASKABLE_SPACES) and is_masking_supported(env)
        use_masking = maskable_policy or masks_available
    if use_masking:
        if not isinstance(algorithm.action_space, MASKABLE_SPACES):
            raise ValueError(
                f"{name}: action masking needs a Discrete, MultiDiscrete or MultiBinary action space, "
                f"got {algorithm.action_space}"
            )
        if not is_masking_supported(env):
            raise ValueError(
                f"{name}: `use_masking=True` needs an env with an `action_masks()` method; this one has none. Consider "
                "sb3_contrib.common.wrappers.ActionMasker, or use_masking=False"
            )
        if algorithm.use_sde:
            raise ValueError(f"{name}: action masking and gSDE (use_sde=True) do not go together (discrete actions)")
        if not maskable_policy:
            if policy_class not in MASKABLE_POLICIES:
                raise ValueError(
                    f"{name}: action masking needs a policy that subclasses sb3-contrib's MaskableActorCriticPolicy, "
                    f"got {getattr(policy_class, '__name__', policy_class)}"
                )
            algorithm.policy_class = MASKABLE_POLICIES[policy_class]
        # None: the maskable buffer, chosen by setup_masked_model
        if algorithm.rollout_buffer_class is not None and not issubclass(algorithm.rollout_buffer_class, MASKABLE_BUFFERS):
            raise ValueError(
                f"{name}: action masking needs a MaskableRolloutBuffer or MaskableDictRolloutBuffer, got "
                f"rollout_buffer_class={algorithm.rollout_buffer_class.__name__}"
            )
        if (
            getattr(algorithm, "reference_policy", None) is not None
            or getattr(algorithm, "_reference_object", None) is not None
        ):
            raise ValueError(f"{name}: a reference policy (reference_policy) with action masking is not supported yet")
    algorithm.use_masking = bool(use_masking)


def is_maskable_policy(policy_class: Any) -> bool:
    """:return: whether ``policy_class`` is an sb3-contrib maskable policy class"""
    return isinstance(policy_class, type) and issubclass(policy_class, MaskableActorCriticPolicy)


def setup_masked_model(algorithm: Any) -> None:
    """
    ``OnPolicyAlgorithm._setup_model`` for a maskable policy, as ``MaskablePPO._setup_model`` (sb3-contrib's policies
    take no ``use_sde``): the learning-rate schedule, the seed, the policy, the rollout buffer.

    :param algorithm: a TrustPPO or TrustTRPO model whose ``policy_class`` is a ``MaskableActorCriticPolicy``
    """
    algorithm._setup_lr_schedule()
    algorithm.set_random_seed(algorithm.seed)
    policy = algorithm.policy_class(
        algorithm.observation_space, algorithm.action_space, algorithm.lr_schedule, **algorithm.policy_kwargs
    )
    algorithm.policy = policy.to(algorithm.device)
    if algorithm.rollout_buffer_class is None:
        dict_obs = isinstance(algorithm.observation_space, spaces.Dict)
        algorithm.rollout_buffer_class = MaskableDictRolloutBuffer if dict_obs else MaskableRolloutBuffer
    algorithm.rollout_buffer = algorithm.rollout_buffer_class(
        algorithm.n_steps,
        algorithm.observation_space,
        algorithm.action_space,
        algorithm.device,
        gamma=algorithm.gamma,
        gae_lambda=algorithm.gae_lambda,
        n_envs=algorithm.n_envs,
        **algorithm.rollout_buffer_kwargs,
    )


def mask_kwargs(samples: Any) -> dict[str, th.Tensor]:
    """
    :param samples: rollout-buffer samples (``MaskableRolloutBufferSamples`` carry ``action_masks``)
    :return: ``{"action_masks": masks}`` for the policy's ``evaluate_actions`` / ``get_distribution``, or ``{}``
    """
    masks = getattr(samples, "action_masks", None)
    return {} if masks is None else {"action_masks": masks}


def checked_action_masks(algorithm: Any, env: VecEnv, n_steps: int) -> np.ndarray:
    """
    The env's masks for the current step, checked.

    :param algorithm: the model (for its action space and ``num_timesteps``)
    :param env: the training VecEnv
    :param n_steps: the step of the rollout (for the message)
    :return: the masks, shape ``[n_envs, sum(mask_sizes)]``
    :raise ValueError: naming the step, for masks of the wrong shape or a state in which every action is masked
    """
    name, sizes = type(algorithm).__name__, mask_sizes(algorithm.action_space)
    where = f"rollout step {n_steps} (timestep {algorithm.num_timesteps})"
    masks = np.asarray(get_action_masks(env))
    if masks.size != env.num_envs * sum(sizes):
        raise ValueError(
            f"{name}: action_masks() returned masks of shape {masks.shape} at {where}; expected "
            f"({env.num_envs}, {sum(sizes)}): one boolean per action of {algorithm.action_space} for each of the "
            f"{env.num_envs} env(s)"
        )
    masks = masks.reshape(env.num_envs, sum(sizes))
    for dimension, split in enumerate(np.split(masks.astype(bool), np.cumsum(sizes)[:-1], axis=1)):
        no_valid = ~split.any(axis=1)
        if no_valid.any():
            env_index = int(np.argmax(no_valid))
            raise ValueError(
                f"{name}: every action of action dimension {dimension} is masked for env {env_index} at {where}: at "
                "least one action must be valid in every state"
            )
    return masks


def collect_masked_rollouts(
    algorithm: Any, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
) -> bool:
    """
    sb3-contrib ``MaskablePPO.collect_rollouts`` with ``use_masking=True`` (same operations, same random numbers): the
    policy acts with the env's masks, which are stored in the ``MaskableRolloutBuffer``; the masks are checked.

    :return: True if ``n_rollout_steps`` were collected, False if a callback stopped the rollout
    """
    assert isinstance(rollout_buffer, MASKABLE_BUFFERS), "RolloutBuffer doesn't support action masking"
    assert algorithm._last_obs is not None, "No previous observation was provided"
    # Switch to eval mode (this affects batch norm / dropout)
    algorithm.policy.set_training_mode(False)
    n_steps = 0
    rollout_buffer.reset()
    if not is_masking_supported(env):
        raise ValueError(f"{type(algorithm).__name__}: the env has no `action_masks()` method. Consider using ActionMasker")

    callback.on_rollout_start()

    while n_steps < n_rollout_steps:
        with th.no_grad():
            # Convert to pytorch tensor or to TensorDict
            obs_tensor = obs_as_tensor(algorithm._last_obs, algorithm.device)
            action_masks = checked_action_masks(algorithm, env, n_steps)
            actions, values, log_probs = algorithm.policy(obs_tensor, action_masks=action_masks)

        actions = actions.cpu().numpy()
        new_obs, rewards, dones, infos = env.step(actions)

        algorithm.num_timesteps += env.num_envs

        # Give access to local variables
        callback.update_locals(locals())
        if not callback.on_step():
            return False

        algorithm._update_info_buffer(infos, dones)
        n_steps += 1

        if isinstance(algorithm.action_space, spaces.Discrete):
            # Reshape in case of discrete action
            actions = actions.reshape(-1, 1)

        # Handle timeout by bootstraping with value function, see GitHub issue #633
        for idx, done in enumerate(dones):
            if done and infos[idx].get("terminal_observation") is not None and infos[idx].get("TimeLimit.truncated", False):
                terminal_obs = algorithm.policy.obs_to_tensor(infos[idx]["terminal_observation"])[0]
                with th.no_grad():
                    terminal_value = algorithm.policy.predict_values(terminal_obs)[0]
                rewards[idx] += algorithm.gamma * terminal_value

        rollout_buffer.add(
            algorithm._last_obs,
            actions,
            rewards,
            algorithm._last_episode_starts,
            values,
            log_probs,
            action_masks=action_masks,
        )
        algorithm._last_obs = new_obs
        algorithm._last_episode_starts = dones

    with th.no_grad():
        # Value of the last observation (masks do not matter for the value)
        values = algorithm.policy.predict_values(obs_as_tensor(new_obs, algorithm.device))

    rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)

    callback.on_rollout_end()

    return True


def masked_predict(
    algorithm: Any,
    observation: np.ndarray | dict[str, np.ndarray],
    state: tuple[np.ndarray, ...] | None,
    episode_start: np.ndarray | None,
    deterministic: bool,
    action_masks: np.ndarray | None,
) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
    """
    ``predict`` with sb3-contrib's ``action_masks`` keyword (as ``MaskablePPO.predict``), the masks' size checked.

    :raise ValueError: masks given to a model whose policy cannot mask, or masks of the wrong size
    """
    if action_masks is None:
        return algorithm.policy.predict(observation, state, episode_start, deterministic)
    name = type(algorithm).__name__
    if not isinstance(algorithm.policy, MaskableActorCriticPolicy):
        raise ValueError(f"{name}.predict(action_masks=...): this model does not mask actions (use_masking=False)")
    size = sum(mask_sizes(algorithm.action_space))
    masks = np.asarray(action_masks)
    if masks.size == 0 or masks.shape[-1] != size:
        raise ValueError(
            f"{name}.predict: action_masks of shape {masks.shape}: expected one boolean per action of "
            f"{algorithm.action_space} ({size}) per observation, i.e. shape ({size},) or (n_envs, {size})"
        )
    return algorithm.policy.predict(observation, state, episode_start, deterministic, action_masks=action_masks)
