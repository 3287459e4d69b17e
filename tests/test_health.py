"""
The training health monitor: each rule on hand-built histories, the once-per-stretch warnings, and short runs broken
on purpose (each must trigger its rule, and no rule it is not coupled with) next to a healthy CartPole run.

Couplings (why some run tests allow a second rule): a huge learning rate breaks every step-size rule at once (KL,
clip fraction, ratios) and then collapses the entropy; a critic that does not learn breaks both value-function rules
(advantages and explained variance); policy steps far beyond the trust region leave the critic behind (explained
variance).
"""

import warnings

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.logger import configure

from sb3_trust import HealthThresholds, HealthWarning, TrustHealthCallback, TrustPPO, TrustTRPO
from sb3_trust.common.health import HEALTH_RULES, advantage_statistics, evaluate_rules

RULES = {rule.name for rule in HEALTH_RULES}
# Short histories: no warm-up and a 1-update window, so that each row decides
FAST = HealthThresholds(window=1, value_window=1, warmup_updates=0, return_patience=3)


def healthy_row(**changes: float) -> dict[str, float]:
    row = dict(
        kl=0.01,
        clip_fraction=0.1,
        entropy=0.6,
        ratio_max=1.3,
        ratio_mean=1.0,
        adv_bias=0.1,
        adv_skew=-1.0,
        explained_variance=0.5,
        timesteps=0.0,
    )
    row.update(changes)
    return row


def broken_in(history: list[dict[str, float]], thresholds: HealthThresholds = FAST) -> set[str]:
    results = evaluate_rules(history, thresholds)
    return {name for name, result in results.items() if result is not None and result[0]}


@pytest.mark.parametrize(
    "rule, changes",
    [
        ("kl", dict(kl=0.05)),
        ("clip_fraction", dict(clip_fraction=0.35)),
        ("entropy", dict(entropy=0.01)),
        ("ratio", dict(ratio_max=5.0)),
        ("ratio", dict(ratio_mean=1.2)),
        ("advantages", dict(adv_bias=0.9)),
        ("explained_variance", dict(explained_variance=-0.3)),
    ],
)
def test_each_rule_on_a_synthetic_history(rule, changes):
    history = [healthy_row(), healthy_row(**changes)]
    assert broken_in(history) == {rule}
    assert broken_in([healthy_row(), healthy_row()]) == set()


def test_returns_rule():
    rising = [healthy_row(**{"return": 10.0 * (i + 1)}) for i in range(8)]
    assert broken_in(rising) == set()
    flat = [healthy_row(**{"return": 100.0}) for _ in range(8)]
    assert broken_in(flat) == {"returns"}
    # A solved task stops improving: return_target keeps it healthy
    solved = HealthThresholds(**{**FAST.__dict__, "return_target": 100.0})
    assert broken_in(flat, solved) == set()


def test_missing_keys_are_not_checked():
    results = evaluate_rules([{"kl": 0.01}], FAST)
    assert results["kl"] is not None
    assert all(results[name] is None for name in RULES - {"kl"})


def test_warmup_and_window():
    thresholds = HealthThresholds(window=3, warmup_updates=2)
    # One high KL among two low ones: the mean of 3 is under 0.02
    assert broken_in([healthy_row(), healthy_row(), healthy_row(kl=0.04)], thresholds) == set()
    # The value-function rules wait for the warm-up
    assert broken_in([healthy_row(explained_variance=-1.0)] * 2, thresholds) == set()
    assert broken_in([healthy_row(explained_variance=-1.0)] * 3, thresholds) == {"explained_variance"}


def test_skew_is_checked_only_with_a_threshold():
    history = [healthy_row(adv_skew=-9.0)]
    assert broken_in(history) == set()
    assert broken_in(history, HealthThresholds(**{**FAST.__dict__, "advantage_skew_max": 5.0})) == {"advantages"}


def test_warns_once_per_stretch():
    callback = TrustHealthCallback(thresholds=FAST)
    kls = [0.01, 0.05, 0.06, 0.07, 0.01, 0.01, 0.08, 0.09]  # two stretches: updates 2-4 and 7-8
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for kl in kls:
            callback.add(healthy_row(kl=kl))
    health = [w for w in caught if issubclass(w.category, HealthWarning)]
    assert len(health) == 2
    assert "kl broken at update 2" in str(health[0].message) and "lower the learning rate" in str(health[0].message)
    assert [(update, name) for update, name, _ in callback.events] == [(2, "kl"), (7, "kl")]
    summary = callback.summary()
    assert "5/8" in summary and "lower the learning rate" in summary


def test_thresholds_from_dict():
    callback = TrustHealthCallback(thresholds={"kl_max": 0.5})
    assert callback.thresholds.kl_max == 0.5 and callback.thresholds.clip_fraction_max == 0.2
    with pytest.raises(TypeError):
        TrustHealthCallback(thresholds={"no_such_threshold": 1.0})


def test_advantage_statistics():
    rng = np.random.default_rng(0)
    symmetric = rng.normal(size=100_000)
    stats = advantage_statistics(symmetric, returns=np.full(100_000, 10.0))
    assert abs(stats["adv_mean"]) < 0.02 and abs(stats["adv_std"] - 1) < 0.02 and abs(stats["adv_skew"]) < 0.05
    assert stats["adv_clip_fraction"] == pytest.approx(0.0027, abs=0.001)  # P(|z| > 3)
    assert stats["adv_bias"] < 0.01
    skewed = advantage_statistics(rng.exponential(size=100_000))
    assert skewed["adv_skew"] == pytest.approx(2.0, abs=0.2) and "adv_bias" not in skewed
    constant = advantage_statistics(np.ones(10))
    assert constant["adv_skew"] == 0.0 and constant["adv_clip_fraction"] == 0.0


def run(model, total_timesteps: int, **thresholds) -> TrustHealthCallback:
    callback = TrustHealthCallback(thresholds=thresholds or None, warn=False)
    model.learn(total_timesteps, callback=callback)
    return callback


def test_healthy_cartpole_triggers_none():
    model = TrustPPO("MlpPolicy", "CartPole-v1", n_steps=256, seed=0, device="cpu")
    callback = run(model, 256 * 30)
    assert len(callback.history) == 30
    assert callback.broken_rules() == set()
    # Every rule was checked (TrustPPO logs all of their inputs)
    assert all(callback.results[-1][name] is not None for name in RULES)
    assert "0 rule(s) broken" in callback.summary()


def test_huge_learning_rate_breaks_the_step_size_rules():
    model = TrustPPO("MlpPolicy", "CartPole-v1", n_steps=256, learning_rate=0.05, seed=0, device="cpu")
    callback = run(model, 256 * 8)
    broken = callback.broken_rules()
    assert {"kl", "clip_fraction", "ratio"} <= broken
    # and then the entropy collapses (coupled); the value-function rules are not flagged
    assert broken <= {"kl", "clip_fraction", "ratio", "entropy"}


def test_trust_region_too_wide_breaks_kl():
    # TRPO logs no clip fraction and no ratios: the KL rule alone judges the step size
    model = TrustTRPO("MlpPolicy", "CartPole-v1", n_steps=256, target_kl=0.1, seed=0, device="cpu")
    callback = run(model, 256 * 20)
    broken = callback.broken_rules()
    assert "kl" in broken
    assert broken <= {"kl", "explained_variance"}  # coupled: the critic chases a policy that moves too fast


def test_narrow_clip_range_breaks_clip_fraction():
    model = TrustPPO("MlpPolicy", "CartPole-v1", n_steps=256, clip_range=0.002, seed=0, device="cpu")
    callback = run(model, 256 * 20)
    assert callback.broken_rules() == {"clip_fraction"}


def test_frozen_policy_breaks_returns():
    # The trust region is so small that the policy cannot move: the critic learns, the returns stay where they were
    model = TrustTRPO("MlpPolicy", "CartPole-v1", n_steps=256, target_kl=1e-6, seed=0, device="cpu")
    callback = run(model, 256 * 30)
    assert callback.broken_rules() == {"returns"}


def test_critic_that_does_not_learn_breaks_advantages():
    model = TrustTRPO("MlpPolicy", "CartPole-v1", n_steps=256, learning_rate=1e-7, seed=0, device="cpu")
    callback = run(model, 256 * 25)
    broken = callback.broken_rules()
    assert "advantages" in broken
    assert broken <= {"advantages", "explained_variance"}


class OneStepBandit(gym.Env):
    """One-step episodes: the reward is 1 + obs (obs = ±1, for the critic to explain) + 0.5 for action 0."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._obs = float(self.np_random.choice([-1.0, 1.0]))
        return np.array([self._obs], np.float32), {}

    def step(self, action):
        reward = 1.0 + self._obs + 0.5 * float(action == 0)
        return np.array([self._obs], np.float32), reward, True, False, {}


def test_no_entropy_bonus_on_a_deterministic_optimum_breaks_entropy():
    # Small steps (KL under 0.02 at every update) and ent_coef=0: the policy becomes deterministic on its own
    model = TrustPPO(
        "MlpPolicy",
        OneStepBandit(),
        n_steps=128,
        batch_size=64,
        n_epochs=2,
        learning_rate=1e-3,
        ent_coef=0.0,
        seed=0,
        device="cpu",
    )
    callback = run(model, 128 * 28)
    assert callback.broken_rules() == {"entropy"}


def test_sb3_ppo_where_the_keys_exist():
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=256, seed=0, device="cpu")
    callback = run(model, 256 * 4)
    results = callback.results[-1]
    # SB3 PPO logs approx_kl, clip_fraction, entropy_loss and explained_variance; no ratios
    assert results["kl"] is not None and results["clip_fraction"] is not None and results["entropy"] is not None
    assert results["ratio"] is None
    assert "not checked" in callback.summary()
    assert len(callback.history) == 4


def test_log_interval_reads_each_update_once(tmp_path):
    pytest.importorskip("tensorboard", reason="the advantage histogram needs tensorboard")
    model = TrustPPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.set_logger(configure(str(tmp_path), ["tensorboard"]))
    callback = TrustHealthCallback()
    model.learn(64 * 6, callback=callback, log_interval=4)
    assert len(callback.history) == 6
    assert [row["timesteps"] for row in callback.history] == [64.0 * (i + 2) for i in range(5)] + [64.0 * 6]
    events = list(tmp_path.glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0})
    accumulator.Reload()
    assert "health/advantages" in accumulator.Tags()["histograms"]
    assert "health/adv_skew" in accumulator.Tags()["scalars"]


def test_plot(tmp_path):
    pytest.importorskip("matplotlib", reason="the summary figure needs matplotlib")
    callback = TrustHealthCallback(thresholds=FAST, warn=False)
    for i, kl in enumerate([0.01, 0.05, 0.01]):
        callback.add(healthy_row(kl=kl, timesteps=float(i), **{"return": float(i)}))
    figure = callback.plot(str(tmp_path / "health.png"))
    assert (tmp_path / "health.png").stat().st_size > 0
    assert len(figure.axes) == 5
