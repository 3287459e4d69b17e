"""
The main job: a short side-by-side on CartPole-v1 of each sb3_trust algorithm against its reference
(SB3 PPO, sb3-contrib TRPO), with rl-zoo3's configs, the same seed and budget. Prints the deterministic evaluation
return and the training speed (steps/s, with torch pinned to 1 thread), and the speed ratio against the reference.

Usage: ``python -m benchmarks compare [--env CartPole-v1] [--seed 0] [--timesteps N]``
"""

import argparse
import time
from dataclasses import dataclass
from typing import Any

import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize

from benchmarks.zoo_configs import load_zoo_config


@dataclass
class Entry:
    """
    :param name: shown in the table
    :param zoo_key: the yml our config comes from (ppo/trpo: rl-zoo3's own)
    :param reference: name of the entry it is compared with (None for a reference)
    """

    name: str
    zoo_key: str
    reference: str | None


ENTRIES = [
    Entry("SB3 PPO", "ppo", None),
    Entry("TrustPPO clip", "trust_ppo", "SB3 PPO"),
    Entry("TrustPPO adaptive KL", "trust_ppo_kl", "SB3 PPO"),
    Entry("TrustPPO fixed KL", "trust_ppo_kl_fixed", "SB3 PPO"),
    Entry("sb3-contrib TRPO", "trpo", None),
    Entry("TrustTRPO", "trust_trpo", "sb3-contrib TRPO"),
    Entry("TrustNPG", "trust_npg", "sb3-contrib TRPO"),
]


def algorithm_class(zoo_key: str) -> type:
    """
    :param zoo_key: rl-zoo3 key
    :return: the algorithm class
    """
    if zoo_key == "ppo":
        from stable_baselines3 import PPO

        return PPO
    if zoo_key == "trpo":
        from sb3_contrib import TRPO

        return TRPO
    if zoo_key.startswith("trust_ppo"):
        from sb3_trust import TrustPPO

        return TrustPPO
    import sb3_trust

    return sb3_trust.TrustNPG if zoo_key == "trust_npg" else sb3_trust.TrustTRPO  # type: ignore[attr-defined]


def run_one(zoo_key: str, env_id: str, seed: int, timesteps: int | None, n_eval_episodes: int = 10) -> dict[str, Any]:
    """
    Train one algorithm with its zoo config and evaluate it.

    :param zoo_key: rl-zoo3 key
    :param env_id: env id
    :param seed: seed
    :param timesteps: training budget (``None``: the config's)
    :param n_eval_episodes: deterministic evaluation episodes
    :return: mean return, std, steps/s and wall time
    """
    config = load_zoo_config(zoo_key, env_id)
    env = make_vec_env(env_id, n_envs=config.n_envs, seed=seed)
    if config.normalize is not None:
        env = VecNormalize(env, **config.normalize)
    model = algorithm_class(zoo_key)(config.policy, env, seed=seed, device="cpu", **config.kwargs)
    budget = timesteps or config.n_timesteps
    start = time.perf_counter()
    model.learn(budget)
    wall = time.perf_counter() - start
    eval_env = make_vec_env(env_id, n_envs=1, seed=seed + 10_000)
    if config.normalize is not None:
        assert isinstance(env, VecNormalize)
        eval_kwargs = {key: value for key, value in config.normalize.items() if key not in ("norm_reward", "gamma")}
        eval_env = VecNormalize(eval_env, training=False, norm_reward=False, **eval_kwargs)
        eval_env.obs_rms = env.obs_rms
    mean_return, std_return = evaluate_policy(model, eval_env, n_eval_episodes=n_eval_episodes, deterministic=True)
    # Which path ran (sb3_trust's models: "accelerated" or "reference" for collection / training)
    path = f"{getattr(model, 'collect_backend', '-')}/{getattr(model, 'train_backend', '-')}"
    return dict(
        mean=float(mean_return), std=float(std_return), fps=model.num_timesteps / wall, wall=wall, steps=budget, path=path
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks compare", description=__doc__)
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timesteps", type=int, default=None, help="budget per run (default: the zoo's)")
    parser.add_argument("--only", nargs="*", default=None, help="names of entries to run (default: all)")
    args = parser.parse_args(argv)
    th.set_num_threads(1)

    results: dict[str, dict[str, Any]] = {}
    print(f"{args.env}, seed {args.seed}, rl-zoo3 configs, torch threads: 1")
    header = f"{'algorithm':<22} {'steps':>8} {'return':>16} {'steps/s':>9} {'speed vs ref':>13}  collect/train path"
    print(header)
    print("-" * len(header))
    for entry in ENTRIES:
        if args.only is not None and entry.name not in args.only:
            continue
        try:
            result = run_one(entry.zoo_key, args.env, args.seed, args.timesteps)
        except (ImportError, AttributeError, FileNotFoundError, KeyError) as error:
            print(f"{entry.name:<22} skipped: {error}")
            continue
        results[entry.name] = result
        ratio = ""
        if entry.reference in results:
            ratio = f"{result['fps'] / results[entry.reference]['fps']:.2f}x"
        score = f"{result['mean']:.1f} ± {result['std']:.1f}"
        line = f"{entry.name:<22} {result['steps']:>8} {score:>16} {result['fps']:>9.0f} {ratio:>13}  {result['path']}"
        print(line, flush=True)
