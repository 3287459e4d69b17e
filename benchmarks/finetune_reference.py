"""
Fine-tuning toward a frozen reference policy (the RLHF recipe) with ``TrustPPO``: how β trades adaptation for closeness.

1. Pretrain TrustPPO on Pendulum-v1 (g = 10) with rl-zoo3's Pendulum PPO hyperparameters and save it (cached: the
   pretraining is skipped when the file exists).
2. Fine-tune it on a changed env, Pendulum-v1 with g = 14, from the pretrained weights, with the pretrained model as
   ``reference_policy`` and ``reference_kl_mode="reward"`` (``r - β·(log π - log π_ref)`` before GAE), for several
   fixed β and the adaptive β controller of Ziegler et al. (2019), all with the same seeds.
3. Every ``--eval-freq`` steps, record the deterministic return on the new env (``--eval-episodes`` episodes with
   fixed seeds) and the mean exact KL(π ‖ π_ref) on a fixed set of states collected once from the new env with the
   reference policy.
4. Save the curves (JSON) and a two-panel plot (return and KL-to-reference against fine-tuning steps).

Usage: ``python -m benchmarks.finetune_reference [--quick] [--seeds 0 1 2] [--out DIR] [--plot-only]``
(``--quick``: tiny budgets, a smoke run, written to a temporary folder unless ``--out`` is given;
``--plot-only``: redraw the PNG from the JSON).
"""

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from sb3_trust import TrustPPO, exact_kl

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "finetune_reference")
PRETRAIN_GRAVITY = 10.0
FINETUNE_GRAVITY = 14.0
ENV_ID = "Pendulum-v1"

# rl-zoo3's Pendulum-v1 PPO config (hyperparams/ppo.yml), n_envs = 4, 1e5 steps
ZOO_PENDULUM: dict[str, Any] = dict(
    n_steps=1024,
    gae_lambda=0.95,
    gamma=0.9,
    n_epochs=10,
    ent_coef=0.0,
    learning_rate=1e-3,
    clip_range=0.2,
    use_sde=True,
    sde_sample_freq=4,
)
N_ENVS = 4


@dataclass(frozen=True)
class Variant:
    """
    One fine-tuning setting.

    :param label: legend label
    :param coef: β (the initial β when ``target`` is set)
    :param target: KL target of the adaptive controller, or ``None`` for a fixed β
    :param mode: ``"reward"`` or ``"loss"``
    :param horizon: horizon (in samples) of the adaptive controller
    """

    label: str
    coef: float
    target: float | None = None
    mode: str = "reward"
    horizon: int = 10_000


VARIANTS = (
    Variant("β = 0 (plain fine-tuning)", 0.0),
    Variant("β = 0.1", 0.1),
    Variant("β = 0.3", 0.3),
    Variant("β = 1", 1.0),
    # horizon = one rollout (4 × 1024 samples): β may change by up to ±20% per update; with the default 10k horizon
    # (±8% per update) β moves too slowly for a 60k-step fine-tuning
    Variant("adaptive β, target KL 0.1", 0.1, target=0.1, horizon=4_096),
)


@dataclass(frozen=True)
class Budget:
    """
    :param pretrain_steps: pretraining steps on g = 10
    :param finetune_steps: fine-tuning steps on g = 14, per variant and seed
    :param eval_freq: steps between evaluations
    :param eval_episodes: deterministic evaluation episodes
    :param kl_states: size of the fixed set of states for KL(π ‖ π_ref)
    :param n_steps: steps per env per rollout (the zoo's 1024; smaller for ``--quick``)
    """

    pretrain_steps: int
    finetune_steps: int
    eval_freq: int
    eval_episodes: int
    kl_states: int
    n_steps: int


FULL = Budget(pretrain_steps=100_000, finetune_steps=60_000, eval_freq=4_096, eval_episodes=5, kl_states=1_000, n_steps=1024)
QUICK = Budget(pretrain_steps=1_024, finetune_steps=1_024, eval_freq=512, eval_episodes=1, kl_states=100, n_steps=128)


def make_env(gravity: float, n_envs: int, seed: int) -> Any:
    """
    :param gravity: Pendulum's ``g``
    :param n_envs: number of envs
    :param seed: seed of the envs
    :return: a ``DummyVecEnv`` of Pendulum-v1 with that gravity
    """
    return make_vec_env(ENV_ID, n_envs=n_envs, seed=seed, env_kwargs={"g": gravity})


def hyperparams(budget: Budget) -> dict[str, Any]:
    """:return: the zoo's Pendulum hyperparameters, with the budget's rollout length"""
    return {**ZOO_PENDULUM, "n_steps": budget.n_steps}


def pretrain(path: str, budget: Budget, seed: int = 0) -> float:
    """
    Pretrain on g = 10 and save to ``path`` (skipped when ``path`` exists).

    :param path: where to save the model (``.zip``)
    :param budget: budgets
    :param seed: seed
    :return: seconds spent (0 when cached)
    """
    if os.path.exists(path):
        print(f"pretrained model cached: {path}")
        return 0.0
    start = time.process_time()
    model = TrustPPO("MlpPolicy", make_env(PRETRAIN_GRAVITY, N_ENVS, seed), seed=seed, **hyperparams(budget))
    model.learn(budget.pretrain_steps)
    model.save(path)
    print(f"pretrained {budget.pretrain_steps} steps on g={PRETRAIN_GRAVITY} in {time.process_time() - start:.0f}s -> {path}")
    return time.process_time() - start


def evaluate(model: TrustPPO, gravity: float, episodes: int, seed: int = 10_000) -> float:
    """
    :param model: a model
    :param gravity: Pendulum's ``g``
    :param episodes: number of episodes (seeds ``seed``, ``seed + 1``, ...: the same episodes for every model)
    :param seed: first episode seed
    :return: mean deterministic undiscounted return
    """
    env = gym.make(ENV_ID, g=gravity)
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def reference_states(reference: TrustPPO, gravity: float, n_states: int, seed: int = 20_000) -> th.Tensor:
    """
    A fixed set of states, visited by the (stochastic) reference policy on the new env.

    :param reference: the pretrained model
    :param gravity: Pendulum's ``g``
    :param n_states: number of states
    :param seed: seed of the env and of the reference's action noise
    :return: observations, shape ``[n_states, 3]``
    """
    env = gym.make(ENV_ID, g=gravity)
    states = []
    obs, _ = env.reset(seed=seed)
    with th.random.fork_rng(devices=[]):
        th.manual_seed(seed)
        reference.policy.reset_noise()
        while len(states) < n_states:
            states.append(obs)
            action, _ = reference.predict(obs, deterministic=False)
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                obs, _ = env.reset()
    env.close()
    return th.as_tensor(np.array(states), dtype=th.float32)


def kl_to_reference(model: TrustPPO, states: th.Tensor) -> float:
    """
    :param model: a TrustPPO model with a reference policy
    :param states: fixed observations
    :return: mean exact KL(π ‖ π_ref) over ``states`` (summed over action dimensions)
    """
    assert model._reference is not None
    with th.no_grad():
        return float(exact_kl(model.policy.get_distribution(states), model._reference.distribution(states)).mean())


class CurveCallback(BaseCallback):
    """
    Every ``eval_freq`` steps, before a rollout (so after the previous update), record the step, the deterministic
    return on the new env, KL(π ‖ π_ref) on the fixed states and the current β.

    :param states: fixed observations for the KL
    :param gravity: Pendulum's ``g`` of the evaluation env
    :param eval_freq: steps between evaluations
    :param episodes: evaluation episodes
    """

    def __init__(self, states: th.Tensor, gravity: float, eval_freq: int, episodes: int) -> None:
        super().__init__()
        self.states, self.gravity, self.eval_freq, self.episodes = states, gravity, eval_freq, episodes
        self.curve: dict[str, list[float | None]] = {"steps": [], "return": [], "kl": [], "coef": [], "rollout_kl": []}
        self._last = -eval_freq

    def record(self) -> None:
        """Evaluate the current policy and append to the curves."""
        self.curve["steps"].append(self.model.num_timesteps)
        self.curve["return"].append(evaluate(self.model, self.gravity, self.episodes))
        self.curve["kl"].append(kl_to_reference(self.model, self.states))
        self.curve["coef"].append(float(self.model._reference_kl_coef))
        # the algorithm's own log: mean KL(π ‖ π_ref) over the last rollout, after the update (None before any update)
        self.curve["rollout_kl"].append(self.model.logger.name_to_value.get("train/ref_kl"))
        self._last = self.model.num_timesteps

    def _on_rollout_start(self) -> None:
        if self.model.num_timesteps - self._last >= self.eval_freq:
            self.record()

    def _on_step(self) -> bool:
        return True


def finetune(variant: Variant, pretrained: TrustPPO, states: th.Tensor, budget: Budget, seed: int) -> dict[str, Any]:
    """
    Fine-tune the pretrained policy on g = 14 with a KL penalty toward it.

    :param variant: β setting
    :param pretrained: the pretrained model (the starting weights, and the reference policy)
    :param states: fixed observations for the KL
    :param budget: budgets
    :param seed: seed
    :return: the curves and the CPU time
    """
    start = time.process_time()
    model = TrustPPO(
        "MlpPolicy",
        make_env(FINETUNE_GRAVITY, N_ENVS, seed),
        seed=seed,
        # The reference is given as the model object (a path to the saved model works too, and is then recorded
        # with the fine-tuned model and reloaded with it)
        reference_policy=pretrained,
        reference_kl_coef=variant.coef,
        reference_kl_mode=variant.mode,
        reference_kl_target=variant.target,
        reference_kl_horizon=variant.horizon,
        **hyperparams(budget),
    )
    # start from the pretrained weights (same architecture and gSDE settings, so the state dicts match);
    # the optimizer state starts fresh
    model.policy.load_state_dict(pretrained.policy.state_dict())
    callback = CurveCallback(states, FINETUNE_GRAVITY, budget.eval_freq, budget.eval_episodes)
    model.learn(budget.finetune_steps, callback=callback)
    callback.record()  # after the last update
    seconds = time.process_time() - start
    curve = callback.curve
    print(
        f"{variant.label:<28} seed {seed}: return {curve['return'][0]:8.1f} -> {curve['return'][-1]:8.1f}, "
        f"KL {curve['kl'][-1]:.3f}, β {curve['coef'][-1]:.3f} ({seconds:.0f}s CPU)"
    )
    return {**curve, "cpu_seconds": seconds}


def plot(results: dict[str, Any], path: str) -> None:
    """
    Two panels: deterministic return on g = 14, and KL(π ‖ π_ref) on the fixed states, against fine-tuning steps
    (mean over seeds; shaded min-max when there are several seeds).

    :param results: the JSON results
    :param path: PNG path
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_return, ax_kl) = plt.subplots(1, 2, figsize=(11, 4.8))
    for run in results["runs"]:
        steps = np.array(run["seeds"][0]["steps"])
        label = run["label"]
        if run["target"] is not None:
            final = np.mean([seed_run["coef"][-1] for seed_run in run["seeds"]])
            label += f" (β {run['coef']:g} → {final:.2f})"
        for ax, key in ((ax_return, "return"), (ax_kl, "kl")):
            values = np.array([seed_run[key] for seed_run in run["seeds"]])
            (line,) = ax.plot(steps, values.mean(axis=0), label=label if ax is ax_return else None)
            if len(values) > 1:
                ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.1, lw=0)
    ax_return.axhline(
        results["reference_return_g10"], color="grey", ls=":", lw=1, label=f"reference on g = {PRETRAIN_GRAVITY:g}"
    )
    ax_return.set(
        xlabel="fine-tuning steps", ylabel="deterministic return", title=f"Return on Pendulum-v1, g = {FINETUNE_GRAVITY:g}"
    )
    ax_kl.set(xlabel="fine-tuning steps", ylabel="mean KL(π ‖ π_ref)", title="KL to the reference (fixed states)")
    ax_kl.set_yscale("symlog", linthresh=1e-2)
    ax_kl.set_ylim(bottom=0)
    fig.legend(*ax_return.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8, frameon=False)
    n_seeds = len(results["seeds"])
    fig.suptitle(
        f"TrustPPO fine-tuning from a g = {PRETRAIN_GRAVITY:g} policy, reward-shaped KL penalty "
        f"({n_seeds} seed{'s' if n_seeds > 1 else ''}" + (", mean and min-max)" if n_seeds > 1 else ")"),
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny budgets (smoke run), in a temporary folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning seeds")
    parser.add_argument("--finetune-steps", type=int, default=None, help="override the fine-tuning steps")
    parser.add_argument("--out", default=None, help=f"output folder (default {OUT_DIR})")
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from the JSON of a previous run")
    args = parser.parse_args(argv)
    if args.plot_only:
        out = args.out or OUT_DIR
        with open(os.path.join(out, "finetune_pendulum.json")) as file:
            plot(json.load(file), os.path.join(out, "finetune_pendulum.png"))
        return
    th.set_num_threads(1)

    budget = QUICK if args.quick else FULL
    if args.finetune_steps is not None:
        budget = Budget(**{**asdict(budget), "finetune_steps": args.finetune_steps})
    out = args.out or (tempfile.mkdtemp(prefix="finetune_reference_") if args.quick else OUT_DIR)
    os.makedirs(out, exist_ok=True)
    wall = time.time()

    pretrained = os.path.join(out, f"pretrained_pendulum_g{PRETRAIN_GRAVITY:g}.zip")
    pretrain_seconds = pretrain(pretrained, budget)
    reference = TrustPPO.load(pretrained, device="cpu")
    states = reference_states(reference, FINETUNE_GRAVITY, budget.kl_states)
    results: dict[str, Any] = {
        "env": ENV_ID,
        "pretrain_gravity": PRETRAIN_GRAVITY,
        "finetune_gravity": FINETUNE_GRAVITY,
        "hyperparams": {**hyperparams(budget), "n_envs": N_ENVS},
        "budget": asdict(budget),
        "seeds": args.seeds,
        "reference_return_g10": evaluate(reference, PRETRAIN_GRAVITY, budget.eval_episodes),
        "reference_return_g14": evaluate(reference, FINETUNE_GRAVITY, budget.eval_episodes),
        "pretrain_cpu_seconds": pretrain_seconds,
        "runs": [],
    }
    print(f"reference: return {results['reference_return_g10']:.1f} on g=10, {results['reference_return_g14']:.1f} on g=14")
    for variant in VARIANTS:
        seeds = [finetune(variant, reference, states, budget, seed) for seed in args.seeds]
        results["runs"].append({**asdict(variant), "seeds": seeds})
    results["wall_seconds"] = time.time() - wall
    results["machine"] = f"{platform.machine()}, torch {th.__version__}, 1 thread"

    with open(os.path.join(out, "finetune_pendulum.json"), "w") as file:
        json.dump(results, file, indent=1)
    plot(results, os.path.join(out, "finetune_pendulum.png"))
    print(f"wrote {out}/finetune_pendulum.json and .png ({results['wall_seconds']:.0f}s wall)")


if __name__ == "__main__":
    main()
