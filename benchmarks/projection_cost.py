"""
The cost of TrustPPO's trust-region projection layers per update: ``python -m benchmarks.projection_cost``.

One rollout is collected, then ``train()`` (one update: ``n_epochs`` passes in minibatches) is timed ``--repeats`` times
in turns for each projection and for none, all on the reference path (the accelerator declines projected models, so the
baseline is the reference path too) with ``policy_loss="unclipped"`` and SB3 PPO's other defaults (n_steps 2048,
batch_size 64, n_epochs 10: 320 minibatch steps per update), torch on 1 thread. Prints a Markdown table: the median
seconds per update and the overhead with respect to no projection.
"""

import argparse
import statistics
import time

import torch as th

from sb3_trust import TrustPPO

PROJECTIONS = (None, "frobenius", "w2", "kl")


def seconds_per_update(env_id: str, repeats: int) -> dict[str | None, float]:
    """
    :param env_id: the env (continuous actions)
    :param repeats: updates timed per projection, in turns (one update of each projection per turn, so that a change
        of the machine's load affects them alike)
    :return: the median wall time of one update, in seconds, per projection
    """
    models = {}
    for projection in PROJECTIONS:
        model = TrustPPO(
            "MlpPolicy", env_id, policy_loss="unclipped", projection=projection, backend="reference", seed=0, device="cpu"
        )
        model.learn(model.n_steps)  # one rollout (and one update, untimed: it warms up the code paths)
        models[projection] = model
    times: dict[str | None, list[float]] = {projection: [] for projection in PROJECTIONS}
    for _ in range(repeats):
        for projection, model in models.items():
            start = time.perf_counter()
            model.train()
            times[projection].append(time.perf_counter() - start)
    return {projection: statistics.median(values) for projection, values in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--env", default="HalfCheetah-v4", help="env id (continuous actions)")
    parser.add_argument("--repeats", type=int, default=3, help="updates timed per projection (the median is shown)")
    args = parser.parse_args(argv)
    th.set_num_threads(1)
    seconds = seconds_per_update(args.env, args.repeats)
    print(f"| projection ({args.env}) | s / update | overhead |\n|---|---|---|")
    for projection, value in seconds.items():
        print(f"| {projection or 'none'} | {value:.2f} | {100 * (value / seconds[None] - 1):+.0f}% |")


if __name__ == "__main__":
    main()
