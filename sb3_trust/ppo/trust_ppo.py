import os
from collections.abc import Iterator
from typing import Any, ClassVar, NoReturn, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy, BasePolicy, MultiInputActorCriticPolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, RolloutBufferSamples, Schedule
from stable_baselines3.common.utils import FloatSchedule, explained_variance
from stable_baselines3.common.vec_env import VecEnv

from sb3_trust.common.base import TrustAlgorithmMixin
from sb3_trust.common.fast_fisher import DirectAdam
from sb3_trust.common.fast_policy import (
    FastActorCritic,
    clip_grad_norm,
    clip_grads_,
    kl_from_params,
    use_fused_adam,
)
from sb3_trust.common.fast_rollout import FlatRollout, Minibatch
from sb3_trust.common.kl import AdaptiveKLController, approx_kl_k3, exact_kl
from sb3_trust.common.losses import (
    POLICY_LOSSES,
    VF_CLIP_MODES,
    clipped_surrogate_loss,
    kl_penalty_loss,
    normalize_advantages,
    surrogate_loss,
    value_loss,
)
from sb3_trust.common.numpy_collect import collect_rollouts_lean, fused_policy
from sb3_trust.common.policy_utils import evaluate_actions_with_distribution, frozen_copy
from sb3_trust.common.reference import (
    REFERENCE_EXCLUDED_SAVE_PARAMS,
    ReferencePolicy,
    after_collection,
    after_update,
    check_reference_kwargs,
    current_reference_coef,
    init_reference,
    reference_active,
    setup_reference,
)
from sb3_trust.common.rollout import iterate_rollout_in_order
from sb3_trust.common.safety import NON_FINITE_ACTIONS, NonFiniteError, all_finite, guarded_update
from sb3_trust.common.validation import (
    check_action_space,
    check_choice,
    check_common_on_policy_kwargs,
    check_number,
    check_rollout_sizes,
    check_schedule_value,
)
from sb3_trust.ppo.analytic import AnalyticPPO, MinibatchTerms, analytic_ppo
from sb3_trust.ppo.fused import (
    ENTROPY_LOSS,
    LOSS,
    POLICY_LOSS,
    VALUE_CLIP_FRACTION,
    VALUE_LOSS,
    FusedMinibatch,
    FusedPPO,
    HeadSettings,
    load_kernels,
    warn_unavailable_once,
)
from sb3_trust.ppo.update_stats import UpdateStats

SelfTrustPPO = TypeVar("SelfTrustPPO", bound="TrustPPO")
# π_old: its distribution parameters on the rollout (lean path) or a frozen copy of the policy (generic path)
OldPolicy = tuple[th.Tensor, th.Tensor] | ActorCriticPolicy
# π_ref for the loss placement of the reference KL: the same two forms, or None
ReferenceSource = tuple[th.Tensor, th.Tensor] | ReferencePolicy | None


def minibatch_size(rollout_data: FusedMinibatch | Minibatch | RolloutBufferSamples) -> int:
    """
    :param rollout_data: a minibatch of any path
    :return: its number of samples
    """
    if isinstance(rollout_data, FusedMinibatch):
        return rollout_data.rows.shape[0]
    return rollout_data.advantages.shape[0]


class TrustPPO(TrustAlgorithmMixin, OnPolicyAlgorithm):
    """
    Proximal Policy Optimization with a choice of trust region: the clipped surrogate (PPO-clip, the default),
    a fixed or adaptive KL penalty (PPO-Penalty), or none (the unclipped surrogate), plus SB3's or Baselines'
    value-function clipping.

    A drop-in replacement for ``stable_baselines3.PPO``: every keyword of SB3 PPO is accepted with the same
    meaning and default, and with the default settings the updates are the same as SB3's (same parameters after
    training with the same seed).

    Paper: https://arxiv.org/abs/1707.06347 (sections 3 and 4, Table 1)
    Code: https://github.com/DLR-RM/stable-baselines3 (PPO) and https://github.com/openai/baselines (value clipping)

    Semantics (see also the README):

    - **KL**: the penalty, the logged ``train/kl`` and the adaptive rule use the exact KL(π_old ‖ π_new), computed
      in closed form from the old and new distributions and summed over action dimensions, averaged over states.
      π_old is a frozen copy of the policy taken at the start of each update.
    - **target_kl** keeps SB3's meaning: early stopping. Before each gradient step the k3 estimate
      ``mean((r - 1) - log r)`` on the minibatch is compared with ``1.5 * target_kl``; above it, the update stops
      (that minibatch is not applied). It is independent of the KL penalty.
    - **Advantages** are normalised per minibatch (when ``normalize_advantage``), as in SB3.
    - **Value clipping**: see ``vf_clip_mode``.

    Computation: for SB3's ``MlpPolicy`` (flat Box observations, Discrete or Box actions, no gSDE, trainable
    parameters) the minibatch gradient is computed in closed form (``sb3_trust.ppo.analytic``: the same loss, the
    gradient equal to autograd's up to rounding), by the fused C kernels of ``sb3_trust.ppo.fused`` (loss terms and
    their derivatives, clipping and the Adam step each in one call, and for ReLU networks without ``target_kl`` whole
    epochs in one call, with bit-identical results; compiled on first use, a ``UserWarning`` and the torch version of
    the closed form without a C compiler), and collection evaluates the network with NumPy; any other
    policy uses SB3's methods and autograd (said once at ``verbose >= 1``). Every path draws the same random numbers as
    SB3.

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, ...)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: The learning rate, it can be a function
        of the current progress remaining (from 1 to 0)
    :param n_steps: The number of steps to run for each environment per update
        (i.e. rollout buffer size is n_steps * n_envs where n_envs is number of environment copies running in parallel)
    :param batch_size: Minibatch size
    :param n_epochs: Number of epoch when optimizing the surrogate loss
    :param gamma: Discount factor
    :param gae_lambda: Factor for trade-off of bias vs variance for Generalized Advantage Estimator
    :param clip_range: Clipping parameter ε of the clipped surrogate, it can be a function of the current progress
        remaining (from 1 to 0). Only used by ``policy_loss="clip"`` (it is still used for the logged clip fraction).
    :param clip_range_vf: Clipping parameter for the value function,
        it can be a function of the current progress remaining (from 1 to 0).
        This is a parameter specific to the OpenAI implementation. If None is passed (default),
        no clipping will be done on the value function.
        IMPORTANT: this clipping depends on the reward scaling.
    :param normalize_advantage: Whether to normalize or not the advantage (per minibatch)
    :param ent_coef: Entropy coefficient for the loss calculation, a float or a schedule
    :param vf_coef: Value function coefficient for the loss calculation
    :param max_grad_norm: The maximum value for the gradient clipping
    :param use_sde: Whether to use generalized State Dependent Exploration (gSDE)
        instead of action noise exploration (default: False)
    :param sde_sample_freq: Sample a new noise matrix every n steps when using gSDE
        Default: -1 (only sample at the beginning of the rollout)
    :param rollout_buffer_class: Rollout buffer class to use. If ``None``, it will be automatically selected.
    :param rollout_buffer_kwargs: Keyword arguments to pass to the rollout buffer on creation
    :param target_kl: Limit the KL divergence between updates (SB3's early stopping, see above),
        because the clipping is not enough to prevent large update
        see issue #213 (cf https://github.com/hill-a/stable-baselines/issues/213)
        By default, there is no limit on the kl div.
    :param policy_loss: NEW. The trust-region mechanism of the policy loss:
        ``"clip"`` (PPO-clip, ``-mean(min(r·A, clip(r, 1±ε)·A))``),
        ``"kl_penalty"`` (PPO-Penalty, ``-mean(r·A) + β·mean KL(π_old ‖ π_new)``, fixed or adaptive β) or
        ``"unclipped"`` (``-mean(r·A)``, no trust region except ``target_kl``; the baseline of the PPO paper's Table 1)
    :param kl_coef: NEW. β, the coefficient of the KL penalty (``policy_loss="kl_penalty"``): the fixed value,
        a schedule, or the initial value of the adaptive rule
    :param adaptive_kl_target: NEW. d_targ of the adaptive rule of the PPO paper: after each update, β is doubled if the
        mean KL over the rollout exceeds ``1.5 * d_targ`` and halved if it is below ``d_targ / 1.5``, then clipped to
        ``[1e-4, 1e4]``. ``None`` (default) keeps β fixed (or scheduled).
    :param vf_clip_mode: NEW. How ``clip_range_vf`` clips the value loss: ``"sb3"`` (default, SB3: the MSE of the
        clipped prediction ``mean((R - V_clip)²)``) or ``"max"`` (OpenAI Baselines/CleanRL: the pessimistic
        ``mean(max((R - V)², (R - V_clip)²))``), with ``V_clip = V_old + clip(V - V_old, -ε_v, ε_v)``.
    :param on_non_finite: NEW. What happens when a NaN or infinite number appears in the rollout (observations,
        rewards, actions, values, ...), in a loss, in the gradients or in the parameters: ``"raise"`` (default) stops
        training with a ``NonFiniteError`` naming the quantity and the timestep; ``"skip"`` warns, skips the update and
        counts it in ``train/skipped_updates``. In both cases the weights and optimizer state from before the update
        are kept, so the model can still be saved. An exception or ``KeyboardInterrupt`` during an update also
        restores them.
    :param reference_policy: NEW. A frozen reference policy π_ref to stay close to, as in RLHF fine-tuning: a path to a
        saved SB3 model (recorded, and reloaded with the model), an SB3 model or an ``ActorCriticPolicy`` (not saved:
        attach it again after ``load()`` with ``set_reference_policy``). Same observation and action spaces as the
        env; any architecture. ``None`` (default): no reference. See ``sb3_trust.common.reference``.
    :param reference_kl_coef: NEW. β of the reference penalty: a float, a schedule, or the initial value of the
        adaptive controller
    :param reference_kl_mode: NEW. ``"reward"`` (default, RLHF): ``r_t - β·(log π(a_t|s_t) - log π_ref(a_t|s_t))``
        before GAE; ``"loss"``: ``β·mean KL(π ‖ π_ref)`` (exact, summed over action dimensions) added to the loss
    :param reference_kl_target: NEW. Target of the proportional β controller of Ziegler et al. (2019), or ``None``
        for a fixed or scheduled β
    :param reference_kl_horizon: NEW. Horizon (in samples) of that controller
    :param stats_window_size: Window size for the rollout logging, specifying the number of episodes to average
        the reported success rate, mean episode length, and mean reward over
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation. See :ref:`ppo_policies`
    :param verbose: Verbosity level: 0 for no output, 1 for info messages (such as device or wrappers used), 2 for
        debug messages
    :param seed: Seed for the pseudo random generators
    :param device: Device (cpu, cuda, ...) on which the code should be run.
        Setting it to auto, the code will be run on the GPU if possible.
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    """

    _trust_family = "TrustPPO"
    # NumPy's tanh on the lean path: several times faster than th.tanh here, equal to the last bit (the parity tests
    # against SB3 PPO hold at the same tolerance as with the fused Adam)
    _fast_numpy_tanh = True
    # Rows per forward pass over the whole rollout (π_old's parameters, the post-update KL), at most: the minibatch size
    # if smaller. Bounds the transient memory, which the allocator would otherwise keep (peak RSS grew by ~15 MB per
    # update on LunarLander's 16k-sample rollouts), and the BLAS's own buffers (products of more rows than a minibatch's
    # raised the first update's peak RSS by ~2 MB on HalfCheetah's 256×256 zoo config)
    _ROLLOUT_CHUNK = 2048
    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": ActorCriticPolicy,
        "CnnPolicy": ActorCriticCnnPolicy,
        "MultiInputPolicy": MultiInputActorCriticPolicy,
    }

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        n_steps: int = 2048,
        batch_size: int = 64,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_range: float | Schedule = 0.2,
        clip_range_vf: float | Schedule | None = None,
        normalize_advantage: bool = True,
        ent_coef: float | Schedule = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        target_kl: float | None = None,
        policy_loss: str = "clip",
        kl_coef: float | Schedule = 1.0,
        adaptive_kl_target: float | None = None,
        vf_clip_mode: str = "sb3",
        on_non_finite: str = "raise",
        reference_policy: "str | os.PathLike | BaseAlgorithm | ActorCriticPolicy | None" = None,
        reference_kl_coef: float | Schedule = 0.05,
        reference_kl_mode: str = "reward",
        reference_kl_target: float | None = None,
        reference_kl_horizon: int = 10_000,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        # Check every keyword before anything is built (SB3 uses asserts; we raise ValueError/TypeError)
        check_common_on_policy_kwargs(
            learning_rate=learning_rate,
            n_steps=n_steps,
            batch_size=batch_size,
            gamma=gamma,
            gae_lambda=gae_lambda,
            normalize_advantage=normalize_advantage,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            stats_window_size=stats_window_size,
        )
        check_number("n_epochs", n_epochs, low=1, integer=True)
        check_number("clip_range", clip_range, low=0.0, low_inclusive=False, allow_schedule=True)
        check_number("clip_range_vf", clip_range_vf, low=0.0, low_inclusive=False, allow_schedule=True, allow_none=True)
        check_number("ent_coef", ent_coef, allow_schedule=True)
        check_number("vf_coef", vf_coef, low=0.0)
        check_number("max_grad_norm", max_grad_norm, low=0.0, low_inclusive=False)
        check_number("target_kl", target_kl, low=0.0, low_inclusive=False, allow_none=True)
        check_choice("policy_loss", policy_loss, POLICY_LOSSES)
        check_number("kl_coef", kl_coef, low=0.0, allow_schedule=True)
        check_number("adaptive_kl_target", adaptive_kl_target, low=0.0, low_inclusive=False, allow_none=True)
        check_choice("vf_clip_mode", vf_clip_mode, VF_CLIP_MODES)
        check_choice("on_non_finite", on_non_finite, NON_FINITE_ACTIONS)
        reference_kwargs = dict(
            reference_kl_coef=reference_kl_coef,
            reference_kl_mode=reference_kl_mode,
            reference_kl_target=reference_kl_target,
            reference_kl_horizon=reference_kl_horizon,
        )
        check_reference_kwargs(reference_policy, **reference_kwargs)
        if normalize_advantage and batch_size < 2:
            raise ValueError(
                f"`batch_size` must be greater than 1 when `normalize_advantage=True`, got {batch_size} "
                "(see https://github.com/DLR-RM/stable-baselines3/issues/440)"
            )
        if adaptive_kl_target is not None and policy_loss != "kl_penalty":
            raise ValueError(
                f"`adaptive_kl_target={adaptive_kl_target}` adapts the KL penalty, so it needs "
                f"`policy_loss='kl_penalty'`, got `policy_loss={policy_loss!r}`"
            )
        if adaptive_kl_target is not None and callable(kl_coef):
            raise ValueError(
                f"`kl_coef` must be a float (the initial β) when `adaptive_kl_target` is set, got the schedule {kl_coef!r}"
            )
        if vf_clip_mode != "sb3" and clip_range_vf is None:
            raise ValueError(f"`vf_clip_mode={vf_clip_mode!r}` needs a `clip_range_vf`, got None")

        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=ent_coef,  # type: ignore[arg-type]
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            device=device,
            seed=seed,
            _init_setup_model=False,
            supported_action_spaces=None,  # checked below, with a TypeError instead of SB3's assert
        )
        if self.env is not None:
            check_action_space(self.action_space, type(self).__name__)
            check_rollout_sizes(self.n_steps, self.env.num_envs, batch_size, normalize_advantage)

        self.batch_size = batch_size
        self.n_epochs = n_epochs
        self.clip_range = clip_range
        self.clip_range_vf = clip_range_vf
        self.normalize_advantage = normalize_advantage
        self.target_kl = target_kl
        self.policy_loss = policy_loss
        self.kl_coef = kl_coef
        self.adaptive_kl_target = adaptive_kl_target
        self.vf_clip_mode = vf_clip_mode
        self.on_non_finite = on_non_finite
        # Which algorithm wrote a saved file (checked by load())
        self._trust_algorithm = self._trust_family
        # Mutable training state lives here, not in _setup_model(), which load() calls again after restoring it.
        # The current β: adapted after each update when adaptive_kl_target is set.
        self._kl_coef = float(kl_coef(1.0) if callable(kl_coef) else kl_coef)
        # Updates skipped because of non-finite numbers (on_non_finite="skip")
        self._n_skipped_updates = 0
        # KL penalty toward a frozen reference policy (RLHF): settings, current β, the frozen policy
        init_reference(self, reference_policy, reference_kwargs)
        # Frozen copy of the policy at the start of the update: π_old (rebuilt lazily, never saved)
        self._old_policy: ActorCriticPolicy | None = None
        self._fast_policy: FastActorCritic | None = None
        self._fast_policy_for: ActorCriticPolicy | None = None
        # The closed-form minibatch gradient (lean path) and the direct fused-Adam step (rebuilt lazily, never saved)
        self._analytic: AnalyticPPO | None = None
        self._analytic_for: ActorCriticPolicy | None = None
        self._direct_adam: DirectAdam | None = None
        # The fused kernels' minibatch step on the same policy (rebuilt lazily, never saved)
        self._fused_update: FusedPPO | None = None
        self._fused_update_for: ActorCriticPolicy | None = None

        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        super()._setup_model()
        # Initialize schedules for policy/value clipping (idempotent: load() calls this again)
        self.clip_range = FloatSchedule(self.clip_range)
        if self.clip_range_vf is not None:
            self.clip_range_vf = FloatSchedule(self.clip_range_vf)
        self.ent_coef_schedule = FloatSchedule(self.ent_coef)
        self.kl_coef_schedule = FloatSchedule(self.kl_coef)
        use_fused_adam(self.policy.optimizer, self.policy_kwargs)
        setup_reference(self)
        self._old_policy = None
        self._fast_policy: FastActorCritic | None = None
        self._fast_policy_for = None
        self._analytic = self._analytic_for = self._direct_adam = None
        self._fused = self._fused_for = None
        self._fused_update = self._fused_update_for = None
        # Buffers reused from update to update (never saved): the logged statistics, the rollout's table
        self._update_stats = UpdateStats()
        self._rollout_table: th.Tensor | None = None
        self._old_params: th.Tensor | None = None

    def _excluded_save_params(self) -> list[str]:
        return [
            *super()._excluded_save_params(),
            "_old_policy",
            "_fast_policy",
            "_fast_policy_for",
            "_analytic",
            "_analytic_for",
            "_direct_adam",
            "_fused",
            "_fused_for",
            "_fused_update",
            "_fused_update_for",
            "_update_stats",
            "_rollout_table",
            "_old_params",
            *REFERENCE_EXCLUDED_SAVE_PARAMS,
        ]

    def collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        fast = self._fast_path()
        if fast is None:
            complete = super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
        else:
            # Same random draws as SB3; the actor and critic fused into one network evaluated by NumPy for the few
            # observations of a step (last-bit differences in the values and log-likelihoods)
            fused = fused_policy(self, fast)
            complete = collect_rollouts_lean(self, fast, fused, env, callback, rollout_buffer, n_rollout_steps)
        if complete:
            after_collection(self)  # reward shaping toward the reference policy, if any
        return complete

    def _snapshot_old_policy(self) -> ActorCriticPolicy:
        """
        :return: a frozen copy of the current policy (π_old for this update), reusing its storage between updates
        """
        if self._old_policy is None:
            self._old_policy = frozen_copy(self.policy)  # type: ignore[arg-type]
        else:
            self._old_policy.load_state_dict(self.policy.state_dict())
        return self._old_policy

    def _current_kl_coef(self) -> float:
        if self.adaptive_kl_target is None:
            kl_coef = self.kl_coef_schedule(self._current_progress_remaining)
            self._kl_coef = check_schedule_value("kl_coef", kl_coef, low=0.0, low_inclusive=True)
        return self._kl_coef

    def _params_in_chunks(
        self, fast: FastActorCritic, rollout: FlatRollout
    ) -> Iterator[tuple[slice, tuple[th.Tensor, th.Tensor]]]:
        """
        :param fast: the lean policy path
        :param rollout: the rollout
        :return: the current policy's distribution parameters on the rollout's states, in chunks of ``_ROLLOUT_CHUNK``
            rows, or ``batch_size`` if fewer (the intermediates of a whole rollout would raise the peak memory), with
            the rows of each chunk (call it under ``th.no_grad()``)
        """
        n = rollout.n_samples
        size = min(self._ROLLOUT_CHUNK, self.batch_size or self._ROLLOUT_CHUNK)
        for start in range(0, n, size):
            rows = slice(start, min(start + size, n))
            yield rows, fast.distribution_params(fast.latent_pi(rollout.observations[rows]))

    def _distribution_params(self, fast: FastActorCritic, rollout: FlatRollout) -> tuple[th.Tensor, th.Tensor]:
        """
        :param fast: the lean policy path
        :param rollout: the rollout
        :return: the current policy's distribution parameters on every state of the rollout (π_old's before the
            update), in a buffer reused from update to update; the chunks are written into it as they come, so that
            none stays alive among the next chunks' temporaries
        """
        weight = fast.action_net.weight
        shape = (2, rollout.n_samples, weight.shape[0])
        buffer = self._old_params
        if buffer is None or buffer.shape != shape or buffer.dtype != weight.dtype or buffer.device != weight.device:
            buffer = self._old_params = th.empty(shape, dtype=weight.dtype, device=weight.device)
        params = buffer.unbind()
        with th.no_grad():
            for rows, piece in self._params_in_chunks(fast, rollout):
                params[0][rows], params[1][rows] = piece
        return params[0], params[1]

    def _rollout_kl(self, old: OldPolicy, rollout: FlatRollout | None) -> float:
        """
        :param old: π_old: its parameters on the rollout (lean path) or a frozen copy of the policy
        :param rollout: the rollout (lean path only)
        :return: mean exact KL(π_old ‖ π_new) over the whole rollout buffer (no randomness consumed)
        """
        with th.no_grad():
            fast = self._fast_path()
            if fast is not None and rollout is not None and isinstance(old, tuple):
                kl = th.empty(rollout.n_samples, dtype=old[0].dtype, device=old[0].device)
                for rows, new in self._params_in_chunks(fast, rollout):
                    kl[rows] = kl_from_params((old[0][rows], old[1][rows]), new, fast.is_categorical)
                return kl.mean().item()
            assert isinstance(old, ActorCriticPolicy)
            total, count = 0.0, 0
            for rollout_data in iterate_rollout_in_order(self.rollout_buffer):
                old_distribution = old.get_distribution(rollout_data.observations)
                new_distribution = self.policy.get_distribution(rollout_data.observations)
                kl = exact_kl(old_distribution, new_distribution)
                total += kl.sum().item()
                count += len(kl)
            return total / max(count, 1)

    def _evaluate(
        self,
        rollout_data: RolloutBufferSamples | Minibatch,
        old: OldPolicy,
        need_kl: bool,
        reference: ReferenceSource,
        entropy_grad: bool = True,
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor | None, th.Tensor | None, th.Tensor | None]:
        """
        :param rollout_data: the minibatch
        :param old: π_old: its parameters on the whole rollout (lean path) or a frozen copy of the policy
        :param need_kl: whether to compute the exact KL(π_old ‖ π) (differentiable)
        :param reference: π_ref for the loss term: its parameters on the whole rollout (lean path), the reference
            policy (generic path), or ``None``
        :param entropy_grad: whether the entropy takes part in the loss (``ent_coef != 0``)
        :return: values, log-likelihood of the actions, entropy (or ``None``), KL(π_old ‖ π) per state (or ``None``),
            KL(π ‖ π_ref) per state (or ``None``)
        """
        actions = rollout_data.actions
        fast = self._fast_path()
        kl = reference_kl = None
        if fast is not None and isinstance(rollout_data, Minibatch):
            latent_pi, latent_vf = fast.latent(rollout_data.observations)
            params = fast.distribution_params(latent_pi)
            log_prob = fast.log_prob(params, actions)
            if entropy_grad:
                entropy = fast.entropy(params)
            else:
                # ent_coef == 0: the entropy is only logged, so keep it out of the backward pass (same gradients)
                with th.no_grad():
                    entropy = fast.entropy(params)
            indices = rollout_data.indices
            if need_kl:
                assert isinstance(old, tuple)
                kl = kl_from_params((old[0][indices], old[1][indices]), params, fast.is_categorical)
            if reference is not None:
                assert isinstance(reference, tuple)
                reference_params = (reference[0][indices], reference[1][indices])
                reference_kl = kl_from_params(params, reference_params, fast.is_categorical)
            return fast.values(latent_vf), log_prob, entropy, kl, reference_kl

        if isinstance(self.action_space, spaces.Discrete):
            # Convert discrete action from float to long
            actions = rollout_data.actions.long().flatten()
        if not need_kl and reference is None:
            values, log_prob, entropy = self.policy.evaluate_actions(rollout_data.observations, actions)
            return values, log_prob, entropy, None, None
        values, log_prob, entropy, distribution = evaluate_actions_with_distribution(
            self.policy,  # type: ignore[arg-type]
            rollout_data.observations,
            actions,
        )
        if need_kl:
            assert isinstance(old, ActorCriticPolicy)
            with th.no_grad():
                old_distribution = old.get_distribution(rollout_data.observations)
            kl = exact_kl(old_distribution, distribution)
        if reference is not None:
            assert isinstance(reference, ReferencePolicy)
            reference_kl = exact_kl(distribution, reference.distribution(rollout_data.observations))
        return values, log_prob, entropy, kl, reference_kl

    def _policy_loss(
        self, ratio: th.Tensor, advantages: th.Tensor, kl: th.Tensor | None, clip_range: float, kl_coef: float
    ) -> th.Tensor:
        """
        :return: the policy loss of the chosen variant (``policy_loss``)
        """
        if self.policy_loss == "clip":
            return clipped_surrogate_loss(ratio, advantages, clip_range)
        if self.policy_loss == "kl_penalty":
            assert kl is not None
            return kl_penalty_loss(ratio, advantages, kl, kl_coef)
        return surrogate_loss(ratio, advantages)

    def _autograd_terms(
        self,
        rollout_data: RolloutBufferSamples | Minibatch,
        old: OldPolicy,
        need_kl: bool,
        reference: ReferenceSource,
        reference_coef: float,
        clip_range: float,
        clip_range_vf: float | None,
        ent_coef: float,
        kl_coef: float,
    ) -> MinibatchTerms:
        """
        The minibatch loss as an autograd graph (any policy; every option, including the reference KL in the loss).

        :return: the loss terms (``grads=None``: call ``loss.backward()``)
        """
        values, log_prob, entropy, kl, reference_kl = self._evaluate(rollout_data, old, need_kl, reference, ent_coef != 0)
        values = values.flatten()
        # Normalize advantage (per minibatch, as SB3)
        advantages = rollout_data.advantages
        if self.normalize_advantage:
            advantages = normalize_advantages(advantages)

        # ratio between old and new policy, should be one at the first iteration
        log_ratio = log_prob - rollout_data.old_log_prob
        ratio = th.exp(log_ratio)
        policy_loss = self._policy_loss(ratio, advantages, kl, clip_range, kl_coef)

        # Value loss using the TD(gae_lambda) target, optionally clipped
        vf_loss, value_clip_fraction = value_loss(
            values, rollout_data.old_values, rollout_data.returns, clip_range_vf, self.vf_clip_mode
        )
        # Entropy loss favor exploration
        if entropy is None:
            # Approximate entropy when no analytical form
            entropy_loss = -th.mean(-log_prob)
        else:
            entropy_loss = -th.mean(entropy)

        loss = policy_loss + ent_coef * entropy_loss + self.vf_coef * vf_loss
        if reference_kl is not None:
            # KL(π ‖ π_ref) toward the frozen reference policy (RLHF), loss placement
            loss = loss + reference_coef * reference_kl.mean()
        # Only the loss keeps its graph: the other terms are for logging and checks
        with th.no_grad():
            return MinibatchTerms(
                loss,
                policy_loss.detach(),
                vf_loss.detach(),
                entropy_loss.detach(),
                ratio.detach(),
                log_ratio.detach(),
                value_clip_fraction,
                None,
            )

    def _analytic_path(self, parameters: list[th.Tensor]) -> AnalyticPPO | None:
        """
        :param parameters: the policy's parameters
        :return: the closed-form loss and gradient for this policy (lean path, every parameter trainable), or ``None``
        """
        fast = self._fast_path()
        if fast is None:
            return None
        if getattr(self, "_analytic_for", None) is not self.policy:
            self._analytic = analytic_ppo(fast, parameters)
            self._analytic_for = self.policy
        if self._analytic is not None:
            # Read the optimizer's state afresh at every update: load(), set_parameters() and the restore after a
            # failed update replace its tensors
            self._direct_adam = DirectAdam(self.policy.optimizer, parameters)
        return self._analytic

    def _fused_path(
        self, analytic: AnalyticPPO | None, parameters: list[th.Tensor], rollout: FlatRollout | None
    ) -> FusedPPO | None:
        """
        :param analytic: the closed-form path of this update, if any
        :param parameters: the policy's parameters
        :param rollout: this update's rollout (lean path)
        :return: the fused kernels' minibatch step, prepared for this update, or ``None`` where they do not apply (see
            ``FusedPPO.supports``; the closed-form torch path is used)
        """
        if analytic is None or rollout is None or not FusedPPO.supports(analytic, parameters):
            return None
        kernels = load_kernels()
        if kernels is None:
            warn_unavailable_once()
            return None
        if (
            self._fused_update is None
            or self._fused_update_for is not self.policy
            or self._fused_update.analytic is not analytic
        ):
            self._fused_update = FusedPPO(kernels, analytic, parameters)
            self._fused_update_for = self.policy
        if not self._fused_update.begin(self.policy.optimizer, rollout, self.batch_size):
            return None
        return self._fused_update

    def _plan_epochs(
        self,
        fused: FusedPPO | None,
        rollout: FlatRollout | None,
        settings: HeadSettings,
        old: OldPolicy,
        reference: ReferenceSource,
    ) -> bool:
        """
        :param fused: the fused kernels' step, if this update uses it
        :param rollout: the rollout as tensors (lean path), or ``None``
        :param settings: the loss's settings
        :param old: π_old (see ``_prepare_update``)
        :param reference: π_ref for the loss placement of the reference KL, or ``None``
        :return: whether this update's epochs can go through ``FusedPPO.epoch`` (see ``FusedPPO.plan_epochs``), which
            has no ``target_kl`` early stop (that one is taken between minibatches)
        """
        if fused is None or rollout is None or self.target_kl is not None:
            return False
        old_params = old if self.policy_loss == "kl_penalty" else None
        return fused.plan_epochs(rollout, self.batch_size, settings, old_params, reference, self.max_grad_norm)  # type: ignore[arg-type]

    def train(self) -> None:
        """
        Update policy using the currently gathered rollout buffer. Non-finite numbers and interruptions leave the
        policy, the optimizer and the counters as they were before the update (see ``on_non_finite``).
        """
        guarded_update(self, self._update, ("_n_updates", "_kl_coef", "_reference_kl_coef"))

    def _optimizer_step(self, terms: MinibatchTerms, parameters: list[th.Tensor], epoch: int) -> None:
        """
        SB3's step: zero the gradients, backpropagate (or take the closed-form gradient), clip the gradient norm, step.
        Before the step, raise ``NonFiniteError`` naming the first non-finite term (one host sync per minibatch).

        :param terms: the minibatch's loss terms (and closed-form gradient, if any)
        :param parameters: the policy's parameters
        :param epoch: the epoch, for the message
        """
        fused = self._fused_update
        if fused is not None and terms.grads is fused.grads and fused.adam_bound:
            # Clipping, the finiteness check and the Adam step in one call; nothing is changed if the check fails
            if fused.adam.step(fused.grad, terms.loss, self.max_grad_norm):
                return
            grad_norm = fused.adam.norm
        elif terms.grads is None:
            for parameter in parameters:  # optimizer.zero_grad() (set_to_none), without its profiler wrapper
                parameter.grad = None
            terms.loss.backward()
            # Clip grad norm (same operations as th.nn.utils.clip_grad_norm_)
            grad_norm = clip_grad_norm(parameters, self.max_grad_norm)
        else:
            grad_norm = clip_grads_(terms.grads, self.max_grad_norm)
        if not bool(th.isfinite(terms.loss + grad_norm)):  # NaN/inf propagate through the sum
            self._raise_non_finite(terms.policy_loss, terms.value_loss, terms.entropy_loss, grad_norm, epoch)
        if terms.grads is None:
            self.policy.optimizer.step()
        else:
            assert self._direct_adam is not None
            self._direct_adam.step(terms.grads)
            if fused is not None and terms.grads is fused.grads and not fused.adam_bound and not fused.rebound:
                # The first step of a fresh optimizer creates its state: the fused step can take over from here
                fused.adam_bound, fused.rebound = fused.adam.bind(self.policy.optimizer), True

    def _raise_non_finite(
        self, policy_loss: th.Tensor, value_loss: th.Tensor, entropy_loss: th.Tensor, grad_norm: th.Tensor, epoch: int
    ) -> NoReturn:
        """
        :param policy_loss: the minibatch's policy loss
        :param value_loss: its value loss
        :param entropy_loss: its entropy loss
        :param grad_norm: its gradient's norm before clipping
        :param epoch: the epoch, for the message
        :raise NonFiniteError: naming the first non-finite term (``loss`` if none is)
        """
        named = dict(policy_loss=policy_loss, value_loss=value_loss, entropy_loss=entropy_loss, gradient_norm=grad_norm)
        what = next((name for name, value in named.items() if not th.isfinite(value)), "loss")
        raise NonFiniteError(f"non-finite {what} in update {self._n_updates}, epoch {epoch} (timestep {self.num_timesteps})")

    def _prepare_update(
        self,
    ) -> tuple[FlatRollout | None, OldPolicy, ReferenceSource, float]:
        """
        :return: the rollout as tensors (lean path) or ``None``; π_old (its distribution parameters on the rollout, or a
            frozen copy of the policy); π_ref for the loss placement of the reference KL (parameters on the rollout,
            the reference policy, or ``None``); β of the reference KL
        """
        # π_old, the policy before this update, for the exact KL: its distribution parameters on the rollout
        # (lean path), or a frozen copy of the policy (generic path)
        fast = self._fast_path()
        rollout = None
        if fast is not None:
            rollout = FlatRollout(self.rollout_buffer, self.device, self._rollout_table)
            self._rollout_table = rollout.table if rollout.same_dtype else None
        old: OldPolicy
        if fast is not None and rollout is not None:
            old = self._distribution_params(fast, rollout)
        else:
            old = self._snapshot_old_policy()
        # π_ref for the loss placement of the reference KL: its parameters on the rollout, or the frozen policy
        reference: ReferenceSource = None
        reference_coef = 0.0
        if reference_active(self) and self.reference_kl_mode == "loss":
            reference_coef = current_reference_coef(self)
            reference = self._reference.distribution_params(rollout.observations) if rollout is not None else self._reference

        return rollout, old, reference, reference_coef

    def _minibatches(
        self, rollout: FlatRollout | None, fused: FusedPPO | None
    ) -> Iterator[FusedMinibatch | Minibatch | RolloutBufferSamples]:
        """
        :param rollout: the rollout as tensors (lean path), or ``None``
        :param fused: the fused kernels' step, if this update uses it
        :return: one epoch of minibatches, in the order of ``RolloutBuffer.get(batch_size)`` on every path (the same
            random draws)
        """
        if fused is not None:
            assert rollout is not None
            return fused.minibatches(rollout, self.batch_size)
        return rollout.minibatches(self.batch_size) if rollout is not None else self.rollout_buffer.get(self.batch_size)

    def _minibatch_terms(
        self,
        rollout_data: FusedMinibatch | Minibatch | RolloutBufferSamples,
        analytic: AnalyticPPO | None,
        fused: FusedPPO | None,
        old: OldPolicy,
        reference: ReferenceSource,
        clip_range: float,
        settings: HeadSettings,
        stats_out: tuple[th.Tensor, th.Tensor, th.Tensor],
    ) -> MinibatchTerms:
        """
        The loss terms of one minibatch, by the fused kernels, the closed-form path or autograd (in that order of
        preference; all compute the same loss).

        :param rollout_data: the minibatch (``_minibatches``)
        :param analytic: the closed-form path, if it applies
        :param fused: the fused kernels' step, if it applies
        :param old: π_old (see ``_prepare_update``)
        :param reference: π_ref for the loss placement of the reference KL, or ``None``
        :param clip_range: ε
        :param settings: the loss's settings (``_update``)
        :param stats_out: where the fused kernels write the ratios, log-ratios and scalars (``UpdateStats.next``)
        :return: the terms
        """
        need_kl = self.policy_loss == "kl_penalty"
        if analytic is None:
            return self._autograd_terms(
                rollout_data,  # type: ignore[arg-type]
                old,
                need_kl,
                reference,
                settings.reference_coef,
                clip_range,
                settings.clip_range_vf,
                settings.ent_coef,
                settings.kl_coef,
            )
        indices = rollout_data.indices  # type: ignore[union-attr]
        old_rows = (old[0][indices], old[1][indices]) if need_kl else None  # type: ignore[index]
        reference_rows = (reference[0][indices], reference[1][indices]) if reference is not None else None  # type: ignore[index]
        if fused is not None:
            assert isinstance(rollout_data, FusedMinibatch)
            return fused.terms(rollout_data, settings, old_rows, reference_rows, stats_out)
        assert isinstance(rollout_data, Minibatch)
        return analytic.terms(
            rollout_data,
            self.policy_loss,
            clip_range,
            settings.kl_coef,
            old_rows,
            settings.clip_range_vf,
            self.vf_clip_mode,
            settings.ent_coef,
            self.vf_coef,
            self.normalize_advantage,
            reference_rows,
            settings.reference_coef,
        )

    def _update(self) -> None:
        """
        One update (``n_epochs`` passes over the rollout), SB3 PPO's loop.
        """
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        # Update optimizer learning rate
        self._update_learning_rate(self.policy.optimizer)
        # Compute current clip range
        progress = self._current_progress_remaining
        clip_range = check_schedule_value("clip_range", self.clip_range(progress))  # type: ignore[operator]
        # Optional: clip range for the value function
        clip_range_vf = None
        if self.clip_range_vf is not None:
            clip_range_vf = check_schedule_value("clip_range_vf", self.clip_range_vf(progress))  # type: ignore[operator]
        ent_coef = check_schedule_value("ent_coef", self.ent_coef_schedule(progress), low=-np.inf)
        kl_coef = self._current_kl_coef()

        rollout, old, reference, reference_coef = self._prepare_update()
        parameters = list(self.policy.parameters())
        analytic = self._analytic_path(parameters) if rollout is not None else None
        fused = self._fused_path(analytic, parameters, rollout)

        n_samples = self.rollout_buffer.buffer_size * self.rollout_buffer.n_envs
        batch_size = n_samples if self.batch_size is None else min(self.batch_size, n_samples)
        stats = self._update_stats
        n_minibatches = self.n_epochs * -(-n_samples // batch_size)
        stats.begin(n_minibatches, n_samples, clip_range, parameters[0].dtype, self.device)
        settings = HeadSettings(
            clip_range=clip_range if self.policy_loss == "clip" else None,
            clip_range_vf=clip_range_vf,
            vf_clip_mode=self.vf_clip_mode,
            ent_coef=ent_coef,
            vf_coef=self.vf_coef,
            normalize_advantage=self.normalize_advantage,
            kl_coef=kl_coef,
            reference_coef=reference_coef,
        )
        # Whole epochs in one C call (ReLU networks without target_kl), once the optimizer's state exists
        epochs_planned = self._plan_epochs(fused, rollout, settings, old, reference)
        epoch_sizes = [min(batch_size, n_samples - start) for start in range(0, n_samples, batch_size)]
        continue_training = True
        epochs_completed = 0
        # train for n_epochs epochs
        for epoch in range(self.n_epochs):
            stats.begin_epoch()  # SB3 logs the last epoch's approx_kl
            if epochs_planned and fused is not None and fused.adam_bound:
                assert rollout is not None
                slots = stats.next_epoch(epoch_sizes)
                failed = fused.epoch(rollout, self.batch_size, slots)
                if failed >= 0:
                    policy_loss, value_loss, entropy_loss = slots[2][failed, [POLICY_LOSS, VALUE_LOSS, ENTROPY_LOSS]]
                    self._raise_non_finite(policy_loss, value_loss, entropy_loss, fused.adam.norm, epoch)
                stats.end_epoch()
                self._n_updates += 1
                epochs_completed += 1
                continue
            # Do a complete pass on the rollout buffer (same minibatches and random draws on both paths)
            for rollout_data in self._minibatches(rollout, fused):
                # What is logged goes into buffers made once (no tensor kept per minibatch), reduced after the update
                slots = stats.next(minibatch_size(rollout_data))
                terms = self._minibatch_terms(rollout_data, analytic, fused, old, reference, clip_range, settings, slots)
                stats.store(terms, slots)

                if self.target_kl is not None:
                    # k3 estimate of KL(π_old ‖ π_new) on the minibatch, for SB3's early stopping
                    # see issue #417: https://github.com/DLR-RM/stable-baselines3/issues/417
                    # and discussion in PR #419: https://github.com/DLR-RM/stable-baselines3/pull/419
                    # and Schulman blog: http://joschu.net/blog/kl-approx.html
                    approx_kl_div = approx_kl_k3(slots[1]).item()
                    if approx_kl_div > 1.5 * self.target_kl:
                        continue_training = False
                        if self.verbose >= 1:
                            print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl_div:.2f}")
                        break

                # Optimization step
                self._optimizer_step(terms, parameters, epoch)

            stats.end_epoch()
            self._n_updates += 1
            if not continue_training:
                break
            epochs_completed += 1

        if not all_finite(parameters):
            raise NonFiniteError(f"non-finite parameters after update {self._n_updates} (timestep {self.num_timesteps})")
        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())
        # Exact KL(π_old ‖ π_new) over the rollout after the whole update: logged, and drives the adaptive β
        rollout_kl = self._rollout_kl(old, rollout)
        if self.adaptive_kl_target is not None:
            self._kl_coef = AdaptiveKLController(self.adaptive_kl_target).update(self._kl_coef, rollout_kl)
        # KL(π ‖ π_ref) after the update: logged, and drives the reference β controller if any
        after_update(self)

        # Logs: SB3's keys with SB3's meanings (means over minibatches of per-minibatch means; approx_kl: mean over the
        # last epoch; loss: last minibatch)
        self.logger.record("train/entropy_loss", stats.mean(ENTROPY_LOSS))
        self.logger.record("train/policy_gradient_loss", stats.mean(POLICY_LOSS))
        self.logger.record("train/value_loss", stats.mean(VALUE_LOSS))
        self.logger.record("train/approx_kl", stats.last_epoch_kl())
        self.logger.record("train/clip_fraction", stats.clip_fraction())
        self.logger.record("train/loss", stats.last(LOSS))
        self.logger.record("train/explained_variance", explained_var)
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)
            self.logger.record("train/value_clip_fraction", stats.mean(VALUE_CLIP_FRACTION))
        # sb3_trust's diagnostics
        self.logger.record("train/kl", rollout_kl)
        if self.policy_loss == "kl_penalty":
            self.logger.record("train/kl_coef", self._kl_coef)
        self.logger.record("train/early_stop_fraction", epochs_completed / self.n_epochs)
        self.logger.record("train/ratio_max", stats.ratio_max())
        self.logger.record("train/ratio_mean", stats.ratio_mean())
        self.logger.record("train/ent_coef", ent_coef)

    def learn(
        self: SelfTrustPPO,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "TrustPPO",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfTrustPPO:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
