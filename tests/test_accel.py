"""
The accelerator (``sb3_trust.accel``) against its oracles: its minibatch step against an autograd implementation of the
reference step on the policy's own ``evaluate_actions``, ``clip_grad_norm_`` and ``th.optim.Adam``; its collection
against SB3's ``collect_rollouts`` with the same seed; and ``can_run``'s reasons.
"""

import copy
import itertools
import subprocess
import sys
import types

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer, RolloutBufferSamples
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import FlattenExtractor

import sb3_trust.accel as accel
from sb3_trust.common.safety import NonFiniteError
from sb3_trust.common.update import LossSettings, MinibatchStats

pytestmark = pytest.mark.skipif(accel.unavailable_reason() is not None, reason=str(accel.unavailable_reason()))

PENDULUM = (spaces.Box(-8.0, 8.0, (3,), np.float32), spaces.Box(-2.0, 2.0, (1,), np.float32))
HALF_CHEETAH = (spaces.Box(-np.inf, np.inf, (17,), np.float32), spaces.Box(-1.0, 1.0, (6,), np.float32))
CARTPOLE = (spaces.Box(-np.inf, np.inf, (4,), np.float32), spaces.Discrete(2))
ACROBOT = (spaces.Box(-np.inf, np.inf, (6,), np.float32), spaces.Discrete(3))
LOSS_KWARGS = {"clip": {"clip_range": 0.2}, "unclipped": {}, "kl_penalty": {"kl_coef": 0.7}}


def make_policy(spaces_: tuple, seed: int = 0, optimizer_kwargs: dict | None = None, **kwargs) -> ActorCriticPolicy:
    th.manual_seed(seed)
    optimizer_kwargs = {"eps": 1e-5, **(optimizer_kwargs or {})}
    policy = ActorCriticPolicy(*spaces_, lambda _: 3e-4, optimizer_kwargs=optimizer_kwargs, **kwargs)
    if isinstance(spaces_[1], spaces.Box):
        with th.no_grad():  # not all equal, so that each dimension's gradient differs
            policy.log_std.copy_(th.linspace(-0.6, 0.3, spaces_[1].shape[0]))
    return policy


def make_model(policy: ActorCriticPolicy, policy_loss: str = "clip", vf_clip_mode: str = "sb3", **attributes) -> object:
    """A stand-in for TrustPPO with the attributes ``can_run`` reads."""
    buffer = RolloutBuffer(8, policy.observation_space, policy.action_space, device="cpu", n_envs=1)
    return types.SimpleNamespace(
        policy=policy,
        device=th.device("cpu"),
        rollout_buffer=buffer,
        policy_loss=policy_loss,
        vf_clip_mode=vf_clip_mode,
        **attributes,
    )


def perturbed(policy: ActorCriticPolicy, scale: float = 0.05, seed: int = 1) -> ActorCriticPolicy:
    """A frozen copy of the policy with its parameters moved a little (π_old for the KL penalty)."""
    old = copy.deepcopy(policy)
    generator = th.Generator().manual_seed(seed)
    with th.no_grad():
        for param in old.parameters():
            param.add_(scale * th.randn(param.shape, generator=generator))
            param.requires_grad_(False)
    return old


def minibatch(policy: ActorCriticPolicy, n: int, seed: int) -> RolloutBufferSamples:
    """Random samples near the policy (ratios around 1, some clipped; value changes around the clip range)."""
    generator = th.Generator().manual_seed(seed)
    obs_dim = policy.observation_space.shape[0]
    obs = th.randn(n, obs_dim, generator=generator)
    with th.no_grad():
        if isinstance(policy.action_space, spaces.Discrete):
            actions = th.randint(policy.action_space.n, (n, 1), generator=generator).float()
            values, log_prob, _ = policy.evaluate_actions(obs, actions.long().flatten())
        else:
            actions = th.randn(n, policy.action_space.shape[0], generator=generator)
            values, log_prob, _ = policy.evaluate_actions(obs, actions)
    old_log_prob = log_prob + 0.2 * th.randn(n, generator=generator)
    old_values = values.flatten() + 0.3 * th.randn(n, generator=generator)
    advantages = 2.0 * th.randn(n, generator=generator) + 0.5
    returns = old_values + th.randn(n, generator=generator)
    return RolloutBufferSamples(obs, actions, old_values, old_log_prob, advantages, returns)


def gaussian_or_categorical_kl(old_distribution, distribution) -> th.Tensor:
    kl = th.distributions.kl_divergence(old_distribution.distribution, distribution.distribution)
    return kl.sum(dim=-1) if kl.dim() > 1 else kl


def reference_step(
    policy: ActorCriticPolicy, old_policy: ActorCriticPolicy | None, data: RolloutBufferSamples, settings: LossSettings
) -> MinibatchStats:
    """The reference step with autograd, the policy's own evaluate_actions, clip_grad_norm_ and Adam."""
    actions = data.actions
    if isinstance(policy.action_space, spaces.Discrete):
        actions = actions.long().flatten()
    values, log_prob, entropy = policy.evaluate_actions(data.observations, actions)
    values = values.flatten()
    advantages = data.advantages
    if settings.normalize_advantage and len(advantages) > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    log_ratio = log_prob - data.old_log_prob
    ratio = th.exp(log_ratio)
    if settings.policy_loss == "clip":
        clip = settings.loss_kwargs["clip_range"]
        policy_loss = -th.min(advantages * ratio, advantages * th.clamp(ratio, 1 - clip, 1 + clip)).mean()
    else:
        policy_loss = -(advantages * ratio).mean()
        if settings.policy_loss == "kl_penalty":
            assert old_policy is not None
            with th.no_grad():
                old_distribution = copy.copy(old_policy.get_distribution(data.observations))
            distribution = policy.get_distribution(data.observations)
            kl = gaussian_or_categorical_kl(old_distribution, distribution)
            policy_loss = policy_loss + settings.loss_kwargs["kl_coef"] * kl.mean()
    value_clip_fraction = 0.0
    if settings.clip_range_vf is None:
        value_loss = th.nn.functional.mse_loss(data.returns, values)
    else:
        eps_v = settings.clip_range_vf
        values_clipped = data.old_values + th.clamp(values - data.old_values, -eps_v, eps_v)
        value_clip_fraction = th.mean((th.abs(values - data.old_values) > eps_v).float()).item()
        if settings.vf_clip_mode == "sb3":
            value_loss = th.nn.functional.mse_loss(data.returns, values_clipped)
        else:
            value_loss = th.max((data.returns - values) ** 2, (data.returns - values_clipped) ** 2).mean()
    entropy_loss = -th.mean(entropy)
    loss = policy_loss + settings.ent_coef * entropy_loss + settings.vf_coef * value_loss
    with th.no_grad():
        approx_kl = th.mean((ratio - 1) - log_ratio).item()
        stats = dict(
            policy_loss=policy_loss.item(),
            value_loss=value_loss.item(),
            entropy_loss=entropy_loss.item(),
            loss=loss.item(),
            approx_kl=approx_kl,
            clip_fraction=th.mean((th.abs(ratio - 1) > settings.clip_range).float()).item(),
            value_clip_fraction=value_clip_fraction,
            ratio_max=ratio.max().item(),
            ratio_mean=ratio.mean().item(),
        )
    if settings.max_approx_kl is not None and approx_kl > settings.max_approx_kl:
        return MinibatchStats(**stats, applied=False)
    for name in ("policy_loss", "value_loss", "entropy_loss"):
        if not np.isfinite(stats[name]):
            raise NonFiniteError(f"non-finite {name}")
    policy.optimizer.zero_grad()
    loss.backward()
    norm = th.nn.utils.clip_grad_norm_(policy.parameters(), settings.max_grad_norm)
    if not th.isfinite(norm):
        raise NonFiniteError("non-finite gradient_norm")
    policy.optimizer.step()
    return MinibatchStats(**stats, applied=True)


def assert_same_state(policy: ActorCriticPolicy, expected: ActorCriticPolicy) -> None:
    """Parameters and Adam state (step, exp_avg, exp_avg_sq) of two policies within 1e-5 relative."""
    # A gradient entry that is a sum with cancellation (a bias's) carries float32 rounding relative to the gradient's
    # scale, not to its own size: the moments' absolute tolerance is relative to the largest entry of all parameters
    scales = {
        key: max(float(state[key].abs().max()) for state in expected.optimizer.state.values() if key in state)
        for key in ("exp_avg", "exp_avg_sq")
        if any(key in state for state in expected.optimizer.state.values())
    }
    for (name, param), expected_param in zip(policy.named_parameters(), expected.parameters(), strict=True):
        th.testing.assert_close(param, expected_param, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
        state, expected_state = policy.optimizer.state[param], expected.optimizer.state[expected_param]
        assert set(state) == set(expected_state), name
        for key in expected_state:
            assert state[key].dtype == expected_state[key].dtype, (name, key)
            if key == "step":
                assert th.equal(state[key], expected_state[key]), name
                continue
            rtol = 2e-5 if key == "exp_avg_sq" else 1e-5  # a square: twice the gradient's relative error
            th.testing.assert_close(
                state[key],
                expected_state[key],
                rtol=rtol,
                atol=rtol * scales[key],
                msg=lambda m, k=key, name=name: f"{name} {k}: {m}",
            )


def assert_same_stats(stats: MinibatchStats, expected: MinibatchStats) -> None:
    assert stats.applied == expected.applied
    for name, value, expected_value in zip(MinibatchStats._fields, stats, expected, strict=True):
        assert isinstance(value, (float, bool)), name
        assert value == pytest.approx(expected_value, rel=2e-5, abs=2e-6), name


def run_both(
    policy: ActorCriticPolicy,
    settings: LossSettings,
    n_steps: int = 10,
    batch_sizes: tuple[int, ...] = (64,),
    old_policy: ActorCriticPolicy | None = None,
) -> tuple[ActorCriticPolicy, list[MinibatchStats]]:
    """``n_steps`` minibatch steps by the accelerator on ``policy`` and by the reference on a copy, compared after each."""
    expected = copy.deepcopy(policy)
    model = make_model(policy, settings.policy_loss, settings.vf_clip_mode)
    assert accel.can_run(model, "train") is None
    step = accel.ppo_step(model)
    if old_policy is None and settings.policy_loss == "kl_penalty":
        old_policy = perturbed(policy)
    step.begin_update(old_policy)
    all_stats = []
    for i in range(n_steps):
        data = minibatch(expected, batch_sizes[i % len(batch_sizes)], seed=100 + i)
        expected_stats = reference_step(expected, old_policy, data, settings)
        stats = step.step(data, settings)
        assert_same_stats(stats, expected_stats)
        assert_same_state(policy, expected)
        all_stats.append(stats)
    return expected, all_stats


def settings_for(loss: str, clip_range_vf, vf_clip_mode: str, ent_coef: float, normalize: bool) -> LossSettings:
    return LossSettings(
        policy_loss=loss,
        loss_kwargs=dict(LOSS_KWARGS[loss]),
        clip_range=0.2,
        clip_range_vf=clip_range_vf,
        vf_clip_mode=vf_clip_mode,
        ent_coef=ent_coef,
        vf_coef=0.5,
        normalize_advantage=normalize,
        max_grad_norm=0.5,
    )


VF_SETTINGS = [(None, "sb3"), (0.2, "sb3"), (0.2, "max")]


@pytest.mark.parametrize("spaces_", [PENDULUM, CARTPOLE], ids=["gaussian", "categorical"])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-3])
@pytest.mark.parametrize("loss", sorted(accel.ACCELERATED_LOSSES))
def test_step_matches_reference(spaces_, weight_decay, loss):
    """Every claimed loss × value clipping × entropy × advantage normalisation, 10 steps, against autograd."""
    for (clip_range_vf, mode), ent_coef, normalize in itertools.product(VF_SETTINGS, [0.0, 0.01], [True, False]):
        policy = make_policy(spaces_, optimizer_kwargs={"weight_decay": weight_decay})
        run_both(policy, settings_for(loss, clip_range_vf, mode, ent_coef, normalize), n_steps=10)


NET_ARCHS = [
    dict(net_arch=[64, 64], activation_fn=th.nn.ReLU),
    dict(net_arch=dict(pi=[32], vf=[16, 8])),
    dict(net_arch=dict(pi=[32], vf=[16, 8]), activation_fn=th.nn.ReLU, share_features_extractor=False),
    dict(net_arch=[]),
    dict(net_arch=dict(pi=[], vf=[24])),
    dict(net_arch=[48, 40, 32]),
]


@pytest.mark.parametrize("spaces_", [HALF_CHEETAH, ACROBOT], ids=["gaussian", "categorical"])
@pytest.mark.parametrize("policy_kwargs", NET_ARCHS, ids=lambda kwargs: str(kwargs)[:40])
def test_architectures(spaces_, policy_kwargs):
    """Depths and widths (uneven actor and critic, empty net_arch), tanh and ReLU, Gaussian and Categorical."""
    for loss in sorted(accel.ACCELERATED_LOSSES):
        policy = make_policy(spaces_, **policy_kwargs)
        run_both(policy, settings_for(loss, 0.2, "max", 0.01, True), n_steps=5)


def test_uneven_last_minibatch_and_single_sample():
    """Minibatches of different sizes in one update, including the last uneven one and a single sample (unchanged
    advantage)."""
    for spaces_ in (PENDULUM, CARTPOLE):
        policy = make_policy(spaces_)
        run_both(policy, settings_for("clip", 0.2, "sb3", 0.01, True), n_steps=6, batch_sizes=(64, 64, 17, 1, 2, 64))


def test_adam_hyper_parameters_read_every_step():
    """A learning rate, betas, eps and weight decay changed between steps (as SB3's schedule does) are used; two
    param groups with different values; decoupled weight decay."""
    policy = make_policy(PENDULUM, optimizer_kwargs={"betas": (0.8, 0.99)})
    expected = copy.deepcopy(policy)
    step = accel.ppo_step(make_model(policy))
    step.begin_update(None)
    settings = settings_for("clip", None, "sb3", 0.0, True)
    for i, lr in enumerate([3e-4, 1e-3, 5e-5]):
        for candidate in (policy, expected):
            for group in candidate.optimizer.param_groups:
                group["lr"] = lr
                group["weight_decay"] = 1e-2 * i
        data = minibatch(expected, 64, seed=i)
        assert_same_stats(step.step(data, settings), reference_step(expected, None, data, settings))
        assert_same_state(policy, expected)

    for decoupled in (False, True):
        policy = make_policy(CARTPOLE)
        params = list(policy.parameters())
        policy.optimizer = th.optim.Adam(
            [
                {"params": params[:3], "lr": 1e-3, "betas": (0.85, 0.995)},
                {"params": params[3:], "lr": 2e-4, "eps": 1e-6, "weight_decay": 0.1},
            ],
            eps=1e-5,
            decoupled_weight_decay=decoupled,
        )
        run_both(policy, settings_for("unclipped", 0.2, "sb3", 0.0, True), n_steps=4)


def test_fresh_and_existing_optimizer_state():
    """Adam's state is created as torch creates it (float32 scalar step, zero moments), and a state created by torch's
    own steps is continued."""
    policy = make_policy(CARTPOLE)
    settings = settings_for("clip", None, "sb3", 0.0, True)
    step = accel.ppo_step(make_model(policy))
    step.begin_update(None)
    step.step(minibatch(policy, 32, seed=0), settings)
    reference = make_policy(CARTPOLE)
    reference_step(reference, None, minibatch(reference, 32, seed=0), settings)
    for param, expected in zip(policy.parameters(), reference.parameters(), strict=True):
        state, expected_state = policy.optimizer.state[param], reference.optimizer.state[expected]
        assert state["step"].dtype == th.float32 and state["step"].dim() == 0 and state["step"].item() == 1.0
        assert all(state[key].shape == expected_state[key].shape for key in expected_state)
    assert_same_state(policy, reference)

    # Torch's steps first, then the accelerator's (the reference path handing over), then torch's again
    policy = make_policy(PENDULUM)
    expected = copy.deepcopy(policy)
    step = accel.ppo_step(make_model(policy))
    for i in range(6):
        data = minibatch(expected, 64, seed=i)
        reference_step(expected, None, data, settings)
        if i in (2, 3):
            step.begin_update(None)
            step.step(data, settings)
        else:
            reference_step(policy, None, data, settings)
        assert_same_state(policy, expected)


def test_gradient_clipping_at_small_norms():
    """torch's clip_grad_norm_ coefficient ``max_norm / (norm + 1e-6)``: visible in Adam's moments when the gradient
    norm is close to 1e-6 (Adam's step itself hardly depends on the gradient's scale). Also unclipped (coefficient 1)."""
    for spaces_, max_grad_norm in itertools.product((PENDULUM, CARTPOLE), (1e-7, 1e3)):
        policy = make_policy(spaces_)
        settings = LossSettings(
            **{**settings_for("unclipped", None, "sb3", 0.0, False).__dict__, "vf_coef": 1e-8, "max_grad_norm": max_grad_norm}
        )
        expected = copy.deepcopy(policy)
        step = accel.ppo_step(make_model(policy, "unclipped"))
        step.begin_update(None)
        for i in range(3):
            data = minibatch(expected, 64, seed=i)
            data.advantages.mul_(1e-6)  # gradient norm about 1e-6
            assert_same_stats(step.step(data, settings), reference_step(expected, None, data, settings))
            assert_same_state(policy, expected)


def test_early_stop_changes_nothing():
    """approx_kl above max_approx_kl: applied=False, parameters and Adam state untouched, no state created."""
    policy = make_policy(PENDULUM)
    step = accel.ppo_step(make_model(policy))
    step.begin_update(None)
    settings = settings_for("clip", 0.2, "sb3", 0.0, True)
    stop = LossSettings(**{**settings.__dict__, "max_approx_kl": 1e-6})
    data = minibatch(policy, 64, seed=0)
    before = copy.deepcopy(policy.state_dict())
    stats = step.step(data, stop)
    assert not stats.applied and stats.approx_kl > 1e-6
    assert len(policy.optimizer.state) == 0 or all(len(s) == 0 for s in policy.optimizer.state.values())
    for key, value in policy.state_dict().items():
        assert th.equal(value, before[key]), key
    # Same stats as the reference's early stop
    expected = copy.deepcopy(policy)
    assert_same_stats(stats, reference_step(expected, None, data, stop))

    # After some applied steps: the state is untouched too
    step.step(data, settings)
    state = copy.deepcopy(policy.optimizer.state_dict())
    params = copy.deepcopy(policy.state_dict())
    assert not step.step(minibatch(policy, 64, seed=1), stop).applied
    for key, value in policy.state_dict().items():
        assert th.equal(value, params[key]), key
    for index, entries in policy.optimizer.state_dict()["state"].items():
        for key, value in entries.items():
            assert th.equal(value, state["state"][index][key]), (index, key)
    # The early stop is not taken when approx_kl is below the threshold
    relaxed = LossSettings(**{**settings.__dict__, "max_approx_kl": 1e3})
    assert step.step(data, relaxed).applied


@pytest.mark.parametrize(
    "field, name",
    [("advantages", "policy_loss"), ("old_log_prob", "policy_loss"), ("returns", "value_loss")],
)
def test_non_finite_raises_and_changes_nothing(field, name):
    """NaN in the minibatch: NonFiniteError naming the first non-finite term, parameters and Adam state untouched."""
    for spaces_ in (PENDULUM, CARTPOLE):
        policy = make_policy(spaces_)
        step = accel.ppo_step(make_model(policy))
        step.begin_update(None)
        settings = settings_for("clip", 0.2, "sb3", 0.01, True)
        step.step(minibatch(policy, 64, seed=0), settings)
        params = copy.deepcopy(policy.state_dict())
        state = copy.deepcopy(policy.optimizer.state_dict())
        data = minibatch(policy, 64, seed=1)
        getattr(data, field)[3] = float("nan")
        with pytest.raises(NonFiniteError, match=f"non-finite {name}"):
            step.step(data, settings)
        expected = copy.deepcopy(policy)
        with pytest.raises(NonFiniteError, match=f"non-finite {name}"):
            reference_step(expected, None, data, settings)
        for key, value in policy.state_dict().items():
            assert th.equal(value, params[key]), key
        for index, entries in policy.optimizer.state_dict()["state"].items():
            for key, value in entries.items():
                assert th.equal(value, state["state"][index][key]), (index, key)


def test_non_finite_gradient_norm_and_fresh_state():
    """A gradient that overflows: ``gradient_norm`` named; a state created for that step is removed again."""
    policy = make_policy(PENDULUM)
    step = accel.ppo_step(make_model(policy))
    step.begin_update(None)
    data = minibatch(policy, 64, seed=0)
    # Finite loss terms, an infinite coefficient: only the gradient is not finite
    settings = LossSettings(**{**settings_for("clip", None, "sb3", 0.0, True).__dict__, "vf_coef": float("inf")})
    with pytest.raises(NonFiniteError, match="non-finite gradient_norm"):
        step.step(data, settings)
    assert all(len(s) == 0 for s in policy.optimizer.state.values())
    with pytest.raises(NonFiniteError, match="non-finite gradient_norm"):
        reference_step(copy.deepcopy(policy), None, data, settings)


def test_parameters_replaced_are_followed():
    """Parameters loaded in place (set_parameters) or whose tensors are replaced, and a new optimizer: the next step
    uses them."""
    policy = make_policy(CARTPOLE)
    expected = copy.deepcopy(policy)
    step = accel.ppo_step(make_model(policy))
    step.begin_update(None)
    settings = settings_for("clip", None, "sb3", 0.0, True)
    data = minibatch(expected, 64, seed=0)
    step.step(data, settings)
    reference_step(expected, None, data, settings)
    other = make_policy(CARTPOLE, seed=5)
    policy.load_state_dict(other.state_dict())
    expected.load_state_dict(other.state_dict())
    with th.no_grad():
        policy.action_net.weight.data = policy.action_net.weight.data.clone() * 0.5
        expected.action_net.weight.data = expected.action_net.weight.data.clone() * 0.5
    policy.optimizer.load_state_dict(copy.deepcopy(expected.optimizer.state_dict()))
    for i in range(1, 4):
        data = minibatch(expected, 64, seed=i)
        reference_step(expected, None, data, settings)
        step.step(data, settings)
        assert_same_state(policy, expected)
    for candidate in (policy, expected):
        candidate.optimizer = th.optim.Adam(candidate.parameters(), lr=1e-3, eps=1e-5)
    data = minibatch(expected, 64, seed=9)
    reference_step(expected, None, data, settings)
    step.step(data, settings)
    assert_same_state(policy, expected)


# --- Collection -------------------------------------------------------------------------------------------------


def collect_with(env_id: str, accelerated: bool, n_steps: int, seed: int = 3, stop_at: int | None = None):
    env = make_vec_env(env_id, n_envs=2, seed=seed, env_kwargs={"max_episode_steps": 10} if env_id == "CartPole-v1" else None)
    model = PPO("MlpPolicy", env, n_steps=n_steps, batch_size=n_steps, seed=seed, device="cpu")
    model.policy_loss, model.vf_clip_mode = "clip", "sb3"
    model._setup_learn(n_steps * 2, callback=None)
    seen = []

    from stable_baselines3.common.callbacks import BaseCallback

    class Recorder(BaseCallback):
        def _on_step(self) -> bool:
            seen.append(
                (
                    self.locals["actions"].copy(),
                    self.locals["values"].clone(),
                    self.locals["log_probs"].clone(),
                    self.locals["rewards"].copy(),
                )
            )
            return stop_at is None or len(seen) < stop_at

    recorder = Recorder()
    recorder.init_callback(model)
    th.manual_seed(seed + 10)
    if accelerated:
        assert accel.can_run(model, "collect") is None
        result = accel.collector(model).collect_rollouts(model, model.env, recorder, model.rollout_buffer, n_steps)
    else:
        result = model.collect_rollouts(model.env, recorder, model.rollout_buffer, n_steps)
    return model, result, seen, th.rand(1).item()


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_collection_matches_sb3(env_id):
    """Same seed: same actions and observations, values and log-likelihoods within 1e-5, the same time-limit
    bootstraps (Pendulum truncates at 200 steps, CartPole here at 10), the same returns and advantages, the same RNG
    state after the rollout, and the same callback locals."""
    n_steps = 256 if env_id == "Pendulum-v1" else 64
    model, result, seen, next_draw = collect_with(env_id, True, n_steps)
    expected, expected_result, expected_seen, expected_draw = collect_with(env_id, False, n_steps)
    assert result is True and expected_result is True
    assert next_draw == expected_draw
    buffer, expected_buffer = model.rollout_buffer, expected.rollout_buffer
    assert buffer.full and buffer.pos == expected_buffer.pos
    assert model.num_timesteps == expected.num_timesteps == 2 * n_steps
    exact = env_id == "CartPole-v1"
    for name in ("observations", "actions", "episode_starts"):
        got, want = getattr(buffer, name), getattr(expected_buffer, name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        if exact or name == "episode_starts":
            np.testing.assert_array_equal(got, want, err_msg=name)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)
    truncations = int(np.sum(buffer.episode_starts[1:]))
    assert truncations >= 2, "the test needs time-limit truncations"
    for name in ("values", "log_probs", "rewards", "returns", "advantages"):
        got, want = getattr(buffer, name), getattr(expected_buffer, name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(model._last_obs, expected._last_obs, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model._last_episode_starts, expected._last_episode_starts)
    assert len(seen) == len(expected_seen) == n_steps
    for (actions, values, log_probs, rewards), (e_actions, e_values, e_log_probs, e_rewards) in zip(
        seen, expected_seen, strict=True
    ):
        assert actions.dtype == e_actions.dtype and actions.shape == e_actions.shape
        assert values.shape == e_values.shape and values.dtype == e_values.dtype
        assert log_probs.shape == e_log_probs.shape and log_probs.dtype == e_log_probs.dtype
        np.testing.assert_allclose(actions, e_actions, rtol=1e-5, atol=1e-6)
        th.testing.assert_close(values, e_values, rtol=1e-5, atol=1e-5)
        th.testing.assert_close(log_probs, e_log_probs, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(rewards, e_rewards, rtol=1e-5, atol=1e-5)


def test_collection_stops_when_the_callback_says_so():
    model, result, seen, _ = collect_with("CartPole-v1", True, 32, stop_at=5)
    expected, expected_result, expected_seen, _ = collect_with("CartPole-v1", False, 32, stop_at=5)
    assert result is False and expected_result is False
    assert len(seen) == len(expected_seen) == 5
    assert model.num_timesteps == expected.num_timesteps == 10
    assert model.rollout_buffer.pos == expected.rollout_buffer.pos == 4


def test_forward_matches_policy():
    """The collection forward pass against policy.forward for several architectures, and after the weights change."""
    from sb3_trust.accel.collect import PolicyForward
    from sb3_trust.accel.network import PackedPolicy

    for spaces_, kwargs in itertools.product([HALF_CHEETAH, ACROBOT], NET_ARCHS):
        policy = make_policy(spaces_, **kwargs)
        policy.set_training_mode(False)
        forward = PolicyForward(PackedPolicy(policy))
        for n in (1, 2, 7):
            obs = th.randn(n, spaces_[0].shape[0])
            state = th.get_rng_state()
            with th.no_grad():
                actions, values, log_probs = policy(obs)
            state_after = th.get_rng_state()
            th.set_rng_state(state)
            got_actions, got_values, got_log_probs = forward.forward(obs.numpy())
            assert th.equal(th.get_rng_state(), state_after), "not the same random draws"
            np.testing.assert_allclose(got_actions, actions.numpy(), rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(got_values, values.numpy().reshape(-1), rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(got_log_probs, log_probs.numpy(), rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(forward.values(obs.numpy()), got_values, rtol=0, atol=0)
        with th.no_grad():  # weights changed in place: seen at once
            for param in policy.parameters():
                param.mul_(1.1)
            values = policy.predict_values(obs)
        np.testing.assert_allclose(forward.values(obs.numpy()), values.numpy().reshape(-1), rtol=1e-6, atol=1e-6)


# --- can_run ----------------------------------------------------------------------------------------------------


def ppo_model(env_id: str = "CartPole-v1", policy: str = "MlpPolicy", **kwargs) -> PPO:
    model = PPO(policy, env_id, n_steps=16, batch_size=16, device="cpu", **kwargs)
    model.policy_loss, model.vf_clip_mode = "clip", "sb3"
    return model


def test_can_run_accepts_the_common_case():
    for env_id in ("CartPole-v1", "Pendulum-v1"):
        model = ppo_model(env_id)
        assert accel.can_run(model, "collect") is None
        assert accel.can_run(model, "train") is None
        assert accel.can_run(ppo_model(env_id, policy_kwargs=dict(net_arch=[], activation_fn=th.nn.ReLU)), "train") is None
    with pytest.raises(ValueError, match="part"):
        accel.can_run(ppo_model(), "update")


class DictObsEnv(gym.Env):
    observation_space = spaces.Dict({"a": spaces.Box(-1, 1, (3,), np.float32)})
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


class ImageEnv(DictObsEnv):
    observation_space = spaces.Box(0, 255, (36, 36, 1), np.uint8)


class SpaceEnv(DictObsEnv):
    """A 1-d Box observation and the given action space."""

    observation_space = spaces.Box(-1, 1, (3,), np.float32)

    def __init__(self, action_space):
        self.action_space = action_space


def test_can_run_reasons(monkeypatch):
    model = ppo_model()
    assert "CnnPolicy" in accel.can_run(PPO("CnnPolicy", ImageEnv(), n_steps=16, batch_size=16, device="cpu"), "collect")
    reason = accel.can_run(PPO("MultiInputPolicy", DictObsEnv(), n_steps=16, batch_size=16, device="cpu"), "collect")
    assert "MultiInputActorCriticPolicy" in reason
    box = PPO("MlpPolicy", SpaceEnv(spaces.Box(-1, 1, (2, 2), np.float32)), n_steps=16, batch_size=16, device="cpu")
    assert "action space Box" in accel.can_run(box, "collect")
    multi = PPO("MlpPolicy", SpaceEnv(spaces.MultiDiscrete([2, 3])), n_steps=16, batch_size=16, device="cpu")
    assert "MultiCategoricalDistribution" in accel.can_run(multi, "collect")
    assert "gSDE" in accel.can_run(ppo_model("Pendulum-v1", use_sde=True), "collect")
    custom = ppo_model(policy_kwargs=dict(optimizer_class=th.optim.SGD))
    assert accel.can_run(custom, "collect") is None
    assert "optimizer SGD" in accel.can_run(custom, "train")
    amsgrad = ppo_model(policy_kwargs=dict(optimizer_kwargs=dict(amsgrad=True)))
    assert "amsgrad" in accel.can_run(amsgrad, "train")
    model.policy_loss = "dual_clip"
    assert accel.can_run(model, "train") == "policy_loss 'dual_clip' (the accelerator implements clip, kl_penalty, unclipped)"
    assert accel.can_run(model, "collect") is None
    model.policy_loss, model.vf_clip_mode = "clip", "huber"
    assert "vf_clip_mode 'huber'" in accel.can_run(model, "train")
    model.vf_clip_mode = "max"
    model._reference, model.reference_kl_mode = object(), "loss"
    assert "reference KL" in accel.can_run(model, "train")
    model.reference_kl_mode = "reward"
    assert accel.can_run(model, "train") is None
    without_loss = ppo_model()
    del without_loss.policy_loss
    assert accel.can_run(without_loss, "train") == "the accelerator trains TrustPPO, TrustTRPO and TrustNPG only"
    assert accel.can_run(without_loss, "collect") is None
    frozen = ppo_model()
    frozen.policy.action_net.bias.requires_grad_(False)
    assert accel.can_run(frozen, "train") == "parameter action_net.bias does not require grad"
    missing = ppo_model()
    missing.policy.optimizer = th.optim.Adam(list(missing.policy.parameters())[1:], eps=1e-5)
    assert "not in the optimizer's param groups" in accel.can_run(missing, "train")
    double = ppo_model()
    double.policy.double()
    assert "float64" in accel.can_run(double, "collect")
    custom_buffer = ppo_model()
    custom_buffer.rollout_buffer = types.SimpleNamespace()
    assert "rollout buffer" in accel.can_run(custom_buffer, "collect")
    other_layers = ppo_model()
    other_layers.policy.mlp_extractor.policy_net.append(th.nn.LayerNorm(64))
    assert "LayerNorm" in accel.can_run(other_layers, "collect")
    monkeypatch.setenv("SB3_TRUST_ACCEL", "0")
    assert accel.unavailable_reason() == "disabled by SB3_TRUST_ACCEL=0"
    assert accel.can_run(model, "collect") == "disabled by SB3_TRUST_ACCEL=0"
    with pytest.raises(ValueError, match="SB3_TRUST_ACCEL=0"):
        accel.ppo_step(model)


def test_missing_dependency_reason(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_numba(name, *args, **kwargs):
        if name == "numba":
            raise ImportError("No module named 'numba'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_numba)
    monkeypatch.setattr("importlib.import_module", lambda name: no_numba(name))
    reason = accel.unavailable_reason()
    assert reason is not None and 'pip install "sb3-trust[fast]"' in reason and "numba" in reason


def test_imports_without_numba():
    """``import sb3_trust.accel`` works without Numba; the reason names the extra to install."""
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import sb3_trust.accel as accel\n"
        "reason = accel.unavailable_reason()\n"
        "assert reason.startswith('numba is missing (pip install \"sb3-trust[fast]\")'), reason\n"
        "print(reason)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_tanh_accuracy():
    """The kernels' tanh against the exact one: within 5 float32 ulp everywhere (torch's within 1), NaN kept."""
    from sb3_trust.accel import kernels

    x = np.concatenate([np.linspace(-12, 12, 200_001), np.geomspace(1e-12, 12, 20_001), [np.nan, np.inf, -np.inf, 0.0]])
    x = x.astype(np.float32)
    y = kernels.tanh(x)
    exact = np.tanh(x.astype(np.float64))
    finite = np.isfinite(x)
    ulps = np.abs(y[finite] - exact[finite]) / np.spacing(np.abs(exact[finite]).astype(np.float32))
    assert ulps.max() <= 5
    assert np.isnan(y[-4]) and y[-3] == pytest.approx(1.0) and y[-2] == pytest.approx(-1.0) and y[-1] == 0.0


def test_flatten_extractor_required():
    class Extractor(FlattenExtractor):
        pass

    model = ppo_model(policy_kwargs=dict(features_extractor_class=Extractor))
    assert "features extractor Extractor" in accel.can_run(model, "collect")


@pytest.mark.parametrize("algo", ["TrustPPO", "TrustTRPO"])
def test_scipy_blas_gets_torch_thread_count(algo):
    """The kernels' BLAS (SciPy's) runs as many threads as torch, set at each collection and update."""
    import sb3_trust
    from sb3_trust.accel.threads import scipy_blas_threads

    threads = th.get_num_threads()
    model = getattr(sb3_trust, algo)("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, device="cpu")
    try:
        for wanted in (2, 1):
            th.set_num_threads(wanted)
            model.learn(32)
            assert model.collect_backend == model.train_backend == "accelerated"
            assert scipy_blas_threads() and all(count == wanted for count in scipy_blas_threads())
    finally:
        th.set_num_threads(threads)
