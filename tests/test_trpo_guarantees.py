"""TrustTRPO/TrustNPG: the reliability guarantees and the reference-policy KL (see test_reliability.py and
test_reference_kl.py for TrustPPO)."""

import numpy as np
import pytest
import torch as th

import sb3_trust.trpo.trust_trpo as trust_trpo_module
from sb3_trust import TrustNPG, TrustPPO, TrustTRPO
from sb3_trust.common.safety import NonFiniteError
from tests.test_reliability import FaultyEnv

SMALL = dict(n_steps=64, batch_size=32, n_critic_updates=2, policy_kwargs=dict(net_arch=[16]), seed=0, device="cpu")


def _params(model) -> list[th.Tensor]:
    return [p.detach().clone() for p in model.policy.parameters()]


def _same(a, b) -> bool:
    return all(th.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("what, value, word", [("observation", np.nan, "observation"), ("reward", np.inf, "reward")])
def test_faulty_env_stops_with_named_error_and_keeps_weights(tmp_path, what, value, word):
    model = TrustTRPO("MlpPolicy", FaultyEnv(what, value, from_step=100), **SMALL)
    model.learn(64)
    before = _params(model)
    with pytest.raises(NonFiniteError, match=word):
        model.learn(128, reset_num_timesteps=False)
    assert _same(before, _params(model))
    model.save(tmp_path / "m.zip")
    TrustTRPO.load(tmp_path / "m.zip", device="cpu")


@pytest.mark.parametrize("where", ["conjugate_gradient", "critic"])
def test_interrupt_mid_update_restores_the_state(tmp_path, monkeypatch, where):
    # The reference path's critic step is the one interrupted
    model = TrustTRPO("MlpPolicy", "Pendulum-v1", backend="reference", **SMALL)
    model.learn(64)
    before, n_updates = _params(model), model._n_updates
    if where == "conjugate_gradient":
        # after the actor step has been computed, during the next update's CG
        monkeypatch.setattr(trust_trpo_module, "conjugate_gradient", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    else:
        # the actor has moved; interrupt the critic's optimizer
        original = model._critic_step

        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(model, "_critic_step", interrupted)
        assert original is not None
    with pytest.raises(KeyboardInterrupt):
        model.learn(64, reset_num_timesteps=False)
    assert _same(before, _params(model))
    assert model._n_updates == n_updates
    monkeypatch.undo()
    model.save(tmp_path / "checkpoint.zip")
    loaded = TrustTRPO.load(tmp_path / "checkpoint.zip", env=model.get_env(), device="cpu")
    loaded.learn(64, reset_num_timesteps=False)
    assert loaded._n_updates == n_updates + 1


@pytest.mark.parametrize("cls, kwargs", [(TrustTRPO, {}), (TrustTRPO, {"kl_convention": "contrib"}), (TrustNPG, {})])
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_same_seed_same_parameters(cls, kwargs, env_id):
    first, second = (cls("MlpPolicy", env_id, **SMALL, **kwargs).learn(192) for _ in range(2))
    assert _same(_params(first), _params(second))


def test_load_checks_the_algorithm_family(tmp_path):
    TrustTRPO("MlpPolicy", "CartPole-v1", **SMALL).save(tmp_path / "trpo.zip")
    TrustNPG("MlpPolicy", "CartPole-v1", **SMALL).save(tmp_path / "npg.zip")
    TrustPPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32).save(tmp_path / "ppo.zip")
    with pytest.raises(ValueError, match="saved by TrustPPO"):
        TrustTRPO.load(tmp_path / "ppo.zip")
    with pytest.raises(ValueError, match="saved by TrustTRPO"):
        TrustPPO.load(tmp_path / "trpo.zip")
    # TrustNPG is TrustTRPO with another default step rule: the saved step rule is restored
    assert TrustTRPO.load(tmp_path / "npg.zip").step_rule == "npg"
    (tmp_path / "broken.zip").write_bytes((tmp_path / "trpo.zip").read_bytes()[:500])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        TrustNPG.load(tmp_path / "broken.zip")


@pytest.fixture(scope="module")
def reference_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.zip"
    TrustTRPO("MlpPolicy", "CartPole-v1", **{**SMALL, "seed": 7}).learn(128).save(path)
    return str(path)


@pytest.mark.parametrize("mode", ["reward", "loss"])
def test_reference_zero_beta_is_plain_training(reference_path, mode):
    plain = TrustTRPO("MlpPolicy", "CartPole-v1", **SMALL).learn(192)
    zero = TrustTRPO(
        "MlpPolicy", "CartPole-v1", reference_policy=reference_path, reference_kl_coef=0.0, reference_kl_mode=mode, **SMALL
    ).learn(192)
    if mode == "reward":
        assert _same(_params(plain), _params(zero))
    else:
        # the loss placement uses the autograd actor step instead of the closed-form one: same step up to rounding
        for a, b in zip(_params(plain), _params(zero), strict=True):
            th.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["reward", "loss"])
def test_reference_large_beta_stays_close(reference_path, mode):
    base = TrustTRPO.load(reference_path, device="cpu")
    kls = {}
    for beta in (0.0, 20.0):
        model = TrustTRPO(
            "MlpPolicy",
            "CartPole-v1",
            reference_policy=reference_path,
            reference_kl_coef=beta,
            reference_kl_mode=mode,
            target_kl=0.05,
            **SMALL,
        )
        model.policy.load_state_dict(base.policy.state_dict())
        model.learn(1024)
        next(model.rollout_buffer.get(None))
        kls[beta] = model._reference.rollout_kl(model.policy, model.rollout_buffer)
    assert kls[0.0] > 0.02
    assert kls[20.0] < kls[0.0] / 3


def test_reference_link_survives_save_load_and_bad_reference_is_rejected(tmp_path, reference_path):
    model = TrustTRPO("MlpPolicy", "CartPole-v1", reference_policy=reference_path, **SMALL).learn(64)
    model.save(tmp_path / "m.zip")
    loaded = TrustTRPO.load(tmp_path / "m.zip", env=model.get_env(), device="cpu")
    assert loaded.reference_policy == reference_path and loaded._reference is not None
    assert loaded.reference_policy_fingerprint == model.reference_policy_fingerprint
    with pytest.raises(ValueError, match="observation space"):
        TrustTRPO("MlpPolicy", "Pendulum-v1", reference_policy=reference_path, **SMALL)
    with pytest.raises(ValueError, match="reference_kl_mode"):
        TrustTRPO("MlpPolicy", "CartPole-v1", reference_policy=reference_path, reference_kl_mode="both", **SMALL)
