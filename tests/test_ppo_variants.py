"""
The PPO-family variants: dual-clip, clip-higher (DAPO), SPO, the KL-adaptive learning rate and the value function's own
learning rate. Each loss's value and gradient by hand, the learning-rate rules by hand and in training, save/load,
the keyword checks, and (``expensive``) learning on CartPole-v1 and Pendulum-v1 with the zoo's configs.
"""

import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import configure

from sb3_trust import TrustPPO, TrustTRPO
from sb3_trust.common.learning_rates import AdaptiveLearningRate, critic_parameters
from sb3_trust.ppo.losses import (
    POLICY_LOSSES,
    asymmetric_clip_loss,
    clipped_surrogate_loss,
    dual_clip_loss,
    outside_trust_region,
    spo_loss,
)

SMALL = dict(n_steps=64, batch_size=32, n_epochs=2, seed=0, device="cpu", policy_kwargs=dict(net_arch=[16]))


def value_and_grad(loss_fn, ratio, advantages, **kwargs) -> tuple[float, list[float]]:
    ratio = th.tensor(ratio, dtype=th.float64, requires_grad=True)
    loss = loss_fn(ratio, th.tensor(advantages, dtype=th.float64), **kwargs)
    loss.backward()
    return loss.item(), ratio.grad.tolist()


# --- the losses, by hand ----------------------------------------------------------------------------------------------


def test_dual_clip_by_hand():
    # ε = 0.2, c = 3. Objectives: r·A = 0.5 (unclipped term, d/dr = A = 1); A < 0, r = 1.5: min(-1.5, -1.2) = -1.5 above
    # c·A = -3 (d/dr = -1); A < 0, r = 5: min(-5, -1.2) = -5 bounded to c·A = -3 (d/dr = 0); r = 1.3, A = 2: clipped 2.4
    loss, grad = value_and_grad(dual_clip_loss, [0.5, 1.5, 5.0, 1.3], [1.0, -1.0, -1.0, 2.0], clip_range=0.2, dual_clip=3.0)
    assert loss == pytest.approx(-(0.5 - 1.5 - 3.0 + 2.4) / 4)
    assert grad == pytest.approx([-1 / 4, 1 / 4, 0.0, 0.0])


def test_dual_clip_bounds_only_negative_advantages():
    ratio = th.tensor([0.1, 0.9, 1.0, 4.0, 50.0])
    positive = th.tensor([1.0, 2.0, 0.5, 3.0, 1.0])
    # A > 0: exactly PPO-clip, whatever c
    assert th.equal(
        dual_clip_loss(ratio, positive, clip_range=0.2, dual_clip=1.5), clipped_surrogate_loss(ratio, positive, clip_range=0.2)
    )
    # A < 0 with large ratios: PPO-clip's loss grows with r, dual-clip's stops at -c·A
    negative = -positive
    assert clipped_surrogate_loss(ratio, negative, clip_range=0.2) > dual_clip_loss(
        ratio, negative, clip_range=0.2, dual_clip=3.0
    )
    assert dual_clip_loss(ratio[4:], negative[4:], clip_range=0.2, dual_clip=3.0).item() == pytest.approx(3.0)


def test_clip_higher_by_hand():
    # ε_low = 0.2, ε_high = 0.28: r = 1.25 is inside (d/dr = A), r = 1.3 clipped at 1.28, r = 0.7 with A < 0 clipped at 0.8
    loss, grad = value_and_grad(
        asymmetric_clip_loss, [1.25, 1.3, 0.7], [1.0, 1.0, -1.0], clip_range_low=0.2, clip_range_high=0.28
    )
    assert loss == pytest.approx(-(1.25 + 1.28 - 0.8) / 3)
    assert grad == pytest.approx([-1 / 3, 0.0, 0.0])


def test_clip_higher_with_equal_ranges_is_clip_bit_for_bit():
    generator = th.Generator().manual_seed(0)
    for _ in range(5):
        ratio = th.exp(0.3 * th.randn(256, generator=generator)).requires_grad_()
        advantages = th.randn(256, generator=generator)
        expected = clipped_surrogate_loss(ratio, advantages, clip_range=0.2)
        (expected_grad,) = th.autograd.grad(expected, ratio)
        loss = asymmetric_clip_loss(ratio, advantages, clip_range_low=0.2, clip_range_high=0.2)
        (grad,) = th.autograd.grad(loss, ratio)
        assert th.equal(loss, expected) and th.equal(grad, expected_grad)
        # the logged clip fraction too: SB3's mean(|r - 1| > ε)
        assert th.equal(outside_trust_region(ratio, 0.2, 0.2), th.mean((th.abs(ratio - 1) > 0.2).float()))


def test_spo_by_hand():
    # objective r·A - |A|·(r - 1)²/(2ε), ε = 0.2: 1.1 - 0.025, -1.6 - 0.2, 1.5 - 0.625
    # gradient A - |A|·(r - 1)/ε: 1 - 0.5 = 0.5; -2 + 2 = 0 (at r = 1 - ε, A < 0); 1 - 2.5 = -1.5 (pulls r back inside)
    loss, grad = value_and_grad(spo_loss, [1.1, 0.8, 1.5], [1.0, -2.0, 1.0], clip_range=0.2)
    assert loss == pytest.approx(-(1.075 - 1.8 + 0.875) / 3)
    assert grad == pytest.approx([-0.5 / 3, 0.0, 1.5 / 3])


def test_spo_gradient_formula():
    generator = th.Generator().manual_seed(1)
    ratio = th.exp(0.5 * th.randn(64, generator=generator, dtype=th.float64)).requires_grad_()
    advantages = th.randn(64, generator=generator, dtype=th.float64)
    epsilon = 0.25
    (grad,) = th.autograd.grad(spo_loss(ratio, advantages, clip_range=epsilon), ratio)
    expected = -(advantages - advantages.abs() * (ratio.detach() - 1) / epsilon) / len(ratio)
    th.testing.assert_close(grad, expected)
    # unlike PPO-clip, no sample outside the trust region has a zero gradient: it is pulled back toward it
    outside = (ratio.detach() - 1).abs() > epsilon
    assert outside.any() and (grad[outside] != 0).all()


def test_registry_entries():
    assert POLICY_LOSSES["dual_clip"].keywords == ("clip_range", "dual_clip")
    assert POLICY_LOSSES["clip_higher"].keywords == ("clip_range_low", "clip_range_high")
    assert POLICY_LOSSES["spo"].keywords == ("clip_range",)
    assert not any(POLICY_LOSSES[name].needs_kl for name in ("dual_clip", "clip_higher", "spo"))


# --- the losses in TrustPPO ---------------------------------------------------------------------------------------------


def learn_logged(model, total_timesteps: int, **kwargs) -> list[dict]:
    """:return: what each update logged (SB3 dumps an update's values at the next iteration, the last one never)"""
    dumped: list[dict] = []
    logger = configure(folder=None, format_strings=[])
    original_dump = logger.dump

    def dump(step: int = 0) -> None:
        dumped.append(dict(logger.name_to_value))
        original_dump(step)

    logger.dump = dump  # type: ignore[method-assign]
    model.set_logger(logger)
    model.learn(total_timesteps, **kwargs)
    return [values for values in [*dumped, dict(logger.name_to_value)] if "train/kl" in values]


def test_clip_higher_with_default_ranges_trains_as_clip():
    clip = TrustPPO("MlpPolicy", "Pendulum-v1", backend="reference", **SMALL).learn(128)
    clip_higher = TrustPPO("MlpPolicy", "Pendulum-v1", policy_loss="clip_higher", backend="reference", **SMALL).learn(128)
    assert clip_higher.train_backend == "reference"
    for param, expected in zip(clip_higher.policy.parameters(), clip.policy.parameters(), strict=True):
        assert th.equal(param, expected)


@pytest.mark.parametrize(
    "variant, keys",
    [
        (dict(policy_loss="dual_clip", dual_clip=2.0), {"train/dual_clip": 2.0, "train/clip_range": 0.2}),
        (dict(policy_loss="clip_higher", clip_range_high=lambda p: 0.3 * p), {"train/clip_range_low": 0.2}),
        (dict(policy_loss="spo", clip_range=0.1), {"train/clip_range": 0.1}),
    ],
    ids=["dual_clip", "clip_higher", "spo"],
)
def test_variant_keywords_are_logged_and_saved(tmp_path, variant, keys):
    model = TrustPPO("MlpPolicy", "Pendulum-v1", **SMALL, **variant)
    updates = learn_logged(model, 128)
    assert len(updates) == 2
    for key, value in keys.items():
        assert updates[-1][key] == pytest.approx(value)
    assert 0.0 <= updates[-1]["train/clip_fraction"] <= 1.0
    if "clip_range_high" in variant:  # the schedule, at the first update's progress remaining (0.5)
        assert updates[0]["train/clip_range_high"] == pytest.approx(0.15)
    model.save(tmp_path / "model")
    loaded = TrustPPO.load(tmp_path / "model", device="cpu")
    for name in variant:
        value, given = getattr(loaded, name), variant[name]
        assert (value(0.5) if callable(value) else value) == (given(0.5) if callable(given) else given), name


# --- KL-adaptive learning rate ----------------------------------------------------------------------------------------


def test_adaptive_learning_rate_rule_by_hand():
    rule = AdaptiveLearningRate(kl_target=0.01, low=1e-5, high=1e-2)
    assert rule.update(3e-4, kl=0.03) == pytest.approx(2e-4)  # KL > 2·target: ÷ 1.5
    assert rule.update(3e-4, kl=0.004) == pytest.approx(4.5e-4)  # KL < target / 2: × 1.5
    assert rule.update(3e-4, kl=0.01) == 3e-4  # in between: unchanged
    assert rule.update(3e-4, kl=0.02) == 3e-4 and rule.update(3e-4, kl=0.005) == 3e-4  # the edges are inside
    assert rule.update(1.2e-5, kl=1.0) == 1e-5  # bounded below
    assert rule.update(9e-3, kl=0.0) == 1e-2  # bounded above


def test_adaptive_learning_rate_in_training(tmp_path):
    model = TrustPPO("MlpPolicy", "Pendulum-v1", learning_rate=1e-3, adaptive_lr_kl_target=0.005, **SMALL)
    updates = learn_logged(model, 3 * 64)
    assert len(updates) == 3
    rule = AdaptiveLearningRate(0.005)
    rates = [update["train/learning_rate"] for update in updates]
    assert rates[0] == 1e-3
    for previous, update, rate in zip(updates, updates[1:], rates[1:], strict=False):
        # the next update's learning rate: the rule applied to the previous one and its exact KL
        assert rate == pytest.approx(rule.update(previous["train/learning_rate"], previous["train/kl"]))
        assert update["train/learning_rate"] == rate
    assert len(set(rates)) > 1, "the learning rate should change"
    assert model.policy.optimizer.param_groups[0]["lr"] == rates[-1]
    expected_next = rule.update(rates[-1], updates[-1]["train/kl"])
    assert model._adaptive_learning_rate == pytest.approx(expected_next)
    # save/load keeps the adapted value, and the next update trains with it
    model.save(tmp_path / "model")
    loaded = TrustPPO.load(tmp_path / "model", env=make_vec_env("Pendulum-v1", n_envs=1, seed=1), device="cpu")
    assert loaded._adaptive_learning_rate == model._adaptive_learning_rate
    updates_after = learn_logged(loaded, 64, reset_num_timesteps=False)
    assert updates_after[0]["train/learning_rate"] == model._adaptive_learning_rate


def test_adaptive_learning_rate_composes_with_any_loss():
    for loss in ("dual_clip", "spo", "kl_penalty"):
        model = TrustPPO("MlpPolicy", "CartPole-v1", policy_loss=loss, adaptive_lr_kl_target=1e-8, **SMALL).learn(128)
        assert model.policy.optimizer.param_groups[0]["lr"] == pytest.approx(3e-4 / 1.5), loss


# --- the value function's learning rate -------------------------------------------------------------------------------


def test_vf_learning_rate_parameter_groups():
    model = TrustPPO("MlpPolicy", "Pendulum-v1", learning_rate=1e-3, vf_learning_rate=5e-3, **SMALL)
    actor, critic = model.policy.optimizer.param_groups
    expected_critic = [*model.policy.mlp_extractor.value_net.parameters(), *model.policy.value_net.parameters()]
    assert [id(p) for p in critic["params"]] == [id(p) for p in expected_critic]
    assert {id(p) for p in actor["params"]} == {id(p) for p in model.policy.parameters()} - {id(p) for p in expected_critic}
    assert any(p is model.policy.log_std for p in actor["params"])
    assert (actor["lr"], critic["lr"]) == (1e-3, 5e-3)
    assert type(model.policy.optimizer) is type(TrustPPO("MlpPolicy", "Pendulum-v1", **SMALL).policy.optimizer)
    updates = learn_logged(model, 64)
    assert (updates[0]["train/learning_rate"], updates[0]["train/vf_learning_rate"]) == (1e-3, 5e-3)


def test_vf_features_extractor_is_the_critics_when_not_shared():
    policy_kwargs = dict(net_arch=[16], share_features_extractor=False)
    model = TrustPPO("MlpPolicy", "Pendulum-v1", vf_learning_rate=1e-3, **{**SMALL, "policy_kwargs": policy_kwargs})
    critic = {id(p) for p in critic_parameters(model.policy)}
    # Flatten has no parameters; the modules are what counts
    assert {id(p) for p in model.policy.vf_features_extractor.parameters()} <= critic
    assert not {id(p) for p in model.policy.pi_features_extractor.parameters()} & critic - {
        id(p) for p in model.policy.vf_features_extractor.parameters()
    }


@pytest.mark.parametrize("vf_learning_rate", [None, 1e-3], ids=["none", "same-as-learning-rate"])
def test_vf_learning_rate_none_or_equal_is_sb3_ppo(vf_learning_rate):
    settings = dict(n_steps=128, batch_size=32, n_epochs=4, learning_rate=1e-3, policy_kwargs=dict(net_arch=[32]), seed=3)
    reference = PPO("MlpPolicy", "Pendulum-v1", device="cpu", **settings).learn(4 * 128)
    ours = TrustPPO(
        "MlpPolicy", "Pendulum-v1", device="cpu", backend="reference", vf_learning_rate=vf_learning_rate, **settings
    )
    ours.learn(4 * 128)
    assert len(ours.policy.optimizer.param_groups) == (1 if vf_learning_rate is None else 2)
    for name, value in reference.policy.state_dict().items():
        th.testing.assert_close(ours.policy.state_dict()[name], value, rtol=1e-6, atol=1e-7, msg=name)


def test_vf_learning_rate_changes_only_the_critic_step():
    base = TrustPPO("MlpPolicy", "Pendulum-v1", backend="reference", **SMALL).learn(64)
    faster = TrustPPO("MlpPolicy", "Pendulum-v1", backend="reference", vf_learning_rate=3e-3, **SMALL).learn(64)
    # the first minibatch step: the actor moved as with one learning rate only if nothing else changed; after several
    # steps the shared loss couples them, so compare the critic: it moved further
    initial = TrustPPO("MlpPolicy", "Pendulum-v1", **SMALL).policy.value_net.weight
    assert (faster.policy.value_net.weight - initial).norm() > 2 * (base.policy.value_net.weight - initial).norm()


def test_vf_learning_rate_schedule_is_checked_and_saved(tmp_path):
    model = TrustPPO("MlpPolicy", "Pendulum-v1", vf_learning_rate=lambda progress: 1e-3 * progress, **SMALL)
    updates = learn_logged(model, 192)
    assert [update["train/vf_learning_rate"] for update in updates] == pytest.approx([1e-3 * 2 / 3, 1e-3 / 3, 0.0])
    assert model.policy.optimizer.param_groups[1]["lr"] == 0.0
    model.save(tmp_path / "model")
    loaded = TrustPPO.load(tmp_path / "model", device="cpu")
    saved, restored = model.policy.optimizer.state_dict(), loaded.policy.optimizer.state_dict()
    assert [group["params"] for group in restored["param_groups"]] == [group["params"] for group in saved["param_groups"]]
    assert [group["lr"] for group in restored["param_groups"]] == [group["lr"] for group in saved["param_groups"]]
    for index, state in saved["state"].items():
        for key, value in state.items():
            assert th.equal(restored["state"][index][key], value)
    negative = TrustPPO("MlpPolicy", "Pendulum-v1", vf_learning_rate=lambda progress: -1e-3, **SMALL)
    with pytest.raises(ValueError, match="vf_learning_rate"):
        negative.learn(64)


def test_trust_trpo_has_no_vf_learning_rate():
    # TrustTRPO's learning_rate already is the critic's (the actor's step is set by target_kl)
    with pytest.raises(TypeError, match="vf_learning_rate"):
        TrustTRPO("MlpPolicy", "Pendulum-v1", vf_learning_rate=1e-3)  # type: ignore[call-arg]


# --- bad input --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(dual_clip=1.0), ValueError, r"`dual_clip` must be in \(1.0, inf\), got 1.0"),
        (dict(dual_clip="3"), TypeError, "`dual_clip` must be a number"),
        (dict(clip_range_high=-0.1), ValueError, "`clip_range_high` must be in"),
        (dict(clip_range_low="0.2"), TypeError, "`clip_range_low` must be a number or a schedule or None"),
        (dict(vf_learning_rate=-1e-3), ValueError, "`vf_learning_rate` must be in"),
        (dict(adaptive_lr_kl_target=0.0), ValueError, "`adaptive_lr_kl_target` must be in"),
        (dict(adaptive_lr_kl_target=0.01, learning_rate=lambda p: 1e-3), ValueError, "`learning_rate` must be a float"),
        (dict(adaptive_lr_bounds=(1e-2, 1e-5)), ValueError, r"`adaptive_lr_bounds\[1\]` must be in"),
        (dict(adaptive_lr_bounds=1e-3), TypeError, "`adaptive_lr_bounds` must be a pair"),
        (dict(adaptive_lr_bounds=(0.0, 1e-2)), ValueError, r"`adaptive_lr_bounds\[0\]`"),
    ],
)
def test_bad_keywords(kwargs, error, match):
    with pytest.raises(error, match=match):
        TrustPPO("MlpPolicy", "CartPole-v1", **{**SMALL, **kwargs})


def test_clip_range_schedule_values_are_checked():
    model = TrustPPO("MlpPolicy", "CartPole-v1", policy_loss="clip_higher", clip_range_low=lambda p: -0.1, **SMALL)
    with pytest.raises(ValueError, match="clip_range_low"):
        model.learn(64)


# --- learning, with the zoo's configs ---------------------------------------------------------------------------------

# Pendulum-v1: half rl-zoo3's 1e5 budget (the full one takes minutes per variant on the reference path); a random
# policy scores about -1200, the zoo's published PPO agent -172 (SPO measured -90 at 50k steps, seed 0)
PENDULUM_BUDGET, PENDULUM_THRESHOLD = 50_000, -400.0
KEYS = ["trust_ppo_dual_clip", "trust_ppo_clip_higher", "trust_ppo_spo", "trust_ppo_adaptive_lr", "trust_ppo_vf_lr"]


def train_with_zoo_config(key: str, env_id: str, n_timesteps: int, seed: int = 0) -> float:
    """Train with the key's shipped config for ``env_id`` (schedules parsed as ``sb3-trust train`` does)."""
    yaml = pytest.importorskip("yaml")
    zoo = pytest.importorskip("sb3_trust.zoo")
    with open(zoo.default_config_path(key)) as file:
        entry = dict(yaml.load(file, Loader=yaml.UnsafeLoader)[env_id])
    n_envs = entry.pop("n_envs", 1)
    for name in ("n_timesteps", "normalize", "policy"):
        entry.pop(name, None)
    kwargs = {
        name: zoo.parse_schedule(name, value) if isinstance(value, str) and name != "policy_loss" else value
        for name, value in entry.items()
    }
    model = TrustPPO("MlpPolicy", make_vec_env(env_id, n_envs=n_envs, seed=seed), seed=seed, device="cpu", **kwargs)
    model.learn(n_timesteps)
    mean_return, _ = evaluate_policy(model, make_vec_env(env_id, n_envs=1, seed=seed + 1000), n_eval_episodes=10)
    return float(mean_return)


@pytest.mark.expensive
@pytest.mark.parametrize("key", KEYS)
def test_cartpole_learns(key):
    # rl-zoo3's CartPole-v1 PPO config (1e5 steps) cut to half its budget: a random policy scores about 22
    assert train_with_zoo_config(key, "CartPole-v1", 50_000) >= 150


@pytest.mark.expensive
@pytest.mark.parametrize("key", KEYS)
def test_pendulum_learns(key):
    assert train_with_zoo_config(key, "Pendulum-v1", PENDULUM_BUDGET) >= PENDULUM_THRESHOLD
