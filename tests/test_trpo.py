"""TrustTRPO / TrustNPG: parity with sb3-contrib TRPO, learning, save/load, bad input, diagnostics, actor/critic split."""

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib import TRPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import IdentityEnv, IdentityEnvBox, IdentityEnvMultiBinary, IdentityEnvMultiDiscrete
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import configure
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

import sb3_trust.trpo.trust_trpo as trust_trpo_module
from sb3_trust.common.safety import NonFiniteError
from sb3_trust.trpo import TrustNPG, TrustTRPO

th.set_num_threads(1)

SMALL = dict(n_steps=64, batch_size=32, n_critic_updates=2, policy_kwargs=dict(net_arch=[16]), seed=0, device="cpu")

TRPO_KEYS = (
    "policy_objective",
    "kl",
    "kl_divergence_loss",
    "surrogate_improvement",
    "expected_improvement",
    "is_line_search_success",
    "line_search_backtracks",
    "step_size",
    "cg_residual",
    "value_loss",
    "explained_variance",
    "n_updates",
    "actor_step_skipped",
)


def silent(model):
    """Give the model a logger without output, whose last recorded values stay readable after `learn`."""
    model.set_logger(configure(None, []))
    return model


def last_logs(model) -> dict:
    return {key.removeprefix("train/"): value for key, value in model.logger.name_to_value.items()}


class TinyEnv(gym.Env):
    """10-step episodes, Box(3) observations, reward for matching a function of the observation; any action space."""

    def __init__(self, action_space: spaces.Space):
        self.action_space = action_space
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(seed)
        self._t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self._t += 1
        reward = -float(np.mean(np.square(np.asarray(action, dtype=np.float32) - 0.5)))
        return self.observation_space.sample(), reward, False, self._t >= 10, {}


class CaptureCriticPhase:
    """Wraps `_critic_step` to record the actor parameters and all parameters before and after the critic phase."""

    def __init__(self, model):
        self.model = model
        self.calls = []
        self._critic_step = model._critic_step
        model._critic_step = self

    def __call__(self, actor_params):
        named = dict(self.model.policy.named_parameters())
        before = {name: param.detach().clone() for name, param in named.items()}
        out = self._critic_step(actor_params)
        after = {name: param.detach().clone() for name, param in named.items()}
        actor_names = {name for name, param in named.items() if any(param is p for p in actor_params)}
        self.calls.append((actor_names, before, after))
        return out


# ----------------------------------------------------------------------------------------------------------------------
# Parity with sb3-contrib TRPO


@pytest.mark.parametrize(
    "env_id, extra",
    [
        ("CartPole-v1", {}),
        ("Pendulum-v1", {}),
        ("CartPole-v1", dict(normalize_advantage=False, sub_sampling_factor=2)),
        ("Pendulum-v1", dict(normalize_advantage=False, sub_sampling_factor=2)),
        ("Pendulum-v1", dict(use_sde=True, sde_sample_freq=4, cg_max_steps=5, line_search_max_iter=3)),
    ],
)
def test_parity_with_contrib(env_id, extra):
    kwargs = dict(n_steps=256, policy_kwargs=dict(net_arch=[32]), seed=0, device="cpu", **extra)
    # Built and trained one after the other: both seed the global RNGs when built, and training consumes them
    reference = silent(TRPO("MlpPolicy", env_id, **kwargs)).learn(256 * 5)
    # The reference path is the one held to sb3-contrib (the accelerator is held to the reference path)
    model = silent(TrustTRPO("MlpPolicy", env_id, kl_convention="contrib", backend="reference", **kwargs)).learn(256 * 5)
    reference_params = reference.policy.state_dict()
    params = model.policy.state_dict()
    assert reference_params.keys() == params.keys()
    for name, value in reference_params.items():
        # In practice the parameters are bit-identical
        assert th.allclose(params[name], value, rtol=1e-6, atol=1e-8), name
    ours, theirs = last_logs(model), last_logs(reference)
    for key in ("policy_objective", "kl_divergence_loss", "is_line_search_success", "value_loss", "explained_variance"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-6, abs=1e-9), key


def test_contrib_signature_is_accepted():
    import inspect

    theirs = inspect.signature(TRPO.__init__).parameters
    ours = inspect.signature(TrustTRPO.__init__).parameters
    for name, param in theirs.items():
        assert name in ours, name
        assert ours[name].default == param.default, name
    # Same positional order for contrib's keywords
    assert list(ours)[: len(theirs)] == list(theirs)
    assert ours["kl_convention"].default == "paper"
    assert ours["step_rule"].default == "line_search"


# ----------------------------------------------------------------------------------------------------------------------
# Learning (rl-zoo3 trpo.yml hyperparameters)


def _learned_return(env_id: str, seed: int, timesteps: int = 100_000, **kwargs) -> float:
    env = make_vec_env(env_id, n_envs=2, seed=seed)
    model = TrustTRPO("MlpPolicy", env, seed=seed, device="cpu", **kwargs)
    model.learn(timesteps)
    mean_return, _ = evaluate_policy(model, make_vec_env(env_id, n_envs=1, seed=100), n_eval_episodes=10)
    return mean_return


@pytest.mark.expensive
def test_learns_cartpole():
    # rl_zoo3/hyperparams/trpo.yml, CartPole-v1. After exactly 100k steps the evaluation return is 500 for a majority of
    # seeds but not all (seeds 0-10 here: 395, 412, 430, 500, 438, 391, 500, 500, 500, 500, 500; sb3-contrib's TRPO is
    # seed-dependent in the same way), and any last-bit change of the arithmetic reshuffles which seeds those are.
    # So the threshold (475) is asserted on the median over 11 seeds.
    zoo = dict(
        n_steps=512, batch_size=512, cg_damping=1e-3, gae_lambda=0.98, gamma=0.99, learning_rate=1e-3, n_critic_updates=20
    )
    returns = sorted(_learned_return("CartPole-v1", seed, **zoo) for seed in range(11))
    assert returns[5] >= 475, returns


@pytest.mark.expensive
def test_learns_pendulum_gaussian_lean_path():
    # rl_zoo3/hyperparams/trpo.yml, Pendulum-v1 without gSDE: a diagonal Gaussian on the lean path (20 seeds: -230 to -143)
    assert _learned_return("Pendulum-v1", 0, n_steps=1024, gamma=0.9, n_critic_updates=15) >= -400


@pytest.mark.expensive
def test_learns_pendulum():
    # rl_zoo3/hyperparams/trpo.yml, Pendulum-v1
    env = make_vec_env("Pendulum-v1", n_envs=2, seed=0)
    model = TrustTRPO(
        "MlpPolicy",
        env,
        n_steps=1024,
        gamma=0.9,
        n_critic_updates=15,
        use_sde=True,
        sde_sample_freq=4,
        seed=0,
        device="cpu",
    )
    model.learn(100_000)
    mean_return, _ = evaluate_policy(model, make_vec_env("Pendulum-v1", n_envs=1, seed=100), n_eval_episodes=10)
    assert mean_return >= -400


# ----------------------------------------------------------------------------------------------------------------------
# Save / load


@pytest.mark.parametrize(
    "cls, env_id, extra",
    [
        (TrustTRPO, "CartPole-v1", dict(kl_convention="contrib", sub_sampling_factor=2, target_kl=0.02)),
        (TrustTRPO, "Pendulum-v1", dict(step_rule="npg", use_sde=True, cg_damping=0.05)),
        (TrustNPG, "Pendulum-v1", dict(line_search_max_iter=3, normalize_advantage=False, backend="reference")),
    ],
)
def test_save_load_round_trip(tmp_path, cls, env_id, extra):
    model = silent(cls("MlpPolicy", env_id, **SMALL, **extra))
    model.learn(192)
    model._n_actor_steps_skipped = 3  # stands for earlier skipped steps: must survive the round trip
    obs = np.stack([model.observation_space.sample() for _ in range(10)])
    actions, _ = model.predict(obs, deterministic=True)
    path = tmp_path / "model.zip"
    model.save(path)

    loaded = cls.load(path, env=model.get_env(), device="cpu")
    assert type(loaded) is cls
    loaded_actions, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(actions, loaded_actions)
    for name, value in model.policy.state_dict().items():
        assert th.equal(loaded.policy.state_dict()[name], value), name
    hyperparameters = (
        "n_steps batch_size gamma cg_max_steps cg_damping line_search_shrinking_factor line_search_max_iter "
        "n_critic_updates gae_lambda use_sde sde_sample_freq normalize_advantage target_kl sub_sampling_factor "
        "kl_convention step_rule num_timesteps _n_updates _n_actor_steps_skipped backend"
    ).split()
    for name in hyperparameters:
        assert getattr(loaded, name) == getattr(model, name), name
    assert loaded._n_updates == 3
    assert loaded.step_rule == ("npg" if cls is TrustNPG or extra.get("step_rule") == "npg" else "line_search")
    for key, value in model.policy.optimizer.state_dict()["state"].items():
        for name in value:
            th.testing.assert_close(loaded.policy.optimizer.state_dict()["state"][key][name], value[name])
    # continued training works from the restored state
    silent(loaded).learn(64, reset_num_timesteps=False)
    assert loaded.num_timesteps == model.num_timesteps + 64
    assert loaded._n_updates == 4


def test_load_without_env(tmp_path):
    model = TrustNPG("MlpPolicy", "CartPole-v1", **SMALL)
    model.save(tmp_path / "npg.zip")
    loaded = TrustNPG.load(tmp_path / "npg.zip", device="cpu")
    assert loaded.env is None and loaded.step_rule == "npg"
    # env=None is accepted by the constructor (SB3's load path)
    TrustTRPO("MlpPolicy", None, _init_setup_model=False)


# ----------------------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(target_kl=0.0), ValueError, "target_kl"),
        (dict(target_kl=-0.01), ValueError, "target_kl"),
        (dict(target_kl=math.nan), ValueError, "target_kl"),
        (dict(target_kl="0.01"), TypeError, "target_kl"),
        (dict(cg_max_steps=0), ValueError, "cg_max_steps"),
        (dict(cg_max_steps=2.5), TypeError, "cg_max_steps"),
        (dict(cg_damping=-0.1), ValueError, "cg_damping"),
        (dict(line_search_shrinking_factor=0.0), ValueError, "line_search_shrinking_factor"),
        (dict(line_search_shrinking_factor=1.0), ValueError, "line_search_shrinking_factor"),
        (dict(line_search_shrinking_factor=1.5), ValueError, "line_search_shrinking_factor"),
        (dict(line_search_max_iter=0), ValueError, "line_search_max_iter"),
        (dict(n_critic_updates=-1), ValueError, "n_critic_updates"),
        (dict(sub_sampling_factor=0), ValueError, "sub_sampling_factor"),
        (dict(sub_sampling_factor=200), ValueError, "sub_sampling_factor"),
        (dict(kl_convention="reverse"), ValueError, "kl_convention"),
        (dict(kl_convention=None), TypeError, "kl_convention"),
        (dict(step_rule="adam"), ValueError, "step_rule"),
        (dict(step_rule=True), TypeError, "step_rule"),
        (dict(learning_rate=-1e-3), ValueError, "learning_rate"),
        (dict(gamma=1.5), ValueError, "gamma"),
        (dict(gae_lambda=-0.1), ValueError, "gae_lambda"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(n_steps=1, batch_size=1), ValueError, "n_steps"),
        (dict(normalize_advantage="yes"), TypeError, "normalize_advantage"),
        (dict(sde_sample_freq=-2), ValueError, "sde_sample_freq"),
        (dict(rollout_buffer_kwargs="x"), TypeError, "rollout_buffer_kwargs"),
        (dict(backend="fast"), ValueError, "backend.*auto.*fast"),
    ],
)
def test_bad_input(kwargs, error, match):
    params = dict(n_steps=64, batch_size=32, device="cpu")
    params.update(kwargs)
    with pytest.raises(error, match=match):
        TrustTRPO("MlpPolicy", "CartPole-v1", **params)


@pytest.mark.parametrize(
    "action_space",
    [spaces.Dict({"a": spaces.Discrete(2)}), spaces.Tuple((spaces.Discrete(2), spaces.Discrete(3)))],
)
def test_unsupported_action_space(action_space):
    with pytest.raises(TypeError, match="action space"):
        TrustTRPO("MlpPolicy", TinyEnv(action_space), n_steps=64, batch_size=32)


def test_batch_size_not_dividing_rollout_warns():
    with pytest.warns(UserWarning, match="mini-batch size of 48"):
        TrustTRPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=48, device="cpu")


# ----------------------------------------------------------------------------------------------------------------------
# Runs: action spaces, conventions, step rules, gSDE, Dict observations


@pytest.mark.parametrize(
    "env",
    [
        IdentityEnv(3),
        IdentityEnvBox(eps=0.5),
        IdentityEnvMultiDiscrete(2),
        IdentityEnvMultiBinary(3),
        TinyEnv(spaces.Box(-1.0, 1.0, shape=(3,))),
        TinyEnv(spaces.MultiDiscrete([3, 2, 4])),
        TinyEnv(spaces.MultiBinary(4)),
    ],
    ids=lambda env: f"{type(env).__name__}-{type(env.action_space).__name__}",
)
@pytest.mark.parametrize("kl_convention", ["paper", "contrib"])
@pytest.mark.parametrize("step_rule", ["line_search", "npg"])
def test_action_spaces(env, kl_convention, step_rule):
    model = silent(TrustTRPO("MlpPolicy", env, kl_convention=kl_convention, step_rule=step_rule, **SMALL))
    initial = {name: param.detach().clone() for name, param in model.policy.named_parameters()}
    model.learn(128)
    logs = last_logs(model)
    assert logs["actor_step_skipped"] == 0
    assert all(th.isfinite(param).all() for param in model.policy.parameters())
    # the actor moved
    assert not th.equal(model.policy.action_net.weight, initial["action_net.weight"])
    if step_rule == "line_search":
        # within the trust region of the configured convention
        assert 0 <= logs["kl_divergence_loss"] <= model.target_kl
    else:
        assert logs["is_line_search_success"] == 1.0


def test_gsde():
    model = silent(TrustTRPO("MlpPolicy", "Pendulum-v1", use_sde=True, sde_sample_freq=4, **SMALL))
    model.learn(192)
    logs = last_logs(model)
    assert "std" in logs and math.isfinite(logs["std"])
    assert logs["actor_step_skipped"] == 0
    # log_std is an actor parameter: the trust-region step moves it
    assert model.policy.log_std.requires_grad


def test_dict_observations_with_sub_sampling():
    from stable_baselines3.common.envs import SimpleMultiObsEnv

    model = silent(TrustTRPO("MultiInputPolicy", SimpleMultiObsEnv(random_start=True), sub_sampling_factor=3, **SMALL))
    model.learn(128)
    assert last_logs(model)["actor_step_skipped"] == 0


def test_same_seed_same_result():
    models = [silent(TrustTRPO("MlpPolicy", "Pendulum-v1", **SMALL)).learn(192) for _ in range(2)]
    for a, b in zip(models[0].policy.parameters(), models[1].policy.parameters(), strict=True):
        assert th.equal(a, b)


# ----------------------------------------------------------------------------------------------------------------------
# Diagnostics


@pytest.mark.parametrize("kl_convention", ["paper", "contrib"])
def test_diagnostics(kl_convention):
    model = silent(TrustTRPO("MlpPolicy", "Pendulum-v1", kl_convention=kl_convention, **SMALL))
    model.learn(64 * 3)
    logs = last_logs(model)
    for key in (*TRPO_KEYS, "std", "critic_step_skipped", "learning_rate"):
        assert key in logs, key
    assert logs["n_updates"] == 3
    assert logs["is_line_search_success"] == 1.0
    assert 0 <= logs["line_search_backtracks"] < model.line_search_max_iter
    assert 0 < logs["kl_divergence_loss"] <= model.target_kl
    assert logs["surrogate_improvement"] > 0
    # gᵀ Δθ = α β gᵀ (F + λI)⁻¹ g > 0
    assert logs["expected_improvement"] > 0
    assert logs["step_size"] > 0
    assert logs["cg_residual"] >= 0
    assert logs["actor_step_skipped"] == 0 and logs["critic_step_skipped"] == 0
    if kl_convention == "paper":
        assert logs["kl"] == logs["kl_divergence_loss"]
    else:
        # KL(old ‖ new) vs KL(new ‖ old): close for a small step, not equal
        assert logs["kl"] == pytest.approx(logs["kl_divergence_loss"], rel=0.2)
        assert logs["kl"] != logs["kl_divergence_loss"]


def test_diagnostics_on_line_search_failure(monkeypatch):
    # A maximal step 1000 times too long: no step of a 2-try line search fits in the trust region
    real_max_step_size = trust_trpo_module.max_step_size
    monkeypatch.setattr(trust_trpo_module, "max_step_size", lambda *args: 1e3 * real_max_step_size(*args))
    model = silent(TrustTRPO("MlpPolicy", "CartPole-v1", line_search_max_iter=2, **SMALL))
    before = _actor_state(model)
    model.learn(64)
    logs = last_logs(model)
    assert logs["is_line_search_success"] == 0.0
    assert logs["line_search_backtracks"] == 2
    assert logs["kl"] == logs["kl_divergence_loss"] == logs["step_size"] == logs["surrogate_improvement"] == 0.0
    assert logs["expected_improvement"] == 0.0
    assert logs["actor_step_skipped"] == 0
    # failure restores the actor exactly
    for name, value in _actor_state(model).items():
        assert th.equal(value, before[name]), name


def test_npg_step():
    model = silent(TrustNPG("MlpPolicy", "Pendulum-v1", **SMALL))
    assert model.step_rule == "npg"
    model.learn(128)
    logs = last_logs(model)
    assert logs["is_line_search_success"] == 1.0 and logs["line_search_backtracks"] == 0
    # The full step: KL ≈ δ to second order (less with damping, since β uses sᵀ(F + λI)s)
    assert 0 < logs["kl"] < 2 * model.target_kl
    assert logs["step_size"] > 0


# ----------------------------------------------------------------------------------------------------------------------
# Actor / critic split


def test_critic_never_moves_actor():
    # The reference path's critic step (tests/test_accel_trpo.py holds the accelerator's to it)
    model = silent(TrustTRPO("MlpPolicy", "Pendulum-v1", backend="reference", **SMALL))
    capture = CaptureCriticPhase(model)
    model.learn(128)
    assert len(capture.calls) == 2
    for actor_names, before, after in capture.calls:
        assert actor_names == {
            "log_std",
            "mlp_extractor.policy_net.0.weight",
            "mlp_extractor.policy_net.0.bias",
            "action_net.weight",
            "action_net.bias",
        }
        for name in before:
            if name in actor_names:
                assert th.equal(before[name], after[name]), name
            else:
                assert not th.equal(before[name], after[name]), name
    # the actor parameters require grad again after the critic phase
    assert all(param.requires_grad for param in model.policy.parameters())


class LinearExtractor(BaseFeaturesExtractor):
    """A features extractor with parameters (MlpPolicy's default Flatten has none)."""

    def __init__(self, observation_space: spaces.Box, features_dim: int = 8):
        super().__init__(observation_space, features_dim)
        self.linear = nn.Sequential(nn.Linear(observation_space.shape[0], features_dim), nn.Tanh())

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.linear(observations)


@pytest.mark.parametrize("share_features_extractor", [True, False])
def test_shared_features_extractor(share_features_extractor):
    policy_kwargs = dict(
        net_arch=[16], features_extractor_class=LinearExtractor, share_features_extractor=share_features_extractor
    )
    kwargs = {**SMALL, "policy_kwargs": policy_kwargs}
    model = silent(TrustTRPO("MlpPolicy", "CartPole-v1", **kwargs))
    capture = CaptureCriticPhase(model)
    initial = {name: param.detach().clone() for name, param in model.policy.named_parameters()}
    model.learn(64)
    (actor_names, before, after) = capture.calls[0]
    if share_features_extractor:
        shared = {"features_extractor.linear.0.weight", "features_extractor.linear.0.bias"}
        # shared extractor: an actor parameter, moved by the trust-region step, frozen during the critic step
        assert shared <= actor_names
        for name in shared:
            assert not th.equal(initial[name], before[name]), name
            assert th.equal(before[name], after[name]), name
    else:
        # SB3 keeps `features_extractor` as the actor's one (`pi_features_extractor`), so it is named that way
        assert model.policy.pi_features_extractor is model.policy.features_extractor
        assert {"features_extractor.linear.0.weight", "features_extractor.linear.0.bias"} <= actor_names
        critic_extractor = {"vf_features_extractor.linear.0.weight", "vf_features_extractor.linear.0.bias"}
        assert not critic_extractor & actor_names
        for name in critic_extractor:
            assert th.equal(initial[name], before[name]), name  # not moved by the actor step
            assert not th.equal(before[name], after[name]), name  # trained by the critic


def test_shared_features_extractor_parity_with_contrib():
    policy_kwargs = dict(net_arch=[16], features_extractor_class=LinearExtractor)
    kwargs = dict(n_steps=128, batch_size=64, n_critic_updates=3, policy_kwargs=policy_kwargs, seed=1, device="cpu")
    reference = silent(TRPO("MlpPolicy", "CartPole-v1", **kwargs)).learn(128 * 3)
    model = silent(TrustTRPO("MlpPolicy", "CartPole-v1", kl_convention="contrib", **kwargs)).learn(128 * 3)
    for name, value in reference.policy.state_dict().items():
        assert th.allclose(model.policy.state_dict()[name], value, rtol=1e-6, atol=1e-8), name


class RenamedPolicy(ActorCriticPolicy):
    """
    Parameter names that defeat contrib's name filter: ``value_temperature`` is used only by the actor (contrib would
    skip it because its name contains "value"), ``baseline_offset`` only by the critic.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.value_temperature = nn.Parameter(th.zeros(1))
        self.baseline_offset = nn.Parameter(th.zeros(1))
        self.optimizer = self.optimizer_class(self.parameters(), lr=1e-3, **self.optimizer_kwargs)

    def _get_action_dist_from_latent(self, latent_pi: th.Tensor):
        return super()._get_action_dist_from_latent(latent_pi * th.exp(self.value_temperature))

    def predict_values(self, obs):
        return super().predict_values(obs) + self.baseline_offset


def test_actor_parameters_found_structurally():
    model = silent(TrustTRPO(RenamedPolicy, "CartPole-v1", **SMALL))
    capture = CaptureCriticPhase(model)
    initial = {name: param.detach().clone() for name, param in model.policy.named_parameters()}
    model.learn(64)
    (actor_names, before, after) = capture.calls[0]
    assert "value_temperature" in actor_names
    assert "baseline_offset" not in actor_names
    assert not any(name.startswith(("value_net", "mlp_extractor.value_net")) for name in actor_names)
    # the actor step moved value_temperature, the critic step did not
    assert not th.equal(initial["value_temperature"], before["value_temperature"])
    assert th.equal(before["value_temperature"], after["value_temperature"])
    # the critic step moved baseline_offset, the actor step did not
    assert th.equal(initial["baseline_offset"], before["baseline_offset"])
    assert not th.equal(before["baseline_offset"], after["baseline_offset"])


# ----------------------------------------------------------------------------------------------------------------------
# Non-finite values never reach the weights


class NaNAdvantage(BaseCallback):
    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.model.rollout_buffer.advantages[3, 0] = np.nan


def _actor_state(model):
    return {name: param.detach().clone() for name, param in model.policy.named_parameters() if "value" not in name}


def test_nan_advantage_in_the_rollout_stops_before_the_update():
    model = silent(TrustTRPO("MlpPolicy", "CartPole-v1", **SMALL))
    model.learn(64)
    before = {name: value.clone() for name, value in model.policy.state_dict().items()}
    with pytest.raises(NonFiniteError, match="advantage"):
        model.learn(64, callback=NaNAdvantage(), reset_num_timesteps=False)
    for name, value in model.policy.state_dict().items():
        assert th.equal(value, before[name]), name


def test_nan_surrogate_skips_actor_step(monkeypatch):
    """A NaN that appears inside the actor step (not in the rollout) skips that step only."""
    real_batch = TrustTRPO._actor_batch
    poison = {"on": False}

    def nan_batch(self, *args, **kwargs):
        batch = real_batch(self, *args, **kwargs)
        if poison["on"]:
            advantages = batch.advantages.clone()
            advantages[3] = math.nan
            batch = batch._replace(advantages=advantages)
        return batch

    monkeypatch.setattr(TrustTRPO, "_actor_batch", nan_batch)
    model = silent(TrustTRPO("MlpPolicy", "CartPole-v1", **SMALL))
    model.learn(64)  # one normal update first
    before = _actor_state(model)
    poison["on"] = True
    with pytest.warns(UserWarning, match="non-finite surrogate"):
        model.learn(128, reset_num_timesteps=False)
    poison["on"] = False
    for name, value in _actor_state(model).items():
        assert th.equal(value, before[name]), name
    logs = last_logs(model)
    assert logs["actor_step_skipped"] == 2 and model._n_actor_steps_skipped == 2
    assert logs["is_line_search_success"] == 0.0
    assert all(th.isfinite(param).all() for param in model.policy.parameters())
    # training goes on normally afterwards
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.learn(64, reset_num_timesteps=False)
    assert not [w for w in caught if "non-finite" in str(w.message)]
    assert last_logs(model)["is_line_search_success"] == 1.0
    assert model._n_actor_steps_skipped == 2


def test_non_finite_cg_solution_skips_actor_step(monkeypatch):
    real_cg = trust_trpo_module.conjugate_gradient

    def nan_cg(*args, **kwargs):
        x, residual = real_cg(*args, **kwargs)
        return th.full_like(x, math.nan), residual

    monkeypatch.setattr(trust_trpo_module, "conjugate_gradient", nan_cg)
    model = silent(TrustTRPO("MlpPolicy", "Pendulum-v1", **SMALL))
    before = _actor_state(model)
    with pytest.warns(UserWarning, match="conjugate-gradient"):
        model.learn(64)
    for name, value in _actor_state(model).items():
        assert th.equal(value, before[name]), name
    assert last_logs(model)["actor_step_skipped"] == 1


@pytest.mark.parametrize("s_f_s", [0.0, -1.0, math.inf, math.nan])
@pytest.mark.parametrize("kl_convention", ["paper", "contrib"])
def test_bad_curvature_skips_actor_step(monkeypatch, s_f_s, kl_convention):
    from sb3_trust.common import trust_region

    def bad(factory):
        def bad_factory(*args):
            real = factory(*args)

            def fvp(vector):
                # a correct product inside CG, a bad curvature for the step size (the last call)
                out = real(vector)
                fvp.calls += 1
                if fvp.calls > n_cg_products:
                    return vector * (s_f_s / vector.dot(vector).item())  # so that sᵀ(Fs) = s_f_s
                return out

            fvp.calls = 0
            return fvp

        return bad_factory

    monkeypatch.setattr(trust_trpo_module, "fisher_vector_product_fn", bad(trust_region.fisher_vector_product_fn))
    # CG from zero (paper) makes cg_max_steps products, contrib's random start one more; the next one is sᵀFs's
    n_cg_products = 3 + (kl_convention == "contrib")
    # The reference path's products are patched (the step's checks are the same on both paths)
    model = TrustTRPO("MlpPolicy", "CartPole-v1", cg_max_steps=3, kl_convention=kl_convention, backend="reference", **SMALL)
    model = silent(model)
    before = _actor_state(model)
    with pytest.warns(UserWarning, match="sᵀFs"):
        model.learn(64)
    for name, value in _actor_state(model).items():
        assert th.equal(value, before[name]), name
    assert last_logs(model)["actor_step_skipped"] == 1


def test_nan_returns_skip_the_update_in_skip_mode():
    class NaNReturn(BaseCallback):
        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            self.model.rollout_buffer.returns[5, 0] = np.nan

    model = silent(TrustTRPO("MlpPolicy", "CartPole-v1", on_non_finite="skip", **SMALL))
    before = {name: value.clone() for name, value in model.policy.state_dict().items()}
    with pytest.warns(UserWarning, match="non-finite return"):
        model.learn(64, callback=NaNReturn())
    # the rollout check catches the NaN before the update: nothing moved, the update is counted as skipped
    assert model._n_skipped_updates == 1
    for name, value in model.policy.state_dict().items():
        assert th.equal(value, before[name]), name
