"""
Property test: any combination of keyword values either trains for a few steps with finite parameters, or fails
before training with a ValueError/TypeError that names one of the keywords given. Never an AssertionError, never a
crash deep inside torch, never NaN weights.
"""

import pytest
import torch as th
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sb3_trust import TrustPPO, TrustTRPO
from sb3_trust.common.safety import NonFiniteError

junk = st.sampled_from(["x", None, [1], {"a": 1}, float("nan"), float("inf"), -1, 0, True])


def mostly(valid: st.SearchStrategy, invalid: st.SearchStrategy | None = None) -> st.SearchStrategy:
    """Valid values most of the time; junk (wrong types, NaN, ...) or out-of-range values sometimes."""
    bad = junk if invalid is None else st.one_of(junk, invalid)
    return st.integers(min_value=0, max_value=19).flatmap(lambda i: bad if i == 0 else valid)


unit = st.floats(min_value=0.0, max_value=1.0)
out_of_unit = st.floats(min_value=1.01, max_value=5.0) | st.floats(min_value=-5.0, max_value=-0.01)
positive = st.floats(min_value=1e-3, max_value=2.0)
negative = st.floats(min_value=-2.0, max_value=-1e-6)

COMMON = {
    "learning_rate": mostly(st.floats(min_value=0.0, max_value=0.05), negative),
    "n_steps": mostly(st.integers(min_value=16, max_value=64), st.integers(min_value=-2, max_value=0)),
    "batch_size": mostly(st.integers(min_value=2, max_value=16), st.integers(min_value=-2, max_value=1)),
    "gamma": mostly(unit, out_of_unit),
    "gae_lambda": mostly(unit, out_of_unit),
    "normalize_advantage": mostly(st.booleans()),
    "sde_sample_freq": mostly(st.integers(min_value=-1, max_value=8), st.integers(min_value=-5, max_value=-2)),
    "stats_window_size": mostly(st.integers(min_value=1, max_value=100), st.integers(min_value=-2, max_value=0)),
}
PPO_ONLY = {
    "n_epochs": mostly(st.integers(min_value=1, max_value=3), st.integers(min_value=-1, max_value=0)),
    "clip_range": mostly(positive, negative),
    "clip_range_vf": mostly(st.one_of(st.none(), positive, positive), negative),
    "ent_coef": mostly(st.floats(min_value=-0.01, max_value=0.1)),
    "vf_coef": mostly(positive, negative),
    "max_grad_norm": mostly(positive, negative),
    "target_kl": mostly(st.none() | positive, negative),
    "policy_loss": mostly(
        st.sampled_from(["clip", "kl_penalty", "unclipped", "dual_clip", "clip_higher", "spo"]), st.just("other")
    ),
    "dual_clip": mostly(st.floats(min_value=1.01, max_value=10.0), st.floats(min_value=-1.0, max_value=1.0)),
    "clip_range_low": mostly(st.none() | positive, negative),
    "clip_range_high": mostly(st.none() | positive, negative),
    "adaptive_lr_kl_target": mostly(st.none() | positive, negative),
    "adaptive_lr_bounds": mostly(st.just((1e-5, 1e-2)), st.just((1e-2, 1e-5)) | st.just((0.0, 1e-2))),
    "vf_learning_rate": mostly(st.none() | st.floats(min_value=0.0, max_value=0.05), negative),
    "kl_coef": mostly(positive, negative),
    "adaptive_kl_target": mostly(st.one_of(st.none(), st.none(), st.none(), positive), negative),
    "vf_clip_mode": mostly(st.sampled_from(["sb3", "max"]), st.just("min")),
    "on_non_finite": mostly(st.sampled_from(["raise", "skip"]), st.just("ignore")),
    "reference_kl_coef": mostly(positive, negative),
    "reference_kl_mode": mostly(st.sampled_from(["reward", "loss"]), st.just("both")),
    "projection": mostly(st.sampled_from([None, "frobenius", "w2", "kl"]), st.just("trpl")),
    "projection_mean_bound": mostly(positive, negative),
    "projection_cov_bound": mostly(positive, negative),
    "projection_coef": mostly(st.floats(min_value=0.0, max_value=10.0), negative),
}
TRPO_ONLY = {
    "cg_max_steps": mostly(st.integers(min_value=1, max_value=20), st.integers(min_value=-1, max_value=0)),
    "cg_damping": mostly(positive, negative),
    "line_search_shrinking_factor": mostly(st.floats(min_value=0.05, max_value=0.95), out_of_unit),
    "line_search_max_iter": mostly(st.integers(min_value=1, max_value=12), st.integers(min_value=-1, max_value=0)),
    "n_critic_updates": mostly(st.integers(min_value=0, max_value=3), st.just(-1)),
    "target_kl": mostly(positive, negative),
    "sub_sampling_factor": mostly(st.integers(min_value=1, max_value=4), st.integers(min_value=-1, max_value=0)),
    "kl_convention": mostly(st.sampled_from(["paper", "contrib"]), st.just("other")),
    "step_rule": mostly(st.sampled_from(["line_search", "npg"]), st.just("sgd")),
}


def _kwargs(space: dict) -> st.SearchStrategy:
    return st.fixed_dictionaries({}, optional=space)


def _check(cls, env_id: str, kwargs: dict) -> str:
    base = dict(n_steps=32, batch_size=16, policy_kwargs=dict(net_arch=[8]), seed=0, device="cpu")
    if cls is TrustPPO:
        base["n_epochs"] = 2
    params = {**base, **kwargs}
    try:
        model = cls("MlpPolicy", env_id, **params)
    except (ValueError, TypeError) as error:
        message = str(error)
        assert any(name in message for name in kwargs), (kwargs, message)
        return "rejected"
    n_steps = params["n_steps"]
    try:
        model.learn(2 * n_steps)
    except NonFiniteError:
        pass  # a clean, named stop; the weights from before the bad update are kept
    for parameter in model.policy.parameters():
        assert th.isfinite(parameter).all(), kwargs
    return "trained"


SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
@SETTINGS
@given(kwargs=_kwargs({**COMMON, **PPO_ONLY}))
def test_trust_ppo_any_keywords(env_id, kwargs):
    event(_check(TrustPPO, env_id, kwargs))


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
@SETTINGS
@given(kwargs=_kwargs({**COMMON, **TRPO_ONLY}))
def test_trust_trpo_any_keywords(env_id, kwargs):
    event(_check(TrustTRPO, env_id, kwargs))


def test_the_property_is_not_vacuous():
    """Both outcomes happen: a valid combination trains, an invalid one is rejected naming its keyword."""
    assert _check(TrustPPO, "CartPole-v1", {"clip_range": 0.1}) == "trained"
    assert _check(TrustPPO, "CartPole-v1", {"clip_range": -0.1}) == "rejected"
    assert _check(TrustTRPO, "Pendulum-v1", {"cg_damping": 0.5}) == "trained"
    assert _check(TrustTRPO, "Pendulum-v1", {"line_search_shrinking_factor": 1.0}) == "rejected"
