"""
TrustPPO's minibatch step in one Numba kernel call (``sb3_trust.accel.kernels.ppo_minibatch``), in place on the
policy's own parameters and on the policy's own ``th.optim.Adam`` state, so that SB3's optimizer, save/load and the
reference path can take over between any two steps.
"""

import math
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.buffers import RolloutBufferSamples

from sb3_trust.accel import kernels
from sb3_trust.accel.network import PackedPolicy, as_2d
from sb3_trust.accel.threads import match_torch_threads
from sb3_trust.common.safety import NonFiniteError
from sb3_trust.common.update import LossSettings, MinibatchStats


def _scalar_dtype() -> th.dtype:
    """The dtype torch's Adam gives a new ``step`` (non-fused, non-capturable): float32 unless the default is float64."""
    return th.float64 if th.get_default_dtype() == th.float64 else th.float32


def _numpy(tensor: th.Tensor, ndim: int) -> np.ndarray:
    """:return: a C-contiguous float32 NumPy array of a minibatch tensor (a view when it already is one)"""
    array = np.ascontiguousarray(tensor.detach().numpy(), dtype=np.float32)
    if array.ndim != ndim:
        array = array.reshape(array.shape[0], -1) if ndim == 2 else array.reshape(-1)
    return array


class AdamRunner:
    """
    The policy packed for the kernels, and the policy's own ``th.optim.Adam`` state of the parameters a kernel steps
    (``_stepped``), as a typed list: those parameters' views, then their ``exp_avg``, ``exp_avg_sq`` and ``step``.

    :param model: the model whose policy and optimizer are used
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self._packed: PackedPolicy | None = None
        self._state_list: Any = None
        self._state: Any = None
        self._state_entries: list[dict] = []
        self._state_tensors: list[th.Tensor] = []

    @staticmethod
    def _stepped(packed: PackedPolicy) -> slice:
        """:return: which of ``packed.params`` the kernel's Adam steps (all of them)"""
        return slice(None)

    def _pack(self) -> PackedPolicy:
        """:return: the packed policy, packed again if the policy's modules or tensors were replaced"""
        policy = self.model.policy
        if self._packed is None or not self._packed.is_current(policy):
            self._packed = PackedPolicy(policy)
            self._state_list = None
            stepped = self._packed.params[self._stepped(self._packed)]
            self._hyper = np.zeros((len(stepped), kernels.N_HYPER), np.float64)
            self._grad_buffer = np.zeros(sum(param.numel() for param in stepped), np.float32)
        return self._packed

    def _adam_state(self) -> tuple[Any, list[th.Tensor]]:
        """
        :return: the typed list of parameters and Adam state for the kernel, and the parameters whose state was created
            now (as torch's Adam creates it at its first step; ``_forget`` them if the step is not applied)
        """
        packed = self._packed if self._packed is not None else self._pack()
        if packed.pointers() != packed.data_pointers:  # a parameter's tensor was replaced
            packed = self._pack()
        params = packed.params[self._stepped(packed)]
        state = self.model.policy.optimizer.state
        created = []
        if (
            self._state_list is not None
            and state is self._state
            and all(state.get(param) is entries for param, entries in zip(params, self._state_entries, strict=True))
        ):
            return self._state_list, created
        for param in params:
            if len(state[param]) == 0:
                state[param]["step"] = th.zeros((), dtype=_scalar_dtype())
                state[param]["exp_avg"] = th.zeros_like(param, memory_format=th.preserve_format)
                state[param]["exp_avg_sq"] = th.zeros_like(param, memory_format=th.preserve_format)
                created.append(param)
        tensors = [state[param][key] for key in ("exp_avg", "exp_avg_sq", "step") for param in params]
        for tensor in tensors:
            if tensor.dtype != th.float32 or not tensor.is_contiguous() or tensor.device.type != "cpu":
                raise TypeError(f"the accelerator needs float32 CPU Adam state, got {tensor.dtype} {tensor.device}")
        views = packed.views[self._stepped(packed)]
        self._state_list = kernels.array_list([*views, *(as_2d(tensor) for tensor in tensors)])
        # Torch replaces the whole state (load_state_dict) or a parameter's entries: both are seen by identity. Holding
        # them keeps their ids from being reused by other objects.
        self._state = state
        self._state_entries = [state[param] for param in params]
        self._state_tensors = tensors
        return self._state_list, created

    def _forget(self, created: list[th.Tensor]) -> None:
        """As torch's Adam: no state before a parameter's first applied step."""
        state = self.model.policy.optimizer.state
        for param in created:
            del state[param]
        if created:
            self._state_list = None

    def _hyper_parameters(self) -> np.ndarray:
        """:return: the Adam hyper-parameters of each stepped parameter, read from its param group now"""
        packed = self._packed
        assert packed is not None
        groups = self.model.policy.optimizer.param_groups
        if len(groups) == 1:
            self._hyper[:] = self._group_row(groups[0])
            return self._hyper
        position = {id(param): index for index, param in enumerate(packed.params[self._stepped(packed)])}
        for group in groups:
            row = self._group_row(group)
            for param in group["params"]:
                if id(param) in position:
                    self._hyper[position[id(param)]] = row
        return self._hyper

    @staticmethod
    def _group_row(group: dict) -> list[float]:
        beta1, beta2 = group["betas"]
        decoupled = float(bool(group.get("decoupled_weight_decay", False)))
        return [float(group["lr"]), float(beta1), float(beta2), float(group["eps"]), float(group["weight_decay"]), decoupled]


class PPOStep(AdamRunner):
    """
    The accelerator's TrustPPO minibatch step for ``model`` (``can_run(model, "train") is None``).

    :param model: the TrustPPO model
    """

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self._old_arrays: Any = None
        self._settings = np.zeros(kernels.N_SETTINGS, np.float64)
        self._settings_key: tuple | None = None
        self._stats = np.zeros(kernels.N_STATS, np.float64)

    def begin_update(self, old_policy: Any) -> None:
        """
        Start an update: check that the policy is still the one packed (its modules, its tensors), and keep π_old's
        actor. Between two calls the policy's modules must not be replaced (their parameters may be loaded, or their
        tensors replaced: each step checks those, and the optimizer's state).

        :param old_policy: a frozen copy of the policy at the start of the update (needed for ``kl_penalty``)
        """
        match_torch_threads()
        packed = self._pack()
        self._old_arrays = packed.old_actor(old_policy) if old_policy is not None else None

    def _settings_vector(self, settings: LossSettings) -> np.ndarray:
        key = (settings, tuple(sorted(settings.loss_kwargs.items())))
        if key != self._settings_key:
            vector = self._settings
            vector[kernels.S_LOSS] = kernels.LOSS_CODES[settings.policy_loss]
            vector[kernels.S_CLIP] = settings.loss_kwargs.get("clip_range", settings.clip_range)
            vector[kernels.S_KL_COEF] = settings.loss_kwargs.get("kl_coef", 0.0)
            vector[kernels.S_CLIP_VF] = math.nan if settings.clip_range_vf is None else settings.clip_range_vf
            vector[kernels.S_VF_MAX] = float(settings.vf_clip_mode == "max")
            vector[kernels.S_ENT_COEF] = settings.ent_coef
            vector[kernels.S_VF_COEF] = settings.vf_coef
            vector[kernels.S_NORMALIZE] = float(settings.normalize_advantage)
            vector[kernels.S_MAX_GRAD_NORM] = settings.max_grad_norm
            vector[kernels.S_MAX_KL] = math.nan if settings.max_approx_kl is None else settings.max_approx_kl
            vector[kernels.S_STATS_CLIP] = settings.clip_range
            self._settings_key = key
        return self._settings

    def step(self, rollout_data: RolloutBufferSamples, settings: LossSettings) -> MinibatchStats:
        """
        One minibatch step: what TrustPPO's reference step computes, applied to the policy's parameters and its Adam
        state in place.

        :param rollout_data: the minibatch
        :param settings: the update's settings
        :return: the step's statistics (``applied=False``: the ``max_approx_kl`` early stop, nothing changed)
        :raise NonFiniteError: naming the first non-finite quantity (parameters and optimizer state unchanged)
        """
        if settings.policy_loss not in kernels.LOSS_CODES:
            raise ValueError(f"the accelerator does not implement policy_loss {settings.policy_loss!r}")
        if settings.reference_coef != 0:
            raise ValueError("the accelerator does not implement the reference KL in the loss")
        arrays, created = self._adam_state()
        packed = self._packed
        assert packed is not None
        kl_penalty = settings.policy_loss == "kl_penalty"
        if kl_penalty and self._old_arrays is None:
            raise RuntimeError("kl_penalty needs π_old: call begin_update(old_policy) first")
        code = kernels.ppo_minibatch(
            arrays,
            self._old_arrays if kl_penalty else arrays,
            packed.layout,
            _numpy(rollout_data.observations, 2),
            _numpy(rollout_data.actions, 2),
            _numpy(rollout_data.old_values, 1),
            _numpy(rollout_data.old_log_prob, 1),
            _numpy(rollout_data.advantages, 1),
            _numpy(rollout_data.returns, 1),
            self._settings_vector(settings),
            self._hyper_parameters(),
            self._grad_buffer,
            self._stats,
        )
        if code != kernels.APPLIED:
            self._forget(created)
        if code in kernels.NON_FINITE:
            name = kernels.NON_FINITE[code]
            value = self._stats[kernels.STATS.index(name)]
            raise NonFiniteError(f"non-finite {name} ({value}) in the accelerator's minibatch step; parameters unchanged")
        stats = self._stats
        return MinibatchStats(
            float(stats[0]),
            float(stats[1]),
            float(stats[2]),
            float(stats[3]),
            float(stats[4]),
            float(stats[5]),
            float(stats[6]),
            float(stats[7]),
            float(stats[8]),
            code == kernels.APPLIED,
        )
