"""
The closed-form derivatives of ``sb3_trust.common.fast_fisher`` and the fused collection network of
``sb3_trust.common.fused_policy``, against autograd, double backpropagation and ``FastActorCritic`` on real SB3 policies.
"""

import copy

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn
from torch.func import jvp
from torch.nn import functional as F

import sb3_trust.common.fused_policy as fused_policy_module
import sb3_trust.common.kernels as kernels_module
from sb3_trust import TrustPPO
from sb3_trust.common import numpy_collect as numpy_collect_module
from sb3_trust.common.fast_collect import collect_rollouts_fast
from sb3_trust.common.fast_fisher import (
    AnalyticActor,
    analytic_actor,
    analytic_critic,
    chain_forward,
    chain_jvp,
    chain_parameters,
    chain_vjp,
    numpy_tanh_,
)
from sb3_trust.common.fast_policy import FastActorCritic
from sb3_trust.common.fused_policy import FusedActorCritic, NumpyFusedActorCritic, load_collect_kernels
from sb3_trust.common.kl import exact_kl
from sb3_trust.common.numpy_collect import collect_rollouts_numpy, fused_policy
from sb3_trust.common.trust_region import flat_grad, kl_fisher_vector_product_fn
from sb3_trust.trpo import TrustTRPO

th.set_num_threads(1)


def random_chain(activation: str, generator: th.Generator, bias: bool = True):
    shapes = [(5, 3), (4, 5), (2, 4)]
    chain = []
    for i, shape in enumerate(shapes):
        weight = th.randn(shape, generator=generator, dtype=th.float64)
        chain.append((weight, th.randn(shape[0], generator=generator, dtype=th.float64) if bias else None))
        if i < len(shapes) - 1:
            chain.append(activation)
    return chain


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
def test_chain_derivatives_match_autograd(activation, bias):
    generator = th.Generator().manual_seed(0)
    chain = random_chain(activation, generator, bias)
    params = chain_parameters(chain)
    x = th.randn(6, 3, generator=generator, dtype=th.float64)

    def f(*values):
        it = iter(values)
        rebuilt = [
            layer if isinstance(layer, str) else (next(it), next(it) if layer[1] is not None else None) for layer in chain
        ]
        return chain_forward(rebuilt, x)

    cache = []
    out = chain_forward(chain, x, cache)
    assert th.equal(out, f(*params))
    # reverse mode
    grad_output = th.randn(out.shape, generator=generator, dtype=th.float64)
    leaves = [param.clone().requires_grad_() for param in params]
    expected = th.autograd.grad((f(*leaves) * grad_output).sum(), leaves)
    for got, want in zip(chain_vjp(chain, cache, grad_output), expected, strict=True):
        assert th.allclose(got, want, rtol=1e-12, atol=1e-12)
    # forward mode
    tangents = [th.randn(param.shape, generator=generator, dtype=th.float64) for param in params]
    _, expected_tangent = jvp(f, tuple(params), tuple(tangents))
    assert th.allclose(chain_jvp(chain, cache, tangents), expected_tangent, rtol=1e-12, atol=1e-12)


def make_policy(env_id: str, net_arch, activation_fn=nn.Tanh) -> ActorCriticPolicy:
    model = TrustTRPO(
        "MlpPolicy",
        env_id,
        n_steps=64,
        batch_size=64,
        seed=0,
        device="cpu",
        policy_kwargs=dict(net_arch=net_arch, activation_fn=activation_fn),
    )
    policy = model.policy
    if hasattr(policy, "log_std"):
        with th.no_grad():
            policy.log_std.add_(0.3)  # not the default 0: σ ≠ 1
    return policy


POLICIES = [
    ("CartPole-v1", [16, 16], nn.Tanh),
    ("Pendulum-v1", [16, 16], nn.Tanh),
    ("MountainCarContinuous-v0", dict(pi=[8], vf=[16, 4]), nn.ReLU),
    ("Acrobot-v1", [], nn.Tanh),
]


def _batch(policy: ActorCriticPolicy, n: int = 50):
    generator = th.Generator().manual_seed(1)
    obs = th.randn(n, policy.observation_space.shape[0], generator=generator)
    fast = FastActorCritic(policy)
    with th.no_grad():
        actions, _, log_prob = fast.forward(obs)
    # old log-probs off by a little, as after a step: the ratio is not 1
    return obs, actions, log_prob + 0.1 * th.randn(n, generator=generator), th.randn(n, generator=generator)


@pytest.mark.parametrize("env_id, net_arch, activation_fn", POLICIES)
def test_analytic_actor_matches_autograd(env_id, net_arch, activation_fn):
    policy = make_policy(env_id, net_arch, activation_fn)
    obs, actions, old_log_prob, advantages = _batch(policy)
    # reference: the generic path of TrustTRPO (distribution objects, autograd, double backpropagation)
    with th.no_grad():
        old = copy.copy(policy.get_distribution(obs))
    distribution = policy.get_distribution(obs)
    sb3_actions = actions.long().flatten() if policy.action_space.shape == () else actions
    objective = (advantages * th.exp(distribution.log_prob(sb3_actions) - old_log_prob)).mean()
    params = [param for param in policy.parameters() if param.requires_grad]
    kl_grads = th.autograd.grad(exact_kl(old, distribution).mean(), params, create_graph=True, allow_unused=True)
    actor_params = [param for param, grad in zip(params, kl_grads, strict=True) if grad is not None]
    fvp = kl_fisher_vector_product_fn(exact_kl(old, distribution).mean(), actor_params, 0.05)

    actor = analytic_actor(FastActorCritic(policy))
    assert actor is not None
    # the same parameters, in the same order
    assert [id(p) for p in actor.parameters] == [id(p) for p in actor_params]
    got_objective, got_grad = actor.prepare(obs, actions, old_log_prob, advantages)
    assert got_objective.item() == pytest.approx(objective.item(), rel=1e-6)
    assert th.allclose(got_grad, flat_grad(objective, actor_params, retain_graph=True), rtol=1e-5, atol=1e-7)
    damped = actor.fisher_vector_product_fn(0.05)
    generator = th.Generator().manual_seed(2)
    for _ in range(3):
        vector = th.randn(got_grad.shape, generator=generator)
        expected = fvp(vector)
        assert th.allclose(damped(vector), expected, rtol=1e-4, atol=1e-6 * expected.abs().max().item())
    # at θ_old: surrogate as before, KL 0
    surrogate, kl = actor.evaluate()
    assert surrogate.item() == pytest.approx(objective.item(), rel=1e-6)
    assert kl.item() == pytest.approx(0.0, abs=1e-7)
    # after a move, as the distribution objects
    with th.no_grad():
        for param in actor_params:
            param.add_(0.05 * th.randn(param.shape, generator=generator))
    surrogate, kl = actor.evaluate()
    new = policy.get_distribution(obs)
    assert kl.item() == pytest.approx(exact_kl(old, new).mean().item(), rel=1e-5)
    expected_surrogate = (advantages * th.exp(new.log_prob(sb3_actions) - old_log_prob)).mean()
    assert surrogate.item() == pytest.approx(expected_surrogate.item(), rel=1e-5)
    actor.release()


def test_analytic_actor_needs_all_actor_parameters_trainable():
    policy = make_policy("Pendulum-v1", [8])
    policy.action_net.bias.requires_grad_(False)
    assert analytic_actor(FastActorCritic(policy)) is None
    with pytest.raises(ValueError, match="exactly"):
        AnalyticActor([(policy.action_net.weight, policy.action_net.bias)], None, [policy.action_net.weight])


@pytest.mark.parametrize("env_id, net_arch, activation_fn", POLICIES)
def test_analytic_critic_matches_autograd(env_id, net_arch, activation_fn):
    policy = make_policy(env_id, net_arch, activation_fn)
    obs, *_ = _batch(policy)
    returns = th.randn(obs.shape[0], generator=th.Generator().manual_seed(3))
    critic = analytic_critic(FastActorCritic(policy))
    loss, grads = critic.loss_and_gradient(obs, returns)
    expected_loss = F.mse_loss(returns, policy.predict_values(obs).flatten())
    expected = th.autograd.grad(expected_loss, critic.parameters)
    assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-6)  # a sum of squares: the last bits may differ
    for got, want in zip(grads, expected, strict=True):
        assert th.equal(got, want)  # with th.tanh: bit-identical (TrustTRPO's contrib mode relies on it)
    # the step moves the critic only, and skips a non-finite loss
    before = {name: param.detach().clone() for name, param in policy.named_parameters()}
    critic_ids = {id(param) for param in critic.parameters}
    policy.optimizer.zero_grad()
    critic.step(obs, returns)
    for name, param in policy.named_parameters():
        assert th.equal(param, before[name]) != (id(param) in critic_ids), name
    after = [param.detach().clone() for param in critic.parameters]
    assert np.isnan(critic.step(obs, returns * np.nan))
    assert all(th.equal(param, value) for param, value in zip(critic.parameters, after, strict=True))


@pytest.mark.parametrize("env_id, net_arch, activation_fn", POLICIES)
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("fused_class", [FusedActorCritic, NumpyFusedActorCritic])
@pytest.mark.parametrize("dtype", [th.float32, th.float64])  # VecNormalize gives float64 observations
def test_fused_forward_matches_fast_forward(env_id, net_arch, activation_fn, deterministic, fused_class, dtype):
    policy = make_policy(env_id, net_arch, activation_fn)
    fast = FastActorCritic(policy)
    if not fused_class.can_fuse(fast):
        assert isinstance(net_arch, dict)  # different branch structures
        return
    fused = fused_class(policy)
    fused.refresh()
    obs = th.randn(4, policy.observation_space.shape[0], dtype=dtype)
    with th.no_grad():
        th.manual_seed(5)
        expected = fast.forward(obs, deterministic)
        state = th.get_rng_state()
        th.manual_seed(5)
        got = fused.forward(obs, deterministic)
        # the same random draws
        assert th.equal(th.get_rng_state(), state)
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert th.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6)
    # refresh() follows the parameters
    with th.no_grad():
        for param in policy.parameters():
            param.add_(0.1)
    fused.refresh()
    with th.no_grad():
        assert th.allclose(fused.forward(obs, True)[1], fast.forward(obs, True)[1], rtol=1e-5, atol=1e-6)


def test_collection_without_the_kernel_warns_once(monkeypatch):
    """No compiler: TrustTRPO collects with the NumPy network, and says so once per process."""
    monkeypatch.setattr(fused_policy_module, "_collect_kernels", None)
    monkeypatch.setattr(fused_policy_module, "_collect_kernels_error", None)
    monkeypatch.setattr(kernels_module, "_warned", set())
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.delenv("SB3_TRUST_NO_KERNELS", raising=False)
    with pytest.warns(UserWarning, match="collection kernel unavailable") as record:
        models = [TrustTRPO("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=32, seed=0).learn(128) for _ in range(2)]
    assert sum("collection kernel" in str(warning.message) for warning in record) == 1
    fused = models[0]._fused
    assert isinstance(fused, NumpyFusedActorCritic) and fused._kernel is None and fused._numpy_first is not None
    assert all(th.isfinite(param).all() for param in models[0].policy.parameters())


@pytest.mark.parametrize(
    "env_id, net_arch, activation_fn",
    [*POLICIES, ("Pendulum-v1", dict(pi=[8, 12], vf=[16, 4]), nn.ReLU), ("CartPole-v1", [5, 9, 3], nn.ReLU)],
)
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("n", [1, 7])
def test_collect_kernel_is_the_numpy_network(env_id, net_arch, activation_fn, deterministic, n):
    """collect_kernels.c computes what the NumPy evaluation computes (to the last bits), with the same random draws."""
    if load_collect_kernels() is None:
        pytest.skip("no C compiler")
    policy = make_policy(env_id, net_arch, activation_fn)
    fused = NumpyFusedActorCritic(policy)
    if not fused.can_fuse(fused):
        return
    fused.refresh()
    assert fused._kernel is not None
    obs = np.random.default_rng(3).normal(size=(n, policy.observation_space.shape[0]))  # float64, as VecNormalize's
    results, states = [], []
    for kernel in (fused._kernel, None):
        fused._kernel = kernel
        th.manual_seed(7)
        results.append(fused.forward_numpy(obs, deterministic))
        states.append(th.get_rng_state())
    assert th.equal(*states)
    for got, expected in zip(*results, strict=True):
        assert got.shape == expected.shape and got.dtype == expected.dtype
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # the parameters are read at refresh(): a change shows after the next one
    with th.no_grad():
        for param in policy.parameters():
            param.mul_(1.5)
    fused.refresh()
    assert fused._kernel is not None
    kernel_values = fused.forward_numpy(obs, True)[1]
    fused._kernel = None
    np.testing.assert_allclose(kernel_values, fused.forward_numpy(obs, True)[1], rtol=1e-5, atol=1e-5)


def test_collect_kernel_tanh_within_one_ulp():
    """The collection kernel's vectorisable tanh: within 1 ulp of the correctly rounded tanh (from float64) on every
    997th float32 of [0, 12) and their negatives; ±inf, ±0 and NaN as tanh's."""
    kernels = load_collect_kernels()
    if kernels is None:
        pytest.skip("no C compiler")
    positive = np.arange(0, np.float32(12).view(np.int32), 997, dtype=np.int32).view(np.float32)
    x = np.concatenate([positive, -positive])
    got = x.copy()
    kernels.tanh_inplace(got.ctypes.data, got.size)
    expected = np.tanh(x.astype(np.float64)).astype(np.float32)
    ulps = np.abs(got.view(np.int32).astype(np.int64) - expected.view(np.int32).astype(np.int64))
    assert ulps.max() <= 1
    special = np.array([np.inf, -np.inf, 0.0, -0.0, np.nan, 1e30, -1e30], dtype=np.float32)
    got = special.copy()
    kernels.tanh_inplace(got.ctypes.data, got.size)
    np.testing.assert_array_equal(got[:4], [1.0, -1.0, 0.0, 0.0])
    assert np.signbit(got[3]) and not np.signbit(got[2]) and np.isnan(got[4])
    np.testing.assert_array_equal(got[5:], [1.0, -1.0])


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_direct_fused_adam_step_is_optimizer_step(amsgrad, weight_decay):
    policies = []
    for _ in range(2):
        policy = make_policy("Pendulum-v1", [16, 16])
        policy.optimizer = th.optim.Adam(policy.parameters(), lr=3e-3, amsgrad=amsgrad, weight_decay=weight_decay, fused=True)
        policies.append(policy)
    policies[1].load_state_dict(policies[0].state_dict())
    obs, *_ = _batch(policies[0])
    returns = th.randn(obs.shape[0], generator=th.Generator().manual_seed(3))
    direct, reference = (analytic_critic(FastActorCritic(policy)) for policy in policies)
    direct.begin()
    for i in range(4):
        direct.step(obs, returns + i)
        # the reference: gradients in .grad, then optimizer.step()
        reference.optimizer.zero_grad()
        _, grads = reference.loss_and_gradient(obs, returns + i)
        for param, grad in zip(reference.parameters, grads, strict=True):
            param.grad = grad
        reference.optimizer.step()
    assert direct._adam._groups is not None  # the kernel was called directly after the first step
    for a, b in zip(policies[0].parameters(), policies[1].parameters(), strict=True):
        assert th.equal(a, b)
    for state_a, state_b in zip(
        policies[0].optimizer.state_dict()["state"].values(),
        policies[1].optimizer.state_dict()["state"].values(),
        strict=True,
    ):
        for key in state_a:
            assert th.equal(state_a[key], state_b[key]), key


def test_critic_step_falls_back_to_optimizer_step():
    # Not fused (SB3's default Adam), or with a hook: optimizer.step() is called
    policy = make_policy("Pendulum-v1", [16])
    critic = analytic_critic(FastActorCritic(policy))
    calls = []
    policy.optimizer.register_step_post_hook(lambda *args: calls.append(1))
    obs, *_ = _batch(policy)
    critic.begin()
    for _ in range(3):
        critic.step(obs, th.zeros(obs.shape[0]))
    assert len(calls) == 3 and critic._adam._groups is None


def test_numpy_tanh():
    x = th.randn(300, 7) * 3
    expected = th.tanh(x.double())
    for dtype in (th.float32, th.float64):
        y = x.to(dtype).clone()
        out = numpy_tanh_(y)
        assert out is y  # in place
        assert th.allclose(out.double(), expected, rtol=2 * th.finfo(dtype).eps, atol=0)
    # what numpy cannot share: th.tanh, not in place
    strided = x.t()
    assert th.equal(numpy_tanh_(strided), th.tanh(x.t()))
    tracked = x.clone().requires_grad_()
    assert th.equal(numpy_tanh_(tracked), th.tanh(tracked))


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_numpy_tanh_actor_and_critic(env_id):
    policy = make_policy(env_id, [16, 16])
    obs, actions, old_log_prob, advantages = _batch(policy)
    fast = FastActorCritic(policy)
    exact, approximate = analytic_actor(fast), analytic_actor(fast, numpy_tanh=True)
    (objective, grad), (objective_np, grad_np) = (
        actor.prepare(obs, actions, old_log_prob, advantages) for actor in (exact, approximate)
    )
    assert objective_np.item() == pytest.approx(objective.item(), rel=1e-5)
    assert th.allclose(grad_np, grad, rtol=1e-4, atol=1e-6)
    vector = th.randn(grad.shape, generator=th.Generator().manual_seed(0))
    assert th.allclose(approximate.fisher_vector_product(vector), exact.fisher_vector_product(vector), rtol=1e-4, atol=1e-6)
    # the observations are not overwritten
    assert th.equal(obs, _batch(policy)[0])
    returns = th.randn(obs.shape[0])
    (loss, grads), (loss_np, grads_np) = (
        analytic_critic(fast, numpy_tanh).loss_and_gradient(obs, returns) for numpy_tanh in (False, True)
    )
    assert loss_np.item() == pytest.approx(loss.item(), rel=1e-5)
    for a, b in zip(grads_np, grads, strict=True):
        assert th.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_numpy_fused_forward_hands_large_batches_to_torch(monkeypatch):
    policy = make_policy("Pendulum-v1", [16, 16])
    fused = NumpyFusedActorCritic(policy)
    fused.refresh()
    calls = []
    real = FusedActorCritic.forward
    monkeypatch.setattr(FusedActorCritic, "forward", lambda *args: calls.append(1) or real(*args))
    small, large = fused._max_rows, fused._max_rows + 1
    # the largest product: the 16 x 16 layers of each branch (multiplied apart), not a block-diagonal 32 x 32 one
    assert small * (16 * 16) <= NumpyFusedActorCritic.MAX_NUMPY_WORK < large * (16 * 16)
    with th.no_grad():
        fused.forward(th.randn(small, 3))
        assert not calls
        actions, values, log_prob = fused.forward(th.randn(large, 3))
    assert calls and actions.shape == (large, 1) and values.shape == (large, 1) and log_prob.shape == (large,)


def test_critic_epoch_is_steps_on_the_minibatches():
    policies = [make_policy("Pendulum-v1", [16, 16]) for _ in range(2)]
    policies[1].load_state_dict(policies[0].state_dict())
    obs, *_ = _batch(policies[0], n=40)
    returns = th.randn(40, generator=th.Generator().manual_seed(3))
    permutation = th.randperm(40, generator=th.Generator().manual_seed(4))
    critics = [analytic_critic(FastActorCritic(policy), numpy_tanh=True) for policy in policies]
    for critic in critics:
        critic.begin()
    losses = critics[0].epoch(obs, returns, permutation, 16)  # minibatches of 16, 16 and 8
    expected = [critics[1].step(obs[permutation[i : i + 16]], returns[permutation[i : i + 16]]) for i in (0, 16, 32)]
    assert losses == expected
    for a, b in zip(policies[0].parameters(), policies[1].parameters(), strict=True):
        assert th.equal(a, b)


# ----------------------------------------------------------------------------------------------------------------------
# Collection with the fused NumPy network (sb3_trust.common.numpy_collect)


class RecordLocals(BaseCallback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def _on_step(self) -> bool:
        self.seen.append({key: type(value) for key, value in self.locals.items() if key not in ("self", "callback")})
        return True


def _collect(env_id: str, how: str, n_steps: int = 256):
    model = TrustTRPO(
        "MlpPolicy", env_id, n_steps=n_steps, batch_size=64, seed=0, device="cpu", policy_kwargs=dict(net_arch=[16])
    )
    model._setup_learn(n_steps, None)
    callback = RecordLocals()
    callback.init_callback(model)
    buffer = model.rollout_buffer
    if how == "numpy":
        fused = fused_policy(model, model._fast_path())
        assert isinstance(fused, NumpyFusedActorCritic)
        assert collect_rollouts_numpy(model, fused, model.env, callback, buffer, n_steps)
    elif how == "fast":  # the same network through collect_rollouts_fast (torch views of forward_numpy)
        assert collect_rollouts_fast(model, fused_policy(model, model._fast_path()), model.env, callback, buffer, n_steps)
    else:  # SB3
        assert OnPolicyAlgorithm.collect_rollouts(model, model.env, callback, buffer, n_steps)
    return model, buffer, callback, th.get_rng_state()


BUFFER_FIELDS = ("observations", "actions", "rewards", "episode_starts", "values", "log_probs", "advantages", "returns")


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])  # Pendulum: 200-step time limit, bootstrapped
def test_numpy_collection_is_sb3s(env_id):
    numpy_run, fast_run, sb3_run = (_collect(env_id, how) for how in ("numpy", "fast", "sb3"))
    _, buffer, callback, rng = numpy_run
    # Exactly collect_rollouts_fast with the same network: same buffer, same random draws, same callback locals
    _, fast_buffer, fast_callback, fast_rng = fast_run
    for field in BUFFER_FIELDS:
        np.testing.assert_array_equal(getattr(buffer, field), getattr(fast_buffer, field), err_msg=field)
    assert buffer.pos == fast_buffer.pos == buffer.buffer_size and buffer.full
    assert th.equal(rng, fast_rng)
    # SB3's collect_rollouts: the same to the last bits
    model, sb3_buffer, sb3_callback, sb3_rng = sb3_run
    assert th.equal(rng, sb3_rng)
    for field in BUFFER_FIELDS:
        np.testing.assert_allclose(getattr(buffer, field), getattr(sb3_buffer, field), rtol=1e-5, atol=1e-5, err_msg=field)
    # The callbacks see SB3's local variables, with the same types (and a few more)
    assert len(callback.seen) == len(fast_callback.seen) == len(sb3_callback.seen) == buffer.buffer_size
    for seen, sb3_seen in zip(callback.seen, sb3_callback.seen, strict=True):
        assert {key: seen.get(key) for key in sb3_seen} == sb3_seen
    if env_id == "Pendulum-v1":
        assert model.ep_info_buffer and buffer.episode_starts.sum() > 0  # episodes ended (time limit)


def test_collects_with_numpy_except_trpo_contrib_mode(monkeypatch):
    calls = []
    monkeypatch.setattr(numpy_collect_module, "collect_rollouts_numpy", lambda *args: calls.append("numpy") or True)
    monkeypatch.setattr(numpy_collect_module, "collect_rollouts_fast", lambda *args: calls.append("fast") or True)
    for kl_convention in ("paper", "contrib"):
        model = TrustTRPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, kl_convention=kl_convention, device="cpu")
        model._setup_learn(64, None)
        model.collect_rollouts(model.env, None, model.rollout_buffer, 64)
    model = TrustPPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, device="cpu")
    model._setup_learn(64, None)
    model.collect_rollouts(model.env, None, model.rollout_buffer, 64)
    assert calls == ["numpy", "fast", "numpy"]
