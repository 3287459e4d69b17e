"""
TrustPPO and TrustTRPO with ``backend="accelerated"`` against ``backend="reference"``: the same seed gives the same
parameters after ``learn`` (within 1e-5 relative), and the attributes say which path ran.
"""

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env

import sb3_trust.accel as accel
from sb3_trust import TrustPPO, TrustTRPO
from sb3_trust.ppo.losses import POLICY_LOSSES

pytestmark = pytest.mark.skipif(accel.unavailable_reason() is not None, reason=str(accel.unavailable_reason()))


def learn(algorithm, env_id: str, backend: str, n_updates: int = 1, **kwargs):
    n_envs, n_steps = 2, 64
    env = make_vec_env(env_id, n_envs=n_envs, seed=0)
    model = algorithm("MlpPolicy", env, n_steps=n_steps, seed=0, device="cpu", backend=backend, **kwargs)
    model.learn(n_updates * n_steps * n_envs)
    return model


def assert_same_parameters(model, expected) -> None:
    for (name, param), expected_param in zip(model.policy.named_parameters(), expected.policy.named_parameters(), strict=True):
        th.testing.assert_close(param, expected_param[1], rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


PPO_SETTINGS = [
    dict(),
    dict(policy_loss="kl_penalty", kl_coef=0.5, clip_range_vf=0.2, vf_clip_mode="max", ent_coef=0.01),
    dict(policy_loss="unclipped", normalize_advantage=False, clip_range_vf=0.3),
    dict(target_kl=0.001, n_epochs=4),  # the early stop
    dict(policy_kwargs=dict(net_arch=dict(pi=[32], vf=[16, 8]), activation_fn=th.nn.ReLU)),
    dict(vf_learning_rate=3e-3),  # two param groups: the accelerator reads each parameter's learning rate from its group
]


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
@pytest.mark.parametrize("settings", PPO_SETTINGS, ids=lambda s: ",".join(s) or "default")
def test_trust_ppo_same_parameters(env_id, settings):
    settings = dict(batch_size=32, n_epochs=3, **settings) if "n_epochs" not in settings else dict(batch_size=32, **settings)
    model = learn(TrustPPO, env_id, "accelerated", **settings)
    expected = learn(TrustPPO, env_id, "reference", **settings)
    assert (model.collect_backend, model.train_backend) == ("accelerated", "accelerated")
    assert (expected.collect_backend, expected.train_backend) == ("reference", "reference")
    assert model.num_timesteps == expected.num_timesteps
    assert_same_parameters(model, expected)


@pytest.mark.parametrize("loss", sorted(POLICY_LOSSES))
def test_every_registered_loss_on_every_backend_that_claims_it(loss):
    """The registry as it is: a loss the accelerator claims gives the reference path's parameters; any other is trained
    by the reference path, with the loss named in the reason."""
    settings = dict(policy_loss=loss, batch_size=32, n_epochs=3, ent_coef=0.01)
    expected = learn(TrustPPO, "Pendulum-v1", "reference", **settings)
    if loss in accel.ACCELERATED_LOSSES:
        model = learn(TrustPPO, "Pendulum-v1", "accelerated", **settings)
        assert model.train_backend == "accelerated"
        assert_same_parameters(model, expected)
    else:
        model = learn(TrustPPO, "Pendulum-v1", "auto", **settings)
        assert model.train_backend == "reference" and loss in model.backend_reasons["train"]


def test_trust_ppo_two_updates():
    """A second update continues the first's Adam state (and learning-rate schedule) on both paths."""
    model = learn(TrustPPO, "Pendulum-v1", "accelerated", n_updates=2, batch_size=64, learning_rate=lambda p: 1e-3 * p)
    expected = learn(TrustPPO, "Pendulum-v1", "reference", n_updates=2, batch_size=64, learning_rate=lambda p: 1e-3 * p)
    assert_same_parameters(model, expected)
    for param, expected_param in zip(model.policy.parameters(), expected.policy.parameters(), strict=True):
        assert th.equal(model.policy.optimizer.state[param]["step"], expected.policy.optimizer.state[expected_param]["step"])


def test_trust_ppo_adaptive_learning_rate_on_both_paths():
    """The KL-adaptive learning rate and the critic's own schedule: the accelerator trains with the adapted rates."""
    settings = dict(n_updates=3, batch_size=64, adaptive_lr_kl_target=1e-3, vf_learning_rate=lambda p: 2e-3 * p)
    model = learn(TrustPPO, "Pendulum-v1", "accelerated", **settings)
    expected = learn(TrustPPO, "Pendulum-v1", "reference", **settings)
    assert model.train_backend == "accelerated"
    assert model._adaptive_learning_rate == pytest.approx(expected._adaptive_learning_rate, rel=1e-6)
    assert model._adaptive_learning_rate != 3e-4
    assert_same_parameters(model, expected)


def test_auto_falls_back_with_a_reason():
    model = TrustPPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, device="cpu", policy_loss="clip")
    assert model.backend == "auto"
    model.learn(64)
    assert model.train_backend == "accelerated"
    with pytest.raises(ValueError, match="accelerated"):
        TrustPPO(
            "MlpPolicy",
            "CartPole-v1",
            n_steps=64,
            device="cpu",
            backend="accelerated",
            use_sde=False,
            policy_kwargs=dict(optimizer_class=th.optim.SGD),
        )


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_trust_trpo_collection(env_id):
    """TrustTRPO collects and trains with the accelerator. Its rollouts agree to float32 rounding; its conjugate-gradient
    step amplifies that rounding (up to 1e-3 of the step on ``log_std`` here, as any rounding change does), so the
    parameters are compared with an absolute tolerance of 3e-5 (tests/test_accel_trpo.py compares one update on the same
    rollout within 1e-5 relative)."""
    model = learn(TrustTRPO, env_id, "accelerated")
    expected = learn(TrustTRPO, env_id, "reference")
    assert (model.collect_backend, expected.collect_backend) == ("accelerated", "reference")
    assert (model.train_backend, expected.train_backend) == ("accelerated", "reference")
    for name in ("observations", "actions", "values", "log_probs", "rewards", "advantages", "returns"):
        got, want = getattr(model.rollout_buffer, name), getattr(expected.rollout_buffer, name)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)
    for param, expected_param in zip(model.policy.parameters(), expected.policy.parameters(), strict=True):
        th.testing.assert_close(param, expected_param, rtol=1e-5, atol=3e-5)
