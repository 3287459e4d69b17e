"""KL penalty toward a frozen reference policy (RLHF recipe)."""

import numpy as np
import pytest
import torch as th

from sb3_trust import TrustPPO
from sb3_trust.common.kl import exact_kl
from sb3_trust.common.reference import ProportionalKLController, shaped_rewards

SMALL = dict(n_steps=64, batch_size=32, n_epochs=2, policy_kwargs=dict(net_arch=[16]), seed=0, device="cpu")


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    folder = tmp_path_factory.mktemp("references")
    paths = {}
    for env_id in ("CartPole-v1", "Pendulum-v1"):
        base = TrustPPO("MlpPolicy", env_id, **{**SMALL, "seed": 123})
        base.learn(128)
        paths[env_id] = str(folder / f"{env_id}.zip")
        base.save(paths[env_id])
    return paths


def _params(model):
    return [p.detach().clone() for p in model.policy.parameters()]


def test_shaping_and_controller_by_hand():
    rewards = np.array([1.0, 2.0])
    shaped = shaped_rewards(rewards, np.array([-0.5, -1.0]), np.array([-1.0, -1.0]), 0.1)
    np.testing.assert_allclose(shaped, [1.0 - 0.1 * 0.5, 2.0])
    controller = ProportionalKLController(target=0.1, horizon=1000)
    assert controller.update(1.0, 0.2, 100) == pytest.approx(1.0 * (1 + 0.2 * 0.1))  # error clipped to +0.2
    assert controller.update(1.0, 0.05, 100) == pytest.approx(1.0 * (1 - 0.2 * 0.1))  # error -0.5 clipped to -0.2
    assert controller.update(1.0, 0.11, 100) == pytest.approx(1.0 * (1 + 0.1 * 0.1))


@pytest.mark.parametrize("mode", ["reward", "loss"])
@pytest.mark.parametrize("env_id, extra", [("CartPole-v1", {}), ("Pendulum-v1", {}), ("Pendulum-v1", {"use_sde": True})])
def test_zero_beta_reproduces_plain_training_exactly(references, mode, env_id, extra):
    plain = TrustPPO("MlpPolicy", env_id, **SMALL, **extra, backend="reference").learn(192)
    with_reference = TrustPPO(
        "MlpPolicy",
        env_id,
        reference_policy=references[env_id],
        reference_kl_coef=0.0,
        reference_kl_mode=mode,
        **SMALL,
        **extra,
        backend="reference",  # the loss placement trains on the reference path: compare like with like
    ).learn(192)
    assert all(th.equal(a, b) for a, b in zip(_params(plain), _params(with_reference), strict=True))
    # and a non-zero β does change training (the test above is not vacuous)
    penalised = TrustPPO(
        "MlpPolicy",
        env_id,
        reference_policy=references[env_id],
        reference_kl_coef=1.0,
        reference_kl_mode=mode,
        **SMALL,
        **extra,
        backend="reference",  # the loss placement trains on the reference path: compare like with like
    ).learn(192)
    assert not all(th.equal(a, b) for a, b in zip(_params(plain), _params(penalised), strict=True))


def _final_reference_kl(model) -> float:
    model.rollout_buffer.get(None).__next__()  # flatten the last rollout
    return model._reference.rollout_kl(model.policy, model.rollout_buffer)


@pytest.mark.parametrize("mode", ["reward", "loss"])
def test_large_beta_stays_close_and_zero_beta_drifts(references, mode):
    """Fine-tuning starts from the reference's weights (KL = 0), as in RLHF."""
    base = TrustPPO.load(references["CartPole-v1"], device="cpu")
    kls = {}
    for beta in (0.0, 20.0):
        model = TrustPPO(
            "MlpPolicy",
            "CartPole-v1",
            reference_policy=references["CartPole-v1"],
            reference_kl_coef=beta,
            reference_kl_mode=mode,
            learning_rate=3e-3,
            **{**SMALL, "n_epochs": 5},
        )
        model.policy.load_state_dict(base.policy.state_dict())
        model.learn(1024)
        kls[beta] = _final_reference_kl(model)
    assert kls[0.0] > 0.03  # without the penalty the policy drifts away
    assert kls[20.0] < kls[0.0] / 4
    assert kls[20.0] < 0.01


def test_adaptive_beta_moves_toward_target(references):
    model = TrustPPO(
        "MlpPolicy",
        "CartPole-v1",
        reference_policy=references["CartPole-v1"],
        reference_kl_coef=1.0,
        reference_kl_target=1e-6,  # always exceeded: β must grow
        reference_kl_horizon=100,
        **SMALL,
    )
    model.learn(192)
    assert model._reference_kl_coef > 1.0


def test_loss_term_is_the_exact_kl(references):
    model = TrustPPO("MlpPolicy", "Pendulum-v1", reference_policy=references["Pendulum-v1"], reference_kl_mode="loss", **SMALL)
    obs = th.as_tensor(np.stack([model.observation_space.sample() for _ in range(5)]))
    current = model.policy.get_distribution(obs).distribution
    mean, std = current.mean.detach().clone(), current.stddev.detach().clone()
    reference = model._reference.distribution(obs).distribution
    # KL(N(μ, σ²) ‖ N(μ_ref, σ_ref²)) by hand, summed over action dimensions
    by_hand = (th.log(reference.stddev / std) + (std**2 + (mean - reference.mean) ** 2) / (2 * reference.stddev**2) - 0.5).sum(
        -1
    )
    th.testing.assert_close(exact_kl(model.policy.get_distribution(obs), model._reference.distribution(obs)), by_hand)


def test_save_load_keeps_the_link(tmp_path, references):
    model = TrustPPO("MlpPolicy", "CartPole-v1", reference_policy=references["CartPole-v1"], reference_kl_coef=0.3, **SMALL)
    model.learn(64)
    model.save(tmp_path / "finetuned.zip")
    loaded = TrustPPO.load(tmp_path / "finetuned.zip", env=model.get_env(), device="cpu")
    assert loaded.reference_policy == references["CartPole-v1"]
    assert loaded._reference is not None
    assert loaded.reference_policy_fingerprint == model.reference_policy_fingerprint
    assert loaded._reference_kl_coef == model._reference_kl_coef
    loaded.learn(64, reset_num_timesteps=False)
    # the reference's weights are not stored in the model's parameters
    assert set(loaded.get_parameters()) == {"policy", "policy.optimizer"}


def test_object_reference_must_be_attached_again_after_load(tmp_path, references):
    base = TrustPPO.load(references["CartPole-v1"], device="cpu")
    model = TrustPPO("MlpPolicy", "CartPole-v1", reference_policy=base, **SMALL)
    model.learn(64)
    model.save(tmp_path / "m.zip")
    loaded = TrustPPO.load(tmp_path / "m.zip", env=model.get_env(), device="cpu")
    with pytest.raises(ValueError, match="set_reference_policy"):
        loaded.learn(64, reset_num_timesteps=False)
    loaded.set_reference_policy(base.policy)
    assert loaded.reference_policy_fingerprint == model.reference_policy_fingerprint
    loaded.learn(64, reset_num_timesteps=False)
    # the user's object is never modified (frozen copy)
    assert all(p.requires_grad for p in base.policy.parameters())


def test_reference_is_frozen(references):
    model = TrustPPO("MlpPolicy", "CartPole-v1", reference_policy=references["CartPole-v1"], reference_kl_mode="loss", **SMALL)
    before = [p.clone() for p in model._reference.policy.parameters()]
    model.learn(128)
    assert all(th.equal(a, b) for a, b in zip(before, model._reference.policy.parameters(), strict=True))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(reference_policy="missing.zip"), ValueError, "no such file"),
        (dict(reference_policy=42), TypeError, "reference_policy"),
        (dict(reference_policy="PENDULUM"), ValueError, "observation space"),
        (dict(reference_kl_coef=-1.0), ValueError, "reference_kl_coef"),
        (dict(reference_kl_mode="both"), ValueError, "reference_kl_mode"),
        (dict(reference_kl_target=0.0), ValueError, "reference_kl_target"),
        (dict(reference_kl_horizon=0), ValueError, "reference_kl_horizon"),
    ],
)
def test_bad_references_are_rejected(references, kwargs, error, match):
    if kwargs.get("reference_policy") == "PENDULUM":
        kwargs = {**kwargs, "reference_policy": references["Pendulum-v1"]}
    with pytest.raises(error, match=match):
        TrustPPO("MlpPolicy", "CartPole-v1", **SMALL, **kwargs)


def test_reference_with_another_architecture(tmp_path):
    """Only the reference's action distribution is used, so its network may differ (here: [8, 8] vs [16])."""
    other = TrustPPO("MlpPolicy", "CartPole-v1", **{**SMALL, "policy_kwargs": dict(net_arch=[8, 8])})
    other.save(tmp_path / "other.zip")
    for mode in ("reward", "loss"):
        model = TrustPPO(
            "MlpPolicy", "CartPole-v1", reference_policy=str(tmp_path / "other.zip"), reference_kl_mode=mode, **SMALL
        )
        model.learn(128)
        assert all(th.isfinite(p).all() for p in model.policy.parameters())


def test_path_reference_with_gsde(tmp_path):
    """A saved gSDE model (use_sde is stored outside policy_kwargs) loads as a path reference."""
    base = TrustPPO("MlpPolicy", "Pendulum-v1", use_sde=True, **SMALL)
    base.learn(64)
    base.save(tmp_path / "gsde.zip")
    model = TrustPPO("MlpPolicy", "Pendulum-v1", use_sde=True, reference_policy=str(tmp_path / "gsde.zip"), **SMALL)
    obs = th.as_tensor(np.stack([model.observation_space.sample() for _ in range(4)]))
    th.testing.assert_close(
        model._reference.distribution(obs).distribution.mean, base.policy.get_distribution(obs).distribution.mean
    )
    model.learn(64)
