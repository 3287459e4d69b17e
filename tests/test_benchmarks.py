"""
Tests of the benchmark infrastructure (benchmarks/runner.py, backends.py, report.py, suites.py): planning and bad
input, tiny runs through the local and Ray backends, failures, resume after a killed sweep, and the report built from
synthetic result files.
"""

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks import reference_scores as refs
from benchmarks import runner
from benchmarks.report import build_report, check_report, permutation_test, repository_path, verdict
from benchmarks.report import main as report_main
from benchmarks.runner import (
    RunSpec,
    build_plan,
    collect_versions,
    is_finished,
    jsonable,
    load_record,
    parse_hyperparams,
    parse_seeds,
    save_record,
    select_runs,
)
from benchmarks.suites import ALGOS, SUITES, BenchmarkInputError, get_algo, yml_entry
from benchmarks.sweep import main

REPO = Path(__file__).resolve().parent.parent
# Tiny runs: CartPole-v1's zoo PPO rollout is 8 envs x 32 steps = 256 steps
TINY = ["--timesteps", "512", "--eval-freq", "256", "--eval-episodes", "2", "--final-eval-episodes", "3"]


def _record(path: Path) -> dict:
    record = load_record(path)
    assert record is not None, path
    return record


# ----------------------------------------------------------------------------------------------------------------------
# Planning and bad input
# ----------------------------------------------------------------------------------------------------------------------


def test_suites_and_plan():
    plan = build_plan(suite="quick", seeds=[0, 1], check=False)
    assert len(plan.specs) == 2 * len(SUITES["quick"].envs) * len(SUITES["quick"].algos)
    assert {spec.algo for spec in plan.specs} == {
        "ppo",
        "trpo",
        *("trust_ppo", "trust_ppo_kl", "trust_ppo_kl_fixed"),
        "trust_trpo",
        "trust_npg",
    }
    spec = next(spec for spec in plan.specs if spec.algo == "trpo" and spec.env == "CartPole-v1" and spec.seed == 1)
    assert spec.timesteps == 100_000  # the zoo's budget
    assert spec.run_id == "CartPole-v1/trpo/t100000/seed1"
    assert spec.eval_seed == 10_001 and spec.eval_freq == 5000

    mujoco = build_plan(suite="mujoco", seeds=[0], check=False)
    unclipped = [spec for spec in mujoco.specs if spec.algo == "trust_ppo_unclipped"]
    assert len(unclipped) == 4 and all(spec.zoo_key == "trust_ppo" for spec in unclipped)
    assert all(
        spec.hyperparams == {"policy_loss": "unclipped"} and spec.entry["policy_loss"] == "unclipped" for spec in unclipped
    )
    assert all(spec.timesteps == 1_000_000 for spec in mujoco.specs)
    assert {"ppo", "trpo", "trust_ppo", "trust_ppo_kl", "trust_ppo_kl_fixed", "trust_trpo"} <= {s.algo for s in mujoco.specs}

    # Filters narrow what runs, not what the sweep expects; overrides change the label
    filtered = build_plan(suite="quick", envs=["Pendulum-v1"], algos=["ppo"], seeds=[0, 1, 2], timesteps=3000, check=False)
    assert [spec.run_id for spec in filtered.specs] == [f"Pendulum-v1/ppo/t3000/seed{seed}" for seed in range(3)]
    assert len(filtered.expected) == 3 * len(SUITES["quick"].envs) * len(SUITES["quick"].algos)
    assert filtered.manifest_name == "quick-t3000"
    custom = build_plan(envs=["CartPole-v1"], algos=["trust_ppo"], cli_hyperparams=["n_epochs:4"], check=False)
    assert custom.specs[0].label.startswith("trust_ppo+") and custom.specs[0].hyperparams == {"n_epochs": 4}
    assert custom.manifest_name.startswith("custom+")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(suite="nope"), "valid suites: quick, classic, mujoco"),
        (dict(suite="quick", envs=["Hopper-v4"]), "its envs: CartPole-v1, Pendulum-v1"),
        (dict(suite="quick", algos=["trust_ppo_unclipped"]), "its algorithms: ppo, trpo"),
        (dict(envs=["CartPole-v1"], algos=["ppo2"]), "valid algorithms: ppo, trpo, trust_ppo"),
        (dict(envs=["NoSuchEnv-v0"], algos=["ppo"]), "not registered in gymnasium"),
        (dict(envs=["MountainCar-v0"], algos=["trust_ppo"]), "valid envs: Acrobot-v1, BipedalWalker-v3, CartPole-v1"),
        (dict(envs=["CartPole-v1"]), "give --suite"),
        (dict(suite="quick", timesteps=0), "--timesteps must be >= 1"),
        (dict(suite="nope"), "valid suites: quick, classic, mujoco, projections, variants, variants_mujoco, masked, extra"),
        (dict(suite="masked", envs=["CartPole-v1"]), "its envs: SB3TrustMaskedChoice-v0"),
        (dict(suite="masked", algos=["ppo"]), "its algorithms: ppo_mask, trust_ppo, trust_trpo"),
        (dict(envs=["SB3TrustMaskedChoice-v0"], algos=["ppo"]), "valid envs: Acrobot-v1"),
        (dict(envs=["MiniGrid-DoorKey-5x5-v0"], algos=["trpo"]), "unknown env 'MiniGrid-DoorKey-5x5-v0' for trpo"),
        (dict(envs=["CartPole-v1"], algos=["ppo_masked"]), "valid algorithms: ppo, trpo, trust_ppo"),
        (
            dict(suite="extra", envs=["MiniGrid-DoorKey-5x5-v0"], algos=["trpo", "trust_trpo"]),
            "does not run: trpo on MiniGrid-DoorKey-5x5-v0, trust_trpo on MiniGrid-DoorKey-5x5-v0",
        ),
    ],
)
def test_bad_input_fails_fast(kwargs, message):
    with pytest.raises(BenchmarkInputError, match=message.replace("(", r"\(").replace("+", r"\+")):
        build_plan(check=False, **kwargs)


def test_bad_input_cli(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["--suite", "bogus", "--results-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "valid suites: quick, classic, mujoco" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--suite", "quick", "--seeds", "x", "--results-dir", str(tmp_path)])
    assert "--seeds 'x'" in capsys.readouterr().err
    for minutes in ("-1", "nan"):
        with pytest.raises(SystemExit) as exit_info:
            main(["--suite", "quick", "--checkpoint-minutes", minutes, "--results-dir", str(tmp_path)])
        assert exit_info.value.code == 2
        assert f"--checkpoint-minutes must be >= 0 (0: no checkpoints), got {float(minutes)}" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_parsers():
    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("0,4,2") == [0, 2, 4]
    assert parse_seeds("5-7") == [5, 6, 7]
    for bad in ("0", "-1", "a", "1-x"):
        with pytest.raises(BenchmarkInputError):
            parse_seeds(bad)
    assert parse_hyperparams(["policy_loss:unclipped", "learning_rate:1e-3", "clip_range_vf:None", "net:dict(a=1)"]) == {
        "policy_loss": "unclipped",
        "learning_rate": 1e-3,
        "clip_range_vf": None,
        "net": {"a": 1},
    }


# ----------------------------------------------------------------------------------------------------------------------
# Runs through the backends
# ----------------------------------------------------------------------------------------------------------------------


def _check_finished(record: dict, algo: str, env: str = "CartPole-v1") -> None:
    assert record["status"] == "finished", record.get("error")
    assert record["run"]["algo"] == algo and record["run"]["env"] == env
    assert record["run"]["timesteps"] == 512
    timing = record["timing"]
    assert timing["num_timesteps"] >= 512 and timing["steps_per_s"] > 0 and timing["torch_threads"] == 1
    assert timing["train_s"] < timing["learn_s"]  # evaluation time is taken out
    curve = record["curve"]
    assert curve[0]["timesteps"] == 0 and curve[-1] == record["final"]
    assert [point["timesteps"] for point in curve] == sorted(point["timesteps"] for point in curve)
    assert len(curve[1]["returns"]) == 2 and len(record["final"]["returns"]) == 3
    assert record["eval"]["seed"] == 10_000 and record["eval"]["deterministic"]
    assert set(record["versions"]) >= {
        "python",
        "torch",
        "stable_baselines3",
        "sb3_contrib",
        "rl_zoo3",
        "gymnasium",
        "sb3_trust",
    }
    # (not compared with the current hash: other work may edit sb3_trust while the tests run)
    assert len(record["code"]["hash"]) == 16 and record["code"]["files"] > 0
    assert record["config"]["entry"] == jsonable(yml_entry(get_algo(algo), env))
    assert record["config"]["n_envs"] == record["config"]["entry"]["n_envs"]


def test_local_backend_and_timeout(tmp_path, capsys):
    results = tmp_path / "results"
    main(["--env", "CartPole-v1", "--algo", "ppo", "trust_ppo", "--jobs", "2", "--results-dir", str(results), *TINY])
    out = capsys.readouterr().out
    assert "2 runs: 2 to do, 0 already done" in out and "done: 2 finished, 0 failed" in out
    for algo in ("ppo", "trust_ppo"):
        record = _record(results / f"CartPole-v1/{algo}/t512/seed0.json")
        _check_finished(record, algo)
        assert (results / f"logs/CartPole-v1/{algo}/t512/seed0.log").is_file()
    manifest = _record(results / "sweeps/custom-t512.json")
    assert manifest["expected"] == ["CartPole-v1/ppo/t512/seed0", "CartPole-v1/trust_ppo/t512/seed0"]

    # A rerun skips finished runs; a run killed by --timeout is recorded as failed and the exit status says so
    main(["--env", "CartPole-v1", "--algo", "ppo", "trust_ppo", "--results-dir", str(results), *TINY])
    assert "0 to do, 2 already done" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["--env", "CartPole-v1", "--algo", "trpo", "--results-dir", str(results), "--timeout", "0.5", *TINY])
    assert exit_info.value.code == 1
    failed = _record(results / "CartPole-v1/trpo/t512/seed0.json")
    assert failed["status"] == "failed" and failed["error"]["type"] == "Timeout"
    assert not list(results.rglob("*.tmp*"))


def test_ray_backend(tmp_path, capsys):
    pytest.importorskip("ray")
    results = tmp_path / "results"
    main(
        [
            "--env",
            "CartPole-v1",
            "--algo",
            "trust_ppo",
            "--backend",
            "ray",
            "--jobs",
            "1",
            "--results-dir",
            str(results),
            *TINY,
        ]
    )
    assert "done: 1 finished, 0 failed" in capsys.readouterr().out
    record = _record(results / "CartPole-v1/trust_ppo/t512/seed0.json")
    _check_finished(record, "trust_ppo")
    assert record["host"]["hostname"]


def test_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch, capsys):
    original = runner._train_and_evaluate

    def crash_for_trpo(spec, progress):
        if spec.algo == "trpo":
            raise RuntimeError("boom")
        return original(spec, progress)

    monkeypatch.setattr(runner, "_train_and_evaluate", crash_for_trpo)
    results = tmp_path / "results"
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "--env",
                "CartPole-v1",
                "--algo",
                "trpo",
                "trust_ppo",
                "--backend",
                "inline",
                "--results-dir",
                str(results),
                *TINY,
            ]
        )
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert "FAILED  RuntimeError" in captured.out and "1 failed runs" in captured.err
    failed = _record(results / "CartPole-v1/trpo/t512/seed0.json")
    assert (
        failed["status"] == "failed"
        and failed["error"]["message"] == "boom"
        and "RuntimeError" in failed["error"]["traceback"]
    )
    assert is_finished(_record(results / "CartPole-v1/trust_ppo/t512/seed0.json"))
    # failed runs are redone by default, kept with --skip-failed
    plan = build_plan(envs=["CartPole-v1"], algos=["trpo", "trust_ppo"], timesteps=512, check=False)
    assert [spec.algo for spec in select_runs(plan, results)[0]] == ["trpo"]
    assert select_runs(plan, results, rerun_failed=False)[0] == []


def test_resume_after_killed_sweep(tmp_path):
    """Kill a sweep while its second run is in flight: the rerun skips the finished run and redoes the other."""
    results = tmp_path / "results"
    args = ["--env", "CartPole-v1", "--algo", "trust_ppo", "--seeds", "2", "--results-dir", str(results), *TINY[:2]]
    args += ["--eval-episodes", "2", "--final-eval-episodes", "3"]
    first, second = results / "CartPole-v1/trust_ppo/t512/seed0.json", results / "CartPole-v1/trust_ppo/t512/seed1.json"
    sweep = subprocess.Popen(
        [sys.executable, "-m", "benchmarks", "run", "--backend", "inline", *args],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not first.exists() and time.monotonic() < deadline and sweep.poll() is None:
            time.sleep(0.02)
        assert first.exists(), "the first run did not finish"
    finally:
        os.killpg(sweep.pid, signal.SIGKILL)
        sweep.wait()
    if second.exists():  # the second run finished within the polling interval: make it unfinished by hand
        second.unlink()
    # a writer killed mid-write leaves at most a temporary file, never a partial result
    partial = second.with_name(second.name + ".tmp.12345.deadbeef")
    partial.write_text('{"status": "fini')
    finished_before = _record(first)

    plan = build_plan(envs=["CartPole-v1"], algos=["trust_ppo"], seeds=[0, 1], timesteps=512, check=False)
    todo, skipped = select_runs(plan, results)
    assert [spec.seed for spec in todo] == [1] and [spec.seed for spec in skipped] == [0]
    assert not partial.exists()
    main(["--backend", "inline", *args])
    assert _record(first) == finished_before  # untouched
    assert is_finished(_record(second))
    assert not list(results.rglob("*.tmp*"))


def test_save_record_is_atomic(tmp_path):
    path = tmp_path / "a" / "seed0.json"
    save_record(path, {"status": "finished", "x": 1})
    assert json.loads(path.read_text()) == {"status": "finished", "x": 1}
    assert [p.name for p in path.parent.iterdir()] == ["seed0.json"]
    with pytest.raises(ValueError):
        save_record(path, {"x": float("nan")})  # a failed write leaves the old file and no temporary file
    assert json.loads(path.read_text()) == {"status": "finished", "x": 1}
    assert [p.name for p in path.parent.iterdir()] == ["seed0.json"]


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    from benchmarks import files

    path = tmp_path / "seed0.pkl"
    files.write_atomically(path, b"old")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        files.write_atomically(path, b"new")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["seed0.pkl"]


# ----------------------------------------------------------------------------------------------------------------------
# The report, from synthetic result files
# ----------------------------------------------------------------------------------------------------------------------


def fake_record(algo: str, env: str, seed: int, final: float, steps_per_s: float, timesteps: int = 100_000, **changes) -> dict:
    """A finished-run record as the runner writes it, with made-up scores, for the current code and configs."""
    bench = ALGOS[algo]
    spec = RunSpec(algo=algo, zoo_key=bench.zoo_key, label=algo, env=env, seed=seed, timesteps=timesteps)
    points = np.linspace(0, timesteps, 6)
    returns = np.linspace(refs.RANDOM_SCORES.get(env, 0.0), final, 6)
    curve = [
        {"timesteps": int(t), "mean": float(r), "std": 1.0, "returns": [float(r)], "lengths": [1]}
        for t, r in zip(points, returns, strict=True)
    ]
    record = {
        "schema": 1,
        "status": "finished",
        "run_id": spec.run_id,
        "run": {
            "algo": algo,
            "zoo_key": bench.zoo_key,
            "label": algo,
            "env": env,
            "seed": seed,
            "timesteps": timesteps,
            "hyperparams": dict(bench.hyperparams),
            "cli_hyperparams": {},
        },
        "curve": curve,
        "final": curve[-1],
        "training_episodes": {"last_100_mean": final, "count": 100},
        "timing": {"steps_per_s": steps_per_s, "train_s": timesteps / steps_per_s, "num_timesteps": timesteps},
        "versions": collect_versions(),
        "code": {"hash": runner.algorithm_code_hash()["hash"]},  # no family: compared with the hash of all files
        "config": {"entry": jsonable(yml_entry(bench, env))},
        "host": {"hostname": "testhost", "cpu": "test cpu"},
    }
    record.update(changes)
    return record


def test_bootstrap_intervals_are_reproducible():
    """The same scores give the same CIs on every call (rliable draws from ``np.random``; the report seeds it),
    different seeds give different ones, and the caller's global NumPy random state is left as it was."""
    from benchmarks.report import Aggregate, Group, Run, aggregate_intervals, iqm_intervals

    rng = np.random.default_rng(1)
    groups = [
        Group(
            "CartPole-v1",
            label,
            1,
            runs=[Run(f"r{i}", i, float(v), 1.0, np.zeros(1), np.zeros(1), "h", []) for i, v in enumerate(rng.normal(size=7))],
        )
        for label in ("a", "b")
    ]
    aggregate = Aggregate(
        "quick", ["CartPole-v1", "Pendulum-v1"], {"a": rng.normal(size=(6, 2)), "b": rng.normal(size=(6, 2))}, {}
    )
    np.random.seed(5)
    first = iqm_intervals(groups, reps=300)
    np.random.seed(6)  # whatever the caller's global state
    assert iqm_intervals(groups, reps=300) == first and iqm_intervals(groups, reps=300, seed=1) != first
    np.random.seed(6)
    expected = np.random.random()
    np.random.seed(6)
    iqm_intervals(groups, reps=300)
    assert np.random.random() == expected  # the caller's global state is restored, not consumed
    np.random.seed(7)
    low = aggregate_intervals(aggregate, reps=300)[1]
    np.random.seed(8)
    high = aggregate_intervals(aggregate, reps=300)[1]
    assert all(np.array_equal(low[label], high[label]) for label in low)


def test_permutation_test_and_verdict():
    low, high = [1.0, 2.0, 3.0, 4.0, 5.0], [11.0, 12.0, 13.0, 14.0, 15.0]
    assert permutation_test(high, low) == pytest.approx(2 / 252)  # exact: the two extreme splits of 252
    assert permutation_test(low, low) == 1.0
    assert permutation_test(np.arange(12.0), np.arange(12.0) + 100) < 0.001  # C(24, 12) > 20000: random permutations
    from benchmarks.report import Group, Run

    def group(values):
        runs = [Run(f"r{i}", i, v, 1.0, np.zeros(1), np.zeros(1), "h", []) for i, v in enumerate(values)]
        return Group("CartPole-v1", "x", 1, runs=runs)

    assert verdict(group(high), group(low))[0] == "better"
    assert verdict(group(low), group(high))[0] == "worse"
    assert verdict(group(low), group([2.0, 3.0, 1.0, 5.0, 4.0]))[0] == "matches"
    assert verdict(group(low[:3]), group(high[:3]))[0].startswith("n/a")
    assert verdict(group(low), None)[0] == "no reference runs"


def test_report_from_fixture_results(tmp_path, monkeypatch):
    # a fixed "current" code hash: other work may edit sb3_trust while the tests run
    fixed = {"hash": "feedfacefeedface", "files": 1}
    monkeypatch.setattr(runner, "algorithm_code_hash", lambda directory=None, family=None: fixed)
    results = tmp_path / "results"
    rng = np.random.default_rng(0)
    scores = {
        # env: algo -> (mean final score, steps/s)
        "CartPole-v1": {
            "ppo": (300.0, 5000.0),
            "trust_ppo": (480.0, 6000.0),
            "trpo": (400.0, 3000.0),
            "trust_trpo": (400.0, 3300.0),
        },
        "Pendulum-v1": {"ppo": (-300.0, 2500.0), "trust_ppo": (-310.0, 2400.0)},
        "Hopper-v4": {"ppo": (2000.0, 900.0), "trust_ppo": (2400.0, 950.0), "trust_ppo_kl": (1800.0, 940.0)},
        "HalfCheetah-v4": {"ppo": (3000.0, 800.0), "trust_ppo": (3500.0, 850.0), "trust_ppo_kl": (2500.0, 840.0)},
    }
    for env, algos in scores.items():
        for algo, (mean, speed) in algos.items():
            for seed in range(5):
                final = mean + (10.0 if env != "CartPole-v1" else 1.0) * rng.standard_normal()
                timesteps = 1_000_000 if env.endswith("-v4") else 100_000
                record = fake_record(algo, env, seed, final, speed * (1 + 0.01 * seed), timesteps=timesteps)
                save_record(results / f"{record['run_id']}.json", record)
    for env in ("Hopper-v4", "HalfCheetah-v4"):  # the other two PPO variants of the paper's Table 1
        for algo, mean in (("trust_ppo_kl_fixed", 1500.0), ("trust_ppo_unclipped", 300.0)):
            for seed in range(5):
                record = fake_record(algo, env, seed, mean + 10 * seed, 900.0, timesteps=1_000_000)
                if algo == "trust_ppo_unclipped":  # best by the final evaluation, worst by the paper's training score
                    record["final"] = dict(record["final"], mean=5000.0 + seed)
                save_record(results / f"{record['run_id']}.json", record)
    # a run resumed from a checkpoint
    resumed = _record(results / "CartPole-v1/trpo/t100000/seed1.json")
    resumed["resumed"] = [{"timesteps": 50_000, "at": "2026-12-07T13:34:02+00:00", "host": resumed["host"]}]
    save_record(results / "CartPole-v1/trpo/t100000/seed1.json", resumed)
    # a stale run (older algorithm code), a failed run, and a sweep that expects more seeds than there are
    stale = fake_record("trust_trpo", "Pendulum-v1", 0, -200.0, 3000.0, code={"hash": "0123456789abcdef"})
    save_record(results / f"{stale['run_id']}.json", stale)
    failed = fake_record("trust_npg", "CartPole-v1", 3, 0.0, 1.0)
    failed.update(status="failed", error={"type": "ValueError", "message": "nope\nbad batch size", "traceback": ""})
    save_record(results / f"{failed['run_id']}.json", failed)
    expected = [f"CartPole-v1/{algo}/t100000/seed{seed}" for algo in ("ppo", "trust_ppo", "trust_npg") for seed in range(7)]
    save_record(
        results / "sweeps/quick.json", {"name": "quick", "seeds": list(range(7)), "timesteps": None, "expected": expected}
    )

    out = tmp_path / "report" / "RESULTS.md"
    report = build_report(results, out, reps=200)
    text = out.read_text()
    assert text == report.markdown

    assert "\n1 finished run was resumed from a checkpoint after its sweep had stopped" in text

    # plots exist, are PNGs, and are linked at the top
    names = sorted(path.name for path in report.plots)
    assert names == sorted(
        [f"curves_{env}.png" for env in scores]
        + ["aggregate_quick.png", "profile_quick.png", "aggregate_mujoco.png", "profile_mujoco.png"]
    )
    for path in report.plots:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
        assert f"(plots/{path.name})" in text.split("## How to read this")[0]

    # per-env tables: scores, IQM with CI, published number, speed ratio, verdict
    row = next(line for line in text.splitlines() if line.startswith("| **trust_ppo** | 100k | 5/7"))
    assert (
        "480." in row and "500.0 ± 0.0 (RL Zoo, CartPole-v1, 100k)" in row and "1.20×" in row and "better (p = 0.008)" in row
    )
    row = next(line for line in text.splitlines() if line.startswith("| **trust_ppo** | 100k | 5/5 |") and "-31" in line)
    assert "matches" in row or "worse" in row
    assert "| **trust_trpo** | 100k | 5/5 |" in text and "1.10×" in text
    assert "| ppo | 100k | 5/7 |" in text and "reference" in text
    assert "[" in row and "]" in row  # IQM CI
    assert "published on -v3 (mujoco-py)" in text  # env caveat
    assert "two-sided permutation test" in text and "normalised score = (return − random)" in text
    # the env x algorithm summary of final returns (references without a verdict)
    summary = text.split("## Summary: final return per env")[1].split("##")[0]
    cartpole = next(line for line in summary.splitlines() if line.startswith("| CartPole-v1 |"))
    assert "(5 runs; better, p = 0.008)" in cartpole and "(7 runs)" not in cartpole.split("|")[2]

    # missing, failed and stale runs are shown
    missing = text.split("## Missing runs")[1].split("##")[0]
    assert (
        "| CartPole-v1 | ppo | 100k | 5, 6 |" in missing and "| CartPole-v1 | trust_npg | 100k | 0, 1, 2, 4, 5, 6 |" in missing
    )
    failed_section = text.split("## Failed runs")[1].split("##")[0]
    assert "ValueError: bad batch size" in failed_section and "trust_npg" in failed_section
    stale_section = text.split("## Stale runs")[1].split("##")[0]
    assert (
        "Pendulum-v1/trust_trpo/t100000/seed0" in stale_section and "algorithm code changed (0123456789abcdef" in stale_section
    )
    assert "| quick | 0, 1, 2, 3, 4, 5, 6 | zoo's | 21 | 10 | 1 | 0 | 10 |" in text

    # aggregates and the PPO paper ordering
    assert "### quick: CartPole-v1, Pendulum-v1" in text and "### mujoco: Hopper-v4, HalfCheetah-v4" in text
    assert "*Left out:* trpo (no finished runs on Pendulum-v1)" in text
    # ranked by the paper's score (last 100 training episodes), the final evaluation's ranking beside it
    assert "**Ordering reproduced**" in text
    assert "By the final evaluation: trust_ppo_unclipped > trust_ppo > trust_ppo_kl > trust_ppo_kl_fixed." in text

    # excluding stale runs
    report = build_report(results, tmp_path / "other" / "RESULTS.md", reps=200, exclude_stale=True)
    assert "(excluded from the statistics)" in report.markdown


def test_report_check_says_whether_the_committed_page_is_current(tmp_path, monkeypatch):
    """``report --check`` (CI): the page regenerated from the same files is identical (no date, no absolute path);
    a new result file, an edited page or a missing plot is reported, and nothing is written."""
    fixed = {"hash": "feedfacefeedface", "files": 1}
    monkeypatch.setattr(runner, "algorithm_code_hash", lambda directory=None, family=None: fixed)
    results = tmp_path / "results"
    for algo, mean in (("ppo", 300.0), ("trust_ppo", 320.0)):
        for seed in range(5):
            record = fake_record(algo, "CartPole-v1", seed, mean + seed, 5000.0)
            save_record(results / f"{record['run_id']}.json", record)
    out = tmp_path / "benchmarks" / "RESULTS.md"
    build_report(results, out, reps=50)
    page = out.read_text()
    assert "UTC" not in page  # no date; the repository's own results are named from its root, wherever it is checked out
    assert repository_path(runner.DEFAULT_RESULTS_DIR) == "benchmarks/results"
    assert check_report(results, out, reps=50) == []

    # a run finished since the page was written
    record = fake_record("trust_ppo", "CartPole-v1", 5, 400.0, 5000.0)
    save_record(results / f"{record['run_id']}.json", record)
    problems = check_report(results, out, reps=50)
    assert (
        problems
        and problems[0].startswith("---")
        and any(line.startswith("+") and "11 result files" in line for line in problems)
    )
    assert out.read_text() == page  # --check writes nothing
    (results / f"{record['run_id']}.json").unlink()

    # a plot the page links is missing
    plot = next((out.parent / "plots").glob("*.png"))
    plot.unlink()
    assert check_report(results, out, reps=50) == [f"missing plot {plot}"]

    # the command line: exit 1 with the diff, 0 when current
    build_report(results, out, reps=50)
    out.write_text(page.replace("result files", "results files"))
    with pytest.raises(SystemExit) as error:
        report_main(["--results-dir", str(results), "--out", str(out), "--reps", "50", "--check"])
    assert error.value.code == 1
    build_report(results, out, reps=50)
    report_main(["--results-dir", str(results), "--out", str(out), "--reps", "50", "--check"])


def test_ppo_code_hash_covers_every_module_trust_ppo_imports():
    """``PPO_FILES`` (the files whose change makes TrustPPO's results stale) lists every sb3_trust module it imports."""
    import ast
    import pathlib

    from benchmarks.runner import PPO_FILES

    package = pathlib.Path(__file__).resolve().parents[1] / "sb3_trust"
    seen: set[str] = set()
    todo = [path.relative_to(package).as_posix() for path in (package / "ppo").glob("*.py")]
    while todo:
        relative = todo.pop()
        if relative in seen:
            continue
        seen.add(relative)
        for node in ast.walk(ast.parse((package / relative).read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sb3_trust."):
                path = node.module.removeprefix("sb3_trust.").replace(".", "/")
                todo.append(f"{path}.py" if (package / f"{path}.py").exists() else f"{path}/__init__.py")
    missing = sorted(relative for relative in seen if not relative.startswith(PPO_FILES))
    assert not missing, f"add to PPO_FILES: {missing}"


@pytest.mark.parametrize(
    "source, stales",
    [("ppo/losses.py", {"ppo": True, "trpo": False}), ("accel/__init__.py", {"ppo": True, "trpo": True})],
)
def test_code_hash_covers_the_algorithm_and_the_accelerator(tmp_path, source, stales):
    """A change to TrustPPO's losses makes its results stale, and only its results (not the TRPO family's); a change to
    the accelerator (collection is used by both families) makes the results of both stale."""
    import pathlib
    import shutil

    package = pathlib.Path(__file__).resolve().parents[1] / "sb3_trust"
    copy = tmp_path / "sb3_trust"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = {family: runner.algorithm_code_hash(copy, family)["hash"] for family in ("ppo", "trpo")}
    changed = copy / source
    changed.write_text(changed.read_text() + "\n# changed\n")
    after = {family: runner.algorithm_code_hash(copy, family)["hash"] for family in ("ppo", "trpo")}
    assert {family: after[family] != before[family] for family in after} == stales


def test_speed_ratio_is_flagged_across_machines():
    """Runs of one host name on different virtual machines (platform strings) are not compared silently."""
    from benchmarks.report import Group, Run, machine, speed_ratio

    first = machine({"host": {"hostname": "vm", "platform": "Linux-6.18.44-fc-v857-x86_64"}})
    second = machine({"host": {"hostname": "vm", "platform": "Linux-6.18.44-fc-v1252-x86_64"}})
    assert first != second and machine({"host": {"hostname": "vm"}}) == "vm"

    def group(speed: float, hosts: list[str]) -> Group:
        runs = [Run(f"r{i}", i, 0.0, speed, np.zeros(1), np.zeros(1), host, []) for i, host in enumerate(hosts)]
        return Group("CartPole-v1", "x", 1, runs=runs)

    assert speed_ratio(group(300.0, [first, first]), group(100.0, [first])) == "3.00×"
    assert speed_ratio(group(300.0, [first, second]), group(100.0, [first])) == "3.00× (other hosts)"
    assert speed_ratio(group(300.0, [second]), group(100.0, [first])) == "3.00× (other hosts)"
    assert speed_ratio(group(300.0, [second]), group(100.0, [first]), " speed") == "3.00× speed (other hosts)"
    assert speed_ratio(group(300.0, [first]), None) is None


# ----------------------------------------------------------------------------------------------------------------------
# The suites of the newer PPO variants, masking and the new env families; their report sections
# ----------------------------------------------------------------------------------------------------------------------


def test_new_suites_plan(monkeypatch):
    import gymnasium as gym

    from benchmarks.envs import MASKED_ENV_ID
    from benchmarks.suites import VARIANT_KEYS, reference_for

    variants = build_plan(suite="variants", seeds=[0], check=False)
    assert {spec.algo for spec in variants.specs} == {"ppo", "trust_ppo", *VARIANT_KEYS}
    assert len(variants.specs) == len(SUITES["classic"].envs) * (2 + len(VARIANT_KEYS))
    # the same run ids as the classic suite's for ppo and trust_ppo: a result serves both sweeps
    classic = {spec.run_id for spec in build_plan(suite="classic", seeds=[0], check=False).specs}
    assert {spec.run_id for spec in variants.specs if spec.algo in ("ppo", "trust_ppo")} <= classic
    mujoco = build_plan(suite="variants_mujoco", seeds=[0, 1, 2], check=False)
    assert {spec.env for spec in mujoco.specs} == {"Hopper-v4", "HalfCheetah-v4"} and len(mujoco.specs) == 3 * 2 * 7
    for key in VARIANT_KEYS:
        assert ALGOS[key].variant_of == "trust_ppo" and reference_for(key, "Hopper-v4") == "ppo"
        assert all(spec.entry == jsonable(yml_entry(ALGOS[key], spec.env)) for spec in mujoco.specs if spec.algo == key)

    masked = build_plan(suite="masked", seeds=[0], check=False)
    assert [(spec.env, spec.algo, spec.zoo_key) for spec in masked.specs] == [
        (MASKED_ENV_ID, "ppo_mask", "ppo_mask"),
        (MASKED_ENV_ID, "trust_ppo", "trust_ppo"),
        (MASKED_ENV_ID, "trust_trpo", "trust_trpo"),
    ]
    # the shared settings are the same for the reference and ours
    entries = {spec.algo: spec.entry for spec in masked.specs}
    for name in ("n_envs", "n_timesteps", "policy", "n_steps", "batch_size", "gamma", "gae_lambda"):
        assert entries["ppo_mask"][name] == entries["trust_ppo"][name] == entries["trust_trpo"][name], name
    assert {key: value for key, value in entries["trust_ppo"].items() if key != "policy_loss"} == entries["ppo_mask"]
    # per-env reference override: on the masked env both are compared with MaskablePPO, elsewhere with their own
    assert reference_for("trust_ppo", MASKED_ENV_ID) == reference_for("trust_trpo", MASKED_ENV_ID) == "ppo_mask"
    assert reference_for("trust_ppo", "CartPole-v1") == "ppo" and reference_for("trust_trpo", "CartPole-v1") == "trpo"
    assert reference_for("ppo_mask", MASKED_ENV_ID) is None and ALGOS["ppo_mask"].is_reference

    extra = build_plan(suite="extra", seeds=[0, 1], check=False)
    pairs = {(spec.env, spec.algo) for spec in extra.specs}
    assert ("MiniGrid-DoorKey-5x5-v0", "trpo") not in pairs and ("MiniGrid-DoorKey-5x5-v0", "trust_trpo") not in pairs
    assert len(pairs) == 3 * 4 - 2 and len(extra.expected) == 2 * len(pairs)
    # the suite's budget on BipedalWalker-v3 (the same for every algorithm), the yml's elsewhere, --timesteps first
    budgets = {(spec.env, spec.algo): spec.timesteps for spec in extra.specs}
    assert {steps for (env, _), steps in budgets.items() if env == "BipedalWalker-v3"} == {2_000_000}
    assert budgets[("MountainCarContinuous-v0", "ppo")] == 20_000 and budgets[("MountainCarContinuous-v0", "trpo")] == 50_000
    assert budgets[("MiniGrid-DoorKey-5x5-v0", "trust_ppo")] == 100_000
    assert {spec.timesteps for spec in build_plan(suite="extra", timesteps=3000, check=False).specs} == {3000}
    minigrid = next(spec for spec in extra.specs if spec.env == "MiniGrid-DoorKey-5x5-v0" and spec.algo == "trust_ppo")
    assert minigrid.entry["env_wrapper"] == "minigrid.wrappers.FlatObsWrapper"
    # every env of the new suites can be made (MiniGrid's come from the minigrid package, imported by register_envs)
    pytest.importorskip("minigrid")
    for suite in ("masked", "extra"):
        assert build_plan(suite=suite, seeds=[0], check=True).specs
    # without the package, the error names it
    from benchmarks.suites import check_env_registered

    monkeypatch.delitem(gym.registry, "MiniGrid-DoorKey-5x5-v0")
    with pytest.raises(BenchmarkInputError, match="the 'minigrid' package"):
        check_env_registered("MiniGrid-DoorKey-5x5-v0")


def _table_names(text: str, header: str) -> list[str]:
    """The first column (backquoted names) of the Markdown table whose header row starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    names = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        names.append(line.split("|")[1].strip().strip("`"))
    return names


def test_readme_tables_match_the_suites_and_algorithms(capsys):
    """benchmarks/README.md lists every suite and algorithm (and only those), in order; so does `run --list`."""
    text = (REPO / "benchmarks" / "README.md").read_text()
    assert _table_names(text, "algorithm") == list(ALGOS)
    assert _table_names(text, "suite") == list(SUITES)
    main(["--list"])
    out = capsys.readouterr().out
    for name in (*SUITES, *ALGOS):
        assert f"  {name} " in out
    assert "not run: trpo on MiniGrid-DoorKey-5x5-v0" in out and "BipedalWalker-v3 2,000,000 steps" in out


def _save(results: Path, algo: str, env: str, finals: list[float], timesteps: int = 100_000) -> None:
    for seed, final in enumerate(finals):
        record = fake_record(algo, env, seed, final, 1000.0, timesteps=timesteps)
        record["final"] = dict(record["final"], mean=final)
        record["curve"][-1] = record["final"]
        save_record(results / f"{record['run_id']}.json", record)


def test_variants_table_and_masked_reference_in_the_report(tmp_path, monkeypatch):
    """
    The variants table compares each variant with PPO-clip (ours) and with SB3 PPO (verdicts and p-values as the
    permutation test gives them on the same numbers); on the masked env, ours are compared with MaskablePPO.
    """
    from benchmarks.envs import MASKED_ENV_ID
    from benchmarks.report import Group, Run, load_results

    fixed = {"hash": "feedfacefeedface", "files": 1}
    monkeypatch.setattr(runner, "algorithm_code_hash", lambda directory=None, family=None: fixed)
    results = tmp_path / "results"
    ppo, clip = [100.0, 102.0, 98.0, 101.0, 99.0], [200.0, 203.0, 197.0, 201.0, 199.0]
    spo = [150.0, 152.0, 148.0, 151.0, 149.0]  # worse than PPO-clip, better than SB3 PPO
    dual = [201.0, 199.0, 198.0, 202.0, 200.0]  # matches PPO-clip, better than SB3 PPO
    few = [300.0, 301.0, 302.0]  # 3 seeds: no verdict
    for algo, finals in (("ppo", ppo), ("trust_ppo", clip), ("trust_ppo_spo", spo), ("trust_ppo_dual_clip", dual)):
        _save(results, algo, "CartPole-v1", finals)
    _save(results, "trust_ppo_vf_lr", "CartPole-v1", few)
    mask_ref, masked_ppo, masked_trpo = [7.0, 7.1, 6.9, 7.05, 6.95], [7.0, 7.02, 6.98, 7.01, 6.99], [5.0, 5.1, 4.9, 5.05, 4.95]
    for algo, finals in (("ppo_mask", mask_ref), ("trust_ppo", masked_ppo), ("trust_trpo", masked_trpo)):
        _save(results, algo, MASKED_ENV_ID, finals, timesteps=50_000)

    loaded = load_results(results)
    group = loaded.groups[(MASKED_ENV_ID, "trust_trpo", 50_000)]
    assert loaded.reference_of(group) is loaded.groups[(MASKED_ENV_ID, "ppo_mask", 50_000)]
    assert loaded.reference_of(loaded.groups[("CartPole-v1", "trust_ppo", 100_000)]).label == "ppo"
    assert not loaded.groups[(MASKED_ENV_ID, "ppo_mask", 50_000)].runs[0].stale  # a current reference result

    text = build_report(results, tmp_path / "report" / "RESULTS.md", reps=200).markdown
    section = text.split("## Newer PPO variants vs PPO-clip (ours) and SB3 PPO")[1].split("\n## ")[0]

    def group_of(values: list[float]) -> Group:
        runs = [Run(f"r{i}", i, v, 1.0, np.zeros(1), np.zeros(1), "h", []) for i, v in enumerate(values)]
        return Group("e", "x", 1, runs=runs)

    def expected(ours: list[float], other: list[float]) -> str:
        decision, p = verdict(group_of(ours), group_of(other))
        return decision + (f" (p = {p:.3f})" if p is not None else "")

    def row(label: str) -> list[str]:
        line = next(line for line in section.splitlines() if line.startswith(f"| CartPole-v1 | **{label}** |"))
        return [cell.strip() for cell in line.split("|")[1:-1]]

    cells = row("trust_ppo_spo")
    assert cells[3] == "5" and cells[5].startswith("200.0") and cells[6] == f"{np.mean(spo) - np.mean(clip):+.1f}"
    assert cells[7] == expected(spo, clip) and cells[7].startswith("worse")
    assert cells[8].startswith("100.0") and cells[9] == f"{np.mean(spo) - np.mean(ppo):+.1f}"
    assert cells[10] == expected(spo, ppo) and cells[10].startswith("better")
    cells = row("trust_ppo_dual_clip")
    assert cells[7] == expected(dual, clip) and cells[7].startswith("matches") and cells[10].startswith("better")
    assert row("trust_ppo_vf_lr")[7].startswith("n/a") and row("trust_ppo_vf_lr")[10].startswith("n/a")
    assert f"**Significantly worse:** trust_ppo_spo on CartPole-v1 vs trust_ppo ({expected(spo, clip)})." in section
    assert (
        f"**Significantly better:** trust_ppo_dual_clip on CartPole-v1 vs ppo ({expected(dual, ppo)}); "
        f"trust_ppo_spo on CartPole-v1 vs ppo ({expected(spo, ppo)})." in section
    )
    assert "trust_ppo_adaptive_lr" not in section and MASKED_ENV_ID not in section  # no runs; not a variant

    # the masked env's table: ours against MaskablePPO (reference first), with the verdicts the test gives
    env_table = text.split(f"### {MASKED_ENV_ID}")[1].split("###")[0]
    lines = [line for line in env_table.splitlines() if line.startswith("| ")][1:]  # the header row left out
    assert [line.split("|")[1].strip() for line in lines] == ["ppo_mask", "**trust_ppo**", "**trust_trpo**"]
    assert expected(masked_ppo, mask_ref) in lines[1] and expected(masked_trpo, mask_ref) in lines[2]
    assert expected(masked_trpo, mask_ref).startswith("worse")
    assert "on SB3TrustMaskedChoice-v0: vs `ppo_mask` instead of `ppo` and `trpo`" in text


def test_masked_runs_are_evaluated_with_masks(tmp_path):
    """MaskablePPO and TrustPPO on the masked env, through the runner: evaluated with the masks, so no episode ends
    early on an invalid action (every one lasts the horizon); without them, the trained policy's deterministic actions
    are invalid two times in three."""
    from sb3_contrib import MaskablePPO

    from benchmarks.envs import MASKED_ENV_ID, MaskedChoiceEnv
    from sb3_trust import TrustPPO

    plan = build_plan(suite="masked", algos=["ppo_mask", "trust_ppo"], timesteps=512, eval_freq=256, eval_episodes=2)
    for spec in plan.specs:
        spec.final_eval_episodes = 3
        record = runner.execute(spec)
        assert record["status"] == "finished", record.get("error")
        assert record["config"]["eval_with_masks"] is True
        assert record["config"]["model_class"] == jsonable({"ppo_mask": MaskablePPO, "trust_ppo": TrustPPO}[spec.algo])
        lengths = [length for point in record["curve"] for length in point["lengths"]]
        assert len(lengths) > 3 and set(lengths) == {MaskedChoiceEnv.horizon}, (spec.algo, lengths)
        assert record["run"]["env"] == MASKED_ENV_ID


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints of runs in progress
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algo, overrides", [("trust_ppo", []), ("ppo", ["normalize:True"])])
def test_checkpoints_leave_the_run_unchanged_and_resume_it(tmp_path, monkeypatch, algo, overrides):
    """
    Oracle: the same run without checkpoints. Checkpointing at every rollout changes nothing in the result; a run
    interrupted after a checkpoint resumes from the exact saved state (weights, optimizer, VecNormalize statistics),
    keeps its curve up to there and ends at the same number of steps.
    """
    import torch as th

    from benchmarks import checkpoint as ckpt

    def spec(checkpoints: bool) -> RunSpec:
        plan = build_plan(
            envs=["CartPole-v1"],
            algos=[algo],
            timesteps=1536,  # six rollouts of 256 steps
            cli_hyperparams=overrides,
            eval_freq=512,
            eval_episodes=2,
            final_eval_episodes=3,
            check=False,
        )
        run = plan.specs[0]
        run.checkpoint_dir = str(tmp_path / "checkpoints") if checkpoints else ""
        run.checkpoint_seconds = 1e-9  # at the start of every rollout but the first
        return run

    file = tmp_path / "checkpoints" / f"{spec(True).run_id}.pkl"
    plain = runner.execute(spec(False))
    checkpointed = runner.execute(spec(True))
    assert plain["status"] == checkpointed["status"] == "finished", (plain.get("error"), checkpointed.get("error"))
    assert checkpointed["curve"] == plain["curve"] and "resumed" not in checkpointed
    assert not file.exists()  # deleted when the run ends

    # Interrupt the run right after its third checkpoint (step 768)
    saved: dict = {}
    original_save = ckpt.RunCheckpoint.save

    def save_then_stop(self, model, state):
        original_save(self, model, state)
        saved["steps"] = model.num_timesteps
        if model.num_timesteps >= 768:
            saved["policy"] = copy.deepcopy(model.policy.state_dict())
            saved["optimizer"] = copy.deepcopy(model.policy.optimizer.state_dict())
            saved["normalize"] = copy.deepcopy(ckpt.vec_normalize_stats(model.get_env()))
            raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.RunCheckpoint, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        runner.execute(spec(True))
    monkeypatch.undo()
    assert file.exists() and saved["steps"] == 768

    restored: dict = {}
    original_restore = runner.restore_model

    def restore_and_look(model_class, state, env):
        model = original_restore(model_class, state, env)
        # copies: the resumed training changes the tensors in place
        restored["policy"] = copy.deepcopy(model.policy.state_dict())
        restored["optimizer"] = copy.deepcopy(model.policy.optimizer.state_dict())
        restored["normalize"] = copy.deepcopy(ckpt.vec_normalize_stats(env))
        restored["steps"] = model.num_timesteps
        restored["new_episode"] = model._last_obs is None  # learn() resets the fresh env
        return model

    monkeypatch.setattr(runner, "restore_model", restore_and_look)
    resumed = runner.execute(spec(True))
    assert resumed["status"] == "finished", resumed.get("error")
    assert restored["steps"] == 768 and restored["new_episode"]
    assert restored["policy"].keys() == saved["policy"].keys()
    for key, value in saved["policy"].items():
        assert th.equal(restored["policy"][key], value), key
    for index, moments in saved["optimizer"]["state"].items():
        for name, value in moments.items():
            assert th.equal(th.as_tensor(restored["optimizer"]["state"][index][name]), th.as_tensor(value)), (index, name)
    if overrides:
        assert saved["normalize"] is not None
        np.testing.assert_array_equal(restored["normalize"][0].mean, saved["normalize"][0].mean)
        np.testing.assert_array_equal(restored["normalize"][1].var, saved["normalize"][1].var)
    assert [entry["timesteps"] for entry in resumed["resumed"]] == [768]
    # Up to the checkpoint the run is the uninterrupted one; then it goes on to the same budget
    before = [point for point in plain["curve"] if point["timesteps"] < 768]
    assert resumed["curve"][: len(before)] == before
    assert resumed["timing"]["num_timesteps"] == plain["timing"]["num_timesteps"]
    assert [point["timesteps"] for point in resumed["curve"]] == [point["timesteps"] for point in plain["curve"]]
    assert resumed["timing"]["learn_s"] > resumed["timing"]["train_s"] > 0
    assert not file.exists()


def test_a_checkpoint_of_another_run_is_not_used(tmp_path):
    plan = build_plan(envs=["CartPole-v1"], algos=["ppo"], timesteps=512, eval_freq=256, check=False)
    spec = plan.specs[0]
    spec.checkpoint_dir, spec.checkpoint_seconds = str(tmp_path), 1e-9
    checkpoint = runner._open_checkpoint(spec)
    assert checkpoint is not None
    checkpoint.path.parent.mkdir(parents=True)
    with open(checkpoint.path, "wb") as file:
        import pickle

        pickle.dump({"identity": {**checkpoint.identity, "eval": [256, 5, 20, 10_000]}}, file)
    assert checkpoint.load() is None and not checkpoint.path.exists()  # other evaluation settings: deleted
    checkpoint.path.write_bytes(b"not a pickle")
    leftover = checkpoint.path.with_name(checkpoint.path.name + ".tmp.12345.deadbeef")
    leftover.write_bytes(b"half a checkpoint")
    assert checkpoint.load() is None and not checkpoint.path.exists() and not leftover.exists()
    spec.checkpoint_dir = ""
    assert runner._open_checkpoint(spec) is None
