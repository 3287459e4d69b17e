"""
Regression anchor: with its default (clip) settings, TrustPPO computes exactly what stable_baselines3.PPO computes.
Both are trained with the same seed and config; their parameters must agree after several updates.
"""

import pytest
import torch as th
from stable_baselines3 import PPO

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
]


def _train(cls, env_id: str, kwargs: dict) -> th.nn.Module:
    model = cls(
        "MlpPolicy",
        env_id,
        n_steps=128,
        batch_size=32,
        n_epochs=4,
        learning_rate=1e-3,
        policy_kwargs=dict(net_arch=[32]),
        seed=3,
        device="cpu",
        **kwargs,
    )
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


def test_target_kl_actually_stops_early():
    """The early-stop case must stop early, otherwise its parity check proves nothing about early stopping."""
    for env_id, kwargs in [
        ("CartPole-v1", {"target_kl": 0.0005}),
        ("Pendulum-v1", {"clip_range_vf": 0.5, "target_kl": 0.0005}),
    ]:
        model = _train(TrustPPO, env_id, kwargs)
        assert model._n_updates < 4 * 4  # 4 updates of 4 epochs each without early stopping
