"""
Regression anchor: with its default (clip) settings, TrustPPO computes exactly what stable_baselines3.PPO computes.
Both are trained with the same seed and config; their parameters must agree after several updates.
"""

import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.logger import configure

from sb3_trust import TrustPPO

CASES = [
    pytest.param("CartPole-v1", {}, id="cartpole-default"),
    pytest.param("CartPole-v1", {"clip_range_vf": 0.2}, id="cartpole-vf-clip"),
    pytest.param("CartPole-v1", {"target_kl": 0.0005}, id="cartpole-target-kl"),
    pytest.param("CartPole-v1", {"normalize_advantage": False, "ent_coef": 0.01}, id="cartpole-no-adv-norm"),
    pytest.param("Pendulum-v1", {}, id="pendulum-default"),
    pytest.param("Pendulum-v1", {"clip_range_vf": 0.5, "target_kl": 0.0005}, id="pendulum-vf-clip-target-kl"),
    pytest.param("Pendulum-v1", {"normalize_advantage": False}, id="pendulum-no-adv-norm"),
    pytest.param("Pendulum-v1", {"use_sde": True, "sde_sample_freq": 4}, id="pendulum-gsde"),
    # rl-zoo3's MountainCarContinuous-v0 config: a batch larger than the rollout (SB3 warns, trains one minibatch)
    pytest.param("MountainCarContinuous-v0", {"n_steps": 8, "batch_size": 256}, id="batch-larger-than-rollout"),
]


def _train(cls, env_id: str, kwargs: dict, logged: dict | None = None) -> th.nn.Module:
    settings = dict(n_steps=128, batch_size=32, n_epochs=4, learning_rate=1e-3, policy_kwargs=dict(net_arch=[32]))
    if cls is TrustPPO:
        # The reference path is the one held to SB3 (the accelerator is held to the reference path)
        settings["backend"] = "reference"
    model = cls("MlpPolicy", env_id, seed=3, device="cpu", **{**settings, **kwargs})
    if logged is not None:  # keep what the last update logged
        logger = configure(folder=None, format_strings=[])
        original_dump = logger.dump

        def dump(step: int = 0) -> None:
            logged.update(logger.name_to_value)
            original_dump(step)

        logger.dump = dump  # type: ignore[method-assign]
        model.set_logger(logger)
    model.learn(4 * 128)
    return model


@pytest.mark.parametrize("env_id, kwargs", CASES)
def test_same_parameters_as_sb3_ppo(env_id, kwargs):
    reference = _train(PPO, env_id, kwargs)
    ours = _train(TrustPPO, env_id, kwargs)
    ref_params = reference.policy.state_dict()
    our_params = ours.policy.state_dict()
    assert ref_params.keys() == our_params.keys()
    moved = False
    for name, ref_value in ref_params.items():
        th.testing.assert_close(our_params[name], ref_value, rtol=1e-6, atol=1e-7, msg=f"parameter {name} differs")
    # The test would be vacuous if nothing trained
    fresh = TrustPPO("MlpPolicy", env_id, policy_kwargs=dict(net_arch=[32]), seed=3, device="cpu", n_steps=128, batch_size=32)
    for name, value in fresh.policy.state_dict().items():
        moved |= not th.equal(value, our_params[name])
    assert moved
    assert ours._n_updates == reference._n_updates


@pytest.mark.parametrize("env_id, kwargs", [CASES[2], CASES[5], pytest.param("CartPole-v1", {"batch_size": 48}, id="uneven")])
def test_same_logs_as_sb3_ppo(env_id, kwargs):
    """SB3's train/ statistics keep SB3's meaning (means over minibatches, approx_kl over the last epoch)."""
    reference_logs: dict = {}
    our_logs: dict = {}
    _train(PPO, env_id, kwargs, reference_logs)
    _train(TrustPPO, env_id, kwargs, our_logs)
    train_keys = [key for key in reference_logs if key.startswith("train/")]
    assert {"train/approx_kl", "train/clip_fraction", "train/entropy_loss", "train/loss"} <= set(train_keys)
    for key in train_keys:
        assert our_logs[key] == pytest.approx(reference_logs[key], rel=1e-5, abs=1e-6), key


def test_target_kl_actually_stops_early():
    """The early-stop case must stop early, otherwise its parity check proves nothing about early stopping."""
    for env_id, kwargs in [
        ("CartPole-v1", {"target_kl": 0.0005}),
        ("Pendulum-v1", {"clip_range_vf": 0.5, "target_kl": 0.0005}),
    ]:
        model = _train(TrustPPO, env_id, kwargs)
        assert model._n_updates < 4 * 4  # 4 updates of 4 epochs each without early stopping
