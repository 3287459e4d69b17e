"""Tiny envs with the action and observation spaces the tests need."""

import gymnasium as gym
import numpy as np
from gymnasium import spaces


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


class MaskedChoiceEnv(gym.Env):
    """
    Action masking matters: at each of the 10 steps a random pair of the 6 actions is valid, which only
    ``action_masks()`` tells (the observation is the time, t / 10); a valid action ``a`` earns ``a / 5``, an invalid one
    ends the episode with -10. With the masks, the best valid action scores ~7.3 per episode, a random valid one ~5;
    without, any fixed action is invalid 2 times in 3, and the best policy scores below 0.

    :param broken: ``"shape"``: masks of the wrong size; ``"empty"``: every action masked from step 3 (bad input tests)
    """

    n_actions, n_valid, horizon, penalty = 6, 2, 10, 10.0

    def __init__(self, broken: str | None = None) -> None:
        super().__init__()
        self.action_space = spaces.Discrete(self.n_actions)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self.broken = broken
        self._t = 0
        self._mask = np.ones(self.n_actions, dtype=bool)

    def _draw(self) -> np.ndarray:
        self._mask = np.zeros(self.n_actions, dtype=bool)
        self._mask[self.np_random.choice(self.n_actions, self.n_valid, replace=False)] = True
        return self._obs()

    def _obs(self) -> np.ndarray:
        return np.array([self._t / self.horizon], dtype=np.float32)

    def action_masks(self) -> np.ndarray:
        if self.broken == "shape":
            return np.ones(self.n_actions + 1, dtype=bool)
        if self.broken == "empty" and self._t >= 3:
            return np.zeros(self.n_actions, dtype=bool)
        return self._mask.copy()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self._draw(), {}

    def step(self, action):
        action = int(action)
        self._t += 1
        if not self._mask[action]:
            return self._obs(), -self.penalty, True, False, {}
        reward = action / (self.n_actions - 1)
        return self._draw(), reward, False, self._t >= self.horizon, {}
