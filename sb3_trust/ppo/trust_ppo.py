import os
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy, BasePolicy, MultiInputActorCriticPolicy
from stable_baselines3.common.type_aliases import GymEnv, RolloutBufferSamples, Schedule
from stable_baselines3.common.utils import FloatSchedule, explained_variance

from sb3_trust import accel
from sb3_trust.common.base import TrustAlgorithmMixin
from sb3_trust.common.kl import approx_kl_k3, exact_kl, rollout_kl
from sb3_trust.common.learning_rates import set_learning_rates, split_optimizer
from sb3_trust.common.losses import normalize_advantages, value_loss
from sb3_trust.common.masking import mask_kwargs, setup_masking
from sb3_trust.common.policy_utils import evaluate_actions_with_distribution, frozen_copy
from sb3_trust.common.projections import TrustRegionProjection
from sb3_trust.common.reference import REFERENCE_EXCLUDED_SAVE_PARAMS, after_update, init_reference, setup_reference
from sb3_trust.common.safety import ForeignFormat, NonFiniteError, all_finite, guarded_update
from sb3_trust.common.update import LossSettings, MinibatchStats
from sb3_trust.common.validation import check_action_space, check_rollout_sizes
from sb3_trust.ppo.losses import POLICY_LOSSES, outside_trust_region
from sb3_trust.ppo.settings import adapt_to_kl, loss_settings
from sb3_trust.ppo.validation import check_trust_ppo_kwargs

SelfTrustPPO = TypeVar("SelfTrustPPO", bound="TrustPPO")


class TrustPPO(TrustAlgorithmMixin, OnPolicyAlgorithm):
    """
    Proximal Policy Optimization with a choice of policy loss (PPO-clip by default, PPO-Penalty, dual-clip,
    clip-higher, SPO, ...), SB3's or Baselines' value clipping, and optional learning-rate rules.

    A drop-in replacement for ``stable_baselines3.PPO``: every keyword of SB3 PPO is accepted with the same
    meaning and default, and with the default settings the updates are the same as SB3's (same parameters after
    training with the same seed).

    Paper: https://arxiv.org/abs/1707.06347 (sections 3 and 4, Table 1)
    Code: https://github.com/DLR-RM/stable-baselines3 (PPO) and https://github.com/openai/baselines (value clipping)

    Semantics (docs/variants.md, "Semantics"): the KL of the penalty, of ``train/kl`` and of the adaptive rules is the exact
    KL(π_old ‖ π_new), summed over action dimensions and averaged over states (π_old: a frozen copy of the policy at the
    start of each update); ``target_kl`` is SB3's early stop; advantages are normalised per minibatch, as in SB3.

    Two paths compute the same update: the reference path (SB3's policy API and autograd, any policy, space, dtype
    and device; ``_reference_step``) and, for the models it can run, the optional accelerator ``sb3_trust.accel``
    (see ``backend``), which is tested against the reference path.

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, ...)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: The learning rate, it can be a function of the current progress remaining (from 1 to 0)
    :param n_steps: The number of steps to run for each environment per update
        (i.e. rollout buffer size is n_steps * n_envs where n_envs is number of environment copies running in parallel)
    :param batch_size: Minibatch size
    :param n_epochs: Number of epoch when optimizing the surrogate loss
    :param gamma: Discount factor
    :param gae_lambda: Factor for trade-off of bias vs variance for Generalized Advantage Estimator
    :param clip_range: Clipping parameter ε, it can be a function of the current progress remaining (from 1 to 0):
        the clip range of ``"clip"`` and ``"dual_clip"``, the trust region of ``"spo"``; whatever the loss,
        ``train/clip_fraction`` is the fraction of ratios outside ``[1 - ε, 1 + ε]`` (``[1 - ε_low, 1 + ε_high]`` for
        ``"clip_higher"``)
    :param clip_range_vf: Clipping parameter for the value function, it can be a function of the current progress
        remaining (from 1 to 0). None (default): no clipping. IMPORTANT: this clipping depends on the reward scaling.
    :param normalize_advantage: Whether to normalize or not the advantage (per minibatch)
    :param ent_coef: Entropy coefficient for the loss calculation, a float or a schedule
    :param vf_coef: Value function coefficient for the loss calculation
    :param max_grad_norm: The maximum value for the gradient clipping
    :param use_sde: Whether to use generalized State Dependent Exploration (gSDE) instead of action noise exploration
    :param sde_sample_freq: Sample a new noise matrix every n steps when using gSDE (-1: only at the rollout's start)
    :param rollout_buffer_class: Rollout buffer class to use. If ``None``, it will be automatically selected.
    :param rollout_buffer_kwargs: Keyword arguments to pass to the rollout buffer on creation
    :param target_kl: SB3's early stopping (https://github.com/hill-a/stable-baselines/issues/213): before each
        gradient step, the update stops if the k3 estimate ``mean((r - 1) - log r)`` exceeds ``1.5 * target_kl``.
    :param policy_loss: NEW. The policy loss, a name of the registry ``sb3_trust.ppo.losses.POLICY_LOSSES``:
        ``"clip"`` (PPO-clip), ``"kl_penalty"`` (PPO-Penalty, fixed or adaptive β), ``"unclipped"`` (``-mean(r·A)``),
        ``"dual_clip"`` (dual-clip PPO), ``"clip_higher"`` (DAPO's asymmetric clipping) or ``"spo"`` (SPO)
    :param kl_coef: NEW. β, the coefficient of the KL penalty (``policy_loss="kl_penalty"``): the fixed value,
        a schedule, or the initial value of the adaptive rule
    :param adaptive_kl_target: NEW. d_targ of the PPO paper's adaptive β: after each update, β × 2 if KL > 1.5·d_targ,
        β / 2 if KL < d_targ / 1.5, clipped to ``[1e-4, 1e4]``; ``None`` (default): β fixed (or scheduled)
    :param dual_clip: NEW. c > 1 of ``policy_loss="dual_clip"``: for A < 0 the loss is bounded by ``c·A`` (default 3)
    :param clip_range_low: NEW. ε_low of ``policy_loss="clip_higher"`` (float or schedule); ``None``: ``clip_range``
    :param clip_range_high: NEW. ε_high of ``policy_loss="clip_higher"`` (float or schedule); ``None``: ``clip_range``
    :param adaptive_lr_kl_target: NEW. KL-adaptive learning rate (rl_games, RSL-RL): after each update, the (actor's)
        rate ÷ 1.5 if KL > 2·target, × 1.5 if KL < target / 2 (``learning_rate``, a float, is the initial value)
    :param adaptive_lr_bounds: NEW. ``(low, high)`` bounds of the adaptive learning rate (default RSL-RL's)
    :param vf_learning_rate: NEW. The critic's learning rate (float or schedule): two parameter groups, the actor (with
        a shared features extractor) at ``learning_rate``, the critic at this rate; ``None`` (default): SB3's optimizer
    :param vf_clip_mode: NEW. ``"sb3"`` (default): ``mean((R - V_clip)²)``; ``"max"`` (Baselines, CleanRL):
        ``mean(max((R - V)², (R - V_clip)²))``, with ``V_clip = V_old + clip(V - V_old, -ε_v, ε_v)``
    :param on_non_finite: NEW. A NaN or infinite number in the rollout, a loss, the gradients or the parameters:
        ``"raise"`` (default) a ``NonFiniteError`` naming it and the timestep, ``"skip"`` a warning and the update skipped
        (``train/skipped_updates``). Either way (and on an exception) the state from before the update is kept.
    :param reference_policy: NEW. A frozen policy π_ref to stay close to, as in RLHF (``sb3_trust.common.reference``):
        a path to a saved SB3 model (reloaded with the model), an SB3 model or an ``ActorCriticPolicy`` (attach it again
        after ``load()`` with ``set_reference_policy``); ``None`` (default): no reference.
    :param reference_kl_coef: NEW. Its β: a float, a schedule, or the controller's initial value
    :param reference_kl_mode: NEW. ``"reward"`` (default, RLHF): ``r_t - β·(log π(a_t|s_t) - log π_ref(a_t|s_t))``
        before GAE; ``"loss"``: ``β·mean KL(π ‖ π_ref)`` added to the loss
    :param reference_kl_target: NEW. Target of the β controller of Ziegler et al. (2019), or ``None`` (fixed β)
    :param reference_kl_horizon: NEW. Horizon (in samples) of that controller
    :param stats_window_size: Number of episodes over which the rollout statistics are averaged
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation. See :ref:`ppo_policies`
    :param verbose: Verbosity level: 0 no output, 1 info messages (such as device or wrappers used), 2 debug messages
    :param seed: Seed for the pseudo random generators
    :param device: Device (cpu, cuda, ...) on which the code should be run (auto: the GPU if possible)
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    :param backend: NEW. ``"auto"`` (default): the accelerator (``sb3_trust.accel``) for the parts of this model it can
        run, the reference path for the rest; ``"reference"``: SB3's policy API and autograd only; ``"accelerated"``:
        a ``ValueError`` where the accelerator cannot run. Which path ran is in ``collect_backend`` and
        ``train_backend``, why in ``backend_reasons``, and printed once at ``verbose >= 1``.
    :param use_masking: NEW. Invalid-action masking with sb3-contrib's interface (``MaskablePPO``): ``"auto"`` (default)
        on when the env has an ``action_masks()`` method (or the policy is a ``MaskableActorCriticPolicy``), ``True``
        (an env without masks is an error) or ``False``. On, the policy aliases name sb3-contrib's maskable policies and
        every variant uses the masked distributions (``sb3_trust.common.masking``); the reference path runs it.
    :param projection: NEW. Trust-region projection layers (Otto et al., ICLR 2021; ``sb3_trust.common.projections``):
        ``"frobenius"``, ``"w2"`` or ``"kl"``: the loss sees each state's Gaussian projected onto the trust region around
        π_old (the paper pairs it with ``policy_loss="unclipped"``); ``None`` (default): no projection
    :param projection_mean_bound: NEW. ε_μ; ``projection_cov_bound``: ε_Σ; ``projection_coef``: α of the regression loss
    """

    _trust_family = "TrustPPO"
    _foreign_formats = (ForeignFormat("stable_baselines3.PPO", frozenset({"n_epochs", "clip_range", "clip_range_vf"})),)
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
        dual_clip: float = 3.0,
        clip_range_low: float | Schedule | None = None,
        clip_range_high: float | Schedule | None = None,
        adaptive_lr_kl_target: float | None = None,
        adaptive_lr_bounds: tuple[float, float] = (1e-5, 1e-2),
        vf_learning_rate: float | Schedule | None = None,
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
        backend: str = "auto",
        use_masking: bool | str = "auto",
        projection: str | None = None,
        projection_mean_bound: float = 0.03,
        projection_cov_bound: float = 0.001,
        projection_coef: float = 8.0,
    ):
        # Every keyword is checked before anything is built (SB3 asserts; we raise ValueError/TypeError)
        given = dict(locals())
        check_trust_ppo_kwargs(given)

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
        self.dual_clip, self.clip_range_low, self.clip_range_high = dual_clip, clip_range_low, clip_range_high
        self.adaptive_lr_kl_target, self.adaptive_lr_bounds = adaptive_lr_kl_target, tuple(adaptive_lr_bounds)
        self.vf_learning_rate = vf_learning_rate
        self.vf_clip_mode = vf_clip_mode
        self.on_non_finite = on_non_finite
        self.backend = backend
        self.projection, self.projection_mean_bound = projection, projection_mean_bound
        self.projection_cov_bound, self.projection_coef = projection_cov_bound, projection_coef
        # Which algorithm wrote a saved file (checked by load())
        self._trust_algorithm = self._trust_family
        # Training state lives here, not in _setup_model(), which load() calls again after restoring it.
        # The current β: adapted after each update when adaptive_kl_target is set.
        self._kl_coef = float(kl_coef(1.0) if callable(kl_coef) else kl_coef)
        # The current (actor's) learning rate when adaptive_lr_kl_target is set, adapted after each update
        self._adaptive_learning_rate = float(learning_rate(1.0) if callable(learning_rate) else learning_rate)
        # Updates skipped because of non-finite numbers (on_non_finite="skip")
        self._n_skipped_updates = 0
        # KL penalty toward a frozen reference policy (RLHF): settings, current β, the frozen policy
        init_reference(self, given)
        # Invalid-action masking: resolves use_masking, the maskable policy and rollout buffer classes
        setup_masking(self, use_masking)

        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        super()._setup_model()
        # Schedules (idempotent: load() calls this again)
        self.clip_range = FloatSchedule(self.clip_range)
        if self.clip_range_vf is not None:
            self.clip_range_vf = FloatSchedule(self.clip_range_vf)
        self.ent_coef_schedule = FloatSchedule(self.ent_coef)
        self.kl_coef_schedule = FloatSchedule(self.kl_coef)
        if self.vf_learning_rate is not None:  # two parameter groups (None: SB3's optimizer, untouched)
            self.vf_lr_schedule = FloatSchedule(self.vf_learning_rate)
            split_optimizer(self.policy, self.lr_schedule(1.0), self.vf_lr_schedule(1.0))  # type: ignore[arg-type]
        setup_reference(self)
        self._projection = TrustRegionProjection.for_model(self)  # None without a projection (never saved)
        # π_old: a frozen copy of the policy at the start of each update (never saved)
        self._old_policy: ActorCriticPolicy | None = None
        # Which path runs collection and training, and the accelerator's runners (never saved)
        self.collect_backend = self.train_backend = "reference"
        self.backend_reasons: dict[str, str | None] = {}
        self._runners: dict[str, tuple[Any, Any]] = {}
        if self.backend == "accelerated":  # fail now rather than at the first update
            self._accelerated("collect", accel.can_run, accel.collector)
            self._accelerated("train", accel.can_run, accel.ppo_step)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_old_policy", "_runners", "_projection", *REFERENCE_EXCLUDED_SAVE_PARAMS]

    def _collector(self) -> Any:
        """:return: the accelerator's collection for this model, or ``None`` for SB3's ``collect_rollouts``"""
        return self._accelerated("collect", accel.can_run, accel.collector)

    def train(self) -> None:
        """
        Update policy using the currently gathered rollout buffer. Non-finite numbers and interruptions leave the
        policy, the optimizer and the counters as they were before the update (see ``on_non_finite``).
        """
        guarded_update(self, self._update, ("_n_updates", "_kl_coef", "_reference_kl_coef", "_adaptive_learning_rate"))

    def _update(self) -> None:
        """One update: ``n_epochs`` passes over the rollout in minibatches, SB3 PPO's loop."""
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        # Update optimizer learning rate
        self._update_learning_rate(self.policy.optimizer)
        settings = loss_settings(self)  # every schedule evaluated and checked
        # π_old, the policy before this update: for the exact KL of the penalty and of train/kl
        old_policy = self._old_policy = frozen_copy(self.policy, into=self._old_policy)  # type: ignore[arg-type]
        accelerated = self._accelerated("train", accel.can_run, accel.ppo_step)
        if accelerated is not None:
            accelerated.begin_update(old_policy)
            step = accelerated.step
        else:
            step = self._reference_step

        minibatches: list[MinibatchStats] = []  # what every minibatch of this update measured, for the logs
        last_epoch: list[MinibatchStats] = []
        continue_training = True
        epochs_completed = 0
        # train for n_epochs epochs
        for epoch in range(self.n_epochs):
            last_epoch = []
            # Do a complete pass on the rollout buffer
            for rollout_data in self.rollout_buffer.get(self.batch_size):
                try:
                    stats = step(rollout_data, settings)
                except NonFiniteError as error:
                    where = f"update {self._n_updates}, epoch {epoch} (timestep {self.num_timesteps})"
                    raise NonFiniteError(f"{error} in {where}") from error
                minibatches.append(stats)
                last_epoch.append(stats)
                if not stats.applied:  # target_kl: the k3 estimate exceeded 1.5 * target_kl, this step was not applied
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {stats.approx_kl:.2f}")
                    break
            self._n_updates += 1
            if not continue_training:
                break
            epochs_completed += 1

        if not all_finite(list(self.policy.parameters())):
            raise NonFiniteError(f"non-finite parameters after update {self._n_updates} (timestep {self.num_timesteps})")
        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())
        # Exact KL(π_old ‖ π_new) over the rollout after the whole update: logged, and drives the adaptive β
        kl = rollout_kl(old_policy, self.policy, self.rollout_buffer)  # type: ignore[arg-type]
        adapt_to_kl(self, kl)
        # KL(π ‖ π_ref) after the update: logged, and drives the reference β controller if any
        after_update(self)

        def mean(name: str, of: list[MinibatchStats] = minibatches) -> float:
            return float(np.mean([getattr(stats, name) for stats in of]))

        # Logs: SB3's keys with SB3's meanings (approx_kl: mean over the last epoch; loss: last minibatch)
        self.logger.record("train/entropy_loss", mean("entropy_loss"))
        self.logger.record("train/policy_gradient_loss", mean("policy_loss"))
        self.logger.record("train/value_loss", mean("value_loss"))
        self.logger.record("train/approx_kl", mean("approx_kl", last_epoch))
        self.logger.record("train/clip_fraction", mean("clip_fraction"))
        self.logger.record("train/loss", minibatches[-1].loss)
        self.logger.record("train/explained_variance", explained_var)
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", settings.clip_range)
        for name, value in settings.loss_kwargs.items():  # the loss's own keywords (dual_clip, clip_range_low, ...)
            self.logger.record(f"train/{name}", value)
        if settings.clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", settings.clip_range_vf)
            self.logger.record("train/value_clip_fraction", mean("value_clip_fraction"))
        # sb3_trust's diagnostics
        self.logger.record("train/kl", kl)
        if POLICY_LOSSES[self.policy_loss].needs_kl:
            self.logger.record("train/kl_coef", self._kl_coef)
        self.logger.record("train/early_stop_fraction", epochs_completed / self.n_epochs)
        self.logger.record("train/ratio_max", max(stats.ratio_max for stats in minibatches))
        self.logger.record("train/ratio_mean", mean("ratio_mean"))
        self.logger.record("train/ent_coef", settings.ent_coef)
        if self._projection is not None:
            self._projection.record(self.logger)

    def _reference_step(self, rollout_data: RolloutBufferSamples, settings: LossSettings) -> MinibatchStats:
        """
        One minibatch on the reference path: evaluate the policy, compute the loss, stop early if the KL estimate is
        too large, backpropagate, clip the gradient norm, step the optimizer.

        :param rollout_data: the minibatch
        :param settings: this update's settings
        :return: what the step measured
        :raise NonFiniteError: naming the first non-finite term, before the optimizer step
        """
        actions = rollout_data.actions
        if isinstance(self.action_space, spaces.Discrete):
            # Convert discrete action from float to long
            actions = rollout_data.actions.long().flatten()
        entry = POLICY_LOSSES[settings.policy_loss]
        loss_kwargs: dict[str, Any] = dict(settings.loss_kwargs)
        reference = settings.reference_coef > 0 and self._reference is not None
        masks = mask_kwargs(rollout_data)  # the action masks, with use_masking
        projection_loss, projection = 0.0, self._projection
        if entry.needs_kl or reference or projection is not None:
            values, log_prob, entropy, distribution = evaluate_actions_with_distribution(
                self.policy,  # type: ignore[arg-type]
                rollout_data.observations,
                actions,
                **masks,
            )
        else:
            values, log_prob, entropy = self.policy.evaluate_actions(rollout_data.observations, actions, **masks)
        values = values.flatten()
        if entry.needs_kl or projection is not None:
            assert self._old_policy is not None
            with th.no_grad():
                old_distribution = self._old_policy.get_distribution(rollout_data.observations, **masks)
        if projection is not None:  # the loss sees π̃, π projected onto the trust region around π_old
            distribution, projection_loss = projection(distribution, old_distribution)
            log_prob, entropy = distribution.log_prob(actions), distribution.entropy()
        if entry.needs_kl:
            loss_kwargs["kl"] = exact_kl(old_distribution, distribution)
        # Normalize advantage (per minibatch, as SB3)
        advantages = rollout_data.advantages
        if settings.normalize_advantage:
            advantages = normalize_advantages(advantages)

        # ratio between old and new policy, should be one at the first iteration
        log_ratio = log_prob - rollout_data.old_log_prob
        ratio = th.exp(log_ratio)
        policy_loss = entry(ratio, advantages, **loss_kwargs)

        # Value loss using the TD(gae_lambda) target, optionally clipped
        vf_loss, value_clip_fraction = value_loss(
            values, rollout_data.old_values, rollout_data.returns, settings.clip_range_vf, settings.vf_clip_mode
        )
        # Entropy loss favor exploration
        if entropy is None:
            # Approximate entropy when no analytical form
            entropy_loss = -th.mean(-log_prob)
        else:
            entropy_loss = -th.mean(entropy)

        loss = policy_loss + settings.ent_coef * entropy_loss + settings.vf_coef * vf_loss + projection_loss
        if reference:
            # KL(π ‖ π_ref) toward the frozen reference policy (RLHF), loss placement
            loss = (
                loss
                + settings.reference_coef
                * exact_kl(distribution, self._reference.distribution(rollout_data.observations)).mean()
            )

        with th.no_grad():
            # k3 estimate of KL(π_old ‖ π), for SB3's early stopping and logging (stable-baselines3 issue #417)
            approx_kl_div = approx_kl_k3(log_ratio).cpu().numpy()
            stats = MinibatchStats(
                policy_loss=policy_loss.item(),
                value_loss=vf_loss.item(),
                entropy_loss=entropy_loss.item(),
                loss=loss.item(),
                approx_kl=float(approx_kl_div),
                clip_fraction=outside_trust_region(ratio, *settings.trust_region()).item(),
                value_clip_fraction=float(value_clip_fraction),
                ratio_max=ratio.max().item(),
                ratio_mean=ratio.mean().item(),
                applied=True,
            )
        if settings.max_approx_kl is not None and approx_kl_div > settings.max_approx_kl:
            return stats._replace(applied=False)

        # Optimization step
        self.policy.optimizer.zero_grad()
        loss.backward()
        # Clip grad norm
        grad_norm = th.nn.utils.clip_grad_norm_(self.policy.parameters(), settings.max_grad_norm)
        named = dict(policy_loss=policy_loss, value_loss=vf_loss, entropy_loss=entropy_loss, gradient_norm=grad_norm)
        for name, value in named.items():
            if not th.isfinite(value):
                raise NonFiniteError(f"non-finite {name}")
        self.policy.optimizer.step()
        return stats

    def _update_learning_rate(self, optimizers: Any) -> None:
        """SB3's, but the actor's rate is the adapted one (``adaptive_lr_kl_target``), the critic's its own."""
        if self.adaptive_lr_kl_target is None and self.vf_learning_rate is None:
            return super()._update_learning_rate(optimizers)
        set_learning_rates(self, self.policy.optimizer)
