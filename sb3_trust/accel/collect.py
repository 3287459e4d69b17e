"""
``OnPolicyAlgorithm.collect_rollouts`` with the policy's forward pass in a Numba kernel on views of its parameters.

The loop is SB3's, line for line: same VecEnv calls, same callbacks with the same local variable names (``values``
and ``log_probs`` are torch tensors sharing the kernel's outputs), same time-limit bootstrap, and the buffer written
as ``RolloutBuffer.add`` writes it. The random draws are the same calls on torch's RNG as SB3's (``Normal.rsample``'s
``empty(shape).normal_()``, ``Categorical.sample``'s ``multinomial(probs, 1, True)``), so a seeded run takes the same
actions; values and log-likelihoods agree with ``policy.forward`` to float32 rounding.
"""

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv

from sb3_trust.accel import kernels
from sb3_trust.accel.network import PackedPolicy
from sb3_trust.accel.threads import match_torch_threads
from sb3_trust.common.safety import NonFiniteError


class PolicyForward:
    """
    The kernel's forward pass of a packed policy for ``n_envs`` observations, with its buffers allocated once.

    :param packed: the packed policy
    """

    def __init__(self, packed: PackedPolicy) -> None:
        self.packed = packed
        self._buffers: dict[int, tuple[th.Tensor, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}

    def _outputs(self, n: int) -> tuple[th.Tensor, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:return: for ``n`` observations, the random draws (a tensor and its NumPy view), actions, values, log_probs"""
        if n not in self._buffers:
            k = self.packed.n_out
            draws = th.empty((n, k))
            self._buffers[n] = (
                draws,
                draws.numpy(),
                np.empty((n, k), np.float32),
                np.empty(n, np.float32),
                np.empty(n, np.float32),
            )
        return self._buffers[n]

    def forward(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """
        ``ActorCriticPolicy.forward`` (sampling): the same random draws as SB3 on torch's RNG.

        :param obs: observations [n, obs_dim]
        :return: actions (Discrete: int64 [n]; Box: float32 [n, action_dim]), values [n] and log-likelihoods [n], new
            arrays
        """
        obs = np.ascontiguousarray(obs, dtype=np.float32)
        n = obs.shape[0]
        draws, noise, actions, values, log_probs = self._outputs(n)
        packed = self.packed
        if packed.categorical:
            # Categorical.sample is multinomial(probs, 1, True), which for one sample takes argmax(p / q) with
            # q = empty_like(probs).exponential_(): the same draws on torch's RNG
            draws.exponential_()
            if kernels.collect_forward(
                packed.arrays, packed.layout, obs, kernels.CATEGORICAL_SAMPLE, noise, actions, values, log_probs
            ):
                raise NonFiniteError("non-finite action probabilities: the policy's output is NaN or infinite")
            return actions[:, 0].astype(np.int64), values.copy(), log_probs.copy()
        # Normal.rsample: eps = empty(shape).normal_(), drawn before the network runs (the forward pass draws nothing)
        draws.normal_()
        kernels.collect_forward(packed.arrays, packed.layout, obs, kernels.GAUSSIAN_SAMPLE, noise, actions, values, log_probs)
        return actions.copy(), values.copy(), log_probs.copy()

    def values(self, obs: np.ndarray) -> np.ndarray:
        """
        :param obs: observations [n, obs_dim]
        :return: ``policy.predict_values(obs)`` [n] (a new array)
        """
        obs = np.ascontiguousarray(obs, dtype=np.float32)
        _, noise, actions, values, log_probs = self._outputs(obs.shape[0])
        kernels.collect_forward(
            self.packed.arrays, self.packed.layout, obs, kernels.VALUES_ONLY, noise, actions, values, log_probs
        )
        return values.copy()


class Collector:
    """
    Rollout collection for a model whose policy the accelerator runs (``can_run(model, "collect") is None``).

    :param model: the algorithm
    """

    def __init__(self, model: Any) -> None:
        self._forward = PolicyForward(PackedPolicy(model.policy))

    def _current(self, model: Any) -> PolicyForward:
        """:return: the forward pass of ``model.policy`` as it is now (packed again if its tensors were replaced)"""
        if not self._forward.packed.is_current(model.policy):
            self._forward = PolicyForward(PackedPolicy(model.policy))
        return self._forward

    def collect_rollouts(
        self, model: Any, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        """
        Collect experiences using the current policy and fill a ``RolloutBuffer`` (SB3's semantics).

        :param model: the algorithm (an ``OnPolicyAlgorithm``)
        :param env: The training environment
        :param callback: Callback that will be called at each step (and at the beginning and end of the rollout)
        :param rollout_buffer: Buffer to fill with rollouts (exactly SB3's ``RolloutBuffer``)
        :param n_rollout_steps: Number of experiences to collect per environment
        :return: True if function returned with at least `n_rollout_steps` collected, False if callback terminated
            rollout prematurely.
        """
        match_torch_threads()
        return collect_rollouts(model, self._current(model), env, callback, rollout_buffer, n_rollout_steps)


def collect_rollouts(
    self: Any,
    policy_forward: PolicyForward,
    env: VecEnv,
    callback: BaseCallback,
    rollout_buffer: RolloutBuffer,
    n_rollout_steps: int,
) -> bool:
    """
    SB3's ``OnPolicyAlgorithm.collect_rollouts`` with the kernel's forward pass.

    :param self: the algorithm; named ``self`` so that the callbacks see SB3's local variables
    :param policy_forward: the forward pass of ``self.policy``
    :return: see ``Collector.collect_rollouts``
    """
    assert self._last_obs is not None, "No previous observation was provided"
    assert type(rollout_buffer) is RolloutBuffer
    # Switch to eval mode (this affects batch norm / dropout)
    self.policy.set_training_mode(False)

    n_steps = 0
    rollout_buffer.reset()
    callback.on_rollout_start()
    is_box = isinstance(self.action_space, spaces.Box)
    low, high = (self.action_space.low, self.action_space.high) if is_box else (None, None)
    is_discrete = isinstance(self.action_space, spaces.Discrete)
    action_shape = (env.num_envs, rollout_buffer.action_dim)

    while n_steps < n_rollout_steps:
        # as SB3's obs_to_tensor: a tensor sharing the observations' memory (from_numpy needs a writable array)
        obs_tensor = th.from_numpy(self._last_obs) if self._last_obs.flags.writeable else th.as_tensor(self._last_obs)
        actions, values_np, log_probs_np = policy_forward.forward(self._last_obs)
        # As SB3's tensors, for the callbacks' locals
        values, log_probs = th.from_numpy(values_np.reshape(-1, 1)), th.from_numpy(log_probs_np)

        # Rescale and perform action
        clipped_actions = actions
        if is_box:
            # Clip the actions to avoid out of bound error, as we are sampling from an unbounded Gaussian distribution
            # np.clip(actions, low, high), which NumPy computes as minimum(maximum(.)) behind slower dispatch
            clipped_actions = np.minimum(np.maximum(actions, low), high)

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
                terminal_obs = np.asarray(infos[idx]["terminal_observation"]).reshape(1, -1)
                terminal_value = th.from_numpy(policy_forward.values(terminal_obs))
                rewards[idx] += self.gamma * terminal_value

        # RolloutBuffer.add(self._last_obs, actions, rewards, self._last_episode_starts, values, log_probs)
        pos = rollout_buffer.pos
        rollout_buffer.observations[pos] = self._last_obs
        rollout_buffer.actions[pos] = actions.reshape(action_shape)
        rollout_buffer.rewards[pos] = rewards
        rollout_buffer.episode_starts[pos] = self._last_episode_starts
        rollout_buffer.values[pos] = values_np
        rollout_buffer.log_probs[pos] = log_probs_np
        rollout_buffer.pos = pos + 1
        if rollout_buffer.pos == rollout_buffer.buffer_size:
            rollout_buffer.full = True

        self._last_obs = new_obs
        self._last_episode_starts = dones

    # Compute value for the last timestep
    values = th.from_numpy(policy_forward.values(new_obs).reshape(-1, 1))

    rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)

    callback.update_locals(locals())

    callback.on_rollout_end()

    return True
