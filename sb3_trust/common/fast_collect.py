"""
``OnPolicyAlgorithm.collect_rollouts`` on the lean policy path.

It is SB3's loop line for line (same VecEnv calls, same callbacks with the same local variable names, same
time-limit bootstrap, same buffer), except that the policy's forward pass goes through ``FastActorCritic``, which
computes the same actions, values and log-probabilities with the same random draws, without distribution objects.
"""

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv

from sb3_trust.common.fast_policy import FastActorCritic


def collect_rollouts_fast(
    self: Any,
    fast: FastActorCritic,
    env: VecEnv,
    callback: BaseCallback,
    rollout_buffer: RolloutBuffer,
    n_rollout_steps: int,
) -> bool:
    """
    Collect experiences using the current policy and fill a ``RolloutBuffer`` (SB3's semantics).

    :param self: the algorithm (an ``OnPolicyAlgorithm``); named ``self`` so callbacks see SB3's locals
    :param fast: the lean policy path of ``self.policy``
    :param env: The training environment
    :param callback: Callback that will be called at each step
        (and at the beginning and end of the rollout)
    :param rollout_buffer: Buffer to fill with rollouts
    :param n_rollout_steps: Number of experiences to collect per environment
    :return: True if function returned with at least `n_rollout_steps`
        collected, False if callback terminated rollout prematurely.
    """
    assert self._last_obs is not None, "No previous observation was provided"
    # Switch to eval mode (this affects batch norm / dropout)
    self.policy.set_training_mode(False)

    n_steps = 0
    rollout_buffer.reset()
    callback.on_rollout_start()
    is_box = isinstance(self.action_space, spaces.Box)
    is_discrete = isinstance(self.action_space, spaces.Discrete)

    while n_steps < n_rollout_steps:
        with th.no_grad():
            # Convert to pytorch tensor
            obs_tensor = th.as_tensor(self._last_obs, device=self.device)
            actions, values, log_probs = fast.forward(obs_tensor)
        actions = actions.cpu().numpy()

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
                    terminal_value = fast.values(fast.latent(terminal_obs)[1])[0]
                rewards[idx] += self.gamma * terminal_value

        rollout_buffer.add(
            self._last_obs,
            actions,
            rewards,
            self._last_episode_starts,
            values,
            log_probs,
        )
        self._last_obs = new_obs
        self._last_episode_starts = dones

    with th.no_grad():
        # Compute value for the last timestep
        values = fast.values(fast.latent(th.as_tensor(new_obs, device=self.device))[1])

    rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)

    callback.update_locals(locals())

    callback.on_rollout_end()

    return True
