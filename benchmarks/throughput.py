"""
Throughput: TrustPPO against SB3 PPO and TrustTRPO against sb3-contrib TRPO, at identical hyperparameters.

In one run of this script, every (config, algorithm) pair is measured ``--repeats`` times, interleaved
(A B A B ...), each measurement in a fresh subprocess (so that peak memory is per algorithm) with torch pinned to
one thread. It reports the median speed ratio ours / reference, the split between collection and update, the
env-only rate through the same VecEnv (the physical floor, measured in every repeat after the two algorithms; median),
and the peak RSS.

For the PPO configs it also measures the *arithmetic floor*: the env-only time plus the time of the matrix products that
any implementation of the same update must compute (the actor's and critic's forward pass for each collection step,
and the forward, weight-gradient and input-gradient products of every minibatch), timed with the same BLAS and thread
count. The reference's wall time divided by that floor is the best ratio any implementation computing the same thing
can reach on this machine.

Usage: ``python -m benchmarks throughput [--repeats 3] [--configs cartpole_ppo ...] [--out benchmarks/THROUGHPUT.md]``
"""

import argparse
import itertools
import math
import multiprocessing as mp
import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Config:
    """
    :param name: short name
    :param env_id: env id
    :param zoo_key: ``ppo``/``trpo``: take rl-zoo3's config for ``env_id``; ``None``: the algorithm's defaults
    :param reference: ``ppo`` or ``trpo``
    :param ours: our algorithm's zoo key
    :param n_envs: envs (when not from the zoo)
    :param timesteps: steps per measurement
    """

    name: str
    env_id: str
    zoo_key: str | None
    reference: str
    ours: str
    n_envs: int
    timesteps: int


CONFIGS = {
    config.name: config
    for config in [
        Config("cartpole_ppo_zoo", "CartPole-v1", "ppo", "ppo", "trust_ppo", 8, 25_600),
        Config("lunarlander_ppo_zoo", "LunarLander-v3", "ppo", "ppo", "trust_ppo", 16, 32_768),
        Config("halfcheetah_ppo_defaults", "HalfCheetah-v4", None, "ppo", "trust_ppo", 1, 12_288),
        Config("halfcheetah_ppo_zoo", "HalfCheetah-v4", "ppo", "ppo", "trust_ppo", 1, 6_144),
        Config("cartpole_trpo_zoo", "CartPole-v1", "trpo", "trpo", "trust_trpo", 2, 20_480),
        Config("halfcheetah_trpo_zoo", "HalfCheetah-v4", "trpo", "trpo", "trust_trpo", 1, 20_480),
    ]
}


def _build(algo: str, config: Config, seed: int) -> Any:
    """
    :param algo: ``ppo``/``trpo`` (references) or our key, with ``@reference`` for our reference path only
    :param config: the config
    :param seed: seed
    :return: the model (same hyperparameters for ours and the reference)
    """
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    from benchmarks.compare import algorithm_class
    from benchmarks.zoo_configs import load_zoo_config

    if config.zoo_key is not None:
        zoo = load_zoo_config(config.zoo_key, config.env_id)
        n_envs, kwargs, normalize, policy = zoo.n_envs, zoo.kwargs, zoo.normalize, zoo.policy
    else:
        n_envs, kwargs, normalize, policy = config.n_envs, {}, None, "MlpPolicy"
    env = make_vec_env(config.env_id, n_envs=n_envs, seed=seed)
    if normalize is not None:
        env = VecNormalize(env, **normalize)
    algo, _, backend = algo.partition("@")
    if backend == "reference":
        kwargs = {**kwargs, "backend": backend}
    return algorithm_class(algo)(policy, env, seed=seed, device="cpu", **kwargs)


def _measure(algo: str, config_name: str, seed: int, queue: "mp.Queue[dict[str, float]]") -> None:
    import torch as th

    th.set_num_threads(1)
    config = CONFIGS[config_name]
    if algo.endswith("@warm"):
        # The accelerator's once-per-process cost (loading the compiled kernels) paid before the clock starts: one
        # rollout and one update of another model of the same config
        warm = _build(algo, config, seed + 1)
        warm.learn(warm.n_steps * warm.n_envs)
        del warm
    model = _build(algo, config, seed)
    timers = {"collect": 0.0, "train": 0.0, "env": 0.0}

    def timed(name: str, function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                timers[name] += time.perf_counter() - start

        return wrapper

    model.collect_rollouts = timed("collect", model.collect_rollouts)
    model.train = timed("train", model.train)
    # The env's own time on this run's trajectories (the policy's episodes, not random actions')
    env = model.get_env()
    env.step_wait = timed("env", env.step_wait)
    start = time.perf_counter()
    model.learn(config.timesteps)
    wall = time.perf_counter() - start
    queue.put(
        dict(
            steps_per_s=model.num_timesteps / wall,
            collect_s=timers["collect"],
            train_s=timers["train"],
            env_s=timers["env"],
            wall_s=wall,
            peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            backends=f"{getattr(model, 'collect_backend', '-')}/{getattr(model, 'train_backend', '-')}",
        )
    )


def _first_use(cache_dir: str, queue: "mp.Queue[dict[str, float]]") -> None:
    """
    The accelerator's first-use cost in a fresh process: one rollout and one update of TrustPPO (HalfCheetah-v4,
    defaults) on the accelerator, minus the same for a second identical model in the same process. With an empty
    ``cache_dir`` this is Numba's compile; with a filled one, loading the compiled kernels from the cache.
    """
    os.environ["NUMBA_CACHE_DIR"] = cache_dir
    import torch as th
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_trust import TrustPPO

    th.set_num_threads(1)
    times = []
    for _ in range(2):
        model = TrustPPO("MlpPolicy", make_vec_env("HalfCheetah-v4", n_envs=1, seed=0), seed=0, backend="accelerated")
        start = time.perf_counter()
        model.learn(2048)
        times.append(time.perf_counter() - start)
    queue.put(dict(first_use_s=times[0] - times[1]))


def _env_only(config_name: str, seed: int, queue: "mp.Queue[dict[str, float]]") -> None:
    """Random actions through the same VecEnv (and wrappers) as the algorithms use."""
    import torch as th

    th.set_num_threads(1)
    config = CONFIGS[config_name]
    model = _build(config.reference, config, seed)
    env = model.get_env()
    env.reset()
    n_steps = config.timesteps // env.num_envs
    actions = [np.stack([env.action_space.sample() for _ in range(env.num_envs)]) for _ in range(min(n_steps, 256))]
    start = time.perf_counter()
    for step in range(n_steps):
        env.step(actions[step % len(actions)])
    queue.put(dict(steps_per_s=n_steps * env.num_envs / (time.perf_counter() - start)))


# (rows, inner, columns) of one matrix product
Product = tuple[int, int, int]


def mlp_widths(sequential: Any, head: Any) -> list[int]:
    """
    :param sequential: an SB3 ``mlp_extractor`` branch (``Linear`` layers and activations, possibly empty)
    :param head: the ``Linear`` head after it (``action_net`` or ``value_net``)
    :return: the widths of the chain of ``Linear`` layers: input, hidden widths, output
    """
    import torch as th

    linears = [module for module in sequential.modules() if isinstance(module, th.nn.Linear)] + [head]
    return [linears[0].in_features] + [linear.out_features for linear in linears]


def chain_products(widths: list[int], rows: int, backward: bool) -> list[Product]:
    """
    The matrix products of one pass through a chain of ``Linear`` layers.

    Forward, per layer ``i``: ``x [rows, w_i] @ Wᵀ [w_i, w_{i+1}]``. Backward adds, per layer, the weight gradient
    ``gᵀ [w_{i+1}, rows] @ x [rows, w_i]`` and, for every layer but the first (the observations need no gradient), the
    input gradient ``g [rows, w_{i+1}] @ W [w_{i+1}, w_i]``.

    :param widths: input, hidden and output widths
    :param rows: rows of the batch
    :param backward: include the backward pass
    :return: the products
    """
    products = []
    for i, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
        products.append((rows, width_in, width_out))
        if backward:
            products.append((width_out, rows, width_in))
            if i > 0:
                products.append((rows, width_out, width_in))
    return products


def ppo_update_products(
    actor: list[int],
    critic: list[int],
    n_envs: int,
    n_steps: int,
    batch_size: int,
    n_epochs: int,
    timesteps: int,
) -> dict[Product, int]:
    """
    The matrix products that training PPO for ``timesteps`` steps must compute, whatever the implementation: one
    forward pass of the actor and the critic per collection step (``n_envs`` rows), and a forward and backward pass of
    both per minibatch (the last minibatch of an epoch may be smaller). ``learn`` collects whole rollouts until it
    reaches ``timesteps``.

    :param actor: the actor chain's widths (``mlp_widths``)
    :param critic: the critic chain's widths
    :param n_envs: envs
    :param n_steps: steps per env per rollout
    :param batch_size: minibatch size
    :param n_epochs: epochs per update
    :param timesteps: the training budget
    :return: how many times each product is computed
    """
    rollout = n_steps * n_envs
    updates = math.ceil(timesteps / rollout)
    counts: dict[Product, int] = {}

    def add(products: list[Product], times: int) -> None:
        for product in products:
            counts[product] = counts.get(product, 0) + times

    for widths in (actor, critic):
        add(chain_products(widths, n_envs, backward=False), updates * n_steps)
        for start in range(0, rollout, batch_size):
            add(chain_products(widths, min(batch_size, rollout - start), backward=True), updates * n_epochs)
    return counts


def time_products(counts: dict[Product, int], seconds_per_product: float = 0.05) -> float:
    """
    :param counts: how many times each product is computed (``ppo_update_products``)
    :param seconds_per_product: time spent measuring each distinct product
    :return: the estimated time of all of them (float32, the current thread count): each product's median time over
        batches of repetitions with ``th.mm`` and with NumPy's ``matmul`` (its own BLAS), the faster of the two, times
        its count
    :raise ValueError: for a negative count
    """
    import torch as th

    def median_time(product: Any) -> float:
        product()
        batches, repetitions = [], 20
        deadline = time.perf_counter() + seconds_per_product / 2
        while time.perf_counter() < deadline or len(batches) < 3:
            start = time.perf_counter()
            for _ in range(repetitions):
                product()
            batches.append((time.perf_counter() - start) / repetitions)
        return statistics.median(batches)

    total = 0.0
    for (rows, inner, columns), count in counts.items():
        if count < 0:
            raise ValueError(f"count of the product {(rows, inner, columns)} is {count}; it must be >= 0")
        if count == 0:
            continue
        left, right, out = th.randn(rows, inner), th.randn(inner, columns), th.empty(rows, columns)
        arrays = left.numpy(), right.numpy(), out.numpy()
        seconds = min(
            median_time(lambda: th.mm(left, right, out=out)),  # noqa: B023
            median_time(lambda: np.matmul(arrays[0], arrays[1], out=arrays[2])),  # noqa: B023
        )
        total += seconds * count
    return total


def _arithmetic_floor(config_name: str, seed: int, queue: "mp.Queue[dict[str, float]]") -> None:
    """The time of the matrix products of a PPO run of the config (``ppo_update_products``, ``time_products``)."""
    import torch as th

    th.set_num_threads(1)
    config = CONFIGS[config_name]
    model = _build(config.reference, config, seed)
    policy = model.policy
    counts = ppo_update_products(
        mlp_widths(policy.mlp_extractor.policy_net, policy.action_net),
        mlp_widths(policy.mlp_extractor.value_net, policy.value_net),
        model.n_envs,
        model.n_steps,
        model.batch_size,
        model.n_epochs,
        config.timesteps,
    )
    queue.put(dict(products_s=time_products(counts)))


def in_subprocess(target: Any, *args: Any) -> dict[str, Any]:
    """Run ``target(*args, queue)`` in a fresh (spawned) process and return what it put in the queue."""
    context = mp.get_context("spawn")
    queue: mp.Queue[dict[str, Any]] = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks throughput", description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    from benchmarks.runner import THREAD_ENV

    # One thread for every BLAS too (NumPy's OpenBLAS would otherwise use all cores): inherited by the spawned processes
    os.environ.update(THREAD_ENV)

    lines = [
        "| config | reference steps/s | ours steps/s | **median ratio** | ratio, kernels loaded before the clock "
        "| ours (reference path) ratio | ours: collect/train path | ref collect / train (s) | ours collect / train (s) "
        "| env-only steps/s | ours vs env-only time | env time in our run (s) | ours vs that env time "
        "| arithmetic floor (s) | best possible ratio | ours vs floor time | ref / ours / ours-reference-path peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    print(lines[0], flush=True)
    for name in args.configs:
        config = CONFIGS[name]
        reference_path, warm = f"{config.ours}@reference", f"{config.ours}@warm"
        runs: dict[str, list[dict[str, Any]]] = {config.reference: [], config.ours: [], warm: [], reference_path: []}
        env_only_runs = []
        for repeat in range(args.repeats):
            for algo in runs:  # interleaved: A B C A B C ...
                runs[algo].append(in_subprocess(_measure, algo, name, repeat))
            # the floor measured in every repeat too, so that it sees the same moments of the machine (median)
            env_only_runs.append(in_subprocess(_env_only, name, repeat)["steps_per_s"])
        env_only = statistics.median(env_only_runs)
        ratios = [o["steps_per_s"] / r["steps_per_s"] for r, o in zip(runs[config.reference], runs[config.ours], strict=True)]
        reference_path_ratios = [
            o["steps_per_s"] / r["steps_per_s"] for r, o in zip(runs[config.reference], runs[reference_path], strict=True)
        ]
        warm_ratios = [o["steps_per_s"] / r["steps_per_s"] for r, o in zip(runs[config.reference], runs[warm], strict=True)]

        def median(algo: str, key: str) -> float:
            return statistics.median(run[key] for run in runs[algo])  # noqa: B023

        ours_fps = median(config.ours, "steps_per_s")
        ratio = statistics.median(ratios)
        floor = "— | — | —"
        if config.reference == "ppo":
            # env-only time + the matrix products of the same update: the reference's time over it is the best ratio
            floor_s = config.timesteps / env_only + in_subprocess(_arithmetic_floor, name, 0)["products_s"]
            floor = (
                f"{floor_s:.2f} | {median(config.reference, 'wall_s') / floor_s:.2f}x "
                f"| {median(config.ours, 'wall_s') / floor_s:.2f}x"
            )
        line = (
            f"| {name} | {median(config.reference, 'steps_per_s'):.0f} | {ours_fps:.0f} | **{ratio:.2f}x** "
            f"| {statistics.median(warm_ratios):.2f}x | {statistics.median(reference_path_ratios):.2f}x "
            f"| {runs[config.ours][0]['backends']} "
            f"| {median(config.reference, 'collect_s'):.2f} / {median(config.reference, 'train_s'):.2f} "
            f"| {median(config.ours, 'collect_s'):.2f} / {median(config.ours, 'train_s'):.2f} "
            f"| {env_only:.0f} | {env_only / ours_fps:.1f}x "
            f"| {median(config.ours, 'env_s'):.2f} | {median(config.ours, 'wall_s') / median(config.ours, 'env_s'):.2f}x "
            f"| {floor} "
            f"| {median(config.reference, 'peak_rss_mb'):.0f} / {median(config.ours, 'peak_rss_mb'):.0f} "
            f"/ {median(reference_path, 'peak_rss_mb'):.0f} |"
        )
        lines.append(line)
        print(line, flush=True)

    import tempfile

    with tempfile.TemporaryDirectory() as cache_dir:
        cold = in_subprocess(_first_use, cache_dir)["first_use_s"]
        warm = in_subprocess(_first_use, cache_dir)["first_use_s"]
    first_use = (
        f"First use of the accelerator (one rollout and one update of TrustPPO on HalfCheetah-v4, minus the same for a "
        f"second model in the process): {cold:.1f} s with an empty Numba cache (compilation, once per machine and "
        f"version), {warm:.2f} s with the cache filled (loading the kernels, once per process)."
    )
    print(first_use, flush=True)
    lines += ["", first_use]

    if args.out:
        import torch

        header = [
            "# Throughput",
            "",
            f"Generated by `python -m benchmarks throughput --repeats {args.repeats}`; torch threads: 1 "
            "(and `OMP_NUM_THREADS`, `MKL_NUM_THREADS`, `OPENBLAS_NUM_THREADS` = 1); "
            f"{args.repeats} interleaved repeats per algorithm, each in a fresh process, followed in each repeat by the "
            "env-only measurement; medians.",
            f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"torch {torch.__version__}.",
            "Ratio = our steps/s / the reference's steps/s in the same repeat (median over repeats); 'ours' is the "
            "default `backend='auto'` (the accelerator where it can run), 'ours (reference path)' is `backend='reference'` "
            "(SB3's policy API and autograd only). Every measurement starts in a fresh process and includes the "
            "accelerator's loading of its compiled kernels from Numba's cache; 'kernels loaded before the clock' is the "
            "same run after one rollout and update of another model in the process (the steady state of a longer run).",
            "'ours vs env-only time' = how many times longer our training takes than stepping the env alone with random "
            "actions; 'env time in our run' = the time our run spent inside the VecEnv's `step_wait` (the env on the "
            "policy's own trajectories, whose episodes differ from random actions': longer, with other physics), and "
            "'ours vs that env time' = our wall time over it: how much of our time is not the env's.",
            "'arithmetic floor' (PPO configs) = env-only time + the time of the matrix products that the same update "
            "computes (actor and critic forward per collection step; forward, weight- and input-gradient products per "
            "minibatch), each timed alone on one thread with `th.mm` and with NumPy's `matmul`, the faster of the two; "
            "'best possible ratio' = the reference's median "
            "wall time / the floor, the most any implementation computing the same products could reach here; "
            "'ours vs floor time' = our median wall time / the floor.",
            "",
        ]
        with open(args.out, "w") as file:
            file.write("\n".join(header + lines) + "\n")
