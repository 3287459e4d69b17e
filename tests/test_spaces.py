"""
Whatever SB3 PPO and sb3-contrib TRPO train, TrustPPO and TrustTRPO train: every action space, Dict and image
observations, a float64 Box. Oracle: the references themselves, with the same seed, on the reference path; and the
default backend (the accelerator where it can run) trains the same spaces without error.
"""

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib import TRPO
from stable_baselines3 import PPO

from sb3_trust import TrustPPO, TrustTRPO
from tests.envs import SpaceEnv

CASES = [
    pytest.param(spaces.Box(-1, 1, (2, 2), np.float32), {}, id="box-2x2"),
    pytest.param(spaces.Box(-1, 1, (3,), np.float64), {}, id="box-float64"),
    pytest.param(spaces.MultiDiscrete([3, 2]), {}, id="multidiscrete"),
    pytest.param(spaces.MultiBinary(3), {}, id="multibinary"),
    pytest.param(spaces.Discrete(3), {"dict_obs": True}, id="dict-obs"),
    pytest.param(spaces.Box(-1, 1, (2,), np.float32), {"image_obs": True}, id="image-obs"),
]
SMALL = dict(n_steps=64, batch_size=32, seed=0, device="cpu", policy_kwargs=dict(net_arch=[12]))


def _policy(env_kwargs: dict) -> str:
    return "CnnPolicy" if env_kwargs.get("image_obs") else "MultiInputPolicy" if env_kwargs.get("dict_obs") else "MlpPolicy"


def _assert_same(ours: th.nn.Module, theirs: th.nn.Module) -> None:
    reference = theirs.state_dict()
    assert reference.keys() == ours.state_dict().keys()
    for name, value in ours.state_dict().items():
        th.testing.assert_close(value, reference[name], rtol=1e-6, atol=1e-7, msg=f"parameter {name} differs")


def _moved(model, seed_kwargs: dict, cls, env_kwargs, action_space) -> bool:
    fresh = cls(_policy(env_kwargs), SpaceEnv(action_space, **env_kwargs), **seed_kwargs)
    return any(not th.equal(a, b) for a, b in zip(fresh.policy.parameters(), model.policy.parameters(), strict=True))


@pytest.mark.parametrize("action_space, env_kwargs", CASES)
def test_trust_ppo_trains_what_sb3_ppo_trains(action_space, env_kwargs):
    kwargs = dict(SMALL, n_epochs=2)
    theirs = PPO(_policy(env_kwargs), SpaceEnv(action_space, **env_kwargs), **kwargs).learn(128)
    ours = TrustPPO(_policy(env_kwargs), SpaceEnv(action_space, **env_kwargs), backend="reference", **kwargs).learn(128)
    _assert_same(ours.policy, theirs.policy)
    assert _moved(ours, kwargs, TrustPPO, env_kwargs, action_space)
    # The default backend trains it too (on the accelerator where it claims the model)
    default = TrustPPO(_policy(env_kwargs), SpaceEnv(action_space, **env_kwargs), **kwargs).learn(128)
    assert all(th.isfinite(param).all() for param in default.policy.parameters())
    assert default.train_backend in ("reference", "accelerated") and default.collect_backend in ("reference", "accelerated")


@pytest.mark.parametrize("action_space, env_kwargs", CASES)
def test_trust_trpo_trains_what_contrib_trpo_trains(action_space, env_kwargs):
    kwargs = dict(SMALL, n_critic_updates=2)
    theirs = TRPO(_policy(env_kwargs), SpaceEnv(action_space, **env_kwargs), **kwargs).learn(128)
    ours = TrustTRPO(
        _policy(env_kwargs), SpaceEnv(action_space, **env_kwargs), kl_convention="contrib", backend="reference", **kwargs
    ).learn(128)
    _assert_same(ours.policy, theirs.policy)
    assert _moved(ours, kwargs, TrustTRPO, env_kwargs, action_space)
    default = TrustTRPO(_policy(env_kwargs), SpaceEnv(action_space, **env_kwargs), **kwargs).learn(128)
    assert all(th.isfinite(param).all() for param in default.policy.parameters())
