"""Tiny envs with the action and observation spaces the tests need."""

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from benchmarks.envs import MaskedChoiceEnv  # the benchmark's masked env (one definition, used by the tests too)

__all__ = ["MaskedChoiceEnv", "SpaceEnv"]


class SpaceEnv(gym.Env):
    """
    A 20-step episode; the reward is higher when the action matches a function of the observation,
    so there is something to learn. Works with any action space.

    :param action_space: the action space
    :param dict_obs: use a Dict observation space
    :param image_obs: use an image observation space (for CnnPolicy)
    """

    def __init__(self, action_space: spaces.Space, dict_obs: bool = False, image_obs: bool = False) -> None:
        super().__init__()
        self.action_space = action_space
        vector = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        if image_obs:
            self.observation_space = spaces.Box(0, 255, shape=(36, 36, 1), dtype=np.uint8)
        elif dict_obs:
            self.observation_space = spaces.Dict({"vec": vector, "other": spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)})
        else:
            self.observation_space = vector
        self._t = 0

    def _obs(self):
        return self.observation_space.sample()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:  # seed=None at later resets: keep the stream (reproducible runs)
            self.observation_space.seed(seed)
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        self._t += 1
        reward = -float(np.mean(np.square(np.asarray(action, dtype=np.float32) - 0.5)))
        return self._obs(), reward, False, self._t >= 20, {}
