"""
``OnPolicyAlgorithm.collect_rollouts`` with the policy evaluated by ``NumpyFusedActorCritic.forward_numpy`` and the
rollout buffer written directly.

It is ``sb3_trust.common.fast_collect.collect_rollouts_fast`` (itself SB3's loop line for line: same VecEnv calls,
same callbacks with the same local variable names and types, same time-limit bootstrap) with two differences that
remove per-step torch conversions: the forward pass returns NumPy arrays (``values``/``log_probs`` are handed to the
callbacks as torch views of them, as SB3's tensors), and the step is stored by writing the buffer's arrays, as
``RolloutBuffer.add`` does, for exactly SB3's ``RolloutBuffer`` and flat observations (what the lean path serves).
The random draws are the same calls on torch's RNG as SB3's; the fused NumPy network changes the last bits of the
values and log-likelihoods (see ``sb3_trust.common.fused_policy``).
"""

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv

from sb3_trust.common.fast_collect import collect_rollouts_fast
from sb3_trust.common.fast_policy import FastActorCritic
from sb3_trust.common.fused_policy import FusedActorCritic, NumpyFusedActorCritic


def collect_rollouts_numpy(
    self: Any,
    fused: NumpyFusedActorCritic,
    env: VecEnv,
    callback: BaseCallback,
    rollout_buffer: RolloutBuffer,
    n_rollout_steps: int,
) -> bool:
    """
    Collect experiences using the current policy and fill a ``RolloutBuffer`` (SB3's semantics).

    :param self: the algorithm (an ``OnPolicyAlgorithm``); named ``self`` so callbacks see SB3's locals
    :param fused: the fused NumPy network of ``self.policy``, refreshed, serving ``env.num_envs`` rows
    :param env: The training environment
    :param callback: Callback that will be called at each step
        (and at the beginning and end of the rollout)
    :param rollout_buffer: Buffer to fill with rollouts (exactly ``RolloutBuffer``, flat observations)
    :param n_rollout_steps: Number of experiences to collect per environment
    :return: True if function returned with at least `n_rollout_steps`
        collected, False if callback terminated rollout prematurely.
    """
    assert self._last_obs is not None, "No previous observation was provided"
    assert type(rollout_buffer) is RolloutBuffer and fused.supports_batch(env.num_envs)
    # Switch to eval mode (this affects batch norm / dropout)
    self.policy.set_training_mode(False)

    n_steps = 0
    rollout_buffer.reset()
    callback.on_rollout_start()
    is_box = isinstance(self.action_space, spaces.Box)
    is_discrete = isinstance(self.action_space, spaces.Discrete)
    action_shape = (env.num_envs, rollout_buffer.action_dim)

    while n_steps < n_rollout_steps:
        obs_tensor = th.as_tensor(self._last_obs)
        actions, values_np, log_probs_np = fused.forward_numpy(self._last_obs)
        # As SB3's tensors, for the callbacks' locals
        values, log_probs = th.from_numpy(values_np), th.from_numpy(log_probs_np)

        # Rescale and perform action
        clipped_actions = actions
        if is_box:
            # Clip the actions to avoid out of bound error, as we are sampling from an unbounded Gaussian distribution
            clipped_actions = np.clip(actions, self.action_space.low, self.action_space.high)

        new_obs, rewards, dones, infos = env.step(clipped_actions)

        self.num_timesteps += env.num_envs

        # Give access to local variables
        callback.update_locals(locals())
        if not callback.on_step():
            return False

        self._update_info_buffer(infos, dones)
        n_steps += 1

        if is_discrete:
            # Reshape in case of discrete action
            actions = actions.reshape(-1, 1)

        # Handle timeout by bootstrapping with value function
        # see GitHub issue #633
        for idx, done in enumerate(dones):
            if done and infos[idx].get("terminal_observation") is not None and infos[idx].get("TimeLimit.truncated", False):
                terminal_obs = self.policy.obs_to_tensor(infos[idx]["terminal_observation"])[0]
                with th.no_grad():
                    terminal_value = fused.values(fused.latent(terminal_obs)[1])[0]
                rewards[idx] += self.gamma * terminal_value

        # RolloutBuffer.add(self._last_obs, actions, rewards, self._last_episode_starts, values, log_probs)
        pos = rollout_buffer.pos
        rollout_buffer.observations[pos] = self._last_obs
        rollout_buffer.actions[pos] = actions.reshape(action_shape)
        rollout_buffer.rewards[pos] = rewards
        rollout_buffer.episode_starts[pos] = self._last_episode_starts
        rollout_buffer.values[pos] = values_np.reshape(-1)
        rollout_buffer.log_probs[pos] = log_probs_np
        rollout_buffer.pos = pos + 1
        if rollout_buffer.pos == rollout_buffer.buffer_size:
            rollout_buffer.full = True

        self._last_obs = new_obs
        self._last_episode_starts = dones

    with th.no_grad():
        # Compute value for the last timestep
        values = fused.values(fused.latent(th.as_tensor(new_obs, device=self.device))[1])

    rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)

    callback.update_locals(locals())

    callback.on_rollout_end()

    return True


def fused_policy(algorithm: Any, fast: FastActorCritic) -> FusedActorCritic | None:
    """
    :param algorithm: the algorithm; the fused network is cached on it (``_fused``/``_fused_for``, not saved)
    :param fast: the lean path of ``algorithm.policy``
    :return: the fused actor-critic forward pass for rollout collection (NumPy on the CPU), refreshed with the current
        parameters, or ``None`` if the policy cannot be fused
    """
    if not FusedActorCritic.can_fuse(fast):
        return None
    if getattr(algorithm, "_fused_for", None) is not algorithm.policy or getattr(algorithm, "_fused", None) is None:
        # NumPy for the few observations of a step on the CPU
        fused_class = NumpyFusedActorCritic if algorithm.device.type == "cpu" else FusedActorCritic
        algorithm._fused = fused_class(algorithm.policy)
        algorithm._fused_for = algorithm.policy
    algorithm._fused.refresh()
    return algorithm._fused


def collect_rollouts_lean(
    self: Any,
    fast: FastActorCritic,
    fused: FusedActorCritic | None,
    env: VecEnv,
    callback: BaseCallback,
    rollout_buffer: RolloutBuffer,
    n_rollout_steps: int,
) -> bool:
    """
    ``OnPolicyAlgorithm.collect_rollouts`` on the lean path: ``collect_rollouts_numpy`` when the fused NumPy network
    serves the VecEnv's batch, otherwise ``collect_rollouts_fast`` with the fused network or, without one, ``fast``.

    :param self: the algorithm
    :param fast: the lean path of its policy
    :param fused: the fused network (``fused_policy``), or ``None`` for the exact operations of SB3
    :return: see ``collect_rollouts_fast``
    """
    if isinstance(fused, NumpyFusedActorCritic) and fused.supports_batch(env.num_envs):
        return collect_rollouts_numpy(self, fused, env, callback, rollout_buffer, n_rollout_steps)
    return collect_rollouts_fast(self, fused or fast, env, callback, rollout_buffer, n_rollout_steps)
