"""
``python -m benchmarks run``: the command line of the seeded sweeps. The runs themselves are ``benchmarks.runner``'s;
where they execute is ``benchmarks.backends``' (this module imports both, neither imports it).
"""

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any, TextIO

from benchmarks.backends import make_backend
from benchmarks.checkpoint import CHECKPOINT_DIR
from benchmarks.runner import (
    DEFAULT_RESULTS_DIR,
    EVAL_POINTS,
    THREAD_ENV,
    Progress,
    build_plan,
    parse_seeds,
    select_runs,
    write_manifest,
)
from benchmarks.suites import ALGOS, SUITES, BenchmarkInputError


def list_choices(stream: TextIO | None = None) -> None:
    """
    Print the suites and algorithms.

    :param stream: where to print (default: stdout)
    """
    stream = stream or sys.stdout
    print("Suites:", file=stream)
    for suite in SUITES.values():
        print(f"  {suite.name:<15} {suite.description}", file=stream)
        print(f"  {'':<15} envs: {', '.join(suite.envs)}", file=stream)
        print(f"  {'':<15} algorithms: {', '.join(suite.algos)}", file=stream)
        if suite.skip:
            print(f"  {'':<15} not run: {', '.join(f'{algo} on {env}' for env, algo in suite.skip)}", file=stream)
        if suite.budgets:
            print(f"  {'':<15} budgets: {', '.join(f'{env} {steps:,} steps' for env, steps in suite.budgets)}", file=stream)
    print("Algorithms:", file=stream)
    for algo in ALGOS.values():
        print(f"  {algo.name:<22} {algo.description}", file=stream)


def make_parser() -> argparse.ArgumentParser:
    """:return: the parser of ``python -m benchmarks run``"""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", help=f"one of {', '.join(SUITES)}")
    parser.add_argument("--env", nargs="+", help="env ids (with --suite: only these of the suite's)")
    parser.add_argument("--algo", nargs="+", help=f"algorithms (with --suite: only these of the suite's): {', '.join(ALGOS)}")
    parser.add_argument("--seeds", default="1", help="number of seeds (5: seeds 0-4), or a list (0,3,4) or range (5-9)")
    parser.add_argument("--timesteps", type=int, default=None, help="budget of every run (default: the yml's n_timesteps)")
    parser.add_argument(
        "--hyperparams", nargs="+", default=None, help="overrides key:value for every algorithm, as rl-zoo3's --hyperparams"
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at the same time (local: processes; ray: tasks in flight)")
    parser.add_argument("--backend", choices=("local", "ray", "inline"), default="local", help="where runs execute")
    parser.add_argument("--address", default=None, help="ray: cluster address (auto, or host:port); default: a local instance")
    parser.add_argument("--ray-ship-code", action="store_true", help="ray: send the benchmarks and sb3_trust packages along")
    parser.add_argument("--results-dir", default=str(DEFAULT_RESULTS_DIR), help="where result files go")
    parser.add_argument(
        "--eval-freq", type=int, default=None, help=f"steps between evaluations (default: budget/{EVAL_POINTS})"
    )
    parser.add_argument("--eval-episodes", type=int, default=10, help="deterministic episodes per evaluation")
    parser.add_argument("--final-eval-episodes", type=int, default=20, help="deterministic episodes of the final evaluation")
    parser.add_argument("--timeout", type=float, default=None, help="seconds after which a run is killed, recorded as failed")
    parser.add_argument(
        "--checkpoint-minutes",
        type=float,
        default=10.0,
        help="checkpoint each run in progress this often (minutes of wall time; 0: never), so that a stopped sweep "
        "resumes its runs where they were (see benchmarks/checkpoint.py)",
    )
    parser.add_argument("--skip-failed", action="store_true", help="do not redo runs recorded as failed")
    parser.add_argument("--rerun-stale", action="store_true", help="redo finished runs whose result is stale")
    parser.add_argument("--dry-run", action="store_true", help="print what would run, and stop")
    parser.add_argument("--list", action="store_true", help="list the suites and algorithms, and stop")
    return parser


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    """
    ``python -m benchmarks run``.

    :param argv: the arguments
    :raise SystemExit: 2 on bad input, 1 if some run failed, 130 when interrupted
    """
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.list:
        list_choices()
        return
    for name, value in THREAD_ENV.items():
        os.environ.setdefault(name, value)

    try:
        if args.jobs < 1:
            raise BenchmarkInputError(f"--jobs must be >= 1, got {args.jobs}")
        if not args.checkpoint_minutes >= 0:
            raise BenchmarkInputError(f"--checkpoint-minutes must be >= 0 (0: no checkpoints), got {args.checkpoint_minutes}")
        if args.address is not None and args.backend != "ray":
            raise BenchmarkInputError("--address is for --backend ray")
        plan = build_plan(
            suite=args.suite,
            envs=args.env,
            algos=args.algo,
            seeds=parse_seeds(args.seeds),
            timesteps=args.timesteps,
            cli_hyperparams=args.hyperparams,
            eval_freq=args.eval_freq,
            eval_episodes=args.eval_episodes,
            final_eval_episodes=args.final_eval_episodes,
            check=not args.dry_run,
        )
        backend = make_backend(
            args.backend, jobs=args.jobs, address=args.address, timeout=args.timeout, ship_code=args.ray_ship_code
        )
    except BenchmarkInputError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    results_dir = Path(args.results_dir)
    todo, skipped = select_runs(plan, results_dir, rerun_failed=not args.skip_failed, rerun_stale=args.rerun_stale)
    if args.checkpoint_minutes > 0:
        for spec in todo:
            spec.checkpoint_dir = str(results_dir / CHECKPOINT_DIR)
            spec.checkpoint_seconds = 60.0 * args.checkpoint_minutes
    print(
        f"{len(plan.specs)} runs: {len(todo)} to do, {len(skipped)} already done; results in {results_dir}; "
        f"backend {backend.describe()}; torch threads per run: 1"
    )
    if args.dry_run:
        for spec in todo:
            resumes = ", resumes from its checkpoint" if spec.checkpoint_file and spec.checkpoint_file.exists() else ""
            print(f"  {spec.run_id}  (eval every {spec.eval_freq} steps{resumes})")
        return
    write_manifest(results_dir, plan)
    progress = Progress(len(todo), skipped=len(skipped), total_steps=sum(spec.timesteps for spec in todo))
    # `kill <pid>` stops the sweep as Ctrl-C does: the runs in flight are stopped, finished results are kept
    previous = signal.getsignal(signal.SIGTERM)
    with contextlib.suppress(ValueError):  # not in the main thread
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        backend.run(todo, results_dir, progress)
    except KeyboardInterrupt:
        progress.close()
        print(
            f"interrupted: the runs in flight resume from their last checkpoints (if any) when the same command is rerun "
            f"({results_dir})",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    finally:
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGTERM, previous)
    progress.close()
    if progress.failed:
        print(f"{len(progress.failed)} failed runs (their errors are in their result files):", file=sys.stderr)
        for run in progress.failed:
            print(f"  {results_dir / run}.json", file=sys.stderr)
        raise SystemExit(1)
