"""Every invalid TrustPPO keyword fails in the constructor, naming the parameter and the value."""

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env

from sb3_trust import TrustPPO, linear_schedule
from tests.envs import SpaceEnv

BAD = [
    # (kwargs, exception, words the message must contain)
    (dict(clip_range=0.0), ValueError, ["clip_range", "0.0"]),
    (dict(clip_range=-0.1), ValueError, ["clip_range", "-0.1"]),
    (dict(clip_range="0.2"), TypeError, ["clip_range", "'0.2'"]),
    (dict(clip_range_vf=-0.2), ValueError, ["clip_range_vf", "-0.2"]),
    (dict(policy_loss="trust_me"), ValueError, ["policy_loss", "trust_me", "clip", "kl_penalty", "unclipped"]),
    (dict(policy_loss=None), TypeError, ["policy_loss", "None"]),
    (dict(vf_clip_mode="min", clip_range_vf=0.2), ValueError, ["vf_clip_mode", "min", "sb3", "max"]),
    (dict(vf_clip_mode="max"), ValueError, ["vf_clip_mode", "clip_range_vf", "None"]),
    (dict(policy_loss="kl_penalty", adaptive_kl_target=0.0), ValueError, ["adaptive_kl_target", "0.0"]),
    (dict(policy_loss="kl_penalty", adaptive_kl_target=-0.01), ValueError, ["adaptive_kl_target", "-0.01"]),
    (dict(adaptive_kl_target=0.01), ValueError, ["adaptive_kl_target", "policy_loss", "clip"]),
    (
        dict(policy_loss="kl_penalty", adaptive_kl_target=0.01, kl_coef=linear_schedule(1.0)),
        ValueError,
        ["kl_coef", "adaptive_kl_target"],
    ),
    (dict(policy_loss="kl_penalty", kl_coef=-1.0), ValueError, ["kl_coef", "-1.0"]),
    (dict(kl_coef=float("nan")), ValueError, ["kl_coef", "nan"]),
    (dict(target_kl=0.0), ValueError, ["target_kl", "0.0"]),
    (dict(target_kl=-1), ValueError, ["target_kl", "-1"]),
    (dict(batch_size=21, n_steps=64), ValueError, ["batch_size=21", "1 sample", "normalize_advantage"]),
    (dict(batch_size=1), ValueError, ["batch_size", "1", "normalize_advantage"]),
    (dict(batch_size=0, normalize_advantage=False), ValueError, ["batch_size", "0"]),
    (dict(batch_size=32.0), TypeError, ["batch_size", "32.0"]),
    (dict(n_steps=0), ValueError, ["n_steps", "0"]),
    (dict(n_epochs=0), ValueError, ["n_epochs", "0"]),
    (dict(learning_rate=-1e-3), ValueError, ["learning_rate", "-0.001"]),
    (dict(learning_rate="fast"), TypeError, ["learning_rate", "fast"]),
    (dict(gamma=1.5), ValueError, ["gamma", "1.5"]),
    (dict(gae_lambda=-0.1), ValueError, ["gae_lambda", "-0.1"]),
    (dict(vf_coef=-0.5), ValueError, ["vf_coef", "-0.5"]),
    (dict(max_grad_norm=0.0), ValueError, ["max_grad_norm", "0.0"]),
    (dict(ent_coef=float("inf")), ValueError, ["ent_coef", "inf"]),
    (dict(normalize_advantage="yes"), TypeError, ["normalize_advantage", "yes"]),
    (dict(sde_sample_freq=-2), ValueError, ["sde_sample_freq", "-2"]),
    (dict(stats_window_size=0), ValueError, ["stats_window_size", "0"]),
    (dict(backend="gpu"), ValueError, ["backend", "gpu", "auto", "reference", "accelerated"]),
    (dict(backend=None), TypeError, ["backend", "None"]),
]


@pytest.mark.parametrize("kwargs, error, words", BAD, ids=lambda x: str(x) if isinstance(x, dict) else "")
def test_bad_keyword_is_rejected_before_training(kwargs, error, words):
    params = dict(n_steps=64, batch_size=32, device="cpu")
    params.update(kwargs)
    with pytest.raises(error) as excinfo:
        TrustPPO("MlpPolicy", "CartPole-v1", **params)
    message = str(excinfo.value)
    for word in words:
        assert word in message, (word, message)


def test_buffer_of_one_sample_with_normalized_advantages():
    env = make_vec_env("CartPole-v1", n_envs=1)
    with pytest.raises(ValueError, match=r"n_steps \* n_envs"):
        TrustPPO("MlpPolicy", env, n_steps=1, batch_size=2)


@pytest.mark.parametrize("space", [spaces.Dict({"a": spaces.Discrete(2)}), spaces.Tuple([spaces.Discrete(2)])])
def test_unsupported_action_space(space):
    with pytest.raises(TypeError, match="action space") as excinfo:
        TrustPPO("MlpPolicy", SpaceEnv(space), n_steps=64, batch_size=32)
    assert "Box" in str(excinfo.value) and "Discrete" in str(excinfo.value)


def test_bad_schedule_value_fails_at_its_first_use():
    """A schedule can only be checked when it is evaluated: a negative value is an error naming the parameter."""
    model = TrustPPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, clip_range=lambda _: -0.1)
    with pytest.raises(ValueError, match="clip_range"):
        model.learn(64)


@pytest.mark.parametrize("algo", ["TrustPPO", "TrustTRPO"])
def test_learning_rate_schedule_that_goes_negative_is_refused(algo):
    """SB3 would train by gradient ascent; the schedule is checked when it is evaluated, and nothing is changed."""
    import sb3_trust

    cls = getattr(sb3_trust, algo)
    model = cls("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, learning_rate=lambda progress: progress - 0.5)
    with pytest.raises(ValueError, match=r"learning_rate.*-0\.25"):
        model.learn(64 * 4)
    # progress remaining 1 - 128/256 gives lr = 0 (allowed, as an annealed schedule's end); at 1 - 192/256 it is -0.25
    assert model.num_timesteps == 192
    for name, value in model.policy.state_dict().items():
        assert th.isfinite(value).all(), name


def test_batch_larger_than_the_rollout_warns_and_trains_as_sb3():
    """SB3 accepts batch_size > n_steps * n_envs (one minibatch of the whole rollout) and rl-zoo3's configs rely on it."""
    with pytest.warns(UserWarning, match="truncated mini-batch of size 8"):
        model = TrustPPO("MlpPolicy", "MountainCarContinuous-v0", n_steps=8, batch_size=256, device="cpu")
    model.learn(32)
    assert model._n_updates == 4 * model.n_epochs


def test_valid_extremes_are_accepted():
    # SB3 allows these; we must too (drop-in)
    TrustPPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, gamma=1.0, gae_lambda=0.0, ent_coef=-0.01)
    TrustPPO("MlpPolicy", SpaceEnv(spaces.Box(-1, 1, (2,), np.float32)), n_steps=64, batch_size=1, normalize_advantage=False)


def test_warnings_point_at_the_users_call():
    """A warning is attributed to the user's line (here, this file), not to the library line that found the problem."""
    with pytest.warns(UserWarning, match="mini-batch size") as record:
        TrustPPO("MlpPolicy", "CartPole-v1", n_steps=100, batch_size=64)
    assert [warning.filename for warning in record] == [__file__]
