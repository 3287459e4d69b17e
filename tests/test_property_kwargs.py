"""
Property test: any combination of keyword values either trains for a few steps with finite parameters, or fails
before training with a ValueError/TypeError that names one of the keywords given. Never an AssertionError, never a
crash deep inside torch, never NaN weights.
"""

import pytest
import torch as th
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sb3_trust import TrustPPO, TrustTRPO
from sb3_trust.common.safety import NonFiniteError

junk = st.sampled_from(["x", None, [1], {"a": 1}, float("nan"), float("inf"), -1, 0, True])
prob = st.floats(min_value=-0.5, max_value=1.5, allow_nan=False)
positive = st.floats(min_value=-0.1, max_value=2.0, allow_nan=False)
small_int = st.integers(min_value=-2, max_value=64)

COMMON = {
    "learning_rate": st.one_of(st.floats(min_value=-1e-3, max_value=0.1, allow_nan=False), junk),
    "n_steps": st.one_of(small_int, junk),
    "batch_size": st.one_of(small_int, junk),
    "gamma": st.one_of(prob, junk),
    "gae_lambda": st.one_of(prob, junk),
    "normalize_advantage": st.one_of(st.booleans(), junk),
    "sde_sample_freq": st.one_of(st.integers(min_value=-3, max_value=8), junk),
    "stats_window_size": st.one_of(small_int, junk),
}
PPO_ONLY = {
    "n_epochs": st.one_of(st.integers(min_value=-1, max_value=3), junk),
    "clip_range": st.one_of(positive, junk),
    "clip_range_vf": st.one_of(st.none(), positive, junk),
    "ent_coef": st.one_of(st.floats(min_value=-0.1, max_value=0.1, allow_nan=False), junk),
    "vf_coef": st.one_of(positive, junk),
    "max_grad_norm": st.one_of(positive, junk),
    "target_kl": st.one_of(st.none(), positive, junk),
    "policy_loss": st.one_of(st.sampled_from(["clip", "kl_penalty", "unclipped", "other"]), junk),
    "kl_coef": st.one_of(positive, junk),
    "adaptive_kl_target": st.one_of(st.none(), positive, junk),
    "vf_clip_mode": st.one_of(st.sampled_from(["sb3", "max", "min"]), junk),
    "on_non_finite": st.one_of(st.sampled_from(["raise", "skip", "ignore"]), junk),
    "reference_kl_coef": st.one_of(positive, junk),
    "reference_kl_mode": st.one_of(st.sampled_from(["reward", "loss", "both"]), junk),
}
TRPO_ONLY = {
    "cg_max_steps": st.one_of(st.integers(min_value=-1, max_value=20), junk),
    "cg_damping": st.one_of(positive, junk),
    "line_search_shrinking_factor": st.one_of(prob, junk),
    "line_search_max_iter": st.one_of(st.integers(min_value=-1, max_value=12), junk),
    "n_critic_updates": st.one_of(st.integers(min_value=-1, max_value=3), junk),
    "target_kl": st.one_of(positive, junk),
    "sub_sampling_factor": st.one_of(st.integers(min_value=-1, max_value=8), junk),
    "kl_convention": st.one_of(st.sampled_from(["paper", "contrib", "other"]), junk),
    "step_rule": st.one_of(st.sampled_from(["line_search", "npg", "sgd"]), junk),
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


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
@SETTINGS
@given(kwargs=_kwargs({**COMMON, **PPO_ONLY}))
def test_trust_ppo_any_keywords(env_id, kwargs):
    _check(TrustPPO, env_id, kwargs)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
@SETTINGS
@given(kwargs=_kwargs({**COMMON, **TRPO_ONLY}))
def test_trust_trpo_any_keywords(env_id, kwargs):
    _check(TrustTRPO, env_id, kwargs)


def test_the_property_is_not_vacuous():
    """Both outcomes happen: a valid combination trains, an invalid one is rejected naming its keyword."""
    assert _check(TrustPPO, "CartPole-v1", {"clip_range": 0.1}) == "trained"
    assert _check(TrustPPO, "CartPole-v1", {"clip_range": -0.1}) == "rejected"
    assert _check(TrustTRPO, "Pendulum-v1", {"cg_damping": 0.5}) == "trained"
    assert _check(TrustTRPO, "Pendulum-v1", {"line_search_shrinking_factor": 1.0}) == "rejected"
