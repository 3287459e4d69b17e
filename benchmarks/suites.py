"""
What the benchmark runs: the benchmark algorithms (our rl-zoo3 keys, the two references, and derived variants such
as "no clipping") and the suites (sets of envs × algorithms), plus the checks that turn bad input into an error
naming the valid choices.

A benchmark algorithm is an rl-zoo3 key (whose yml entry gives the config) plus optional ``--hyperparams``-style
overrides; its ``name`` is what results are filed and reported under.
"""

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from benchmarks.envs import MASKED_ENV_ID, package_hint

REFERENCE_KEYS = ("ppo", "trpo")
OUR_KEYS = ("trust_ppo", "trust_ppo_kl", "trust_ppo_kl_fixed", "trust_trpo", "trust_npg")
# TrustPPO with a trust-region projection layer (Otto et al., ICLR 2021), one key per projection
PROJECTION_KEYS = ("trust_ppo_proj_frobenius", "trust_ppo_proj_w2", "trust_ppo_proj_kl")
# yml entries that are not env ids
NON_ENV_ENTRIES = ("default", "atari")


class BenchmarkInputError(ValueError):
    """Bad input (unknown suite, env or algorithm, bad option value): reported before anything runs."""


@dataclass(frozen=True)
class BenchAlgo:
    """
    One algorithm of the benchmark.

    :param name: the name results are filed and reported under
    :param zoo_key: the rl-zoo3 key (``--algo``): its class and its yml (rl-zoo3's ``ppo.yml``/``trpo.yml`` for the
        references, ``sb3_trust/hyperparams/<key>.yml`` for ours)
    :param reference: name of the reference it is compared with (``None`` for a reference itself)
    :param hyperparams: overrides applied on top of the yml entry, as rl-zoo3's ``--hyperparams``
    :param description: one line for listings and the report
    :param variant_of: the algorithm of ours it is a variant of, if any: the report also compares it with that one
        (the variants table)
    """

    name: str
    zoo_key: str
    reference: str | None
    hyperparams: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    variant_of: str | None = None

    @property
    def is_reference(self) -> bool:
        """:return: whether it is one of the reference implementations"""
        return self.reference is None


ALGOS: dict[str, BenchAlgo] = {
    algo.name: algo
    for algo in (
        BenchAlgo("ppo", "ppo", None, description="SB3 PPO (reference), rl-zoo3's ppo.yml"),
        BenchAlgo("trpo", "trpo", None, description="sb3-contrib TRPO (reference), rl-zoo3's trpo.yml"),
        BenchAlgo("trust_ppo", "trust_ppo", "ppo", description="TrustPPO, clipped surrogate (PPO-clip)"),
        BenchAlgo("trust_ppo_kl", "trust_ppo_kl", "ppo", description="TrustPPO, adaptive KL penalty"),
        BenchAlgo("trust_ppo_kl_fixed", "trust_ppo_kl_fixed", "ppo", description="TrustPPO, fixed KL penalty"),
        BenchAlgo(
            "trust_ppo_unclipped",
            "trust_ppo",
            "ppo",
            hyperparams={"policy_loss": "unclipped"},
            description="TrustPPO, no clipping or penalty (trust_ppo + policy_loss: unclipped; PPO paper Table 1 baseline)",
        ),
        BenchAlgo("trust_trpo", "trust_trpo", "trpo", description="TrustTRPO (conjugate gradient + line search)"),
        BenchAlgo("trust_npg", "trust_npg", "trpo", description="TrustNPG (natural policy gradient, no line search)"),
        *(
            BenchAlgo(key, key, "ppo", description=f"TrustPPO, {key.rsplit('_', 1)[1]} projection layer, unclipped surrogate")
            for key in PROJECTION_KEYS
        ),
    )
}

# ----- The newer PPO variants (issue 21): compared with PPO-clip (ours, their `variant_of`) and with SB3 PPO ---------
VARIANT_KEYS = ("trust_ppo_dual_clip", "trust_ppo_clip_higher", "trust_ppo_spo", "trust_ppo_adaptive_lr", "trust_ppo_vf_lr")
_VARIANT_DESCRIPTIONS = (
    "dual-clip PPO",
    "asymmetric clipping (DAPO's clip-higher)",
    "Simple Policy Optimization",
    "PPO-clip with the KL-adaptive learning rate",
    "PPO-clip with the value function's own learning rate",
)
ALGOS.update(
    (key, BenchAlgo(key, key, "ppo", description=f"TrustPPO, {description}", variant_of="trust_ppo"))
    for key, description in zip(VARIANT_KEYS, _VARIANT_DESCRIPTIONS, strict=True)
)

# ----- Masking (issue 22): sb3-contrib's MaskablePPO, the reference of our masked models on the masked env ----------
ALGOS["ppo_mask"] = BenchAlgo(
    "ppo_mask", "ppo_mask", None, description="sb3-contrib MaskablePPO (reference for action masking), ppo_mask.yml"
)
# On these envs, an algorithm whose reference is a key is compared with the value instead (the suites' default
# references cannot mask actions: on the masked env both TrustPPO and TrustTRPO are compared with MaskablePPO)
ENV_REFERENCES: dict[str, dict[str, str]] = {MASKED_ENV_ID: {"ppo": "ppo_mask", "trpo": "ppo_mask"}}


def reference_for(algo: str, env: str) -> str | None:
    """
    :param algo: a benchmark algorithm name
    :param env: an env id
    :return: the name of the reference it is compared with on the env (its own, unless ``ENV_REFERENCES`` overrides
        it there), ``None`` for a reference itself or an unknown algorithm
    """
    bench = ALGOS.get(algo)
    if bench is None or bench.reference is None:
        return None
    return ENV_REFERENCES.get(env, {}).get(bench.reference, bench.reference)


# The PPO variants of the PPO paper's Table 1, in the order the paper ranks them (best first)
PPO_PAPER_ORDER = ("trust_ppo", "trust_ppo_kl", "trust_ppo_kl_fixed", "trust_ppo_unclipped")


@dataclass(frozen=True)
class Suite:
    """
    :param name: the ``--suite`` value
    :param envs: env ids
    :param algos: benchmark algorithm names (the references included)
    :param description: one line for listings and the report
    :param skip: (env, algorithm) pairs that the suite does not run (e.g. no config for the env), with the reason in
        ``description``
    :param budgets: (env, steps) pairs: the budget of every run on the env (instead of each yml's ``n_timesteps``,
        the same for the references and ours), unless ``--timesteps`` is given
    """

    name: str
    envs: tuple[str, ...]
    algos: tuple[str, ...]
    description: str = ""
    skip: tuple[tuple[str, str], ...] = ()
    budgets: tuple[tuple[str, int], ...] = ()

    def runs(self, env: str, algo: str) -> bool:
        """
        :param env: one of its envs
        :param algo: one of its algorithms
        :return: whether the suite runs the algorithm on the env
        """
        return (env, algo) not in self.skip

    def budget(self, env: str) -> int | None:
        """
        :param env: one of its envs
        :return: the suite's budget on the env, ``None``: each yml entry's ``n_timesteps``
        """
        return dict(self.budgets).get(env)


_QUICK_ENVS = ("CartPole-v1", "Pendulum-v1")
_CLASSIC_ENVS = (*_QUICK_ENVS, "Acrobot-v1", "LunarLander-v3", "LunarLanderContinuous-v3")
_MUJOCO_ENVS = ("Swimmer-v4", "Hopper-v4", "HalfCheetah-v4", "Walker2d-v4")

SUITES: dict[str, Suite] = {
    suite.name: suite
    for suite in (
        Suite("quick", _QUICK_ENVS, (*REFERENCE_KEYS, *OUR_KEYS), "CartPole-v1 and Pendulum-v1, every key"),
        Suite("classic", _CLASSIC_ENVS, (*REFERENCE_KEYS, *OUR_KEYS), "classic control + Box2D, every key"),
        Suite(
            "mujoco",
            _MUJOCO_ENVS,
            (*REFERENCE_KEYS, *PPO_PAPER_ORDER, "trust_trpo"),
            "MuJoCo v4 at the zoo's budgets (1M): PPO-clip, adaptive KL, fixed KL, no clipping, TRPO",
        ),
        Suite(
            "projections",
            ("Hopper-v4", "HalfCheetah-v4", "Walker2d-v4"),
            ("ppo", "trust_ppo", *PROJECTION_KEYS),
            "MuJoCo v4 at the zoo's budgets (1M): the three projection layers against PPO-clip (same other hyperparameters)",
        ),
    )
}

# ----- Suites of the newer PPO variants (issue 21), masking (issue 22) and new env families (issue 24) ---------------
_VARIANT_SUITE_ALGOS = ("ppo", "trust_ppo", *VARIANT_KEYS)
_EXTRA_ENVS = ("MountainCarContinuous-v0", "MiniGrid-DoorKey-5x5-v0", "BipedalWalker-v3")
# BipedalWalker-v3: rl-zoo3's PPO budget (5M steps, 32 envs, ≈ 2.5 h per SB3 PPO run here) is cut to 2M for every algorithm
EXTRA_BUDGETS = (("BipedalWalker-v3", 2_000_000),)
SUITES.update(
    (suite.name, suite)
    for suite in (
        Suite(
            "variants",
            _CLASSIC_ENVS,
            _VARIANT_SUITE_ALGOS,
            "classic envs (5 seeds): the newer PPO variants vs PPO-clip (ours) and SB3 PPO",
        ),
        Suite(
            "variants_mujoco",
            ("Hopper-v4", "HalfCheetah-v4"),
            _VARIANT_SUITE_ALGOS,
            "Hopper-v4 and HalfCheetah-v4 (5 seeds) at 1M: the newer PPO variants vs PPO-clip (ours) and SB3 PPO",
        ),
        Suite(
            "masked",
            (MASKED_ENV_ID,),
            ("ppo_mask", "trust_ppo", "trust_trpo"),
            "the masked env (benchmarks/envs.py, 5 seeds): TrustPPO and TrustTRPO with masks vs MaskablePPO",
        ),
        Suite(
            "extra",
            _EXTRA_ENVS,
            ("ppo", "trpo", "trust_ppo", "trust_trpo"),
            "one env per new family: sparse reward, MiniGrid (no TRPO: rl-zoo3 has no config), 2nd Box2D (2M steps)",
            skip=(("MiniGrid-DoorKey-5x5-v0", "trpo"), ("MiniGrid-DoorKey-5x5-v0", "trust_trpo")),
            budgets=EXTRA_BUDGETS,
        ),
    )
)


def _choices(values: Sequence[str]) -> str:
    return ", ".join(values)


def get_suite(name: str) -> Suite:
    """
    :param name: a suite name
    :return: the suite
    :raise BenchmarkInputError: naming the valid suites
    """
    if name not in SUITES:
        raise BenchmarkInputError(f"unknown suite {name!r}; valid suites: {_choices(list(SUITES))}")
    return SUITES[name]


def get_algo(name: str) -> BenchAlgo:
    """
    :param name: a benchmark algorithm name
    :return: the algorithm
    :raise BenchmarkInputError: naming the valid algorithms
    """
    if name not in ALGOS:
        raise BenchmarkInputError(f"unknown algorithm {name!r}; valid algorithms: {_choices(list(ALGOS))}")
    return ALGOS[name]


def yml_path(zoo_key: str) -> str:
    """
    :param zoo_key: ``ppo``/``trpo`` (rl-zoo3's files) or one of our keys
    :return: the yml file the key's configs come from
    """
    from benchmarks.zoo_configs import zoo_yml_path

    return zoo_yml_path(zoo_key)


@functools.cache
def _yml_entries(path: str, mtime: float) -> dict[str, Any]:
    with open(path) as file:
        return yaml.safe_load(file) or {}


def yml_entries(zoo_key: str) -> dict[str, Any]:
    """
    :param zoo_key: an rl-zoo3 key
    :return: the yml file's entries (read as rl-zoo3 reads them, with ``yaml.safe_load``)
    """
    path = yml_path(zoo_key)
    if not os.path.isfile(path):
        raise BenchmarkInputError(f"no hyperparameter file for {zoo_key!r}: {path} does not exist")
    return _yml_entries(path, os.path.getmtime(path))


def env_ids(zoo_key: str) -> list[str]:
    """
    :param zoo_key: an rl-zoo3 key
    :return: the env ids that have an entry of their own in its yml (the benchmark does not use ``default``)
    """
    return sorted(name for name in yml_entries(zoo_key) if name not in NON_ENV_ENTRIES)


def yml_entry(algo: BenchAlgo, env_id: str, hyperparams: dict[str, Any] | None = None) -> dict[str, Any]:
    """
    :param algo: the benchmark algorithm
    :param env_id: the env id
    :param hyperparams: extra overrides (after the algorithm's own)
    :return: the entry as rl-zoo3 will use it: the yml entry updated with the overrides
    :raise BenchmarkInputError: if the yml has no entry for the env
    """
    entries = yml_entries(algo.zoo_key)
    if env_id not in entries or env_id in NON_ENV_ENTRIES:
        raise BenchmarkInputError(
            f"unknown env {env_id!r} for {algo.name} (no entry in {yml_path(algo.zoo_key)}); "
            f"valid envs: {_choices(env_ids(algo.zoo_key))}"
        )
    entry = dict(entries[env_id])
    entry.update(algo.hyperparams)
    entry.update(hyperparams or {})
    return entry


def budget(algo: BenchAlgo, env_id: str, hyperparams: dict[str, Any] | None = None, timesteps: int | None = None) -> int:
    """
    :param algo: the benchmark algorithm
    :param env_id: the env id
    :param hyperparams: extra overrides
    :param timesteps: the ``--timesteps`` override, if any
    :return: the training budget of the run (the override, else the yml's ``n_timesteps``)
    """
    if timesteps is not None:
        return int(timesteps)
    return int(float(yml_entry(algo, env_id, hyperparams)["n_timesteps"]))


def check_env_registered(env_id: str) -> None:
    """
    :param env_id: an env id
    :raise BenchmarkInputError: if gymnasium does not know it
    """
    import gymnasium as gym

    if env_id not in gym.envs.registry:
        known = sorted({env for suite in SUITES.values() for env in suite.envs})
        raise BenchmarkInputError(
            f"unknown env {env_id!r} (not registered in gymnasium{package_hint(env_id)}); the suites use: {_choices(known)}"
        )
