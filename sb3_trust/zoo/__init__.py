"""
rl-zoo3 integration: ``python -m sb3_trust.zoo <command> <rl-zoo3 flags>`` (or the ``sb3-trust`` console script).

The commands are rl-zoo3's own (``train``, ``enjoy``, ``record_video``, ``record_training``, ``plot_train``,
``plot_from_file``, ``all_plots``), run unchanged after our algorithms have been registered under our own keys in
rl-zoo3's tables at run time (rl-zoo3 itself is neither forked nor patched on disk):

====================== =============== ===========================================================================
key                    class           variant (set by ``hyperparams/<key>.yml``)
====================== =============== ===========================================================================
trust_ppo              TrustPPO        ``policy_loss: clip`` (PPO-clip)
trust_ppo_kl           TrustPPO        ``policy_loss: kl_penalty`` + ``adaptive_kl_target`` (adaptive β)
trust_ppo_kl_fixed     TrustPPO        ``policy_loss: kl_penalty``, fixed (or scheduled) ``kl_coef``
trust_ppo_dual_clip    TrustPPO        ``policy_loss: dual_clip`` + ``dual_clip`` (dual-clip PPO)
trust_ppo_clip_higher  TrustPPO        ``policy_loss: clip_higher`` + ``clip_range_high`` (DAPO's clip-higher)
trust_ppo_spo          TrustPPO        ``policy_loss: spo`` (Simple Policy Optimization)
trust_ppo_adaptive_lr  TrustPPO        PPO-clip + ``adaptive_lr_kl_target`` (KL-adaptive learning rate)
trust_ppo_vf_lr        TrustPPO        PPO-clip + ``vf_learning_rate`` (the critic's own learning rate)
trust_ppo_proj_<p>     TrustPPO        ``policy_loss: unclipped`` + ``projection: <p>``, ``<p>`` one of ``frobenius``,
                                       ``w2``, ``kl`` (trust-region projection layers; continuous actions only)
trust_trpo             TrustTRPO       ``step_rule: line_search`` (TRPO)
trust_npg              TrustNPG        ``step_rule: npg`` (natural policy gradient, no line search)
ppo_mask               MaskablePPO     sb3-contrib's PPO with action masks (the masking reference; rl-zoo3 has no key)
====================== =============== ===========================================================================

``ppo_mask`` is sb3-contrib's ``MaskablePPO`` unchanged, registered so that masked models of ours can be compared with
it through the same commands; its packaged file (``hyperparams/ppo_mask.yml``) has a ``default`` entry and the
benchmark's masked env, and no rl-zoo3 fallback (rl-zoo3 tunes no ``MaskablePPO``; its ``ppo.yml`` entries may use
keywords that ``MaskablePPO`` lacks, such as ``use_sde``).

What ``train`` adds to rl-zoo3's (through ``TrustExperimentManager``, for our keys only):

- ``--conf-file`` defaults to the ``hyperparams/<key>.yml`` shipped inside the installed package; an env id that it has
  no entry for but that the installed rl-zoo3 tunes for the base algorithm (its ``ppo.yml`` for the TrustPPO keys,
  ``trpo.yml`` for TrustTRPO and TrustNPG: the keywords are the same) gets rl-zoo3's values, with a line saying so,
  rather than our ``default`` entry;
- ``--trial-id 0`` loads trial 0 of the Optuna study (rl-zoo3 alone skips it);
- the settings that define a key's variant are filled in when a config leaves them out, with a warning when a config
  contradicts them;
- every config key must be a keyword of the algorithm or one of rl-zoo3's own keys, otherwise the run stops before
  anything is built, naming the key (``ZooConfigError``);
- schedule strings (``parse_schedule``): ``lin_<v>`` also for ``ent_coef`` and ``kl_coef``, and ``cos_<v>``,
  ``lin_<start>_<end>``, ``cos_<start>_<end>`` for every schedule-capable key; ``lin_<v>`` becomes SB3's
  ``LinearSchedule``, which stays at its end value when the last rollout overshoots ``n_timesteps`` (rl-zoo3's own
  goes below 0 there);
- a model with action masks (``use_masking``, on for an env with ``action_masks()``, and ``ppo_mask``'s
  ``MaskablePPO``) is evaluated (``--eval-freq``) with sb3-contrib's ``MaskableEvalCallback`` instead of SB3's
  ``EvalCallback``, i.e. with the masks.

A ``batch_size`` larger than the rollout ``n_steps * n_envs`` is passed on as rl-zoo3 does: the algorithms accept it as
SB3 does (a warning, one minibatch of the whole rollout).
"""

import contextlib
import difflib
import importlib
import inspect
import os
import re
import runpy
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

try:
    import rl_zoo3
    import rl_zoo3.train
    import yaml
    from rl_zoo3.exp_manager import ExperimentManager
    from rl_zoo3.hyperparams_opt import HYPERPARAMS_CONVERTER, HYPERPARAMS_SAMPLER
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(
        f"sb3_trust.zoo needs rl-zoo3 and its dependencies ({e}): install them with `pip install 'sb3-trust[zoo]'`"
    ) from e
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import EvalCallback

from sb3_trust import CosineSchedule, linear_schedule
from sb3_trust.zoo import samplers

__all__ = [
    "ZOO_ALGOS",
    "ZOO_CONFIG_KEYS",
    "TrustExperimentManager",
    "ZooAlgo",
    "ZooConfigError",
    "check_hyperparams",
    "default_config_path",
    "is_masked",
    "main",
    "parse_schedule",
    "register_zoo",
    "zoo_config_path",
]


class ZooConfigError(ValueError):
    """A config (yml, ``--hyperparams``) that cannot work: raised before anything is built."""


# Placeholder in ZooAlgo.variant: the key must be set to something other than None
NOT_NONE = object()


@dataclass(frozen=True)
class ZooAlgo:
    """
    One rl-zoo3 key of ours.

    :param key: the ``--algo`` value
    :param module: module holding the class (imported lazily)
    :param class_names: candidate class names, the first one that exists is used
    :param defaults: settings that define the variant, filled in when the config leaves them out
    :param variant: what a config must have to be this variant: ``{name: value}`` (``NOT_NONE``: any value but None)
    :param description: one line for ``--help``
    :param zoo_base: rl-zoo3's key whose ``hyperparams/<zoo_base>.yml`` serves the env ids our file has no entry for
        (``None``: no fallback, the ``default`` entry serves them)
    """

    key: str
    module: str
    class_names: tuple[str, ...]
    defaults: dict[str, Any] = field(default_factory=dict)
    variant: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    zoo_base: str | None = "ppo"

    def load(self) -> type[BaseAlgorithm]:
        """
        :return: the algorithm class
        :raise ImportError: if the module or the class is missing
        """
        module = importlib.import_module(self.module)
        for name in self.class_names:
            if hasattr(module, name):
                return getattr(module, name)
        raise ImportError(f"{self.module} has none of {', '.join(self.class_names)}")


def _trust_ppo(key: str, description: str, defaults: dict[str, Any], **variant: Any) -> ZooAlgo:
    """:return: a TrustPPO key whose variant is its ``policy_loss`` default and ``variant``"""
    variant = {"policy_loss": defaults["policy_loss"], **variant}
    return ZooAlgo(key, "sb3_trust.ppo", ("TrustPPO",), defaults=defaults, variant=variant, description=description)


ZOO_ALGOS: dict[str, ZooAlgo] = {
    algo.key: algo
    for algo in (
        _trust_ppo("trust_ppo", "TrustPPO, clipped surrogate (PPO-clip)", {"policy_loss": "clip"}),
        _trust_ppo(
            "trust_ppo_kl",
            "TrustPPO, KL penalty with adaptive β (policy_loss: kl_penalty + adaptive_kl_target)",
            {"policy_loss": "kl_penalty", "adaptive_kl_target": 0.01},
            adaptive_kl_target=NOT_NONE,
        ),
        _trust_ppo(
            "trust_ppo_kl_fixed",
            "TrustPPO, KL penalty with fixed β (policy_loss: kl_penalty, kl_coef)",
            {"policy_loss": "kl_penalty"},
            adaptive_kl_target=None,
        ),
        _trust_ppo(
            "trust_ppo_dual_clip",
            "TrustPPO, dual-clip PPO (policy_loss: dual_clip, dual_clip: c)",
            {"policy_loss": "dual_clip", "dual_clip": 3.0},
        ),
        _trust_ppo(
            "trust_ppo_clip_higher",
            "TrustPPO, asymmetric clipping (policy_loss: clip_higher, clip_range_low/high)",
            {"policy_loss": "clip_higher", "clip_range_high": 0.28},
        ),
        _trust_ppo(
            "trust_ppo_spo", "TrustPPO, Simple Policy Optimization (policy_loss: spo, ε = clip_range)", {"policy_loss": "spo"}
        ),
        _trust_ppo(
            "trust_ppo_adaptive_lr",
            "TrustPPO, PPO-clip with the KL-adaptive learning rate (adaptive_lr_kl_target)",
            {"policy_loss": "clip", "adaptive_lr_kl_target": 0.01},
            adaptive_lr_kl_target=NOT_NONE,
        ),
        _trust_ppo(
            "trust_ppo_vf_lr",
            "TrustPPO, PPO-clip with the value function's own learning rate (vf_learning_rate)",
            {"policy_loss": "clip", "vf_learning_rate": 1e-3},
            vf_learning_rate=NOT_NONE,
        ),
        *(
            _trust_ppo(
                f"trust_ppo_proj_{name}",
                f"TrustPPO, trust-region projection layer (policy_loss: unclipped, projection: {name})",
                {"policy_loss": "unclipped", "projection": name},
            )
            for name in ("frobenius", "w2", "kl")
        ),
        ZooAlgo(
            "trust_trpo",
            "sb3_trust.trpo",
            ("TrustTRPO",),
            defaults={"step_rule": "line_search"},
            variant={"step_rule": "line_search"},
            description="TrustTRPO (trust region, conjugate gradient, line search)",
            zoo_base="trpo",
        ),
        ZooAlgo(
            "trust_npg",
            "sb3_trust.trpo",
            ("TrustNPG", "TrustTRPO"),
            defaults={"step_rule": "npg"},
            variant={"step_rule": "npg"},
            description="TrustNPG (natural policy gradient: TRPO's step without line search)",
            zoo_base="trpo",
        ),
        ZooAlgo(
            "ppo_mask",
            "sb3_contrib",
            ("MaskablePPO",),
            description="sb3-contrib MaskablePPO (PPO with action masks; the reference for masked models of ours)",
            zoo_base=None,
        ),
    )
}

# Keys that rl-zoo3 reads from a config entry itself (they are not passed to the algorithm)
ZOO_CONFIG_KEYS = (
    "n_timesteps",
    "n_envs",
    "normalize",
    "env_wrapper",
    "vec_env_wrapper",
    "frame_stack",
    "callback",
    "env_kwargs",
    "monitor_kwargs",
)
# Keywords that rl-zoo3 passes to the algorithm from its command line: a config may not set them
SET_BY_COMMAND_LINE = {
    "env": "--env",
    "seed": "--seed",
    "verbose": "--verbose",
    "device": "--device",
    "tensorboard_log": "--tensorboard-log",
    "_init_setup_model": "(internal)",
}
# Schedule-capable keys whose strings rl-zoo3 converts itself (only `lin_<v>`)
ZOO_SCHEDULE_KEYS = ("learning_rate", "clip_range", "clip_range_vf", "delta_std")
# Schedule-capable keys of ours that rl-zoo3 leaves alone
EXTRA_SCHEDULE_KEYS = ("ent_coef", "kl_coef", "clip_range_low", "clip_range_high", "vf_learning_rate")

_SCHEDULE_PATTERN = re.compile(r"(lin|cos)_([^_]+)(?:_([^_]+))?")

# Keys whose class could not be imported, with the reason (filled by register_zoo)
_UNAVAILABLE: dict[str, str] = {}


def default_config_path(key: str) -> str:
    """
    :param key: one of ``ZOO_ALGOS``
    :return: path of ``hyperparams/<key>.yml`` inside the installed package
    """
    return str(resources.files("sb3_trust").joinpath("hyperparams", f"{key}.yml"))


def zoo_config_path(zoo_key: str) -> str:
    """
    :param zoo_key: one of rl-zoo3's keys (``ppo``, ``trpo``)
    :return: path of rl-zoo3's own ``hyperparams/<zoo_key>.yml`` (the installed rl-zoo3's)
    """
    return os.path.join(os.path.dirname(rl_zoo3.__file__), "hyperparams", f"{zoo_key}.yml")


def register_zoo() -> dict[str, type[BaseAlgorithm]]:
    """
    Register our keys in rl-zoo3's tables, in place: ``rl_zoo3.ALGOS`` (the dict that ``train``, ``enjoy``,
    ``record_video`` and ``ExperimentManager`` look up), ``HYPERPARAMS_SAMPLER`` and ``HYPERPARAMS_CONVERTER``.
    Idempotent. A key whose class cannot be imported (e.g. ``sb3_trust.trpo`` missing) is skipped; asking for it
    then gives the reason.

    :return: the registered keys and their classes
    """
    registered: dict[str, type[BaseAlgorithm]] = {}
    for key, algo in ZOO_ALGOS.items():
        try:
            cls = algo.load()
        except Exception as e:  # a module being written may fail in any way: keep the other keys working
            _UNAVAILABLE[key] = f"{type(e).__name__}: {e}"
            continue
        _UNAVAILABLE.pop(key, None)
        rl_zoo3.ALGOS[key] = cls
        HYPERPARAMS_SAMPLER[key] = samplers.SAMPLERS[key]
        HYPERPARAMS_CONVERTER[key] = samplers.CONVERTERS[key]
        registered[key] = cls
    return registered


def parse_schedule(key: str, value: str) -> Callable[[float], float]:
    """
    Turn a schedule string into a (picklable) schedule of ``progress_remaining`` (1 at the start, 0 at the end):
    ``lin_<start>`` / ``lin_<start>_<end>`` (linear, ``end`` defaults to 0, as rl-zoo3's ``lin_<v>``) or
    ``cos_<start>`` / ``cos_<start>_<end>`` (cosine annealing).

    :param key: the hyperparameter's name, for the error message
    :param value: the string
    :return: the schedule
    :raise ZooConfigError: for a malformed string
    """
    match = _SCHEDULE_PATTERN.fullmatch(value.strip())
    try:
        assert match is not None
        start = float(match.group(2))
        end = float(match.group(3)) if match.group(3) is not None else 0.0
    except (AssertionError, ValueError):
        raise ZooConfigError(
            f"`{key}: {value!r}` is not a number nor a schedule: use lin_<start>, lin_<start>_<end>, cos_<start> "
            "or cos_<start>_<end> (e.g. lin_3e-4, cos_0.01_0.001)"
        ) from None
    if match.group(1) == "lin":
        return linear_schedule(start, end)
    return CosineSchedule(start, end)


def accepted_keywords(cls: type) -> set[str] | None:
    """
    :param cls: an algorithm class
    :return: the keyword names its constructor accepts (following ``**kwargs`` up the MRO), ``None`` if any name is
        accepted
    """
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameters = inspect.signature(init).parameters.values()
        names.update(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names - {"self"}
    return None


def check_hyperparams(key: str, cls: type, hyperparams: dict[str, Any], where: str = "") -> None:
    """
    Check that every key left after rl-zoo3's preprocessing is a keyword the algorithm accepts.

    :param key: the ``--algo`` key
    :param cls: its class
    :param hyperparams: the hyperparameters that rl-zoo3 is about to pass to ``cls`` (its own keys removed)
    :param where: where they come from, for the message
    :raise ZooConfigError: naming each bad key
    """
    accepted = accepted_keywords(cls)
    problems = []
    if "policy" not in hyperparams:
        problems.append("`policy` is missing (e.g. policy: 'MlpPolicy')")
    if accepted is not None:
        allowed = accepted - set(SET_BY_COMMAND_LINE)
        for name in hyperparams:
            if name in allowed:
                continue
            if name in SET_BY_COMMAND_LINE:
                problems.append(f"`{name}` is set from the command line ({SET_BY_COMMAND_LINE[name]}), not from the config")
            elif name == "normalize_kwargs":
                problems.append("`normalize_kwargs` is not read by rl-zoo3: give `normalize` a dict instead")
            elif name in ("noise_type", "noise_std"):
                problems.append(f"`{name}` (action noise) is for off-policy algorithms, {cls.__name__} does not use it")
            else:
                close = difflib.get_close_matches(name, sorted(allowed | set(ZOO_CONFIG_KEYS)), n=1)
                hint = f" (did you mean `{close[0]}`?)" if close else ""
                problems.append(f"`{name}` is not a keyword of {cls.__name__}{hint}")
    if problems:
        keywords = ", ".join(sorted(accepted - set(SET_BY_COMMAND_LINE))) if accepted is not None else "any"
        raise ZooConfigError(
            f"invalid config for --algo {key}{where}:\n  - "
            + "\n  - ".join(problems)
            + f"\nAccepted: the keywords of {cls.__name__} ({keywords}) and rl-zoo3's own keys ({', '.join(ZOO_CONFIG_KEYS)})."
        )


def _variant_mismatches(
    algo: ZooAlgo, hyperparams: dict[str, Any], accepted: set[str] | None, only_set: bool = False
) -> list[str]:
    """
    :param algo: the key
    :param hyperparams: the config
    :param accepted: the keywords of the algorithm (``None``: any)
    :param only_set: only look at the keys that the config sets
    :return: the settings that contradict the key's variant
    """
    mismatches = []
    for name, required in algo.variant.items():
        if (accepted is not None and name not in accepted) or (only_set and name not in hyperparams):
            continue
        value = hyperparams.get(name)
        if (required is NOT_NONE and value is None) or (required is not NOT_NONE and value != required):
            wanted = "a value" if required is NOT_NONE else repr(required)
            mismatches.append(f"{name}={value!r} (the variant needs {wanted})")
    return mismatches


class TrustExperimentManager(ExperimentManager):
    """
    rl-zoo3's ``ExperimentManager`` with the additions listed in the module docstring, for our keys only; any other
    ``--algo`` behaves exactly as in rl-zoo3.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if kwargs.get("config") is None and self._zoo_algo is not None:
            self.config = default_config_path(self.algo)

    @property
    def _zoo_algo(self) -> ZooAlgo | None:
        return ZOO_ALGOS.get(self.algo)

    def _has_entry(self, path: str) -> bool:
        """:return: whether the yml file at ``path`` has an entry for this env id (``atari`` for an Atari env)"""
        with open(path) as file:
            entries = yaml.safe_load(file) or {}
        return self.env_name.gym_id in entries or (self._is_atari and "atari" in entries)

    def read_hyperparameters(self) -> tuple[dict[str, Any], dict[str, Any]]:
        algo = self._zoo_algo
        if algo is None:
            return super().read_hyperparameters()
        # Our packaged file lists the env ids we ship values for; any other env id that rl-zoo3 tunes for the base
        # algorithm gets rl-zoo3's values (the keywords are the same) rather than our `default` entry
        if algo.zoo_base is not None and self.config == default_config_path(self.algo) and not self._has_entry(self.config):
            zoo_path = zoo_config_path(algo.zoo_base)
            if self._has_entry(zoo_path):
                print(f"No entry for {self.env_name.gym_id} in {self.config}: the values of rl-zoo3's {zoo_path}")
                self.config = zoo_path
        hyperparams, saved_hyperparams = super().read_hyperparameters()
        if self.trial_id == 0 and self.storage and self.study_name:
            # rl-zoo3 tests `if self.trial_id:`, which skips trial 0; same order as rl-zoo3: config < trial < --hyperparams
            print("Loading from Optuna study...")
            hyperparams.update(self.load_trial(self.storage, self.study_name, self.trial_id))
            hyperparams.update(self.custom_hyperparams or {})
        accepted = accepted_keywords(rl_zoo3.ALGOS[self.algo])
        # A config that sets the variant's keys otherwise runs as configured (with a warning); one that leaves them
        # out gets the variant's defaults
        explicit = {name: value for name, value in hyperparams.items() if name in algo.variant}
        mismatches = _variant_mismatches(algo, explicit, accepted, only_set=True)
        if mismatches:
            warnings.warn(
                f"The config is not the variant of --algo {self.algo} ({algo.description}): {', '.join(mismatches)}. "
                f"It will run as configured, but be logged under {self.log_folder}/{self.algo}/. Use the key of that "
                "variant, or remove these settings, to silence this warning.",
                UserWarning,
            )
        else:
            for name, value in algo.defaults.items():
                if name not in hyperparams and (accepted is None or name in accepted):
                    hyperparams[name] = value
                    print(f"Setting {name}={value!r} (the variant of --algo {self.algo})")
        saved_hyperparams = OrderedDict((name, hyperparams[name]) for name in sorted(hyperparams))
        return hyperparams, saved_hyperparams

    def _preprocess_schedules(self, hyperparams: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        if self._zoo_algo is None:
            return super()._preprocess_schedules(hyperparams)
        # Schedule strings are ours: rl-zoo3's `lin_<v>` (SimpleLinearSchedule) goes below 0 when the last rollout
        # overshoots n_timesteps (a negative clip range or learning rate), which TrustPPO rejects; SB3's LinearSchedule
        # stops at the end value. rl-zoo3 still wraps the constants in ConstantSchedule, and None is kept as is.
        handled: dict[str, Any] = {}
        for name in (*ZOO_SCHEDULE_KEYS, *EXTRA_SCHEDULE_KEYS):
            if name not in hyperparams:
                continue
            value = hyperparams[name]
            if value is None:  # e.g. clip_range_vf: None (no value clipping), which rl-zoo3 rejects
                handled[name] = hyperparams.pop(name)
            elif isinstance(value, str):
                handled[name] = parse_schedule(name, hyperparams.pop(name))
        hyperparams = super()._preprocess_schedules(hyperparams)
        hyperparams.update(handled)
        return hyperparams

    def learn(self, model: BaseAlgorithm) -> None:
        """rl-zoo3's, with the evaluation of a masked model (``use_masking``, or ``MaskablePPO``) done with its masks."""
        if self._zoo_algo is not None and is_masked(model):
            self.callbacks = [_masked_evaluation(callback) for callback in self.callbacks]
        super().learn(model)

    def _preprocess_hyperparams(
        self, hyperparams: dict[str, Any]
    ) -> tuple[dict[str, Any], Callable | None, list, Callable | None]:
        if self._zoo_algo is None:
            return super()._preprocess_hyperparams(hyperparams)
        if "n_timesteps" not in hyperparams and self.n_timesteps <= 0:
            raise ZooConfigError(f"invalid config for --algo {self.algo} in {self.config}: `n_timesteps` is missing")
        hyperparams.setdefault("n_timesteps", self.n_timesteps)
        processed, env_wrapper, callbacks, vec_env_wrapper = super()._preprocess_hyperparams(hyperparams)
        sources = self.config + (" and --hyperparams" if self.custom_hyperparams else "")
        where = f" --env {self.env_name.gym_id} (from {sources})"
        check_hyperparams(self.algo, rl_zoo3.ALGOS[self.algo], processed, where=where)
        return processed, env_wrapper, callbacks, vec_env_wrapper


def is_masked(model: BaseAlgorithm) -> bool:
    """
    :param model: a model
    :return: whether it acts with action masks: sb3-contrib's ``MaskablePPO``, or one of ours with ``use_masking`` on
    """
    return isinstance(model, MaskablePPO) or bool(getattr(model, "use_masking", False))


def _masked_evaluation(callback: Any) -> Any:
    """:return: rl-zoo3's ``EvalCallback`` as sb3-contrib's ``MaskableEvalCallback`` (same settings); others as given"""
    if type(callback) is not EvalCallback:
        return callback
    return MaskableEvalCallback(
        callback.eval_env,
        callback_on_new_best=callback.callback_on_new_best,
        n_eval_episodes=callback.n_eval_episodes,
        eval_freq=callback.eval_freq,
        log_path=None if callback.log_path is None else os.path.dirname(callback.log_path),
        best_model_save_path=callback.best_model_save_path,
        deterministic=callback.deterministic,
        render=callback.render,
        verbose=callback.verbose,
        warn=callback.warn,
    )


@contextlib.contextmanager
def _patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def _train() -> None:
    # rl_zoo3.train builds its ExperimentManager from the name it imported: use ours for this call
    with _patched(rl_zoo3.train, "ExperimentManager", TrustExperimentManager):
        rl_zoo3.train.train()


def _enjoy() -> None:
    from rl_zoo3.enjoy import enjoy

    enjoy()


def _run_script(module: str) -> None:
    # record_video and record_training only run under `if __name__ == "__main__"`
    runpy.run_module(module, run_name="__main__", alter_sys=False)


@contextlib.contextmanager
def _ffmpeg_on_path() -> Iterator[None]:
    """
    rl-zoo3's record_training runs the ``ffmpeg`` command: when there is none on the PATH, use the binary that the
    ``imageio-ffmpeg`` package ships (a dependency of moviepy, which video recording needs anyway), if installed.
    """
    try:
        import imageio_ffmpeg
    except ImportError:
        imageio_ffmpeg = None
    if shutil.which("ffmpeg") is not None or imageio_ffmpeg is None:
        yield
        return
    with tempfile.TemporaryDirectory() as folder:
        os.symlink(imageio_ffmpeg.get_ffmpeg_exe(), os.path.join(folder, "ffmpeg"))
        saved_path = os.environ.get("PATH", "")
        os.environ["PATH"] = folder + os.pathsep + saved_path
        try:
            yield
        finally:
            os.environ["PATH"] = saved_path


def _record_training() -> None:
    # rl-zoo3's record_training runs `python -m rl_zoo3.record_video ...` in subprocesses, where our keys are not
    # registered: send those calls through this entry point instead
    original_call = subprocess.call

    def call(command: Any, *args: Any, **kwargs: Any) -> int:
        if isinstance(command, list) and command[1:3] == ["-m", "rl_zoo3.record_video"]:
            command = [sys.executable, "-m", "sb3_trust.zoo", "record_video", *command[3:]]
        return original_call(command, *args, **kwargs)

    with _patched(subprocess, "call", call), _ffmpeg_on_path():
        _run_script("rl_zoo3.record_training")


def _plot(name: str) -> Callable[[], None]:
    def run() -> None:
        from rl_zoo3 import plots

        getattr(plots, name)()

    return run


COMMANDS: dict[str, Callable[[], None]] = {
    "train": _train,
    "enjoy": _enjoy,
    "record_video": lambda: _run_script("rl_zoo3.record_video"),
    "record_training": _record_training,
    "plot_train": _plot("plot_train"),
    "plot_from_file": _plot("plot_from_file"),
    "all_plots": _plot("all_plots"),
}


def _usage() -> str:
    lines = [
        "usage: python -m sb3_trust.zoo {" + ",".join(COMMANDS) + "} [rl-zoo3 flags]",
        "       (or: sb3-trust ...)",
        "",
        "Runs rl-zoo3's command with the sb3_trust algorithms registered; `<command> -h` lists its flags.",
        "Keys (--algo):",
    ]
    for key, algo in ZOO_ALGOS.items():
        status = f"  [unavailable: {_UNAVAILABLE[key]}]" if key in _UNAVAILABLE else ""
        lines.append(f"  {key:<20}{algo.description}{status}")
    lines.append("Without --conf-file, the config of a key is the packaged hyperparams/<key>.yml.")
    return "\n".join(lines)


def _requested_algo(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--algo" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--algo="):
            return arg.split("=", 1)[1]
    return None


def _fail(command: str, message: str) -> None:
    print(f"sb3-trust {command}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> None:
    """
    Entry point: ``python -m sb3_trust.zoo <command> <rl-zoo3 flags>``.

    :param argv: the arguments (default: ``sys.argv[1:]``), the first one being the command
    :raise SystemExit: with status 2 on bad input (unknown command, unknown ``--algo``, bad config)
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    register_zoo()
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        _fail(command, f"unknown command {command!r}, choose from: {', '.join(COMMANDS)}\n\n{_usage()}")
    algo = _requested_algo(rest)
    if algo in _UNAVAILABLE:
        _fail(command, f"--algo {algo} is not available: its class could not be imported ({_UNAVAILABLE[algo]})")

    saved_argv = sys.argv
    sys.argv = [f"sb3-trust {command}", *rest]
    try:
        COMMANDS[command]()
    except ZooConfigError as e:
        _fail(command, str(e))
    finally:
        sys.argv = saved_argv
