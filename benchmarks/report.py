"""
The benchmark report: ``python -m benchmarks report`` writes ``benchmarks/RESULTS.md`` and its plots (PNG, in
``plots/`` beside it) from the result files alone (plus the published numbers in ``benchmarks/reference_scores.py``
and the current code, to tell stale results).

Usage: ``python -m benchmarks report [--results-dir DIR] [--out RESULTS.md] [--reps 2000] [--exclude-stale]``
"""

import argparse
import contextlib
import itertools
import math
import os
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import reference_scores as refs
from benchmarks.runner import DEFAULT_RESULTS_DIR, CurrentState, is_finished, iter_records, load_manifests, staleness
from benchmarks.suites import ALGOS, ENV_REFERENCES, PPO_PAPER_ORDER, SUITES, reference_for

DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS.md"
README = Path(__file__).resolve().parent / "README.md"
# The verdict rule: a two-sided permutation test of the difference of the mean final scores, at level ALPHA, with at
# least MIN_RUNS finished runs on each side (with fewer, no permutation can reach p < 0.05)
ALPHA = 0.05
MIN_RUNS = 4
PERMUTATIONS = 20_000
CURVE_POINTS = 101

RULE = (
    f"two-sided permutation test on the final scores (difference of the means; exact over all splits when there are "
    f"at most {PERMUTATIONS:,} of them, else {PERMUTATIONS:,} random permutations) against the reference "
    f"implementation run by the same runner at the same budget: **better** / **worse** if p < {ALPHA} (by the sign "
    f"of the difference), else **matches** (no significant difference, which with few seeds is weak evidence of "
    f"equality); needs at least {MIN_RUNS} finished runs on each side (with 3 vs 3 the smallest possible p is 0.1)"
)


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """
    One finished run.

    :param run_id: its id
    :param seed: seed
    :param final: final score (mean return of the final evaluation)
    :param steps_per_s: training speed
    :param curve_t: evaluation timesteps
    :param curve_mean: evaluation mean returns
    :param host: the machine it ran on
    :param stale: why it is stale (empty: current)
    :param last_100: mean return of the last 100 training episodes (``None``: not recorded)
    :param resumed: how many times the run was resumed from a checkpoint
    """

    run_id: str
    seed: int
    final: float
    steps_per_s: float | None
    curve_t: np.ndarray
    curve_mean: np.ndarray
    host: str
    stale: list[str]
    last_100: float | None = None
    resumed: int = 0


@dataclass
class Group:
    """
    The runs of one (env, label, budget).

    :param env: env id
    :param label: the algorithm's label
    :param timesteps: budget
    :param runs: finished runs
    :param failed: failed runs: (seed, error, path)
    :param expected: seeds expected by the sweep manifests
    """

    env: str
    label: str
    timesteps: int
    runs: list[Run] = field(default_factory=list)
    failed: list[tuple[int, str, str]] = field(default_factory=list)
    expected: set[int] = field(default_factory=set)

    @property
    def algo(self) -> str:
        """:return: the benchmark algorithm name (the label without its overrides hash)"""
        return self.label.split("+", 1)[0]

    @property
    def suffix(self) -> str:
        """:return: the overrides hash part of the label (with its ``+``), or ``""``"""
        return self.label[len(self.algo) :]

    @property
    def finals(self) -> np.ndarray:
        """:return: the final scores"""
        return np.array([run.final for run in self.runs], dtype=float)

    @property
    def seeds(self) -> set[int]:
        """:return: the seeds of the finished runs"""
        return {run.seed for run in self.runs}

    @property
    def missing(self) -> list[int]:
        """:return: expected seeds with neither a finished nor a failed run"""
        return sorted(self.expected - self.seeds - {seed for seed, _, _ in self.failed})

    @property
    def speed(self) -> float | None:
        """:return: mean steps/s of the runs"""
        speeds = [run.steps_per_s for run in self.runs if run.steps_per_s]
        return float(np.mean(speeds)) if speeds else None

    @property
    def stale_count(self) -> int:
        """:return: number of stale runs"""
        return sum(bool(run.stale) for run in self.runs)


def parse_run_id(run_id: str) -> tuple[str, str, int, int]:
    """
    :param run_id: ``<env>/<label>/t<timesteps>/seed<seed>`` (the env id may contain ``/``)
    :return: (env, label, timesteps, seed)
    """
    parts = run_id.split("/")
    return "/".join(parts[:-3]), parts[-3], int(parts[-2][1:]), int(parts[-1][4:])


def family(algo: str) -> str | None:
    """
    :param algo: a benchmark algorithm name
    :return: ``ppo`` or ``trpo``: the reference it is compared with (itself for a reference), ``None`` if unknown
    """
    if algo not in ALGOS:
        return None
    return ALGOS[algo].reference or ALGOS[algo].name


def _order(label: str) -> tuple[bool, int, str]:
    """:return: the sort key of a label: references first, then in ``ALGOS`` order"""
    names = list(ALGOS)
    algo = label.split("+", 1)[0]
    return (not _is_reference(label), names.index(algo) if algo in names else len(names), label)


def _env_order(envs: Sequence[str]) -> list[str]:
    known = list(dict.fromkeys(env for suite in SUITES.values() for env in suite.envs))
    return sorted(envs, key=lambda env: (known.index(env) if env in known else len(known), env))


@dataclass
class Results:
    """
    Everything the report shows, read from a results directory.

    :param groups: (env, label, timesteps) -> group
    :param manifests: the sweep manifests
    :param records: number of result files read
    :param versions: distinct version sets of the finished runs, with their counts
    :param hosts: hosts of the finished runs, with their counts
    :param excluded: stale runs left out of the statistics (``exclude_stale``)
    """

    groups: dict[tuple[str, str, int], Group]
    manifests: list[dict[str, Any]]
    records: int
    versions: dict[str, int]
    hosts: dict[str, int]
    excluded: list[Run] = field(default_factory=list)

    def envs(self) -> list[str]:
        """:return: the envs, in suite order"""
        return _env_order(list({key[0] for key in self.groups}))

    def at(self, env: str) -> list[Group]:
        """
        :param env: env id
        :return: its groups, references first
        """
        groups = [group for key, group in self.groups.items() if key[0] == env]
        return sorted(groups, key=lambda group: (*_order(group.label), group.timesteps))

    def main_group(self, env: str, label: str) -> Group | None:
        """
        :param env: env id
        :param label: a label
        :return: its group with the most finished runs (ties: the largest budget), ``None`` without finished runs
        """
        groups = [group for key, group in self.groups.items() if key[:2] == (env, label) and group.runs]
        return max(groups, key=lambda group: (len(group.runs), group.timesteps), default=None)

    def reference_of(self, group: Group) -> Group | None:
        """
        :param group: a group of ours
        :return: the group of its reference on the env (``suites.reference_for``: the algorithm's, or the env's
            override) at the same env and budget (same overrides if it has them), if it has runs
        """
        reference = reference_for(group.algo, group.env)
        return None if reference is None else self.counterpart(group, reference)

    def counterpart(self, group: Group, algo: str) -> Group | None:
        """
        :param group: a group
        :param algo: another benchmark algorithm name
        :return: that algorithm's group at the same env and budget (same overrides if it has them), if it has runs
        """
        for label in (algo + group.suffix, algo):
            candidate = self.groups.get((group.env, label, group.timesteps))
            if candidate is not None and candidate.runs:
                return candidate
        return None


def load_results(results_dir: str | Path, exclude_stale: bool = False, current: CurrentState | None = None) -> Results:
    """
    :param results_dir: the results directory
    :param exclude_stale: leave stale runs out of the statistics (they are still listed)
    :param current: the current state to check staleness against (default: this checkout)
    :return: the results
    """
    current = current or CurrentState()
    groups: dict[tuple[str, str, int], Group] = {}
    versions: dict[str, int] = defaultdict(int)
    hosts: dict[str, int] = defaultdict(int)
    count = 0
    stale_excluded: list[Run] = []

    def group_of(env: str, label: str, timesteps: int) -> Group:
        return groups.setdefault((env, label, timesteps), Group(env, label, timesteps))

    for path, record in iter_records(results_dir):
        count += 1
        run = record["run"]
        group = group_of(run["env"], run["label"], int(run["timesteps"]))
        seed = int(run["seed"])
        if not is_finished(record):
            error = record.get("error", {})
            message = str(error.get("message", "")).strip().splitlines()
            group.failed.append((seed, f"{error.get('type', '?')}: {message[-1] if message else ''}", str(path)))
            continue
        curve = record.get("curve") or [record["final"]]
        entry = Run(
            run_id=record.get("run_id", ""),
            seed=seed,
            final=float(record["final"]["mean"]),
            steps_per_s=record.get("timing", {}).get("steps_per_s"),
            curve_t=np.array([point["timesteps"] for point in curve], dtype=float),
            curve_mean=np.array([point["mean"] for point in curve], dtype=float),
            host=machine(record),
            stale=staleness(record, current),
            last_100=(record.get("training_episodes") or {}).get("last_100_mean"),
            resumed=len(record.get("resumed") or []),
        )
        if exclude_stale and entry.stale:
            stale_excluded.append(entry)
            continue
        group.runs.append(entry)
        versions[", ".join(f"{key} {value}" for key, value in sorted(record.get("versions", {}).items()))] += 1
        hosts[f"{entry.host} ({record.get('host', {}).get('cpu', '?')})"] += 1
    for manifest in load_manifests(results_dir):
        for run_id in manifest.get("expected", []):
            env, label, timesteps, seed = parse_run_id(run_id)
            group_of(env, label, timesteps).expected.add(seed)
    return Results(
        groups=groups,
        manifests=load_manifests(results_dir),
        records=count,
        versions=versions,
        hosts=hosts,
        excluded=stale_excluded,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------------------------


def permutation_test(a: Sequence[float], b: Sequence[float], resamples: int = PERMUTATIONS, seed: int = 0) -> float:
    """
    Two-sided permutation test of the difference of the means.

    :param a: one sample
    :param b: the other
    :param resamples: exact over all splits if there are at most this many, else this many random permutations
    :param seed: seed of the random permutations
    :return: the p-value
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    pooled = np.concatenate([x, y])
    n, total = len(x), len(x) + len(y)
    observed = abs(x.mean() - y.mean())
    tolerance = 1e-9 * max(1.0, float(np.abs(pooled).max()))
    if math.comb(total, n) <= resamples:
        index = np.array(list(itertools.combinations(range(total), n)))
        sums = pooled[index].sum(axis=1)
        diffs = np.abs(sums / n - (pooled.sum() - sums) / (total - n))
        return float(np.mean(diffs >= observed - tolerance))
    rng = np.random.default_rng(seed)
    count = 0
    for _ in range(resamples):
        permuted = rng.permutation(pooled)
        count += abs(permuted[:n].mean() - permuted[n:].mean()) >= observed - tolerance
    return (count + 1) / (resamples + 1)


def verdict(ours: Group, reference: Group | None) -> tuple[str, float | None]:
    """
    :param ours: our group
    :param reference: the reference group
    :return: (verdict, p-value) by ``RULE``
    """
    if reference is None:
        return "no reference runs", None
    if len(ours.runs) < MIN_RUNS or len(reference.runs) < MIN_RUNS:
        return f"n/a (< {MIN_RUNS} runs)", None
    p = permutation_test(ours.finals, reference.finals)
    if p >= ALPHA:
        return "matches", p
    return ("better" if ours.finals.mean() > reference.finals.mean() else "worse"), p


@contextlib.contextmanager
def _numpy_global_seed(seed: int) -> Iterator[None]:
    """
    Seed NumPy's global random state for a block, then restore it. rliable 1.2 draws its bootstrap indices from
    ``np.random`` and ignores the ``random_state`` it is given, so without this the report's CIs change from run to run.

    :param seed: the seed
    """
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def iqm_intervals(groups: list[Group], reps: int, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """
    IQM of each group's final scores with a 95% (stratified, here single-task) bootstrap CI, by rliable.

    :param groups: the groups (of one env)
    :param reps: bootstrap resamples
    :param seed: seed of the bootstrap
    :return: label -> (IQM, low, high); groups with fewer than 2 runs get NaN bounds
    """
    from rliable import library as rly
    from rliable import metrics

    out: dict[str, tuple[float, float, float]] = {}
    scores = {}
    for group in groups:
        if len(group.runs) >= 2:
            scores[group.label] = group.finals.reshape(-1, 1)
        elif group.runs:
            out[group.label] = (float(group.finals[0]), math.nan, math.nan)
    if scores:
        with _numpy_global_seed(seed):
            points, intervals = rly.get_interval_estimates(
                scores,
                lambda x: np.array([metrics.aggregate_iqm(x)]),
                reps=reps,
                random_state=np.random.RandomState(seed),
            )
        for label in scores:
            out[label] = (float(points[label][0]), float(intervals[label][0, 0]), float(intervals[label][1, 0]))
    return out


def curve_band(group: Group, points: int = CURVE_POINTS, reps: int = 1000, seed: int = 0) -> tuple[np.ndarray, ...]:
    """
    :param group: a group with runs
    :param points: grid size
    :param reps: bootstrap resamples of the runs
    :param seed: seed of the bootstrap
    :return: (timesteps grid, mean over runs, low, high): each run's curve is interpolated on the grid; the band is a
        95% percentile-bootstrap CI of the mean over runs (equal to the mean with one run)
    """
    end = float(np.median([run.curve_t[-1] for run in group.runs]))
    grid = np.linspace(0.0, end, points)
    curves = np.array([np.interp(grid, run.curve_t, run.curve_mean) for run in group.runs])
    mean = curves.mean(axis=0)
    if len(curves) < 2:
        return grid, mean, mean, mean
    rng = np.random.default_rng(seed)
    boot = curves[rng.integers(0, len(curves), size=(reps, len(curves)))].mean(axis=1)
    return grid, mean, np.percentile(boot, 2.5, axis=0), np.percentile(boot, 97.5, axis=0)


# ----------------------------------------------------------------------------------------------------------------------
# Aggregates across envs
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Aggregate:
    """
    Normalised final scores of the algorithms that have runs on every env of a group of envs.

    :param name: the group's name (a suite)
    :param envs: its envs with data
    :param scores: label -> array (runs, envs) of normalised scores (the first ``runs`` seeds of each env)
    :param excluded: labels left out, with the reason
    """

    name: str
    envs: list[str]
    scores: dict[str, np.ndarray]
    excluded: dict[str, str]


def _normalised_matrix(envs: list[str], per_env: list[list[Run]], score: Callable[[Run], float]) -> np.ndarray:
    """Normalised scores as rliable wants them, runs x envs, the same number of runs per env (the lowest seeds)."""
    runs = min(len(env_runs) for env_runs in per_env)
    chosen = [sorted(env_runs, key=lambda run: run.seed)[:runs] for env_runs in per_env]
    return np.array(
        [[refs.normalise(env, score(run)) for run in env_runs] for env, env_runs in zip(envs, chosen, strict=True)],
        dtype=float,
    ).T


def aggregates(results: Results) -> list[Aggregate]:
    """
    :param results: the results
    :return: one aggregate per suite with data (a suite whose envs with data are those of another suite, or a subset
        of them, is left out)
    """
    found = []
    for suite in SUITES.values():
        envs = [env for env in suite.envs if refs.normalisation_anchors(env) is not None]
        labels = sorted({key[1] for key in results.groups if key[0] in envs}, key=_order)
        envs = [env for env in envs if any(results.main_group(env, label) for label in labels)]
        if not envs:
            continue
        scores, excluded = {}, {}
        for label in labels:
            groups = [results.main_group(env, label) for env in envs]
            if any(group is None for group in groups):
                missing = [env for env, group in zip(envs, groups, strict=True) if group is None]
                excluded[label] = f"no finished runs on {', '.join(missing)}"
                continue
            per_env = [group.runs for group in groups if group is not None]
            scores[label] = _normalised_matrix(envs, per_env, lambda run: run.final)
        found.append(Aggregate(suite.name, envs, scores, excluded))
    kept = []
    for aggregate in found:
        if any(
            set(aggregate.envs) <= set(other.envs)
            and other is not aggregate
            and (set(aggregate.envs) < set(other.envs) or found.index(other) < found.index(aggregate))
            for other in found
        ):
            continue
        kept.append(aggregate)
    return kept


def aggregate_intervals(aggregate: Aggregate, reps: int, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """
    :param aggregate: an aggregate
    :param reps: bootstrap resamples
    :param seed: seed of the bootstrap
    :return: rliable's (point estimates, 95% stratified-bootstrap intervals) of [IQM, optimality gap] per label
    """
    from rliable import library as rly
    from rliable import metrics

    with _numpy_global_seed(seed):
        return rly.get_interval_estimates(
            aggregate.scores,
            lambda x: np.array([metrics.aggregate_iqm(x), metrics.aggregate_optimality_gap(x, 1.0)]),
            reps=reps,
            random_state=np.random.RandomState(seed),
        )


# ----------------------------------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------------------------------


def _runs(count: int) -> str:
    return f"{count} run{'s' if count != 1 else ''}"


def _colors(labels: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    palette = matplotlib.colormaps["tab10"].colors
    return {label: palette[i % len(palette)] for i, label in enumerate(sorted(labels, key=_order))}


def _is_reference(label: str) -> bool:
    algo = ALGOS.get(label.split("+", 1)[0])
    return algo is not None and algo.is_reference


def plot_curves(results: Results, env: str, path: Path, colors: dict[str, Any]) -> bool:
    """
    Learning curves of one env: mean deterministic evaluation return over runs, with a 95% bootstrap CI band;
    references dashed; the published RL Zoo numbers as dotted lines.

    :param results: the results
    :param env: env id
    :param path: the PNG to write
    :param colors: label -> color
    :return: whether a plot was written (``False`` without finished runs)
    """
    import matplotlib.pyplot as plt

    groups = [group for group in results.at(env) if group.runs]
    if not groups:
        return False
    several_budgets = len({group.timesteps for group in groups}) > 1
    fig, ax = plt.subplots(figsize=(8, 5))
    for group in groups:
        grid, mean, low, high = curve_band(group)
        name = f"{group.label} ({_runs(len(group.runs))}{', ' + str(group.timesteps) + ' steps' if several_budgets else ''})"
        style = "--" if _is_reference(group.label) else "-"
        ax.plot(grid, mean, style, color=colors.get(group.label), label=name, linewidth=2 if style == "--" else 1.5)
        ax.fill_between(grid, low, high, color=colors.get(group.label), alpha=0.15)
    for fam in ("ppo", "trpo"):
        score = refs.primary(env, fam)
        if score is not None:
            ax.axhline(
                score.mean,
                linestyle=":",
                color=colors.get(fam, "grey"),
                alpha=0.7,
                label=f"published {fam}: {score.describe()}",
            )
    ax.set_title(f"{env}: deterministic evaluation return (mean over runs, 95% bootstrap CI)")
    ax.set_xlabel("training timesteps")
    ax.set_ylabel("return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_aggregate(
    aggregate: Aggregate, points: dict[str, np.ndarray], intervals: dict[str, np.ndarray], path: Path, colors: dict[str, Any]
) -> None:
    """
    rliable's interval-estimate plot of IQM and optimality gap of the normalised scores.

    :param aggregate: the aggregate
    :param points: point estimates
    :param intervals: intervals
    :param path: the PNG to write
    :param colors: label -> color
    """
    import matplotlib.pyplot as plt
    from rliable import plot_utils

    labels = sorted(aggregate.scores, key=_order)
    fig, axes = plot_utils.plot_interval_estimates(
        points,
        intervals,
        metric_names=["IQM", "Optimality gap"],
        algorithms=labels,
        colors={label: colors[label] for label in labels},
        xlabel="",
        subfigure_width=4.5,
        row_height=0.55,
    )
    for ax in np.atleast_1d(axes):
        ax.set_xlabel("normalised score", fontsize="large")
    # above the subplot titles (the figure is only row_height inches per algorithm high)
    fig.suptitle(
        f"{aggregate.name}: {', '.join(aggregate.envs)} (95% stratified-bootstrap CIs)",
        fontsize="large",
        y=1.0 + 0.45 / fig.get_figheight(),
    )
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_profile(aggregate: Aggregate, path: Path, colors: dict[str, Any], reps: int) -> None:
    """
    rliable's performance profile (fraction of runs with a normalised score above τ, with 95% CI bands).

    :param aggregate: the aggregate
    :param path: the PNG to write
    :param colors: label -> color
    :param reps: bootstrap resamples
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from rliable import library as rly
    from rliable import plot_utils

    values = np.concatenate([scores.ravel() for scores in aggregate.scores.values()])
    low, high = min(0.0, float(values.min())), max(1.25, float(values.max()))
    tau = np.linspace(low - 0.02 * (high - low), high, 81)  # start below the lowest score: every profile starts at 1
    with _numpy_global_seed(0):
        profiles, cis = rly.create_performance_profile(aggregate.scores, tau, reps=reps)
    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {label: "--" if _is_reference(label) else "-" for label in aggregate.scores}
    plot_utils.plot_performance_profiles(
        profiles,
        tau,
        performance_profile_cis=cis,
        colors={label: colors[label] for label in aggregate.scores},
        linestyles=styles,
        xlabel=r"normalised score $\tau$",
        ax=ax,
    )
    ax.set_title(f"Performance profile, {aggregate.name} ({', '.join(aggregate.envs)})", fontsize="medium")
    handles = [Line2D([0], [0], color=colors[label], linestyle=styles[label], linewidth=2) for label in profiles]
    ax.legend(handles, list(profiles), fontsize="small", loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _num(value: float | None, digits: int = 1) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:,.{digits}f}"


def _steps(steps: int) -> str:
    if steps >= 1_000_000 and steps % 100_000 == 0:
        return f"{steps / 1_000_000:g}M"
    if steps >= 1000 and steps % 1000 == 0:
        return f"{steps // 1000}k"
    return str(steps)


def _interval(point: np.ndarray, interval: np.ndarray, index: int) -> str:
    return f"{_num(float(point[index]), 2)} [{_num(float(interval[0, index]), 2)}, {_num(float(interval[1, index]), 2)}]"


def _seeds(seeds: Sequence[int]) -> str:
    return ", ".join(str(seed) for seed in sorted(seeds))


@dataclass
class Report:
    """
    :param markdown: the text of RESULTS.md
    :param plots: the plot files written
    """

    markdown: str
    plots: list[Path]


def _row(results: Results, group: Group, iqm: dict[str, tuple[float, float, float]]) -> list[str]:
    finals = group.finals
    runs = f"{len(group.runs)}/{len(group.expected | group.seeds)}"
    extras = []
    if group.failed:
        extras.append(f"{len(group.failed)} failed")
    if group.stale_count:
        extras.append(f"{group.stale_count} stale")
    if extras:
        runs += f" ({', '.join(extras)})"
    score = f"{_num(finals.mean())} ± {_num(finals.std())}" if len(finals) else "–"
    point, low, high = iqm.get(group.label, (math.nan, math.nan, math.nan))
    iqm_text = (
        "–" if not math.isfinite(point) else _num(point) + (f" [{_num(low)}, {_num(high)}]" if math.isfinite(low) else "")
    )
    fam = family(group.algo)
    published = refs.primary(group.env, fam) if fam else None
    reference = results.reference_of(group)
    ratio = speed_ratio(group, reference) or "–"
    if ALGOS.get(group.algo) is not None and ALGOS[group.algo].is_reference:
        decision, p = "reference", None
        ratio = "1.00×" if group.speed else "–"
    elif not group.runs:
        decision, p = "no runs", None
    else:
        decision, p = verdict(group, reference)
    label = f"**{group.label}**" if not _is_reference(group.label) else group.label
    return [
        label,
        _steps(group.timesteps),
        runs,
        score,
        iqm_text,
        published.describe() if published else "–",
        _num(group.speed, 0),
        ratio,
        decision + (f" (p = {p:.3f})" if p is not None else ""),
    ]


def machine(record: dict[str, Any]) -> str:
    """
    :param record: a result record
    :return: the machine it ran on: host name and platform (one host name can stand for several virtual machines,
        whose platform strings differ, and whose speeds do too)
    """
    host = record.get("host", {})
    return " ".join(part for part in (host.get("hostname", "?"), host.get("platform")) if part)


def speed_ratio(group: "Group", reference: "Group | None", label: str = "") -> str | None:
    """
    :param group: runs of ours
    :param reference: the reference's runs
    :param label: written after the ratio (``" speed"``: ``"1.23× speed"``)
    :return: the ratio of their mean speeds (``"1.23×"``), flagged ``(other hosts)`` unless both ran on the same
        machines (then the load may differ too, but not the machine); ``None`` without speeds
    """
    if reference is None or not group.speed or not reference.speed:
        return None
    ratio = f"{group.speed / reference.speed:.2f}×{label}"
    if {run.host for run in group.runs} != {run.host for run in reference.runs}:
        ratio += " (other hosts)"
    return ratio


def _env_section(results: Results, env: str, reps: int, plot: str | None) -> str:
    groups = results.at(env)
    iqm = iqm_intervals([group for group in groups if group.runs], reps)
    headers = [
        "algorithm",
        "budget",
        "runs",
        "final return (mean ± std)",
        "IQM [95% CI]",
        "published",
        "steps/s",
        "speed vs ref",
        "verdict vs ref",
    ]
    lines = [f"### {env}", ""]
    if plot:
        lines += [f"Learning curves: [{Path(plot).name}]({plot})", ""]
    lines += [_table(headers, [_row(results, group, iqm) for group in groups]), ""]
    lines.append(f"*Env caveat:* {refs.ENV_CAVEATS.get(env, 'no published reference for this env')}.")
    others = [score for score in refs.published(env)]
    if others:
        lines.append(
            "*Published:* "
            + "; ".join(
                f"{score.family.upper()} {score.describe()}" + (f" — {score.note}" if score.note else "") for score in others
            )
            + "."
        )
    lines.append("")
    return "\n".join(lines)


def _env_table(results: Results, references: bool, cell: Callable[[Group], str], empty: str) -> str:
    """
    :param results: the results
    :param references: include the reference implementations' columns
    :param cell: the text of a cell, from the main group of an (env, label)
    :param empty: the text when there is no column
    :return: an env × label table (labels in report order)
    """
    labels = sorted(
        {key[1] for key, group in results.groups.items() if group.runs and (references or not _is_reference(key[1]))},
        key=_order,
    )
    if not labels:
        return empty
    rows = []
    for env in results.envs():
        groups = [results.main_group(env, label) for label in labels]
        rows.append([env, *("–" if group is None else cell(group) for group in groups)])
    return _table(["env", *labels], rows) + "\n"


def _summary(results: Results) -> str:
    def cell(group: Group) -> str:
        reference = results.reference_of(group)
        decision, _ = verdict(group, reference)
        ratio = speed_ratio(group, reference, " speed")
        return f"{decision}; {_runs(len(group.runs))}" + (f", {ratio}" if ratio else "")

    return _env_table(results, False, cell, "No finished runs of our algorithms yet.\n")


def _returns_summary(results: Results) -> str:
    """:return: env × algorithm table of final returns, references first, with the verdicts (the README's table)"""

    def cell(group: Group) -> str:
        text = f"{_num(float(group.finals.mean()))} ± {_num(float(group.finals.std()))} ({_runs(len(group.runs))}"
        if not _is_reference(group.label):
            decision, p = verdict(group, results.reference_of(group))
            text += f"; {decision}" + (f", p = {p:.3f}" if p is not None else "")
        return text + ")"

    return _env_table(results, True, cell, "No finished runs yet.\n")


def _comparison(group: Group, other: Group | None) -> tuple[str, str, str]:
    """:return: the other side's mean final return, the difference of the means (ours − other), and the verdict"""
    if other is None:
        return "–", "–", "no runs to compare with"
    decision, p = verdict(group, other)
    difference = float(group.finals.mean() - other.finals.mean())
    return (
        f"{_num(float(other.finals.mean()))} ({_runs(len(other.runs))})",
        f"{difference:+.1f}",
        decision + (f" (p = {p:.3f})" if p is not None else ""),
    )


def _variants_section(results: Results) -> str:
    """
    :return: the variants table: each variant of ours (``BenchAlgo.variant_of``) per env, at its main budget, against
        the algorithm it is a variant of (PPO-clip, ours) and against its reference (SB3 PPO), with a list of where it
        is significantly worse
    """
    labels = sorted(
        {
            key[1]
            for key, group in results.groups.items()
            if group.runs and ALGOS.get(group.algo) is not None and ALGOS[group.algo].variant_of is not None
        },
        key=_order,
    )
    if not labels:
        return "No finished runs of the variants yet (`python -m benchmarks run --suite variants`).\n"
    rows: list[list[str]] = []
    worse: list[str] = []
    better: list[str] = []
    for env in results.envs():
        for label in labels:
            group = results.main_group(env, label)
            if group is None:
                continue
            base = ALGOS[group.algo].variant_of
            assert base is not None
            reference = reference_for(group.algo, env)
            cells = [env, f"**{label}**", _steps(group.timesteps), str(len(group.runs))]
            cells.append(f"{_num(float(group.finals.mean()))} ± {_num(float(group.finals.std()))}")
            for name, other in ((base, results.counterpart(group, base)), (reference, results.reference_of(group))):
                mean, difference, decision = _comparison(group, other)
                cells += [mean, difference, decision]
                for word, found in (("worse", worse), ("better", better)):
                    if decision.startswith(word):
                        found.append(f"{label} on {env} vs {name} ({decision})")
            rows.append(cells)
    headers = ["env", "variant", "budget", "runs", "final return (mean ± std)"]
    headers += ["PPO-clip (ours): mean", "Δ", "verdict vs PPO-clip (ours)", "SB3 PPO: mean", "Δ", "verdict vs SB3 PPO"]
    lines = [
        "Each variant against `trust_ppo` (PPO-clip, our implementation, the same zoo hyperparameters) and against `ppo` "
        "(SB3 PPO, the reference), at the same env and budget; Δ = the variant's mean final return minus the other's. "
        f"Same verdict rule as above (at least {MIN_RUNS} runs per side: with 3 seeds, a variant gets *n/a*).",
        "",
        _table(headers, rows),
        "",
        "**Significantly worse:** " + ("; ".join(worse) if worse else "nowhere (among the comparisons with a verdict)") + ".",
        "",
        "**Significantly better:** " + ("; ".join(better) if better else "nowhere") + ".",
        "",
    ]
    return "\n".join(lines)


def _aggregate_section(
    aggregate: Aggregate, points: dict[str, np.ndarray], intervals: dict[str, np.ndarray], plots: dict[str, str]
) -> str:
    lines = [f"### {aggregate.name}: {', '.join(aggregate.envs)}", ""]
    links = [f"[{name}]({path})" for name, path in plots.items()]
    if links:
        lines += ["Plots: " + " · ".join(links), ""]
    rows = []
    for label in sorted(aggregate.scores, key=_order):
        point, interval = points[label], intervals[label]
        rows.append(
            [
                label,
                aggregate.scores[label].shape[0],
                f"{_num(float(aggregate.scores[label].mean()), 2)}",
                _interval(point, interval, 0),
                _interval(point, interval, 1),
            ]
        )
    lines.append(_table(["algorithm", "runs per env", "mean normalised", "IQM [95% CI]", "optimality gap [95% CI]"], rows))
    for label, reason in aggregate.excluded.items():
        lines.append(f"\n*Left out:* {label} ({reason}).")
    lines.append("")
    return "\n".join(lines)


def _ppo_paper_section(results: Results, reps: int) -> str:
    def scored(env: str, label: str) -> list[Run]:
        group = results.main_group(env, label)
        return [run for run in group.runs if run.last_100 is not None] if group else []

    envs = [env for env in SUITES["mujoco"].envs if all(scored(env, label) for label in PPO_PAPER_ORDER)]
    lines = [
        "PPO paper Table 1 (average normalised score over 7 MuJoCo tasks, random = 0, best setting = 1) ranks "
        "clipping ε = 0.2 > adaptive KL > fixed KL > no clipping. Here: the same four variants on the mujoco suite's envs "
        "with our normalisation (random = 0, best RL Zoo score = 1) and the zoo's tuned PPO-clip hyperparameters "
        "for all four (the paper also kept one set of hyperparameters; note the zoo's clip range is 0.1 on "
        "HalfCheetah and Walker2d). The score is the paper's: the mean return of the last 100 training episodes of "
        "each run (stochastic policy, raw rewards); the final deterministic evaluation is shown beside it.",
        "",
    ]
    if not envs:
        lines.append(
            "*No data yet:* needs finished runs of " + ", ".join(PPO_PAPER_ORDER) + " on at least one mujoco env, "
            "with their training episodes recorded.\n"
        )
        return "\n".join(lines)
    aggregate = Aggregate("mujoco", envs, {}, {})
    final_means = {}
    for label in PPO_PAPER_ORDER:
        per_env = [scored(env, label) for env in envs]
        aggregate.scores[label] = _normalised_matrix(envs, per_env, lambda run: run.last_100)
        final_means[label] = float(_normalised_matrix(envs, per_env, lambda run: run.final).mean())
    points, intervals = aggregate_intervals(aggregate, reps)
    means = {label: float(scores.mean()) for label, scores in aggregate.scores.items()}
    observed = sorted(PPO_PAPER_ORDER, key=lambda label: -means[label])
    by_final = sorted(PPO_PAPER_ORDER, key=lambda label: -final_means[label])
    rows = []
    for label in PPO_PAPER_ORDER:
        setting, paper = refs.PPO_PAPER_TABLE1[label]
        rows.append(
            [
                label,
                setting,
                f"{paper:.2f}",
                _num(means[label], 2),
                _interval(points[label], intervals[label], 0),
                observed.index(label) + 1,
                f"{_num(final_means[label], 2)} (rank {by_final.index(label) + 1})",
            ]
        )
    header = ["variant", "paper setting", "paper score", "mean normalised (here)", "IQM [95% CI]", "rank here"]
    lines.append(_table([*header, "final evaluation, mean normalised"], rows))
    separated = all(intervals[better][0, 0] > intervals[worse][1, 0] for better, worse in itertools.pairwise(PPO_PAPER_ORDER))
    holds = observed == list(PPO_PAPER_ORDER)
    lines += [
        "",
        f"Envs: {', '.join(envs)} ({', '.join(str(s.shape[0]) for s in aggregate.scores.values())} runs per env per variant). "
        f"**Ordering {'reproduced' if holds else 'not reproduced'}** by the mean normalised score"
        + (
            " (and every neighbouring pair's IQM CIs are disjoint)."
            if holds and separated
            else "; "
            + (
                "the IQM CIs of some neighbouring pairs overlap, so the ordering is not significant."
                if holds
                else f"observed: {' > '.join(observed)}."
            )
        )
        + f" By the final evaluation: {' > '.join(by_final)}.",
        "",
    ]
    return "\n".join(lines)


def _status_section(results: Results) -> str:
    lines = []
    if not results.manifests:
        lines.append(
            "No sweep manifests in the results directory: expected runs unknown (`python -m benchmarks run` records them)."
        )
    else:
        rows = []
        for manifest in results.manifests:
            expected = manifest.get("expected", [])
            finished = failed = stale = 0
            for run_id in expected:
                env, label, timesteps, seed = parse_run_id(run_id)
                group = results.groups.get((env, label, timesteps))
                if group is None:
                    continue
                runs = [run for run in group.runs if run.seed == seed]
                finished += bool(runs)
                stale += bool(runs and runs[0].stale)
                failed += any(failed_seed == seed for failed_seed, _, _ in group.failed)
            rows.append(
                [
                    manifest.get("name", "?"),
                    _seeds(manifest.get("seeds", [])),
                    "zoo's" if manifest.get("timesteps") is None else _steps(int(manifest["timesteps"])),
                    len(expected),
                    finished,
                    failed,
                    stale,
                    len(expected) - finished - failed,
                ]
            )
        lines.append(_table(["sweep", "seeds", "budget", "expected runs", "finished", "failed", "stale", "missing"], rows))
    resumed = sum(run.resumed > 0 for group in results.groups.values() for run in group.runs)
    if resumed:
        lines.append(
            f"\n{resumed} finished run{'s were' if resumed > 1 else ' was'} resumed from a checkpoint after its sweep had "
            "stopped (`resumed` in the result file; protocol: checkpoints of runs in progress)."
        )
    return "\n".join(lines) + "\n"


def _missing_section(results: Results) -> str:
    rows = []
    for key in sorted(results.groups, key=lambda key: (_env_order([key[0]]), *_order(key[1]), key[2])):
        group = results.groups[key]
        if group.missing:
            rows.append([group.env, group.label, _steps(group.timesteps), _seeds(group.missing)])
    rows.sort(key=lambda row: _env_order(list(results.envs())).index(row[0]) if row[0] in results.envs() else 0)
    if not rows:
        return "Nothing missing: every expected run has a result file.\n"
    return _table(["env", "algorithm", "budget", "missing seeds"], rows) + "\n"


def _failed_section(results: Results, results_dir: Path) -> str:
    rows = []
    for group in results.groups.values():
        for seed, error, path in sorted(group.failed):
            rows.append(
                [group.env, group.label, _steps(group.timesteps), seed, error[:200], os.path.relpath(path, results_dir)]
            )
    if not rows:
        return "None.\n"
    return _table(["env", "algorithm", "budget", "seed", "error", "file"], rows) + "\n"


def _stale_section(results: Results) -> str:
    rows = [[run.run_id + " (excluded)", "; ".join(run.stale)] for run in results.excluded]
    for group in results.groups.values():
        for run in group.runs:
            if run.stale:
                rows.append([run.run_id, "; ".join(run.stale)])
    if not rows:
        return "None: every finished result was produced by the current algorithm code, library versions and configs.\n"
    return _table(["run", "why stale"], sorted(rows)) + "\n"


def build_report(
    results_dir: str | Path = DEFAULT_RESULTS_DIR,
    out: str | Path = DEFAULT_OUT,
    plots_dir: str | Path | None = None,
    reps: int = 2000,
    exclude_stale: bool = False,
    links_from: str | Path | None = None,
) -> Report:
    """
    Write RESULTS.md and the plots. The page depends on the result files, the published numbers and the current code
    only (no date, no absolute path), so that regenerating it from the committed files gives the committed page.

    :param results_dir: the results directory
    :param out: the Markdown file
    :param plots_dir: where the PNGs go (default: ``plots/`` beside ``out``)
    :param reps: bootstrap resamples (rliable)
    :param exclude_stale: leave stale runs out of the statistics
    :param links_from: the directory the page's links to the protocol are relative to (default: ``out``'s; ``--check``
        writes elsewhere a page meant for ``benchmarks/``)
    :return: the report
    """
    import matplotlib

    matplotlib.use("Agg")
    with warnings.catch_warnings():
        # arch (under rliable) warns that RandomState is deprecated, which rliable passes
        warnings.filterwarnings("ignore", category=FutureWarning, module="arch")
        return _build_report(Path(results_dir), Path(out), plots_dir, reps, exclude_stale, links_from)


def repository_path(path: Path) -> str:
    """:return: ``path`` relative to the repository when inside it (the page must not depend on the checkout's place)"""
    try:
        return path.resolve().relative_to(README.parent.parent).as_posix()
    except ValueError:
        return path.as_posix()


def plots_directory(out: Path, plots_dir: str | Path | None) -> Path:
    """:return: where the page's PNGs go: ``plots_dir``, else ``plots/`` beside ``out``"""
    return Path(plots_dir) if plots_dir is not None else out.parent / "plots"


def _build_report(
    results_dir: Path, out: Path, plots_dir: str | Path | None, reps: int, exclude_stale: bool, links_from: str | Path | None
) -> Report:
    plots_path = plots_directory(out, plots_dir)
    plots_path.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = load_results(results_dir, exclude_stale=exclude_stale)
    labels = sorted({key[1] for key in results.groups}, key=_order)
    colors = _colors(labels)

    def rel(path: Path, start: str | Path = out.parent) -> str:
        return Path(os.path.relpath(path, start)).as_posix()

    written: list[Path] = []
    curve_links: dict[str, str] = {}
    for env in results.envs():
        path = plots_path / f"curves_{env.replace('/', '_')}.png"
        if plot_curves(results, env, path, colors):
            written.append(path)
            curve_links[env] = rel(path)
    aggregate_parts = []
    aggregate_links: list[str] = []
    for aggregate in aggregates(results):
        if not aggregate.scores:
            continue
        points, intervals = aggregate_intervals(aggregate, reps)
        plots = {}
        path = plots_path / f"aggregate_{aggregate.name}.png"
        plot_aggregate(aggregate, points, intervals, path, colors)
        plots["IQM and optimality gap"] = rel(path)
        path_profile = plots_path / f"profile_{aggregate.name}.png"
        plot_profile(aggregate, path_profile, colors, reps)
        plots["performance profile"] = rel(path_profile)
        written += [path, path_profile]
        aggregate_links += [f"[{aggregate.name}: {name}]({link})" for name, link in plots.items()]
        aggregate_parts.append(_aggregate_section(aggregate, points, intervals, plots))

    current = CurrentState()
    finished = sum(len(group.runs) for group in results.groups.values())
    failed = sum(len(group.failed) for group in results.groups.values())
    stale = sum(group.stale_count for group in results.groups.values()) + len(results.excluded)
    missing = sum(len(group.missing) for group in results.groups.values())
    parts = [
        "# Benchmark results",
        "",
        f"Generated by `python -m benchmarks report` from {results.records} result files in `{repository_path(results_dir)}` "
        "(do not edit: regenerate; `python -m benchmarks report --check` says whether this page is current). "
        f"Protocol: [benchmarks/README.md]({rel(README, links_from or out.parent)}).",
        "",
        f"**{finished} finished, {failed} failed, {stale} stale{' (excluded from the statistics)' if exclude_stale else ''}, "
        f"{missing} missing runs.**",
        "",
        "**Plots.** Learning curves: " + (" · ".join(f"[{env}]({link})" for env, link in curve_links.items()) or "none yet"),
        "",
        "Aggregates: " + (" · ".join(aggregate_links) or "none yet"),
        "",
        "## How to read this",
        "",
        "- **Final return**: mean return of the final deterministic evaluation of each run (separate eval env, "
        "see the README), then mean ± std over runs (seeds). **IQM**: interquartile mean over runs, with a 95% "
        "stratified-bootstrap CI (rliable).",
        "- **Verdict** (ours vs the reference implementation, TrustPPO keys vs `ppo`, TrustTRPO/NPG vs `trpo`"
        + "".join(
            f"; on {env}: vs `{new}` instead of " + " and ".join(f"`{old}`" for old in overrides if overrides[old] == new)
            for env, overrides in ENV_REFERENCES.items()
            for new in dict.fromkeys(overrides.values())
        )
        + f"): {RULE}.",
        "- **Published**: the RL Zoo number for the same library and hyperparameters (one agent; see each env's caveat "
        "and the other published numbers under its table). It is context: verdicts use our own reference runs.",
        "- **Speed**: training steps per second with torch pinned to 1 thread, evaluation time excluded; the ratio is "
        "ours / the reference's at the same env and budget (only meaningful on the same machine: flagged otherwise).",
        f"- **Normalisation** (aggregates): {refs.NORMALISATION}.",
        "- **Stale**: produced by other algorithm code (hash of `sb3_trust/**/*.py` except `sb3_trust/zoo`), another "
        "SB3 / sb3-contrib version, or another yml entry than the current ones; see the list below.",
        "",
        "## Status",
        "",
        _status_section(results),
        "## Summary: verdict per env (main budget of each algorithm)",
        "",
        _summary(results),
        "## Summary: final return per env (mean ± std over seeds; verdict against the reference, p-value)",
        "",
        _returns_summary(results),
        "## Newer PPO variants vs PPO-clip (ours) and SB3 PPO",
        "",
        _variants_section(results),
        "## Per env",
        "",
    ]
    parts += [_env_section(results, env, reps, curve_links.get(env)) for env in results.envs()] or ["No results yet.\n"]
    parts += ["## Aggregates across envs", ""]
    parts += aggregate_parts or ["No normalisable results yet.\n"]
    parts += ["## PPO paper Table 1 ordering (mujoco)", "", _ppo_paper_section(results, reps)]
    parts += ["## Missing runs", "", _missing_section(results)]
    parts += ["## Failed runs", "", _failed_section(results, results_dir)]
    parts += ["## Stale runs", "", _stale_section(results)]
    parts += [
        "## Software and machines",
        "",
        f"Current algorithm code hashes: TrustPPO `{current.code_hash('ppo')}`, TrustTRPO/NPG "
        f"`{current.code_hash('trpo')}`; installed: "
        + ", ".join(f"{key} {value}" for key, value in current.versions.items())
        + ".",
        "",
    ]
    parts += [f"- {count} runs: {versions}" for versions, count in results.versions.items()]
    parts += [""] + [f"- {count} runs on {host}" for host, count in results.hosts.items()] + [""]
    markdown = "\n".join(parts)
    out.write_text(markdown)
    return Report(markdown=markdown, plots=written)


def check_report(
    results_dir: str | Path = DEFAULT_RESULTS_DIR,
    out: str | Path = DEFAULT_OUT,
    plots_dir: str | Path | None = None,
    reps: int = 2000,
    exclude_stale: bool = False,
) -> list[str]:
    """
    Whether the committed page is what the committed result files and the current code give.

    :return: what differs (empty: the page is current): its text (a unified diff), or a plot it links that is missing
    """
    import difflib
    import tempfile

    out = Path(out)
    if not out.is_file():
        return [f"{out} does not exist"]
    committed_plots = plots_directory(out, plots_dir)
    with tempfile.TemporaryDirectory() as tmp:
        report = build_report(results_dir, Path(tmp) / out.name, Path(tmp) / "plots", reps, exclude_stale, out.parent)
    problems = list(
        difflib.unified_diff(
            out.read_text().splitlines(), report.markdown.splitlines(), f"{out} (committed)", "regenerated", lineterm=""
        )
    )
    problems += [
        f"missing plot {committed_plots / plot.name}" for plot in report.plots if not (committed_plots / plot.name).is_file()
    ]
    return problems


def main(argv: list[str] | None = None) -> None:
    """
    ``python -m benchmarks report``.

    :param argv: the arguments
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks report", description=__doc__)
    parser.add_argument("--results-dir", default=str(DEFAULT_RESULTS_DIR), help="the result files")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="the Markdown report to write")
    parser.add_argument("--plots-dir", default=None, help="where the PNGs go (default: plots/ beside --out)")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples (rliable)")
    parser.add_argument("--exclude-stale", action="store_true", help="leave stale runs out of the statistics")
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing: regenerate the page elsewhere and exit 1 if it differs from --out or a plot is missing",
    )
    args = parser.parse_args(argv)
    if not Path(args.results_dir).is_dir():
        parser.exit(2, f"{parser.prog}: error: no results directory {args.results_dir}\n")
    if args.check:
        problems = check_report(args.results_dir, args.out, args.plots_dir, reps=args.reps, exclude_stale=args.exclude_stale)
        if problems:
            parser.exit(1, "\n".join(problems) + "\nRegenerate it: python -m benchmarks report, and commit the page.\n")
        print(f"{args.out} is current: regenerating it from {args.results_dir} gives the same page")
        return
    report = build_report(args.results_dir, args.out, args.plots_dir, reps=args.reps, exclude_stale=args.exclude_stale)
    print(f"wrote {args.out} and {len(report.plots)} plots")
