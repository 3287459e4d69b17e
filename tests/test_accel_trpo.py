"""
TrustTRPO's update on the accelerator (``sb3_trust.accel.trpo``) against the reference path: the closed-form surrogate
gradient, Fisher-vector product and line-search evaluation against autograd (and against the explicit Hessian of the
KL), one whole update (both KL conventions, both distributions, TrustNPG), and the settings the accelerator declines.
"""

import copy

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.logger import configure
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

import sb3_trust.accel as accel
from sb3_trust import TrustNPG, TrustTRPO
from tests.envs import MaskedChoiceEnv
from tests.test_accel import assert_same_state

pytestmark = pytest.mark.skipif(accel.unavailable_reason() is not None, reason=str(accel.unavailable_reason()))

th.set_num_threads(1)

NARROW = dict(pi=[8], vf=[4])  # actor and critic of different widths
ENVS = ["CartPole-v1", "Pendulum-v1", "LunarLanderContinuous-v3"]  # Categorical, Gaussian with 1 and 2 dimensions


def collected(env_id: str, cls: type = TrustTRPO, n_steps: int = 64, **kwargs) -> TrustTRPO:
    """:return: a model whose rollout buffer holds one rollout, not yet trained on"""
    settings = dict(n_steps=n_steps, batch_size=16, n_critic_updates=3, seed=0, device="cpu")
    settings["policy_kwargs"] = dict(net_arch=[16, 8])
    model = cls("MlpPolicy", env_id, **{**settings, **kwargs})
    model.train = lambda: None  # type: ignore[method-assign]
    model.learn(n_steps)
    del model.train
    return model


def both_problems(model: TrustTRPO):
    batch = model._actor_batch()
    return model._actor_problem(batch), accel.trpo_step(model).actor_problem(batch)


def assert_close_vectors(got: th.Tensor, want: th.Tensor, rtol: float = 1e-4) -> None:
    """Within ``rtol`` of the larger entries' scale (float32 products of sums: relative to the vector's size)"""
    assert got.shape == want.shape and got.dtype == want.dtype
    scale = float(want.abs().max())
    th.testing.assert_close(got, want, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("kl_convention", ["paper", "contrib"])
@pytest.mark.parametrize("env_id", ENVS)
def test_actor_problem_matches_autograd(env_id, kl_convention):
    model = collected(env_id, kl_convention=kl_convention, cg_damping=0.05)
    expected, problem = both_problems(model)
    assert [id(p) for p in problem.actor_params] == [id(p) for p in expected.actor_params]
    assert problem.policy_objective.item() == pytest.approx(expected.policy_objective.item(), rel=1e-5, abs=1e-7)
    assert_close_vectors(problem.objective_grad, expected.objective_grad)
    generator = th.Generator().manual_seed(0)
    for _ in range(3):
        vector = th.randn(expected.objective_grad.shape, generator=generator)
        assert_close_vectors(problem.fisher_vector_product(vector), expected.fisher_vector_product(vector))
    # A candidate step, written in place as the line search does: both evaluate the current parameters
    with th.no_grad():
        for param in problem.actor_params:
            param.add_(0.05 * th.randn(param.shape, generator=generator))
    with th.no_grad():  # as the line search calls it
        evaluations = list(zip(problem.evaluate(), expected.evaluate(), strict=True))
    for got, want in evaluations:
        assert float(got) == pytest.approx(float(want), rel=1e-4, abs=1e-7)
    if kl_convention == "contrib":  # the logged KL(π_old ‖ π), which the constraint is not
        assert problem.paper_kl[0] == pytest.approx(expected.paper_kl[0], rel=1e-4, abs=1e-7)


class _KL(nn.Module):
    """The mean constraint KL as a function of the policy's parameters (for ``functional_call``)."""

    def __init__(self, model: TrustTRPO, policy: ActorCriticPolicy, obs: th.Tensor) -> None:
        super().__init__()
        self.model, self.policy, self.obs = model, policy, obs
        with th.no_grad():
            self.old = copy.copy(self.distribution())

    def distribution(self):  # get_distribution without SB3's preprocessing (which casts to float32)
        return self.policy._get_action_dist_from_latent(self.policy.mlp_extractor.forward_actor(self.obs))

    def forward(self) -> th.Tensor:
        return self.model._constraint_kl(self.old, self.distribution())


@pytest.mark.parametrize("kl_convention", ["paper", "contrib"])
@pytest.mark.parametrize("env_id", ["CartPole-v1", "MountainCarContinuous-v0"])
def test_fisher_matrix_is_the_kl_hessian(env_id, kl_convention):
    """Our products with the basis vectors are the columns of the KL's Hessian, computed in float64 by autograd."""
    damping = 0.01
    model = collected(env_id, n_steps=32, kl_convention=kl_convention, cg_damping=damping, policy_kwargs=dict(net_arch=[4]))
    batch = model._actor_batch()
    problem = accel.trpo_step(model).actor_problem(batch)
    n_params = problem.objective_grad.numel()
    columns = [problem.fisher_vector_product(th.eye(n_params)[j]) - damping * th.eye(n_params)[j] for j in range(n_params)]
    fisher = th.stack(columns, dim=1).double()

    policy = copy.deepcopy(model.policy).double()
    names = [name for name, param in model.policy.named_parameters() if any(param is p for p in problem.actor_params)]
    module = _KL(model, policy, th.as_tensor(batch.observations).double())
    start = th.cat([dict(policy.named_parameters())[name].detach().reshape(-1) for name in names])
    shapes = [dict(policy.named_parameters())[name].shape for name in names]

    def kl_at(flat: th.Tensor) -> th.Tensor:
        tensors = th.split(flat, [int(np.prod(shape)) for shape in shapes])
        values = {f"policy.{name}": t.reshape(shape) for name, t, shape in zip(names, tensors, shapes, strict=True)}
        return th.func.functional_call(module, values, ())

    hessian = th.autograd.functional.hessian(kl_at, start)
    th.testing.assert_close(fisher, hessian, rtol=1e-4, atol=1e-5 * float(hessian.abs().max()))
    # The log_std block is 2 (summed KL) or 2/k (contrib's average over dimensions)
    if "log_std" in names:
        k = model.action_space.shape[0]
        assert float(fisher[0, 0]) == pytest.approx(2.0 / (k if kl_convention == "contrib" else 1), rel=1e-6)


def train_both(model: TrustTRPO) -> tuple[ActorCriticPolicy, dict, dict]:
    """One update on the reference path and the same update (same rollout, same RNG) on the accelerator."""
    model.set_logger(configure(None, []))
    start = copy.deepcopy(model.policy.state_dict()), copy.deepcopy(model.policy.optimizer.state_dict())
    rng = np.random.get_state(), th.get_rng_state()
    model.backend = "reference"
    model.train()
    assert model.train_backend == "reference"
    expected, expected_logs = copy.deepcopy(model.policy), dict(model.logger.name_to_value)
    model.policy.load_state_dict(start[0])
    model.policy.optimizer.load_state_dict(start[1])
    np.random.set_state(rng[0])
    th.set_rng_state(rng[1])
    model.backend = "accelerated"
    model.train()
    assert model.train_backend == "accelerated"
    return expected, expected_logs, dict(model.logger.name_to_value)


@pytest.mark.parametrize(
    "env_id, cls, kwargs",
    [
        ("CartPole-v1", TrustTRPO, {}),
        ("CartPole-v1", TrustTRPO, dict(kl_convention="contrib")),
        ("Pendulum-v1", TrustTRPO, {}),
        ("Pendulum-v1", TrustTRPO, dict(kl_convention="contrib", policy_kwargs=dict(net_arch=[32], activation_fn=nn.ReLU))),
        ("CartPole-v1", TrustTRPO, dict(sub_sampling_factor=2, normalize_advantage=False)),
        ("Pendulum-v1", TrustTRPO, dict(sub_sampling_factor=3, normalize_advantage=False, kl_convention="contrib")),
        ("CartPole-v1", TrustTRPO, dict(policy_kwargs=dict(net_arch=[]))),
        ("LunarLanderContinuous-v3", TrustTRPO, dict(kl_convention="contrib", policy_kwargs=dict(net_arch=NARROW))),
        ("CartPole-v1", TrustNPG, {}),
        ("Pendulum-v1", TrustNPG, dict(kl_convention="contrib")),
    ],
)
def test_one_update_matches_the_reference_path(env_id, cls, kwargs):
    model = collected(env_id, cls, n_steps=128, **kwargs)
    expected, expected_logs, logs = train_both(model)
    # Parameters, and the critic's Adam state (the actor's has none) after the critic's epochs
    assert_same_state(model.policy, expected)
    assert len(model.policy.optimizer.state) == len(expected.optimizer.state) > 0
    for key in ("policy_objective", "kl", "kl_divergence_loss", "surrogate_improvement", "value_loss", "step_size"):
        assert logs[f"train/{key}"] == pytest.approx(expected_logs[f"train/{key}"], rel=1e-4, abs=1e-7), key
    for key in ("is_line_search_success", "line_search_backtracks", "actor_step_skipped", "critic_step_skipped"):
        assert logs[f"train/{key}"] == expected_logs[f"train/{key}"], key


def test_critic_step_leaves_the_actor_and_skips_non_finite_minibatches():
    model = collected("Pendulum-v1", n_steps=64)
    runner = accel.trpo_step(model)
    actor = [param.detach().clone() for param in model.policy.parameters()]
    model.rollout_buffer.returns[:4] = np.nan  # the first minibatch (of 4) in some epochs, never all of them
    np.random.seed(0)
    batch = model._actor_batch()
    problem = runner.actor_problem(batch)
    losses, n_skipped = runner.critic_step(problem.actor_params)
    assert len(losses) == 3 * 4 and 0 < n_skipped == sum(not np.isfinite(loss) for loss in losses) < 12
    for param, before in zip(model.policy.parameters(), actor, strict=True):
        is_actor = any(param is p for p in problem.actor_params)
        assert th.equal(param, before) == is_actor
    assert all(th.isfinite(param).all() for param in model.policy.parameters())
    # the NumPy RNG drew what the reference path's minibatches draw
    state = np.random.get_state()
    np.random.seed(0)
    model._actor_batch()
    for _ in range(3):
        list(model.rollout_buffer.get(model.batch_size))
    assert np.array_equal(np.random.get_state()[1], state[1])


def test_all_critic_minibatches_non_finite_creates_no_adam_state():
    model = collected("CartPole-v1", n_steps=32)
    model.rollout_buffer.returns[:] = np.inf
    losses, n_skipped = accel.trpo_step(model).critic_step([])
    assert n_skipped == len(losses) == 3 * 2
    assert len(model.policy.optimizer.state) == 0


def _reference_policy() -> ActorCriticPolicy:
    return TrustTRPO("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[16]), seed=1, device="cpu").policy


@pytest.mark.parametrize(
    "env, kwargs, reason",
    [
        (MaskedChoiceEnv, {}, "action masks"),
        ("CartPole-v1", dict(reference_kl_mode="loss"), "reference KL in the loss"),
        ("Pendulum-v1", dict(use_sde=True), "gSDE"),
        ("CartPole-v1", dict(policy_kwargs=dict(net_arch=[16], optimizer_class=th.optim.SGD)), "optimizer SGD"),
        ("CartPole-v1", dict(policy_kwargs=dict(net_arch=[16], activation_fn=nn.ELU)), "layer ELU"),
    ],
)
def test_declines_with_the_reason_and_the_reference_path_trains(env, kwargs, reason):
    if "reference_kl_mode" in kwargs:
        kwargs = {**kwargs, "reference_policy": _reference_policy()}
    env = env() if callable(env) else env
    settings = dict(n_steps=32, batch_size=16, seed=0, device="cpu", **kwargs)
    settings.setdefault("policy_kwargs", dict(net_arch=[16]))
    model = TrustTRPO("MlpPolicy", env, **settings)
    assert reason in accel.can_run(model, "train")
    before = [param.detach().clone() for param in model.policy.parameters()]
    model.learn(32)
    assert model.train_backend == "reference" and reason in model.backend_reasons["train"]
    assert not all(th.equal(param, old) for param, old in zip(model.policy.parameters(), before, strict=True))
    with pytest.raises(ValueError, match="backend='accelerated'"):
        TrustTRPO("MlpPolicy", env, backend="accelerated", **settings)


def test_backend_reference_forces_the_reference_path():
    model = TrustTRPO("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=16, backend="reference", device="cpu")
    assert accel.can_run(model, "train") is None
    model.learn(32)
    assert model.train_backend == "reference" and model.backend_reasons["train"] == "backend='reference'"
