"""
What TrustPPO and TrustTRPO/TrustNPG add to SB3's ``OnPolicyAlgorithm`` in the same way: the choice between the
reference path and the accelerator, a checked learning-rate schedule, a checked ``load()``, and attaching the frozen
reference policy of the reference KL.
"""

import io
import os
import pathlib
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback
from stable_baselines3.common.vec_env import VecEnv

from sb3_trust.common.masking import collect_masked_rollouts, is_maskable_policy, masked_predict, setup_masked_model
from sb3_trust.common.reference import (
    REFERENCE_KWARGS,
    after_collection,
    check_reference_kwargs,
    set_reference_source,
    setup_reference,
)
from sb3_trust.common.safety import FiniteObservations, ForeignFormat, check_saved_model
from sb3_trust.common.validation import check_schedule_value

SelfTrustAlgorithm = TypeVar("SelfTrustAlgorithm", bound="TrustAlgorithmMixin")


class TrustAlgorithmMixin:
    """
    Mix into an ``OnPolicyAlgorithm`` subclass before it (``class TrustPPO(TrustAlgorithmMixin, OnPolicyAlgorithm)``).
    The class sets ``_trust_family``, the name recorded in its saved files (``_trust_algorithm``) and checked by ``load``.
    """

    _trust_family: ClassVar[str]
    # The other libraries' files that load() reads as this algorithm's
    _foreign_formats: ClassVar[tuple[ForeignFormat, ...]] = ()

    def learn(
        self: SelfTrustAlgorithm,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
        *,
        use_masking: bool = True,
    ) -> SelfTrustAlgorithm:
        """
        SB3's ``learn()``; ``tb_log_name`` defaults to the class name (``TrustPPO``, ``TrustTRPO``, ``TrustNPG``).
        ``use_masking=False`` (sb3-contrib ``MaskablePPO.learn``'s keyword) collects this call's rollouts without the
        env's masks, for a model whose ``use_masking`` is on; it has no effect otherwise.
        """
        algorithm: Any = self
        algorithm._collect_with_masks = use_masking
        return super().learn(  # type: ignore[misc]
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=type(self).__name__ if tb_log_name is None else tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

    def _setup_model(self) -> None:
        """SB3's, or for sb3-contrib's maskable policies (``use_masking``), ``MaskablePPO``'s (no ``use_sde`` keyword)."""
        algorithm: Any = self
        if is_maskable_policy(algorithm.policy_class):
            setup_masked_model(self)
        else:
            super()._setup_model()  # type: ignore[misc]

    def _accelerated(self, part: str, can_run: Callable[[Any, str], str | None], make: Callable[[Any], Any]) -> Any:
        """
        Choose the path of one part of the algorithm (``"collect"`` or ``"train"``) from the ``backend`` keyword and
        what the accelerator says it can run; record it in ``collect_backend`` / ``train_backend`` (and the reason in
        ``backend_reasons``), print it once at ``verbose >= 1``.

        :param part: ``"collect"`` or ``"train"``
        :param can_run: the accelerator's ``can_run(model, part) -> reason or None``
        :param make: builds the accelerator's runner for this model (called once per policy object)
        :return: the accelerator's runner, or ``None`` for the reference path
        :raise ValueError: with ``backend="accelerated"`` when the accelerator cannot run this part
        """
        algorithm: Any = self
        reason = "backend='reference'" if algorithm.backend == "reference" else can_run(self, part)
        if reason is not None and algorithm.backend == "accelerated":
            raise ValueError(
                f"{type(self).__name__}: backend='accelerated' cannot run the {part} part of this model: {reason}"
            )
        path = "reference" if reason is not None else "accelerated"
        if algorithm.backend_reasons.get(part, "") != reason and algorithm.verbose >= 1:
            because = f" ({reason})" if reason is not None else ""
            print(f"{type(self).__name__}: {part} on the {path} path{because}")
        algorithm.backend_reasons[part] = reason
        setattr(algorithm, f"{part}_backend", path)
        if reason is not None:
            return None
        runners = algorithm._runners
        if runners.get(part, (None, None))[0] is not algorithm.policy:
            runners[part] = (algorithm.policy, make(self))
        return runners[part][1]

    def collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        """
        SB3's ``collect_rollouts``, or the accelerator's (same semantics), then the reward shaping toward the reference
        policy, if any. A non-finite observation stops with a ``NonFiniteError``.
        """
        algorithm: Any = self
        collector = algorithm._collector()
        env = FiniteObservations(env, self)
        if algorithm.use_masking and getattr(algorithm, "_collect_with_masks", True):
            complete = collect_masked_rollouts(self, env, callback, rollout_buffer, n_rollout_steps)
        elif collector is None:
            complete = super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)  # type: ignore[misc]
        else:
            complete = collector.collect_rollouts(self, env, callback, rollout_buffer, n_rollout_steps)
        if complete:
            after_collection(self)
        return complete

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """
        SB3's ``predict()``, with sb3-contrib ``MaskablePPO``'s ``action_masks`` (one boolean per action, True: valid)
        for a model with ``use_masking`` on (see ``sb3_trust.common.masking``).
        """
        return masked_predict(self, observation, state, episode_start, deterministic, action_masks)

    def _update_learning_rate(self, optimizers: Any) -> None:
        """SB3's, with the schedule's value checked (a schedule that goes negative would train by gradient ascent)."""
        algorithm: Any = self
        check_schedule_value("learning_rate", algorithm.lr_schedule(algorithm._current_progress_remaining))
        super()._update_learning_rate(optimizers)  # type: ignore[misc]

    @classmethod
    def load(  # type: ignore[override]
        cls: type[SelfTrustAlgorithm],
        path: str | pathlib.Path | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: th.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs: Any,
    ) -> SelfTrustAlgorithm:
        """
        SB3's ``load()``, after checking that ``path`` is a readable file saved by this algorithm (its family: TrustTRPO
        and TrustNPG read each other's files) or by the other library's algorithm it replaces (``_foreign_formats``:
        SB3's PPO for TrustPPO, sb3-contrib's TRPO for TrustTRPO), with a clear ``ValueError`` otherwise, before anything
        is built. The variant and all training state are restored from the file. A file of the other library gets our
        settings that reproduce its updates (e.g. ``kl_convention="contrib"``), unless given here, so that training
        continues where that library left off.
        WARNING: model files contain pickled Python objects; load only files you trust, as with SB3.
        """
        foreign = check_saved_model(path, cls._trust_family, cls.__name__, cls._foreign_formats)
        if foreign is not None:
            kwargs = {**foreign.settings, **kwargs}
        return super().load(path, env, device, custom_objects, print_system_info, force_reset, **kwargs)  # type: ignore[misc]

    def set_reference_policy(self, reference_policy: "str | os.PathLike | BaseAlgorithm | ActorCriticPolicy") -> None:
        """
        Attach the frozen reference policy, e.g. after ``load()`` of a model whose reference was given as an object
        (objects are not saved with the model; paths are, and are reloaded automatically).

        :param reference_policy: a path to a saved SB3 model, an SB3 model or an ``ActorCriticPolicy`` with the same
            observation and action spaces
        """
        algorithm: Any = self
        settings = {name: getattr(algorithm, name) for name in REFERENCE_KWARGS}
        check_reference_kwargs({**settings, "reference_policy": reference_policy})
        set_reference_source(algorithm, reference_policy)
        setup_reference(algorithm)
