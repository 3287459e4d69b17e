"""
rl-zoo3 integration (``python -m sb3_trust.zoo``): train / enjoy / record_video for every key, ``--optimize`` into a
sqlite storage, the samplers, the packaged configs and the bad-input errors.

The commands run in-process through ``sb3_trust.zoo.main`` (faster than a subprocess), except where the entry point
itself or ``--vec-env subproc`` is tested. Budgets are tiny (a few hundred steps, ``n_steps: 64``). Each test has its
own ``-f`` folder: rl-zoo3 numbers a run by counting the runs already in it.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("rl_zoo3")
optuna = pytest.importorskip("optuna")

import rl_zoo3  # noqa: E402
import yaml  # noqa: E402
from rl_zoo3.hyperparams_opt import HYPERPARAMS_CONVERTER, HYPERPARAMS_SAMPLER  # noqa: E402
from sb3_contrib import MaskablePPO  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402

from benchmarks.envs import MASKED_ENV_ID, MaskedChoiceEnv, register_envs  # noqa: E402
from sb3_trust import TrustPPO  # noqa: E402
from sb3_trust.common.schedules import CosineSchedule, LinearSchedule  # noqa: E402
from sb3_trust.zoo import (  # noqa: E402
    ZOO_ALGOS,
    ZOO_CONFIG_KEYS,
    TrustExperimentManager,
    ZooConfigError,
    check_hyperparams,
    default_config_path,
    main,
    parse_schedule,
    register_zoo,
    samplers,
    zoo_config_path,
)

pytestmark = pytest.mark.zoo

# Our keys; ppo_mask (sb3-contrib's MaskablePPO, the masking reference) has tests of its own below
KEYS = [key for key in ZOO_ALGOS if ZOO_ALGOS[key].module.startswith("sb3_trust")]
ENVS = ["CartPole-v1", "Pendulum-v1"]
REQUIRED_ENVS = [
    "default",
    "CartPole-v1",
    "Acrobot-v1",
    "Pendulum-v1",
    "LunarLander-v3",
    "LunarLanderContinuous-v3",
    "Swimmer-v4",
    "Hopper-v4",
    "HalfCheetah-v4",
    "Walker2d-v4",
]
# The projection keys: Gaussian policies only, so their files have the continuous-action envs
PROJECTION_KEYS = [key for key in KEYS if key.startswith("trust_ppo_proj_")]
CONTINUOUS_ENVS = [env_id for env_id in REQUIRED_ENVS if env_id not in ("CartPole-v1", "Acrobot-v1", "LunarLander-v3")]
PROJECTION_VARIANT = {"policy_loss", "projection", "projection_mean_bound", "projection_cov_bound", "projection_coef"}


def required_envs(key: str) -> list[str]:
    """:return: the entries the key's file must have (``default`` first)"""
    return CONTINUOUS_ENVS if key in PROJECTION_KEYS else REQUIRED_ENVS


def key_env_pairs(env_ids: list[str]) -> list[tuple[str, str]]:
    """:return: every ``(key, env_id)`` that the key can train (the projection keys: continuous actions)"""
    return [(key, env_id) for env_id in env_ids for key in KEYS if env_id in required_envs(key)]


# What each key's file may change with respect to its base file, and the base
VARIANT_KEYS = {
    "trust_ppo": ("ppo", {"policy_loss"}),
    "trust_ppo_kl": ("trust_ppo", {"policy_loss", "adaptive_kl_target", "kl_coef"}),
    "trust_ppo_kl_fixed": ("trust_ppo", {"policy_loss", "kl_coef"}),
    "trust_ppo_dual_clip": ("trust_ppo", {"policy_loss", "dual_clip"}),
    "trust_ppo_clip_higher": ("trust_ppo", {"policy_loss", "clip_range_high"}),
    "trust_ppo_spo": ("trust_ppo", {"policy_loss", "clip_range"}),
    "trust_ppo_adaptive_lr": ("trust_ppo", {"adaptive_lr_kl_target", "learning_rate"}),
    "trust_ppo_vf_lr": ("trust_ppo", {"vf_learning_rate"}),
    "trust_trpo": ("trpo", {"step_rule"}),
    "trust_npg": ("trust_trpo", {"step_rule"}),
    # and Pendulum-v1 without gSDE, with shorter rollouts
    **dict.fromkeys(PROJECTION_KEYS, ("trust_ppo", {*PROJECTION_VARIANT, "use_sde", "sde_sample_freq", "n_steps"})),
}
# Small and fast, on any key: short rollouts
TINY = "n_steps:64 batch_size:64"
QUIET = "--eval-freq -1 --verbose 0 --seed 0"


def registered() -> dict[str, type]:
    algos = register_zoo()
    assert set(algos) == set(ZOO_ALGOS), "every key's class should import"
    return algos


def run(command: str) -> None:
    """Run ``python -m sb3_trust.zoo <command>`` in-process (split on spaces only: quotes are kept for rl-zoo3)."""
    main(command.split())


def run_fails(capsys: pytest.CaptureFixture, command: str) -> str:
    """Run a command that must fail with status 2 and return its stderr."""
    with pytest.raises(SystemExit) as excinfo:
        run(command)
    assert excinfo.value.code == 2
    return capsys.readouterr().err


def load_yml(path: str | Path) -> dict[str, Any]:
    with open(path) as file:
        return yaml.safe_load(file)


def zoo_yml(algo: str) -> dict[str, Any]:
    if algo in ("ppo", "trpo"):
        return load_yml(Path(rl_zoo3.__file__).parent / "hyperparams" / f"{algo}.yml")
    return load_yml(default_config_path(algo))


def run_folder(log_folder: Path, key: str, env_id: str, run_id: int = 1) -> Path:
    return log_folder / key / f"{env_id}_{run_id}"


class InterruptCallback(BaseCallback):
    """Raise KeyboardInterrupt (a Ctrl-C) after 100 steps: rl-zoo3 must still save the model."""

    def _on_step(self) -> bool:
        if self.num_timesteps >= 100:
            raise KeyboardInterrupt
        return True


# --- registration and configs ------------------------------------------------------------------------------------


def test_register_zoo_fills_rl_zoo3_tables():
    from sb3_trust.trpo import TrustNPG, TrustTRPO

    algos = registered()
    assert all(algos[key] is TrustPPO for key in KEYS if key.startswith("trust_ppo"))
    assert algos["trust_trpo"] is TrustTRPO
    assert algos["trust_npg"] is TrustNPG
    assert algos["ppo_mask"] is MaskablePPO
    for key in ZOO_ALGOS:
        assert rl_zoo3.ALGOS[key] is algos[key]
        assert HYPERPARAMS_SAMPLER[key] is samplers.SAMPLERS[key]
        assert HYPERPARAMS_CONVERTER[key] is samplers.CONVERTERS[key]
    # rl-zoo3's own keys are untouched
    assert rl_zoo3.ALGOS["ppo"].__name__ == "PPO" and rl_zoo3.ALGOS["trpo"].__name__ == "TRPO"
    # idempotent
    assert register_zoo() == algos


@pytest.mark.parametrize("key", KEYS)
def test_packaged_config(key):
    path = Path(default_config_path(key))
    assert path.is_file() and path.parent.parent == Path(__file__).parent.parent / "sb3_trust"
    # the top-level hyperparams/ is the same folder
    assert (Path(__file__).parent.parent / "hyperparams" / f"{key}.yml").resolve() == path.resolve()
    config = load_yml(path)
    assert set(required_envs(key)) <= set(config)
    base_name, variant_keys = VARIANT_KEYS[key]
    base = zoo_yml(base_name)
    # the required envs, and every other env id both files list (e.g. the benchmark's `extra` envs)
    shared = set(config) & set(base) - {"default", "atari"}
    for env_id in sorted(set(required_envs(key)) | shared):
        entry, base_entry = config[env_id], base[env_id]
        # Same values as the base file, except the variant's keys
        for name in set(entry) | set(base_entry):
            if name not in variant_keys:
                assert entry.get(name) == base_entry.get(name), f"{key} {env_id} {name}"
        # and the variant itself is spelled out
        for name, value in ZOO_ALGOS[key].variant.items():
            if value is None:
                assert entry.get(name) is None
            elif isinstance(value, str):
                assert entry[name] == value, f"{key} {env_id} {name}"
            else:
                assert entry[name] is not None


@pytest.mark.parametrize("key", KEYS)
def test_every_env_id_that_rl_zoo3_tunes_gets_its_values(tmp_path, monkeypatch, capsys, key):
    """
    An env id that our file does not list but rl-zoo3's ppo.yml / trpo.yml tunes runs with rl-zoo3's values (plus the
    key's variant), not with our ``default`` entry, and says where they came from. Every key they set is one the
    algorithm accepts.
    """
    import argparse

    import gymnasium as gym

    algos = registered()
    algo = ZOO_ALGOS[key]
    zoo_path = zoo_config_path(algo.zoo_base)
    zoo, ours = load_yml(zoo_path), load_yml(default_config_path(key))
    env_ids = [name for name in zoo if name not in ("default", "atari")]
    assert len(env_ids) > 20
    for env_id in env_ids:
        if env_id not in gym.envs.registry:
            # PyBullet, MiniGrid and old MuJoCo ids need packages not installed here: rl-zoo3 only looks up their entry
            # point before reading the config
            monkeypatch.setitem(gym.envs.registry, env_id, gym.envs.registry["CartPole-v1"])
        manager = TrustExperimentManager(argparse.Namespace(), key, env_id, str(tmp_path))
        hyperparams, _ = manager.read_hyperparameters()
        if env_id in ours:  # our own copy (test_packaged_config holds it to rl-zoo3's)
            assert manager.config == default_config_path(key)
            continue
        assert manager.config == zoo_path
        assert f"No entry for {env_id}" in capsys.readouterr().out
        expected = {**algo.defaults, **zoo[env_id]}
        assert hyperparams == expected, env_id
        passed = {name: value for name, value in hyperparams.items() if name not in ZOO_CONFIG_KEYS}
        check_hyperparams(key, algos[key], passed, where=f" --env {env_id}")
    # A config file given on the command line is read as is: no fallback
    conf = tmp_path / "mine.yml"
    conf.write_text("default:\n  policy: MlpPolicy\n  n_timesteps: 100\n")
    manager = TrustExperimentManager(argparse.Namespace(), key, "MountainCar-v0", str(tmp_path), config=str(conf))
    assert manager.read_hyperparameters()[0]["n_timesteps"] == 100 and manager.config == str(conf)


@pytest.mark.parametrize("key", ["trust_ppo", "trust_ppo_kl"])
def test_atari_through_the_zoo_atari_entry(tmp_path, key):
    """
    An Atari env through the `atari` entry (rl-zoo3's, copied): AtariWrapper (84x84 grey frames), frame_stack 4, CnnPolicy,
    linear schedules; then enjoy with the same wrappers.
    """
    pytest.importorskip("ale_py", reason="ale-py (Atari ROMs) is not installed")
    pytest.importorskip("cv2", reason="opencv (AtariWrapper) is not installed")
    env_id = "PongNoFrameskip-v4"
    run(
        f"train --algo {key} --env {env_id} -n 128 -f {tmp_path} {QUIET} "
        "--hyperparams n_envs:2 n_steps:32 batch_size:32 n_epochs:1"
    )
    model = TrustPPO.load(run_folder(tmp_path, key, env_id) / f"{env_id}.zip")
    assert type(model.policy).__name__ == "ActorCriticCnnPolicy"
    assert model.observation_space.shape == (4, 84, 84) and model.num_timesteps == 128
    run(f"enjoy --algo {key} --env {env_id} -f {tmp_path} -n 20 --no-render")


@pytest.mark.parametrize("key", KEYS)
def test_every_packaged_entry_trains(tmp_path, key):
    """Each env entry of the file builds its envs (wrappers, normalization) and model, and trains a few steps."""
    for env_id in required_envs(key)[1:]:
        run(f"train --algo {key} --env {env_id} -n 8 -f {tmp_path} {QUIET} --hyperparams n_steps:8 batch_size:8")
        assert (run_folder(tmp_path, key, env_id) / f"{env_id}.zip").is_file()


def test_parse_schedule():
    assert isinstance(parse_schedule("kl_coef", "lin_0.5"), LinearSchedule)
    assert parse_schedule("kl_coef", "lin_0.5")(0.5) == pytest.approx(0.25)
    # stays at its end value when the last rollout overshoots n_timesteps (rl-zoo3's own goes negative)
    assert parse_schedule("clip_range", "lin_0.2")(-0.1) == 0.0
    assert parse_schedule("kl_coef", "lin_1_0.5")(0.0) == pytest.approx(0.5)
    cosine = parse_schedule("ent_coef", "cos_0.01")
    assert isinstance(cosine, CosineSchedule)
    assert cosine(1.0) == pytest.approx(0.01) and cosine(0.5) == pytest.approx(0.005) and cosine(0.0) == pytest.approx(0.0)
    assert parse_schedule("ent_coef", "cos_0.01_0.001")(0.0) == pytest.approx(0.001)
    for bad in ("exp_0.1", "lin_", "lin_abc", "cos_1_2_3", "0.1x"):
        with pytest.raises(ZooConfigError, match="ent_coef"):
            parse_schedule("ent_coef", bad)


# --- train and enjoy ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "env_id"), key_env_pairs(ENVS))
def test_train_then_enjoy(tmp_path, key, env_id):
    algos = registered()
    run(f"train --algo {key} --env {env_id} -n 256 -f {tmp_path} {QUIET} --hyperparams {TINY}")
    folder = run_folder(tmp_path, key, env_id)
    model_path = folder / f"{env_id}.zip"
    assert model_path.is_file()
    saved_config = yaml.load((folder / env_id / "config.yml").read_text(), Loader=yaml.UnsafeLoader)
    assert saved_config["n_steps"] == 64
    # The class's own load() reads it, with the variant of the key
    model = algos[key].load(model_path)
    for name, value in ZOO_ALGOS[key].variant.items():
        if isinstance(value, str) or value is None:
            assert getattr(model, name) == value
        else:
            assert getattr(model, name) is not None
    assert model.num_timesteps >= 256
    run(f"enjoy --algo {key} --env {env_id} -f {tmp_path} --no-render -n 300 --verbose 0")


def test_eval_checkpoints_and_continue(tmp_path):
    env_id, key = "CartPole-v1", "trust_ppo_kl"
    run(
        f"train --algo {key} --env {env_id} -n 1024 -f {tmp_path} --seed 1 --verbose 0 --eval-freq 512 --eval-episodes 2 "
        f"--save-freq 512 --hyperparams {TINY} ent_coef:'lin_0.01'"
    )
    folder = run_folder(tmp_path, key, env_id)
    assert (folder / "best_model.zip").is_file()
    assert (folder / "evaluations.npz").is_file()
    assert sorted(p.name for p in folder.glob("rl_model_*_steps.zip")) == ["rl_model_1024_steps.zip", "rl_model_512_steps.zip"]
    model = TrustPPO.load(folder / f"{env_id}.zip")
    assert isinstance(model.ent_coef, LinearSchedule)
    for flag in ("--load-best", "--load-checkpoint 512", "--load-last-checkpoint"):
        run(f"enjoy --algo {key} --env {env_id} -f {tmp_path} --no-render -n 50 --verbose 0 {flag}")
    # Continue training from the saved model (-i)
    run(f"train --algo {key} --env {env_id} -n 512 -f {tmp_path} {QUIET} -i {folder / env_id}.zip --hyperparams {TINY}")
    assert (run_folder(tmp_path, key, env_id, 2) / f"{env_id}.zip").is_file()


def test_tensorboard_log(tmp_path):
    pytest.importorskip("tensorboard")
    tensorboard = tmp_path / "tb"
    run(f"train --algo trust_trpo --env CartPole-v1 -n 256 -f {tmp_path} {QUIET} -tb {tensorboard} --hyperparams {TINY}")
    assert any((tensorboard / "CartPole-v1").rglob("events.out.tfevents.*"))


def test_default_entry_schedules_and_variant_defaults(tmp_path):
    # An env id that neither our file nor rl-zoo3's lists runs with our `default` entry (rl-zoo3's own fallback)
    env_id = "InvertedPendulum-v4"
    assert env_id not in load_yml(default_config_path("trust_ppo_kl_fixed")) and env_id not in zoo_yml("ppo")
    run(
        f"train --algo trust_ppo_kl_fixed --env {env_id} -n 128 -f {tmp_path} {QUIET} "
        f"--hyperparams {TINY} kl_coef:'cos_3.0' learning_rate:'cos_1e-3_1e-4'"
    )
    model = TrustPPO.load(run_folder(tmp_path, "trust_ppo_kl_fixed", env_id) / f"{env_id}.zip")
    assert model.policy_loss == "kl_penalty" and model.adaptive_kl_target is None
    assert model.kl_coef == CosineSchedule(3.0, 0.0)
    assert isinstance(model.learning_rate, CosineSchedule)

    # A custom config that leaves the variant out gets it from the key...
    conf = tmp_path / "custom.yml"
    conf.write_text("CartPole-v1:\n  policy: MlpPolicy\n  n_timesteps: 128\n  n_steps: 64\n  batch_size: 64\n")
    run(f"train --algo trust_ppo_kl --env CartPole-v1 -f {tmp_path} --conf-file {conf} {QUIET}")
    folder = run_folder(tmp_path, "trust_ppo_kl", "CartPole-v1")
    saved_config = yaml.load((folder / "CartPole-v1" / "config.yml").read_text(), Loader=yaml.UnsafeLoader)
    assert saved_config["policy_loss"] == "kl_penalty" and saved_config["adaptive_kl_target"] == 0.01
    # ... and one that contradicts it runs as configured, with a warning
    with pytest.warns(UserWarning, match="not the variant of --algo trust_ppo_kl"):
        run(
            f"train --algo trust_ppo_kl --env CartPole-v1 -f {tmp_path} --conf-file {conf} {QUIET} "
            "--hyperparams policy_loss:'clip'"
        )
    assert TrustPPO.load(run_folder(tmp_path, "trust_ppo_kl", "CartPole-v1", 2) / "CartPole-v1.zip").policy_loss == "clip"


def test_batch_size_larger_than_rollout_trains_as_sb3(tmp_path):
    # trust_trpo.yml's CartPole-v1 has batch_size 512, here the rollout is 2 envs * 64 steps: SB3's warning, kept as is
    with pytest.warns(UserWarning, match="truncated mini-batch of size 128"):
        run(f"train --algo trust_trpo --env CartPole-v1 -n 256 -f {tmp_path} {QUIET} --hyperparams n_steps:64")
    from sb3_trust.trpo import TrustTRPO

    assert TrustTRPO.load(run_folder(tmp_path, "trust_trpo", "CartPole-v1") / "CartPole-v1.zip").batch_size == 512


def test_zoo_mountain_car_continuous_config_trains(tmp_path):
    """rl-zoo3's own ppo.yml entry for MountainCarContinuous-v0 (n_steps 8, batch_size 256, n_envs 1, gSDE), as is."""
    entry = zoo_yml("ppo")["MountainCarContinuous-v0"]
    assert entry["n_steps"] == 8 and entry["batch_size"] == 256 and entry["n_envs"] == 1
    conf = tmp_path / "zoo_ppo.yml"
    conf.write_text(yaml.dump({"MountainCarContinuous-v0": {**entry, "n_timesteps": 64}}))
    with pytest.warns(UserWarning, match="truncated mini-batch of size 8"):
        run(f"train --algo trust_ppo --env MountainCarContinuous-v0 -f {tmp_path} --conf-file {conf} {QUIET}")
    folder = run_folder(tmp_path, "trust_ppo", "MountainCarContinuous-v0")
    model = TrustPPO.load(folder / "MountainCarContinuous-v0.zip")
    assert model.batch_size == 256 and model.n_steps == 8 and model._n_updates == 8 * model.n_epochs


def test_ctrl_c_saves_the_model(tmp_path):
    # rl-zoo3 catches KeyboardInterrupt in learn() and saves the model: it holds for our algorithms too
    callback = f"{__name__}.InterruptCallback"
    run(f"train --algo trust_npg --env CartPole-v1 -n 100000 -f {tmp_path} {QUIET} --hyperparams {TINY} callback:'{callback}'")
    from sb3_trust.trpo import TrustNPG

    model = TrustNPG.load(run_folder(tmp_path, "trust_npg", "CartPole-v1") / "CartPole-v1.zip")
    assert 100 <= model.num_timesteps < 100000


def test_entry_point_with_subproc_vec_env(tmp_path):
    # The real entry point (`python -m sb3_trust.zoo`), with SubprocVecEnv workers
    command = (
        f"{sys.executable} -m sb3_trust.zoo train --algo trust_ppo --env Pendulum-v1 --vec-env subproc -n 256 "
        f"-f {tmp_path} --num-threads 1 {QUIET} --hyperparams {TINY} n_envs:2"
    )
    result = subprocess.run(command.split(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = run_folder(tmp_path, "trust_ppo", "Pendulum-v1")
    args = yaml.load((folder / "Pendulum-v1" / "args.yml").read_text(), Loader=yaml.UnsafeLoader)
    assert args["vec_env"] == "subproc"
    assert TrustPPO.load(folder / "Pendulum-v1.zip").n_envs == 2
    run(f"enjoy --algo trust_ppo --env Pendulum-v1 -f {tmp_path} --no-render -n 50 --verbose 0")


CONSOLE_SCRIPT = os.path.join(os.path.dirname(sys.executable), "sb3-trust")  # installed beside this interpreter


@pytest.mark.skipif(not os.path.exists(CONSOLE_SCRIPT), reason="console script not installed")
def test_console_script():
    result = subprocess.run([CONSOLE_SCRIPT, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for key in KEYS:
        assert key in result.stdout


def test_record_video(tmp_path):
    pytest.importorskip("moviepy")
    pytest.importorskip("pygame")
    run(f"train --algo trust_trpo --env CartPole-v1 -n 128 -f {tmp_path} {QUIET} --hyperparams {TINY}")
    videos = tmp_path / "videos"
    run(f"record_video --algo trust_trpo --env CartPole-v1 -f {tmp_path} -n 20 -o {videos}")
    assert len(list(videos.glob("final-model-trust_trpo-CartPole-v1-*.mp4"))) == 1


def test_record_training(tmp_path):
    # rl-zoo3 runs record_video in subprocesses (sent through our entry point) then ffmpeg (ours falls back on the
    # binary of imageio-ffmpeg)
    pytest.importorskip("moviepy")
    pytest.importorskip("pygame")
    if shutil.which("ffmpeg") is None:
        pytest.importorskip("imageio_ffmpeg")
    run(f"train --algo trust_ppo --env CartPole-v1 -n 256 -f {tmp_path} {QUIET} --save-freq 256 --hyperparams n_steps:32")
    run(f"record_training --algo trust_ppo --env CartPole-v1 -f {tmp_path} -n 20")
    videos = run_folder(tmp_path, "trust_ppo", "CartPole-v1") / "videos"
    assert (videos / "training.mp4").is_file()


# --- hyperparameter optimization ---------------------------------------------------------------------------------


def shrunk(sampler):
    """The real sampler, with the sizes it sampled cut down so that a trial takes about a second."""

    def sample(trial, n_actions, n_envs, additional_args):
        hyperparams = sampler(trial, n_actions, n_envs, additional_args)
        hyperparams["n_steps"] = 32
        hyperparams["batch_size"] = min(hyperparams.get("batch_size", 64), 32 * n_envs)
        hyperparams["policy_kwargs"]["net_arch"] = dict(pi=[16], vf=[16])
        for name, largest in (("n_epochs", 2), ("n_critic_updates", 2), ("cg_max_steps", 5)):
            if name in hyperparams:
                hyperparams[name] = min(hyperparams[name], largest)
        return hyperparams

    return sample


@pytest.mark.parametrize(("key", "knob"), [("trust_ppo", "clip_range_vf"), ("trust_trpo", "kl_convention")])
def test_optimize_into_sqlite_then_train_a_trial(tmp_path, monkeypatch, key, knob):
    monkeypatch.setitem(samplers.SAMPLERS, key, shrunk(samplers.SAMPLERS[key]))
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    run(
        f"train --algo {key} --env CartPole-v1 -n 256 -f {tmp_path} --seed 3 --verbose 0 --optimize --n-trials 2 "
        f"--storage {storage} --study-name study --sampler random --n-evaluations 1 --eval-episodes 2 --no-optim-plots"
    )
    study = optuna.load_study(study_name="study", storage=storage)
    trials = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 2
    assert all(knob in trial.params for trial in trials)
    assert list((tmp_path / key).glob("report_CartPole-v1_2-trials-256-random-median_*.csv"))

    # Train with a stored trial's parameters (--trial-id goes through our converter), trial 0 too (rl-zoo3 alone skips
    # it: it tests `if trial_id:`); --hyperparams still has the last word. Run 1 is the optimization's folder.
    for run_id, trial_id in ((2, 1), (3, 0)):
        run(
            f"train --algo {key} --env CartPole-v1 -n 64 -f {tmp_path} {QUIET} --storage {storage} --study-name study "
            f"--trial-id {trial_id} --hyperparams {TINY}"
        )
        saved = yaml.load(
            (run_folder(tmp_path, key, "CartPole-v1", run_id) / "CartPole-v1" / "config.yml").read_text(),
            Loader=yaml.UnsafeLoader,
        )
        assert saved[knob] == study.trials[trial_id].params[knob] and saved["n_steps"] == 64
        assert saved["gamma"] == pytest.approx(1 - study.trials[trial_id].params["one_minus_gamma"])


@pytest.mark.parametrize(("key", "env_id"), key_env_pairs(ENVS))
def test_sampler_builds_a_model(key, env_id):
    """Every key's sampler, over several trials (to reach its branches): the sampled parameters make a valid model."""
    algos = registered()
    env = make_vec_env(env_id, n_envs=2, seed=0)
    n_actions = env.action_space.shape[0] if env.action_space.shape else 0
    entry = load_yml(default_config_path(key))[env_id]
    variant = {name: value for name, value in entry.items() if name in ZOO_ALGOS[key].variant}
    if "adaptive_kl_target" in variant:
        variant["kl_coef"] = 1.0
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    for _ in range(8):
        trial = study.ask()
        hyperparams = HYPERPARAMS_SAMPLER[key](trial, n_actions, 2, {})
        assert hyperparams["batch_size"] <= hyperparams["n_steps"] * 2
        # --trial-id reads the same hyperparameters back from the stored parameters (but the batch cap, done later)
        converted = HYPERPARAMS_CONVERTER[key](trial.params)
        assert {name: value for name, value in converted.items() if name != "batch_size"} == {
            name: value for name, value in hyperparams.items() if name != "batch_size"
        }
        model = algos[key]("MlpPolicy", env, **{**variant, **hyperparams})
        for name, value in hyperparams.items():
            if name not in ("policy_kwargs", "learning_rate", "clip_range", "clip_range_vf"):
                assert getattr(model, name) == value, name
        study.tell(trial, 0.0)
    env.close()


def test_samplers_search_the_variant_knobs():
    searched = {}
    for key in KEYS:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
        names = set()
        for _ in range(10):
            trial = study.ask()
            samplers.SAMPLERS[key](trial, 1, 1, {})
            names |= set(trial.params)
            study.tell(trial, 0.0)
        searched[key] = names
    assert {"target_kl", "clip_range", "clip_range_vf", "vf_clip_mode"} <= searched["trust_ppo"]
    assert {"adaptive_kl_target", "kl_coef", "clip_range_vf", "vf_clip_mode"} <= searched["trust_ppo_kl"]
    assert "clip_range" not in searched["trust_ppo_kl"] | searched["trust_ppo_kl_fixed"]
    assert {"kl_coef", "clip_range_vf"} <= searched["trust_ppo_kl_fixed"]
    assert {"kl_convention", "target_kl", "cg_max_steps", "n_critic_updates"} <= searched["trust_trpo"]
    assert searched["trust_npg"] == searched["trust_trpo"]
    for key, knob in [
        ("trust_ppo_dual_clip", "dual_clip"),
        ("trust_ppo_clip_higher", "clip_range_high"),
        ("trust_ppo_spo", "clip_range"),
        ("trust_ppo_adaptive_lr", "adaptive_lr_kl_target"),
        ("trust_ppo_vf_lr", "vf_learning_rate"),
    ]:
        assert searched["trust_ppo"] | {knob} == searched[key], key
    for key in PROJECTION_KEYS:
        assert searched["trust_ppo"] | (PROJECTION_VARIANT - {"policy_loss", "projection"}) == searched[key], key


# --- bad input ---------------------------------------------------------------------------------------------------


def test_unknown_algo_lists_the_keys(capsys):
    err = run_fails(capsys, "train --algo trust_ppo_typo --env CartPole-v1")
    assert "invalid choice: 'trust_ppo_typo'" in err
    for key in KEYS:
        assert f"'{key}'" in err
    err = run_fails(capsys, "enjoy --algo nope")
    assert "invalid choice" in err and "'trust_trpo'" in err


def test_key_whose_class_does_not_import(capsys, monkeypatch):
    import sb3_trust.zoo as zoo

    monkeypatch.setattr(zoo, "_UNAVAILABLE", {})
    monkeypatch.setitem(ZOO_ALGOS, "trust_fake", zoo.ZooAlgo("trust_fake", "sb3_trust.not_written_yet", ("TrustFake",)))
    err = run_fails(capsys, "train --algo trust_fake --env CartPole-v1")
    assert "--algo trust_fake is not available" in err and "sb3_trust.not_written_yet" in err
    assert "trust_fake" not in rl_zoo3.ALGOS
    # the other keys still work
    assert set(KEYS) <= set(rl_zoo3.ALGOS)


def test_unknown_command(capsys):
    err = run_fails(capsys, "trian --algo trust_ppo")
    assert "unknown command 'trian'" in err and "train" in err


@pytest.mark.parametrize(
    ("key", "params", "expected"),
    [
        ("trust_ppo", ["n_epoch:3"], ["`n_epoch` is not a keyword of TrustPPO (did you mean `n_epochs`?)"]),
        ("trust_trpo", ["clip_range:0.2", "ent_coef:0.01"], ["`clip_range` is not a keyword of TrustTRPO", "`ent_coef`"]),
        ("trust_npg", ["seed:3"], ["`seed` is set from the command line (--seed)"]),
        ("trust_ppo_kl", ["normalize_kwargs:{}"], ["`normalize_kwargs` is not read by rl-zoo3"]),
        ("trust_ppo_kl_fixed", ["kl_coef:'exp_1'"], ["`kl_coef: 'exp_1'` is not a number nor a schedule"]),
    ],
)
def test_unknown_config_key_fails_before_training(tmp_path, capsys, key, params, expected):
    err = run_fails(capsys, f"train --algo {key} --env CartPole-v1 -f {tmp_path} {QUIET} --hyperparams {' '.join(params)}")
    assert f"invalid config for --algo {key}" in err or "is not a number nor a schedule" in err
    for text in expected:
        assert text in err
    assert "Traceback" not in err
    assert not (tmp_path / key).exists(), "nothing is created before the check"


def test_unknown_key_in_conf_file(tmp_path, capsys):
    conf = tmp_path / "bad.yml"
    conf.write_text("default:\n  policy: MlpPolicy\n  n_timesteps: 100\n  polcy_loss: clip\n")
    err = run_fails(capsys, f"train --algo trust_ppo --env CartPole-v1 -f {tmp_path} --conf-file {conf}")
    assert str(conf) in err
    assert "`polcy_loss` is not a keyword of TrustPPO (did you mean `policy_loss`?)" in err


def test_bad_values_are_caught_by_the_class(tmp_path):
    # Values (not keys) are checked by the algorithm's constructor, before training, naming the parameter
    with pytest.raises(ValueError, match="vf_clip_mode"):
        run(f"train --algo trust_ppo --env CartPole-v1 -f {tmp_path} {QUIET} --hyperparams vf_clip_mode:'maxx'")
    assert not list((tmp_path / "trust_ppo").rglob("*.zip"))


def test_rl_zoo3_algos_unchanged_through_our_entry_point(tmp_path):
    # Other keys run exactly as in rl-zoo3 (no key check, rl-zoo3's own config)
    run(f"train --algo ppo --env CartPole-v1 -n 64 -f {tmp_path} {QUIET} --hyperparams n_steps:8")
    assert (run_folder(tmp_path, "ppo", "CartPole-v1") / "CartPole-v1.zip").is_file()


def test_enjoy_missing_model_and_mean_reward_output(tmp_path, capsys):
    with pytest.raises((AssertionError, ValueError)):
        run(f"enjoy --algo trust_ppo --env CartPole-v1 -f {tmp_path} --no-render")
    run(f"train --algo trust_ppo --env CartPole-v1 -n 256 -f {tmp_path} {QUIET} --hyperparams {TINY}")
    capsys.readouterr()
    run(f"enjoy --algo trust_ppo --env CartPole-v1 -f {tmp_path} --no-render -n 600")
    out = capsys.readouterr().out
    assert "Mean reward:" in out
    rewards = [float(line.split()[-1]) for line in out.splitlines() if line.startswith("Episode Reward:")]
    assert rewards and np.all(np.array(rewards) > 0)


@pytest.fixture(autouse=True)
def _chdir(tmp_path, monkeypatch):
    # rl-zoo3 writes a few things relative to the working directory
    monkeypatch.chdir(tmp_path)
    yield
    assert os.getcwd() == str(tmp_path)


@pytest.mark.parametrize("key", ["trust_ppo", "trust_trpo"])
def test_masked_env_trains_with_masks(tmp_path, key):
    """An env with an `action_masks()` method trains and is evaluated with its masks (`use_masking="auto"`)."""
    from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy

    register_envs()
    entry = {"n_timesteps": 256, "policy": "MlpPolicy", "n_steps": 64, "batch_size": 64}
    conf = tmp_path / "masked.yml"
    conf.write_text(yaml.dump({MASKED_ENV_ID: entry}))
    quiet = QUIET.replace("--eval-freq -1", "--eval-freq 128 --eval-episodes 3")
    run(f"train --algo {key} --env {MASKED_ENV_ID} -f {tmp_path} --conf-file {conf} {quiet}")
    folder = run_folder(tmp_path, key, MASKED_ENV_ID)
    model = registered()[key].load(folder / f"{MASKED_ENV_ID}.zip")
    assert model.use_masking and isinstance(model.policy, MaskableActorCriticPolicy)
    assert model.num_timesteps == 256
    # the zoo's evaluation used the masks (MaskableEvalCallback): no invalid action, every episode lasts the horizon
    lengths = np.load(folder / "evaluations.npz")["ep_lengths"]
    assert lengths.shape == (2, 3) and (lengths == MaskedChoiceEnv.horizon).all()


def test_ppo_mask_key_trains_and_is_evaluated_with_masks(tmp_path, capsys):
    """
    ``--algo ppo_mask`` is sb3-contrib's MaskablePPO with the packaged ppo_mask.yml (the masked env's entry, found
    through ``--gym-packages benchmarks.envs``), evaluated with the masks by the zoo (every episode lasts the horizon);
    an env id without an entry gets ``default``, not rl-zoo3's ppo.yml values (rl-zoo3 tunes no MaskablePPO).
    """
    algos = registered()
    assert ZOO_ALGOS["ppo_mask"].zoo_base is None and samplers.SAMPLERS["ppo_mask"] is not None
    entry = load_yml(default_config_path("ppo_mask"))[MASKED_ENV_ID]
    quiet = QUIET.replace("--eval-freq -1", "--eval-freq 128 --eval-episodes 3")
    run(
        f"train --algo ppo_mask --env {MASKED_ENV_ID} --gym-packages benchmarks.envs -n 256 -f {tmp_path} {quiet} "
        "--hyperparams n_steps:32"
    )
    folder = run_folder(tmp_path, "ppo_mask", MASKED_ENV_ID)
    saved = yaml.load((folder / MASKED_ENV_ID / "config.yml").read_text(), Loader=yaml.UnsafeLoader)
    assert dict(saved)["n_envs"] == entry["n_envs"] and dict(saved)["n_steps"] == 32
    model = algos["ppo_mask"].load(folder / f"{MASKED_ENV_ID}.zip")
    assert isinstance(model, MaskablePPO) and model.num_timesteps >= 256
    lengths = np.load(folder / "evaluations.npz")["ep_lengths"]
    assert lengths.shape == (2, 3) and (lengths == MaskedChoiceEnv.horizon).all()
    # no rl-zoo3 fallback: CartPole-v1 (which rl-zoo3's ppo.yml tunes) gets the default entry
    import argparse

    manager = TrustExperimentManager(argparse.Namespace(), "ppo_mask", "CartPole-v1", str(tmp_path))
    hyperparams, _ = manager.read_hyperparameters()
    assert manager.config == default_config_path("ppo_mask") and "No entry" not in capsys.readouterr().out
    assert hyperparams == load_yml(default_config_path("ppo_mask"))["default"]
