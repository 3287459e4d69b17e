"""
Envs of the benchmark that gymnasium does not ship: the masked env of the ``masked`` suite (registered here) and the
optional env packages of the ``extra`` suite (MiniGrid: registered by importing ``minigrid``, when installed).

:func:`register_envs` is called by the runner where a sweep is planned and in every run (worker processes and Ray
tasks included), so the ids resolve everywhere. For rl-zoo3's own commands, import this module with
``--gym-packages benchmarks.envs`` (from the repository root)::

    python -m sb3_trust.zoo train --algo ppo_mask --env SB3TrustMaskedChoice-v0 --gym-packages benchmarks.envs

The masked env lives here rather than in the ``sb3_trust`` package: it is a benchmark instrument (masking matters
there, by construction), not something the library's users need; the tests import it from here.
"""

import contextlib

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["MASKED_ENV_ID", "MaskedChoiceEnv", "package_hint", "register_envs"]

# The gymnasium id of MaskedChoiceEnv
MASKED_ENV_ID = "SB3TrustMaskedChoice-v0"
# Optional packages whose import registers env ids that the suites use, with the prefix of their ids (a missing one is
# not an error here: the runner's env checks name the env, and the package, see package_hint)
OPTIONAL_ENV_PACKAGES = {"minigrid": "MiniGrid-"}


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
        """:return: one boolean per action, True for the valid ones"""
        if self.broken == "shape":
            return np.ones(self.n_actions + 1, dtype=bool)
        if self.broken == "empty" and self._t >= 3:
            return np.zeros(self.n_actions, dtype=bool)
        return self._mask.copy()

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        """
        :param seed: seed of the mask draws
        :param options: unused
        :return: the first observation and an empty info dict
        """
        super().reset(seed=seed)
        self._t = 0
        return self._draw(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        """
        :param action: the chosen action
        :return: gymnasium's step tuple
        """
        action = int(action)
        self._t += 1
        if not self._mask[action]:
            return self._obs(), -self.penalty, True, False, {}
        reward = action / (self.n_actions - 1)
        return self._draw(), reward, False, self._t >= self.horizon, {}


def package_hint(env_id: str) -> str:
    """
    :param env_id: an env id
    :return: ``" (install <package>: ...)"`` when an optional env package registers it, else ``""``
    """
    for package, prefix in OPTIONAL_ENV_PACKAGES.items():
        if env_id.startswith(prefix):
            return f" (its envs come from the {package!r} package: pip install -e '.[benchmarks]')"
    return ""


def register_envs() -> None:
    """Register the benchmark's own env ids and import the optional env packages (idempotent)."""
    if MASKED_ENV_ID not in gym.registry:
        gym.register(MASKED_ENV_ID, entry_point=f"{__name__}:MaskedChoiceEnv")
    for package in OPTIONAL_ENV_PACKAGES:
        with contextlib.suppress(ImportError):
            __import__(package)


# rl-zoo3's --gym-packages imports this module: register on import
register_envs()
