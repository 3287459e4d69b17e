"""
What TrustPPO and TrustTRPO/TrustNPG add to SB3's ``OnPolicyAlgorithm`` in the same way: the choice of the lean
policy path, a checked ``load()``, and attaching the frozen reference policy of the reference KL.
"""

import io
import os
import pathlib
from typing import Any, ClassVar, TypeVar

import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import GymEnv

from sb3_trust.common.fast_policy import FastActorCritic, unsupported_reason
from sb3_trust.common.fast_rollout import FlatRollout
from sb3_trust.common.reference import check_reference_kwargs, setup_reference
from sb3_trust.common.safety import check_saved_model

SelfTrustAlgorithm = TypeVar("SelfTrustAlgorithm", bound="TrustAlgorithmMixin")


class TrustAlgorithmMixin:
    """
    Mix into an ``OnPolicyAlgorithm`` subclass before it (``class TrustPPO(TrustAlgorithmMixin, OnPolicyAlgorithm)``).
    The class sets ``_trust_family``, the name recorded in its saved files (``_trust_algorithm``) and checked by ``load``.
    """

    _trust_family: ClassVar[str]
    # Whether the lean path evaluates tanh with NumPy (last-bit differences from th.tanh)
    _fast_numpy_tanh: ClassVar[bool] = False

    def _fast_path(self) -> FastActorCritic | None:
        """
        :return: the lean evaluation path for this policy and buffer (cached per policy object), or ``None`` for SB3's
            generic methods (the reason is logged once, at verbosity >= 1)
        """
        algorithm: Any = self
        if getattr(algorithm, "_fast_policy_for", None) is not algorithm.policy:
            reason = unsupported_reason(algorithm.policy)
            if reason is None and not FlatRollout.supports(algorithm.rollout_buffer):
                reason = f"rollout buffer class {type(algorithm.rollout_buffer).__name__}"
            fast = FastActorCritic(algorithm.policy, numpy_tanh=self._fast_numpy_tanh) if reason is None else None
            algorithm._fast_policy = fast
            algorithm._fast_policy_for = algorithm.policy
            if reason is not None and algorithm.verbose >= 1:
                print(f"{type(self).__name__}: using SB3's generic (slower) policy methods because of the {reason}")
        return algorithm._fast_policy

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
        and TrustNPG read each other's files), with a clear ``ValueError`` otherwise, before anything is built. The
        variant and all training state are restored from the file.
        WARNING: model files contain pickled Python objects; load only files you trust, as with SB3.
        """
        check_saved_model(path, cls._trust_family, cls.__name__)
        return super().load(path, env, device, custom_objects, print_system_info, force_reset, **kwargs)  # type: ignore[misc]

    def set_reference_policy(self, reference_policy: "str | os.PathLike | BaseAlgorithm | ActorCriticPolicy") -> None:
        """
        Attach the frozen reference policy, e.g. after ``load()`` of a model whose reference was given as an object
        (objects are not saved with the model; paths are, and are reloaded automatically).

        :param reference_policy: a path to a saved SB3 model, an SB3 model or an ``ActorCriticPolicy`` with the same
            observation and action spaces
        """
        algorithm: Any = self
        check_reference_kwargs(
            reference_policy,
            algorithm.reference_kl_coef,
            algorithm.reference_kl_mode,
            algorithm.reference_kl_target,
            algorithm.reference_kl_horizon,
        )
        is_path = isinstance(reference_policy, (str, os.PathLike))
        algorithm.reference_policy = os.fspath(reference_policy) if is_path else None
        algorithm._reference_object = None if is_path else reference_policy
        setup_reference(algorithm)
