"""TrustPPO runs with every variant, policy type and supported action space."""

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.logger import configure

from sb3_trust import CosineSchedule, TrustPPO, linear_schedule
from tests.envs import SpaceEnv

SMALL = dict(n_steps=64, batch_size=32, n_epochs=2, policy_kwargs=dict(net_arch=[16]), seed=0, device="cpu")

ACTION_SPACES = {
    "box": spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32),
    "discrete": spaces.Discrete(3),
    "multidiscrete": spaces.MultiDiscrete([3, 2]),
    "multibinary": spaces.MultiBinary(3),
}

VARIANTS = [
    dict(policy_loss="clip"),
    dict(policy_loss="kl_penalty", kl_coef=0.5),
    dict(policy_loss="kl_penalty", adaptive_kl_target=0.01),
    dict(policy_loss="kl_penalty", kl_coef=CosineSchedule(1.0, 0.1)),
    dict(policy_loss="unclipped", target_kl=0.02),
    dict(policy_loss="clip", clip_range_vf=0.2, vf_clip_mode="max"),
    dict(policy_loss="clip", clip_range_vf=linear_schedule(0.2), vf_clip_mode="sb3", ent_coef=CosineSchedule(0.01)),
    dict(policy_loss="dual_clip", dual_clip=2.0),
    dict(policy_loss="clip_higher", clip_range_high=0.28),
    dict(policy_loss="spo"),
    dict(policy_loss="clip", adaptive_lr_kl_target=0.01, vf_learning_rate=linear_schedule(1e-3)),
]


def _finite(model) -> bool:
    return all(th.isfinite(p).all() for p in model.policy.parameters())


@pytest.mark.parametrize("space", ACTION_SPACES)
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_variants_on_every_action_space(space, variant):
    model = TrustPPO("MlpPolicy", SpaceEnv(ACTION_SPACES[space]), **SMALL, **variant)
    before = [p.clone() for p in model.policy.parameters()]
    model.learn(128)
    assert _finite(model)
    assert any(not th.equal(a, b) for a, b in zip(before, model.policy.parameters(), strict=True))


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_gsde_and_kl_penalty(env_id):
    kwargs = dict(use_sde=True, sde_sample_freq=4) if env_id == "Pendulum-v1" else {}
    model = TrustPPO("MlpPolicy", env_id, policy_loss="kl_penalty", adaptive_kl_target=0.01, **SMALL, **kwargs)
    model.learn(128)
    assert _finite(model)


def test_multi_input_and_cnn_policies():
    TrustPPO("MultiInputPolicy", SpaceEnv(spaces.Discrete(2), dict_obs=True), **SMALL).learn(64)
    TrustPPO(
        "CnnPolicy",
        SpaceEnv(spaces.Discrete(2), image_obs=True),
        n_steps=32,
        batch_size=16,
        n_epochs=1,
        policy_kwargs=dict(features_extractor_kwargs=dict(features_dim=16)),
        policy_loss="kl_penalty",
        adaptive_kl_target=0.01,
    ).learn(32)


def _recorded(model, total_timesteps: int) -> dict:
    logger = configure(folder=None, format_strings=[])
    model.set_logger(logger)
    values = {}
    original_dump = logger.dump

    def dump(step=0):
        values.update(logger.name_to_value)
        original_dump(step)

    logger.dump = dump
    model.learn(total_timesteps)
    return values


def test_diagnostics_are_logged():
    model = TrustPPO("MlpPolicy", "Pendulum-v1", policy_loss="kl_penalty", adaptive_kl_target=0.01, clip_range_vf=0.1, **SMALL)
    values = _recorded(model, 128)
    for key in (
        "train/entropy_loss",
        "train/policy_gradient_loss",
        "train/value_loss",
        "train/approx_kl",
        "train/clip_fraction",
        "train/loss",
        "train/explained_variance",
        "train/std",
        "train/n_updates",
        "train/clip_range",
        "train/clip_range_vf",
        "train/learning_rate",
        "train/kl",
        "train/kl_coef",
        "train/early_stop_fraction",
        "train/ratio_max",
        "train/ratio_mean",
        "train/value_clip_fraction",
    ):
        assert key in values, key
    assert values["train/kl"] > 0
    assert values["train/ratio_max"] >= values["train/ratio_mean"] > 0
    assert 0.0 <= values["train/value_clip_fraction"] <= 1.0
    assert values["train/early_stop_fraction"] == 1.0


def test_early_stop_fraction_reports_the_stop():
    model = TrustPPO("MlpPolicy", "CartPole-v1", target_kl=1e-6, **{**SMALL, "n_epochs": 4})
    values = _recorded(model, 128)
    assert values["train/early_stop_fraction"] < 1.0


def test_adaptive_beta_follows_the_paper_rule():
    """β doubles when the post-update KL is above 1.5·d_targ and halves below d_targ/1.5, once per update."""
    # A tiny target: every update overshoots, so β must double at each of the 2 updates
    model = TrustPPO("MlpPolicy", "CartPole-v1", policy_loss="kl_penalty", adaptive_kl_target=1e-9, kl_coef=1.0, **SMALL)
    model.learn(128)
    assert model._kl_coef == 4.0
    # A huge target: the KL is always below, β halves at each update
    model = TrustPPO("MlpPolicy", "CartPole-v1", policy_loss="kl_penalty", adaptive_kl_target=10.0, kl_coef=1.0, **SMALL)
    model.learn(128)
    assert model._kl_coef == 0.25


def test_fixed_beta_follows_its_schedule():
    model = TrustPPO("MlpPolicy", "CartPole-v1", policy_loss="kl_penalty", kl_coef=linear_schedule(1.0, 0.2), **SMALL)
    values = _recorded(model, 128)
    # The first update happens at progress_remaining = 0.5 (logged), the last at 0 (the end value)
    assert values["train/kl_coef"] == pytest.approx(0.6)
    assert model._kl_coef == pytest.approx(0.2)
    model = TrustPPO("MlpPolicy", "CartPole-v1", policy_loss="kl_penalty", kl_coef=linear_schedule(1.0, 0.2), **SMALL)
    model.learn(64)
    model._current_progress_remaining = 0.5
    model.train()
    assert model._kl_coef == pytest.approx(0.6)


def test_large_fixed_beta_keeps_policy_closer():
    """A huge penalty must keep the post-update KL smaller than no penalty at all."""
    kls = {}
    for beta in (0.0, 100.0):
        model = TrustPPO("MlpPolicy", "CartPole-v1", policy_loss="kl_penalty", kl_coef=beta, learning_rate=3e-3, **SMALL)
        kls[beta] = _recorded(model, 128)["train/kl"]
    assert kls[100.0] < kls[0.0]


def test_unsupported_action_space_is_type_error():
    with pytest.raises(TypeError, match="action space"):
        TrustPPO("MlpPolicy", SpaceEnv(spaces.Dict({"a": spaces.Discrete(2)})), **SMALL)
    with pytest.raises(TypeError, match="action space"):
        TrustPPO("MlpPolicy", SpaceEnv(spaces.Tuple([spaces.Discrete(2)])), **SMALL)


@pytest.mark.parametrize("name", ["TrustPPO", "TrustTRPO", "TrustNPG"])
def test_tensorboard_run_folder_is_named_after_the_class(tmp_path, name):
    """As SB3 names its runs ``PPO_1``: ``learn()``'s default ``tb_log_name`` is the class name; a given one is kept."""
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    import sb3_trust

    algorithm = getattr(sb3_trust, name)
    kwargs = dict(n_steps=64, batch_size=32, policy_kwargs=dict(net_arch=[8]), seed=0, device="cpu")
    model = algorithm("MlpPolicy", "CartPole-v1", tensorboard_log=str(tmp_path), **kwargs)
    model.learn(64)
    model.learn(64, tb_log_name="mine")
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([f"{name}_1", "mine_1"])
