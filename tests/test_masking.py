"""
Invalid-action masking (sb3-contrib's interface) for TrustPPO and TrustTRPO: parity with sb3-contrib's MaskablePPO,
the KL and Fisher-vector products of masked distributions against hand computations, bad input, save/load.
"""

import re

import numpy as np
import pytest
import torch as th
from gymnasium import spaces as gym_spaces
from sb3_contrib import MaskablePPO
from sb3_contrib.common.envs import InvalidActionEnvDiscrete, InvalidActionEnvMultiBinary, InvalidActionEnvMultiDiscrete
from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback
from sb3_contrib.common.maskable.distributions import (
    MaskableBernoulliDistribution,
    MaskableCategorical,
    MaskableCategoricalDistribution,
    MaskableMultiCategoricalDistribution,
)
from sb3_contrib.common.maskable.evaluation import evaluate_policy
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy, MaskableMultiInputActorCriticPolicy
from sb3_contrib.common.wrappers import ActionMasker
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.policies import ActorCriticPolicy

from sb3_trust import TrustHealthCallback, TrustNPG, TrustPPO, TrustTRPO, accel
from sb3_trust.common.kl import exact_kl
from sb3_trust.ppo.losses import POLICY_LOSSES
from tests.envs import MaskedChoiceEnv, SpaceEnv

ENVS = {
    "discrete": lambda: InvalidActionEnvDiscrete(dim=20, n_invalid_actions=10),
    "multi-discrete": lambda: InvalidActionEnvMultiDiscrete(dims=[5, 5], n_invalid_actions=4),
    "multi-binary": lambda: InvalidActionEnvMultiBinary(dims=4, n_invalid_actions=2),
}
SETTINGS = dict(n_steps=64, batch_size=32, n_epochs=4, learning_rate=1e-3, policy_kwargs=dict(net_arch=[32]), seed=3)


@pytest.mark.parametrize("space", list(ENVS))
@pytest.mark.parametrize("kwargs", [{}, {"clip_range_vf": 0.2, "ent_coef": 0.01}, {"target_kl": 0.0005}])
def test_same_parameters_as_maskable_ppo(space, kwargs):
    reference = MaskablePPO("MlpPolicy", ENVS[space](), device="cpu", **SETTINGS, **kwargs).learn(4 * 64)
    ours = TrustPPO("MlpPolicy", ENVS[space](), device="cpu", backend="reference", **SETTINGS, **kwargs).learn(4 * 64)
    assert ours.use_masking and type(ours.policy) is MaskableActorCriticPolicy
    fresh = TrustPPO("MlpPolicy", ENVS[space](), device="cpu", **SETTINGS).policy.state_dict()
    moved = False
    for name, value in reference.policy.state_dict().items():
        th.testing.assert_close(ours.policy.state_dict()[name], value, rtol=1e-6, atol=1e-7, msg=f"parameter {name} differs")
        moved |= not th.equal(value, fresh[name])
    assert moved, "nothing trained: the comparison would be vacuous"


# --- The KL of masked distributions, by hand ---


def _masked(logits: th.Tensor, masks: th.Tensor) -> MaskableCategoricalDistribution:
    distribution = MaskableCategoricalDistribution(logits.shape[-1]).proba_distribution(logits)
    distribution.apply_masking(masks)
    return distribution


def test_masked_kl_is_the_kl_of_the_renormalised_valid_actions():
    rng = th.Generator().manual_seed(0)
    p_logits, q_logits = th.randn(5, 6, generator=rng), th.randn(5, 6, generator=rng)
    masks = th.rand(5, 6, generator=rng) > 0.4
    masks[:, 0] = True
    kl = exact_kl(_masked(p_logits, masks), _masked(q_logits, masks))
    for state in range(5):
        valid = masks[state]
        p = th.softmax(p_logits[state][valid], dim=0)
        q = th.softmax(q_logits[state][valid], dim=0)
        th.testing.assert_close(kl[state], (p * (p.log() - q.log())).sum(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("masked_logit", [-1e8, -float("inf")])
def test_masked_but_one_state_contributes_nothing_to_the_kl_or_its_derivatives(masked_logit):
    """One valid action: π is deterministic whatever the parameters; KL, gradient and Hessian-vector product are 0."""
    masks = th.tensor([[False, True, False, False]])
    p_logits = th.tensor([[0.3, -1.2, 2.0, 0.5]])
    q_logits = th.tensor([[1.0, 0.4, -0.7, 3.0]], requires_grad=True)
    p_logits, q_in = (th.where(masks, x, th.tensor(masked_logit)) for x in (p_logits, q_logits))
    p = MaskableCategorical(logits=p_logits, masks=masks)
    q = MaskableCategorical(logits=q_in, masks=masks)
    distribution_p, distribution_q = MaskableCategoricalDistribution(4), MaskableCategoricalDistribution(4)
    distribution_p.distribution, distribution_q.distribution = p, q
    kl = exact_kl(distribution_p, distribution_q).sum()
    (grad,) = th.autograd.grad(kl, q_logits, create_graph=True)
    (hvp,) = th.autograd.grad((grad * th.ones_like(grad)).sum(), q_logits, allow_unused=True, materialize_grads=True)
    assert kl.item() == 0.0
    assert th.equal(grad, th.zeros_like(grad)) and th.equal(hvp, th.zeros_like(hvp))


@pytest.mark.parametrize(
    "distribution_class, sizes", [(MaskableMultiCategoricalDistribution, [3, 4]), (MaskableBernoulliDistribution, None)]
)
def test_masked_multi_categorical_kl_sums_the_dimensions(distribution_class, sizes):
    """MultiDiscrete [3, 4] and MultiBinary(3) (two mask entries per binary action): the sum of the dimensions' KLs."""
    sizes = sizes or [2, 2, 2]
    rng = th.Generator().manual_seed(1)
    p_logits, q_logits = th.randn(4, sum(sizes), generator=rng), th.randn(4, sum(sizes), generator=rng)
    masks = th.ones(4, sum(sizes), dtype=th.bool)
    masks[:, 1] = masks[1:, sum(sizes) - 1] = False
    argument = sizes if distribution_class is MaskableMultiCategoricalDistribution else len(sizes)
    p, q = (distribution_class(argument).proba_distribution(logits) for logits in (p_logits, q_logits))
    p.apply_masking(masks)
    q.apply_masking(masks)
    expected = th.zeros(4)
    for state in range(4):
        for p_split, q_split, valid in zip(*(x[state].split(sizes) for x in (p_logits, q_logits, masks)), strict=True):
            p_valid, q_valid = th.softmax(p_split[valid], 0), th.softmax(q_split[valid], 0)
            expected[state] += (p_valid * (p_valid.log() - q_valid.log())).sum()
    th.testing.assert_close(exact_kl(p, q), expected, rtol=1e-5, atol=1e-6)


# --- TRPO: the Fisher-vector products of the masked KL, against an explicit Fisher matrix ---


def _trpo_problem(one_valid_states: int):
    """A TrustTRPO actor problem on a masked Discrete(5) env; its first ``one_valid_states`` states keep one action."""
    env = InvalidActionEnvDiscrete(dim=5, n_invalid_actions=2)
    model = TrustTRPO("MlpPolicy", env, n_steps=32, batch_size=32, cg_damping=0.1, policy_kwargs=dict(net_arch=[]), seed=0)
    model.learn(32)  # a rollout, and one update (the parameters are no longer the initial ones)
    batch = model._actor_batch()
    masks = batch.action_masks.clone()
    masks[:one_valid_states] = False
    masks[th.arange(one_valid_states), batch.actions[:one_valid_states]] = True
    batch = batch._replace(action_masks=masks)
    return model, batch, model._actor_problem(batch)


def test_masked_fisher_vector_product_is_the_explicit_fisher():
    model, batch, problem = _trpo_problem(one_valid_states=8)
    weight, bias = model.policy.action_net.weight, model.policy.action_net.bias
    assert [param.shape for param in problem.actor_params] == [weight.shape, bias.shape]
    features = model.policy.extract_features(batch.observations).detach()
    theta = th.cat([weight.detach().flatten(), bias.detach()])

    def logits(flat: th.Tensor) -> th.Tensor:
        return features @ flat[: weight.numel()].view_as(weight).T + flat[weight.numel() :]

    jacobian = th.autograd.functional.jacobian(logits, theta)  # [states, actions, parameters]
    masks = batch.action_masks.bool()
    probs = th.softmax(logits(theta).masked_fill(~masks, -float("inf")), dim=1)
    # Fisher of a categorical in its logits: diag(p) - p pᵀ (masked actions: p = 0, rows and columns 0)
    fisher_logits = th.diag_embed(probs) - probs.unsqueeze(2) * probs.unsqueeze(1)
    fisher = th.einsum("sap,sab,sbq->pq", jacobian, fisher_logits, jacobian) / len(probs)
    # the states with one valid action contribute nothing
    assert th.count_nonzero(fisher_logits[:8]) == 0
    rng = th.Generator().manual_seed(0)
    for _ in range(3):
        vector = th.randn(len(theta), generator=rng)
        product = problem.fisher_vector_product(vector) - model.cg_damping * vector
        th.testing.assert_close(product, fisher @ vector, rtol=1e-4, atol=1e-6)


def test_masked_but_one_states_give_zero_kl_gradient_and_fisher():
    model, _, problem = _trpo_problem(one_valid_states=32)
    vector = th.randn(sum(param.numel() for param in problem.actor_params))
    assert th.count_nonzero(problem.fisher_vector_product(vector) - model.cg_damping * vector) == 0
    with th.no_grad():  # move the parameters: π stays deterministic in every state, the KL stays 0
        for param in problem.actor_params:
            param.add_(th.randn_like(param))
    _, constraint_kl = problem.evaluate()
    gradients = th.autograd.grad(constraint_kl, problem.actor_params)
    assert constraint_kl.item() == 0.0
    assert all(th.count_nonzero(gradient) == 0 for gradient in gradients)


# --- Bad input ---


def test_masking_needs_masks_and_a_discrete_space():
    with pytest.raises(ValueError, match="action_masks"):
        TrustPPO("MlpPolicy", "CartPole-v1", use_masking=True)
    with pytest.raises(ValueError, match="Discrete, MultiDiscrete or MultiBinary"):
        TrustTRPO("MlpPolicy", "Pendulum-v1", use_masking=True)
    with pytest.raises(ValueError, match="MaskableRolloutBuffer"):
        TrustPPO("MlpPolicy", MaskedChoiceEnv(), rollout_buffer_class=RolloutBuffer)
    with pytest.raises(ValueError, match="subclasses sb3-contrib's MaskableActorCriticPolicy"):
        TrustTRPO(type("CustomPolicy", (ActorCriticPolicy,), {}), MaskedChoiceEnv())
    for value in ("yes", 1.0, None):
        with pytest.raises(ValueError, match="use_masking"):
            TrustPPO("MlpPolicy", MaskedChoiceEnv(), use_masking=value)
    assert not TrustPPO("MlpPolicy", "CartPole-v1").use_masking  # "auto": no masks, SB3's PPO
    # the accelerator declines masked models (when it is available at all)
    expected = accel.unavailable_reason() or "action masks (the accelerator does not mask)"
    with pytest.raises(ValueError, match=re.escape(expected)):
        TrustTRPO("MlpPolicy", MaskedChoiceEnv(), backend="accelerated")
    with pytest.raises(ValueError, match="reference policy"):
        reference = TrustPPO("MlpPolicy", MaskedChoiceEnv(), use_masking=False).policy
        TrustPPO("MlpPolicy", MaskedChoiceEnv(), reference_policy=reference)


@pytest.mark.parametrize("cls", [TrustPPO, TrustTRPO])
@pytest.mark.parametrize("broken, message", [("shape", r"shape \(1, 7\) at rollout step 0"), ("empty", "every action")])
def test_bad_masks_name_the_step(cls, broken, message):
    model = cls("MlpPolicy", MaskedChoiceEnv(broken=broken), n_steps=16, batch_size=16, seed=0)
    with pytest.raises(ValueError, match=message) as error:
        model.learn(64)
    assert "timestep" in str(error.value)
    if broken == "empty":
        assert "rollout step 3 (timestep 3)" in str(error.value)


def test_predict_checks_the_masks():
    model = TrustPPO("MlpPolicy", MaskedChoiceEnv(), n_steps=16, batch_size=16, seed=0)
    obs = np.zeros(1, dtype=np.float32)
    with pytest.raises(ValueError, match="one boolean per action"):
        model.predict(obs, action_masks=np.ones(5, dtype=bool))
    for _ in range(20):  # the mask is obeyed
        action, _ = model.predict(obs, action_masks=np.array([0, 0, 0, 1, 0, 0], dtype=bool))
        assert action == 3
    unmasked = TrustPPO("MlpPolicy", MaskedChoiceEnv(), use_masking=False, n_steps=16, batch_size=16)
    with pytest.raises(ValueError, match="does not mask"):
        unmasked.predict(obs, action_masks=np.ones(6, dtype=bool))


# --- sb3-contrib's interface: ActionMasker, evaluate_policy, MaskableEvalCallback, policies; save and load ---


def _mask_fn(env) -> np.ndarray:
    return env.unwrapped.valid


class _MaskFunctionEnv(SpaceEnv):
    """SpaceEnv whose masks (half the actions, changing each step) come from a function, through ActionMasker."""

    def __init__(self, action_space, dict_obs=False, image_obs=False):
        super().__init__(action_space, dict_obs=dict_obs, image_obs=image_obs)
        self.size = sum(int(n) for n in np.atleast_1d(getattr(action_space, "nvec", getattr(action_space, "n", 0))))
        if isinstance(action_space, gym_spaces.MultiBinary):
            self.size = 2 * int(action_space.n)
        self.valid = np.ones(self.size, dtype=bool)

    def step(self, action):
        self.valid = np.arange(self.size) % 2 == self._t % 2
        self.valid[: 2 if isinstance(self.action_space, gym_spaces.MultiBinary) else 1] = True
        return super().step(action)


@pytest.mark.parametrize("cls", [TrustPPO, TrustTRPO, TrustNPG])
@pytest.mark.parametrize(
    "policy, space, obs",
    [
        ("MlpPolicy", gym_spaces.Discrete(4), {}),
        ("MultiInputPolicy", gym_spaces.MultiDiscrete([3, 2]), {"dict_obs": True}),
        ("CnnPolicy", gym_spaces.MultiBinary(3), {"image_obs": True}),
    ],
)
def test_action_masker_policies_and_save_load(cls, policy, space, obs, tmp_path):
    env = ActionMasker(_MaskFunctionEnv(space, **obs), _mask_fn)
    kwargs = dict(n_steps=32, batch_size=16, seed=0, policy_kwargs=dict(net_arch=[8]))
    if policy == "CnnPolicy":
        kwargs["policy_kwargs"] = dict(net_arch=[8], features_extractor_kwargs=dict(features_dim=8))
    model = cls(policy, env, **kwargs).learn(64)
    assert model.use_masking and isinstance(model.policy, MaskableActorCriticPolicy)
    assert model.collect_backend == "reference"
    if policy == "MultiInputPolicy":
        assert isinstance(model.policy, MaskableMultiInputActorCriticPolicy)
    model.save(tmp_path / "model.zip")
    without_env = cls.load(tmp_path / "model.zip")
    assert without_env.use_masking and type(without_env.policy) is type(model.policy)
    loaded = cls.load(tmp_path / "model.zip", env=env)
    assert loaded.use_masking and type(loaded.policy) is type(model.policy)
    observation, _ = env.reset(seed=1)
    masks = env.action_masks()
    for deterministic in (True,):
        th.testing.assert_close(
            th.as_tensor(loaded.predict(observation, action_masks=masks, deterministic=deterministic)[0]),
            th.as_tensor(model.predict(observation, action_masks=masks, deterministic=deterministic)[0]),
        )
    loaded.learn(64, reset_num_timesteps=False)  # training continues, masked
    assert loaded.num_timesteps == 128


def test_evaluate_policy_and_eval_callback_of_sb3_contrib(tmp_path):
    model = TrustPPO("MlpPolicy", MaskedChoiceEnv(), n_steps=32, batch_size=16, seed=0)
    callback = MaskableEvalCallback(Monitor(MaskedChoiceEnv()), eval_freq=32, n_eval_episodes=2, log_path=str(tmp_path))
    model.learn(64, callback=callback)
    assert callback.evaluations_results and all(len(result) == 2 for result in callback.evaluations_results)
    # with the masks, no invalid action: every episode lasts the whole horizon
    _, lengths = evaluate_policy(model, Monitor(MaskedChoiceEnv()), n_eval_episodes=5, return_episode_rewards=True)
    assert lengths == [MaskedChoiceEnv.horizon] * 5
    model.learn(32, use_masking=False)  # MaskablePPO.learn's keyword: this rollout without masks
    assert model.rollout_buffer.action_masks.all()


# --- Learning: the masked env needs the masks ---


@pytest.mark.expensive
@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (TrustPPO, dict(n_steps=256, batch_size=64, learning_rate=3e-3)),
        (TrustTRPO, dict(n_steps=512, target_kl=0.05)),
    ],
)
def test_masks_learn_what_no_masks_cannot(cls, kwargs):
    scores = {}
    for use_masking in (True, False):
        env = make_vec_env(MaskedChoiceEnv, n_envs=4, seed=1)
        model = cls("MlpPolicy", env, use_masking=use_masking, seed=1, policy_kwargs=dict(net_arch=[32]), **kwargs)
        model.learn(6144)
        eval_env = make_vec_env(MaskedChoiceEnv, n_envs=1, seed=100)
        scores[use_masking], _ = evaluate_policy(model, eval_env, n_eval_episodes=100, use_masking=use_masking)
    # random valid actions score ~5, the best valid ones ~7.3; without masks, any policy scores below 0
    assert scores[True] >= 6.5, scores
    assert scores[False] <= 0.0, scores


@pytest.mark.parametrize("policy_loss", sorted(POLICY_LOSSES))
def test_every_policy_loss_trains_with_masks(policy_loss):
    """Every variant composes with masking; the KL rules are driven by the masked KL (finite, > 0)."""
    needs_kl = POLICY_LOSSES[policy_loss].needs_kl
    kl_rule = {"adaptive_kl_target": 0.001} if needs_kl else {"adaptive_lr_kl_target": 0.001}
    model = TrustPPO("MlpPolicy", ENVS["discrete"](), policy_loss=policy_loss, **kl_rule, **SETTINGS).learn(2 * 64)
    assert model.use_masking and model.train_backend == "reference"
    assert all(th.isfinite(param).all() for param in model.policy.parameters())
    if needs_kl:  # adapted twice, from a finite positive KL
        assert model._kl_coef != 1.0
    else:
        assert model._adaptive_learning_rate != SETTINGS["learning_rate"]


@pytest.mark.parametrize("kl_convention", ["paper", "contrib"])
def test_maskable_policy_without_masks(kl_convention):
    """A maskable policy with use_masking=False trains unmasked (MaskablePPO.learn(use_masking=False)), both KLs."""
    env = ENVS["multi-discrete"]()
    model = TrustTRPO(
        MaskableActorCriticPolicy, env, use_masking=False, kl_convention=kl_convention, n_steps=64, batch_size=64, seed=0
    )
    assert not model.use_masking
    model.learn(128)
    assert model.rollout_buffer.action_masks.all()  # MaskablePPO's buffer, which stays unmasked
    assert all(th.isfinite(param).all() for param in model.policy.parameters())


def test_health_monitor_measures_the_masked_entropy():
    """TrustTRPO logs no entropy: the health monitor computes it, masked (two valid actions: at most log 2)."""
    callback = TrustHealthCallback()
    TrustTRPO("MlpPolicy", MaskedChoiceEnv(), n_steps=64, batch_size=64, seed=0).learn(64, callback=callback)
    entropy = callback._entropy()
    assert entropy is not None and 0.5 < entropy <= np.log(2) + 1e-6  # unmasked: about log 6
