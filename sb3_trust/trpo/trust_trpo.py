import copy
import math
import os
from typing import Any, ClassVar, Literal, TypeVar

import torch as th
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.distributions import Distribution, kl_divergence
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, Schedule
from stable_baselines3.common.utils import explained_variance

from sb3_trust import accel
from sb3_trust.common.base import TrustAlgorithmMixin
from sb3_trust.common.kl import exact_kl
from sb3_trust.common.masking import is_maskable_policy, mask_kwargs, setup_masking
from sb3_trust.common.messages import warn
from sb3_trust.common.reference import (
    REFERENCE_EXCLUDED_SAVE_PARAMS,
    after_update,
    current_reference_coef,
    init_reference,
    reference_active,
    setup_reference,
)
from sb3_trust.common.safety import ForeignFormat, guarded_update
from sb3_trust.common.trpo_update import actor_batch, critic_epochs, record_update
from sb3_trust.common.trust_region import (
    ActorBatch,
    ActorProblem,
    ActorStepStats,
    LineSearchResult,
    apply_fixed_step,
    backtracking_line_search,
    conjugate_gradient,
    fisher_vector_product_fn,
    flat_grad,
    max_step_size,
)
from sb3_trust.common.validation import (
    check_action_space,
    check_rollout_sizes,
)
from sb3_trust.trpo.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from sb3_trust.trpo.validation import check_trust_trpo_kwargs

SelfTrustTRPO = TypeVar("SelfTrustTRPO", bound="TrustTRPO")

KLConvention = Literal["paper", "contrib"]
StepRule = Literal["line_search", "npg"]


class TrustTRPO(TrustAlgorithmMixin, OnPolicyAlgorithm):
    """
    Trust Region Policy Optimization (TRPO), and the natural policy gradient (NPG) with ``step_rule="npg"``.

    Papers: https://arxiv.org/abs/1502.05477 (TRPO), https://papers.nips.cc/paper/2073 (NPG, Kakade 2001)
    Reference implementation: sb3-contrib's ``TRPO`` 2.9, whose keywords this class accepts with the same meaning and
    defaults; with ``kl_convention="contrib"`` it reproduces contrib's updates (same RNG use, same operations).

    One update (``train()``; docs/trpo.md has the details and the logged keys):

    1. **Actor step** on the whole rollout (every ``sub_sampling_factor``-th sample), advantages normalised over it.
       CG solves ``(F + cg_damping I) s = g`` for the surrogate's gradient ``g``, ``F`` being the Hessian of the mean KL
       at θ_old (double backpropagation; the accelerator: closed form); the maximal step is ``β = sqrt(2 δ / sᵀ F s)``, δ =
       ``target_kl`` (the trust-region radius, not PPO's early stop). ``step_rule="line_search"`` (TRPO) tries
       ``θ_old + α β s`` for ``α = 1, c, c², …`` and keeps the first step within δ that improves the surrogate (none:
       the actor is restored exactly); ``step_rule="npg"`` takes ``θ_old + β s``.
    2. **Critic step**: ``n_critic_updates`` epochs of minibatch MSE regression of ``V(s)`` on the returns with the
       policy's optimizer, the actor parameters frozen meanwhile.

    **KL convention**: ``"paper"`` (default), KL(π_old ‖ π_new) summed over action dimensions, ``kl <= δ``, CG from
    zero; ``"contrib"``, sb3-contrib's KL(π_new ‖ π_old) averaged over states and Gaussian/Bernoulli dimensions,
    ``kl < δ``, CG from ``1e-4 * randn``: with it, the reference path reproduces sb3-contrib's updates.

    **Actor parameters** are found structurally: the trainable parameters the mean KL has a gradient for, whatever their
    names (a shared features extractor belongs to the actor). A non-finite surrogate, gradient, CG solution or
    ``sᵀ F s <= 0`` skips the actor step with a warning (``train/actor_step_skipped``); a critic minibatch with a
    non-finite loss is skipped (``train/critic_step_skipped``).

    **Computation**: SB3's policy API and autograd, for every policy, space, dtype and device; collection and update on
    the optional accelerator ``sb3_trust.accel`` where it can run (closed-form products, see ``backend``).

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, ...)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: The learning rate for the value function, it can be a function
        of the current progress remaining (from 1 to 0)
    :param n_steps: The number of steps to run for each environment per update
        (i.e. rollout buffer size is n_steps * n_envs where n_envs is number of environment copies running in parallel)
        NOTE: n_steps * n_envs must be greater than 1 (because of the advantage normalization)
    :param batch_size: Minibatch size for the value function
    :param gamma: Discount factor
    :param cg_max_steps: maximum number of steps in the Conjugate Gradient algorithm
        for computing the Hessian vector product
    :param cg_damping: damping in the Hessian vector product computation
    :param line_search_shrinking_factor: step-size reduction factor for the line-search
        (i.e., ``theta_new = theta + alpha^i * step``), in (0, 1)
    :param line_search_max_iter: maximum number of iteration for the backtracking line-search
    :param n_critic_updates: number of critic updates (epochs over the rollout) per policy update
    :param gae_lambda: Factor for trade-off of bias vs variance for Generalized Advantage Estimator
    :param use_sde: Whether to use generalized State Dependent Exploration (gSDE)
        instead of action noise exploration (default: False)
    :param sde_sample_freq: Sample a new noise matrix every n steps when using gSDE
        Default: -1 (only sample at the beginning of the rollout)
    :param rollout_buffer_class: Rollout buffer class to use. If ``None``, it will be automatically selected.
    :param rollout_buffer_kwargs: Keyword arguments to pass to the rollout buffer on creation
    :param normalize_advantage: Whether to normalize or not the advantage
    :param target_kl: The trust-region radius δ: bound on the mean KL between the old and the new policy
        (see ``kl_convention``). Should be small for stability. Values like 0.01, 0.05.
    :param sub_sampling_factor: Sub-sample the batch for the actor step to make computation faster
        see p40-42 of John Schulman thesis http://joschu.net/docs/thesis.pdf
    :param stats_window_size: Window size for the rollout logging, specifying the number of episodes to average
        the reported success rate, mean episode length, and mean reward over
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation
    :param verbose: the verbosity level: 0 no output, 1 info, 2 debug
    :param seed: Seed for the pseudo random generators
    :param device: Device (cpu, cuda, ...) on which the code should be run.
        Setting it to auto, the code will be run on the GPU if possible.
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    :param kl_convention: ``"paper"`` (KL(π_old ‖ π_new) summed over action dims, ``kl <= δ``, CG from zero) or
        ``"contrib"`` (sb3-contrib's KL(π_new ‖ π_old) averaged over action dims, ``kl < δ``, random CG start)
    :param step_rule: ``"line_search"`` (TRPO) or ``"npg"`` (natural policy gradient: fixed step
        ``sqrt(2 δ / sᵀ F s)``, no line search; ``line_search_*`` are then unused)
    :param on_non_finite: a NaN or infinite number in the rollout: ``"raise"`` (default) or ``"skip"`` the update, as
        in ``TrustPPO``. Non-finite quantities inside the actor step skip that step (``train/actor_step_skipped``).
    :param reference_policy: a frozen reference policy π_ref (RLHF), as in ``TrustPPO``; ``None``: no reference
    :param reference_kl_coef: β of the reference penalty (float, schedule, or the controller's initial value)
    :param reference_kl_mode: ``"reward"`` (shaping before GAE) or ``"loss"`` (``- β·mean KL(π ‖ π_ref)`` added to the
        surrogate that the trust-region step maximises)
    :param reference_kl_target: target of the β controller (Ziegler et al. 2019), or ``None``
    :param reference_kl_horizon: horizon (in samples) of that controller
    :param backend: ``"auto"`` (default), ``"reference"`` or ``"accelerated"``, as in ``TrustPPO`` (the accelerator
        collects rollouts and runs the update: the actor step's quantities in closed form, the critic's epochs)
    :param use_masking: invalid-action masking (sb3-contrib's interface), as in ``TrustPPO``: ``"auto"`` (default, on
        when the env has ``action_masks()``), ``True`` or ``False``; the KL and its Fisher-vector products are then
        those of the masked distributions
    """

    _trust_family = "TrustTRPO"
    _foreign_formats = (
        ForeignFormat(
            "sb3_contrib.TRPO",
            frozenset({"cg_max_steps", "cg_damping", "line_search_max_iter", "n_critic_updates", "sub_sampling_factor"}),
            {"kl_convention": "contrib"},
        ),
    )
    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 1e-3,
        n_steps: int = 2048,
        batch_size: int = 128,
        gamma: float = 0.99,
        cg_max_steps: int = 15,
        cg_damping: float = 0.1,
        line_search_shrinking_factor: float = 0.8,
        line_search_max_iter: int = 10,
        n_critic_updates: int = 10,
        gae_lambda: float = 0.95,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        normalize_advantage: bool = True,
        target_kl: float = 0.01,
        sub_sampling_factor: int = 1,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
        *,
        kl_convention: KLConvention = "paper",
        step_rule: StepRule = "line_search",
        on_non_finite: str = "raise",
        reference_policy: "str | os.PathLike | BaseAlgorithm | ActorCriticPolicy | None" = None,
        reference_kl_coef: float | Schedule = 0.05,
        reference_kl_mode: str = "reward",
        reference_kl_target: float | None = None,
        reference_kl_horizon: int = 10_000,
        backend: str = "auto",
        use_masking: bool | str = "auto",
    ):
        # Every keyword is checked before anything is built (contrib asserts; we raise ValueError/TypeError)
        given = dict(locals())
        check_trust_trpo_kwargs(given)

        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=0.0,  # entropy bonus is not used by TRPO
            vf_coef=0.0,  # value function is optimized separately
            max_grad_norm=0.0,
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
            # Checked below with a TypeError instead of SB3's assert
            supported_action_spaces=None,
        )
        # env is None when called from `load()`
        if self.env is not None:
            check_action_space(self.action_space, type(self).__name__)
            check_rollout_sizes(n_steps, self.env.num_envs, batch_size, normalize_advantage, minibatch_advantages=False)
            actor_batch_size = math.ceil(n_steps * self.env.num_envs / sub_sampling_factor)
            if normalize_advantage and actor_batch_size < 2:
                raise ValueError(
                    f"`sub_sampling_factor` = {sub_sampling_factor} leaves {actor_batch_size} sample(s) of the "
                    f"n_steps * n_envs = {n_steps * self.env.num_envs} for the actor step: at least 2 are needed "
                    "when `normalize_advantage=True`"
                )

        self.normalize_advantage = normalize_advantage
        self.batch_size = batch_size
        # Conjugate gradients parameters
        self.cg_max_steps = cg_max_steps
        self.cg_damping = cg_damping
        # Backtracking line search parameters
        self.line_search_shrinking_factor = line_search_shrinking_factor
        self.line_search_max_iter = line_search_max_iter
        self.target_kl = target_kl
        self.n_critic_updates = n_critic_updates
        self.sub_sampling_factor = sub_sampling_factor
        self.kl_convention = kl_convention
        self.step_rule = step_rule
        self.on_non_finite = on_non_finite
        self.backend = backend
        # Which algorithm family wrote a saved file (checked by load())
        self._trust_algorithm = self._trust_family
        # Training state: created here (not in `_setup_model`) so that `load()` restores it
        self._n_actor_steps_skipped = 0
        self._n_skipped_updates = 0
        # KL penalty toward a frozen reference policy (RLHF): settings, current β, the frozen policy
        init_reference(self, given)
        # Invalid-action masking: resolves use_masking, the maskable policy and rollout buffer classes
        setup_masking(self, use_masking)

        if _init_setup_model:
            self._setup_model()

    def _constraint_kl(self, old_distribution: Distribution, distribution: Distribution) -> th.Tensor:
        """
        The mean KL that the trust region bounds, in the configured convention (see the class docstring).

        :param old_distribution: π_old (detached)
        :param distribution: π_new
        :return: scalar
        """
        if self.kl_convention == "paper":
            return exact_kl(old_distribution, distribution).mean()
        if is_maskable_policy(self.policy_class):  # SB3's kl_divergence does not know the maskable distributions
            return exact_kl(distribution, old_distribution).mean()
        return kl_divergence(distribution, old_distribution).mean()

    def _setup_model(self) -> None:
        super()._setup_model()
        setup_reference(self)
        # Which path runs collection and training, and the accelerator's runners (never saved)
        self.collect_backend = self.train_backend = "reference"
        self.backend_reasons: dict[str, str | None] = {}
        self._runners: dict[str, tuple[Any, Any]] = {}
        if self.backend == "accelerated":  # fail now rather than at the first rollout
            self._accelerated("collect", accel.can_run, accel.collector)
            self._accelerated("train", accel.can_run, accel.trpo_step)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_runners", *REFERENCE_EXCLUDED_SAVE_PARAMS]

    def _collector(self) -> Any:
        """:return: the accelerator's collection for this model, or ``None`` for SB3's ``collect_rollouts``"""
        return self._accelerated("collect", accel.can_run, accel.collector)

    def _actor_batch(self) -> ActorBatch:
        """The whole rollout as one batch (see ``sb3_trust.common.trpo_update.actor_batch``)."""
        discrete = isinstance(self.action_space, spaces.Discrete)
        return actor_batch(self.rollout_buffer, self.sub_sampling_factor, self.normalize_advantage, discrete)

    def _skip_actor_step(self, what: str, policy_objective: float, cg_residual: float = math.nan) -> ActorStepStats:
        self._n_actor_steps_skipped += 1
        warn(
            f"{type(self).__name__}: non-finite {what} at update {self._n_updates + 1}, the actor step is skipped "
            f"({self._n_actor_steps_skipped} skipped so far, see `train/actor_step_skipped`). Usual causes: a too large "
            "target_kl, unnormalised observations or rewards (VecNormalize), a too small cg_damping"
        )
        no_step = LineSearchResult(False, 0, 0.0, 0.0, 0.0, 0.0)
        return ActorStepStats(policy_objective, no_step, 0.0, 0.0, cg_residual, True)

    def _actor_problem(self, batch: ActorBatch) -> ActorProblem:
        """
        The quantities of the actor step at θ_old, by autograd on SB3's distribution objects (any policy, both KL
        conventions; in ``"contrib"`` mode the same operations as sb3-contrib).

        :param batch: the actor batch
        :return: the problem
        """
        observations, actions, old_log_prob, advantages, _ = batch
        masks = mask_kwargs(batch)  # with use_masking, every distribution is masked
        with th.no_grad():
            # copy: SB3 reuses one distribution object per policy, the next forward pass would overwrite it
            old_distribution = copy.copy(self.policy.get_distribution(observations, **masks))
        distribution = self.policy.get_distribution(observations, **masks)
        ratio = th.exp(distribution.log_prob(actions) - old_log_prob)
        policy_objective = (advantages * ratio).mean()
        # Reference KL, loss placement: maximise mean(r·A) - β·mean KL(π ‖ π_ref)
        reference_coef = self._reference_loss_coef()
        reference_distribution = copy.copy(self._reference.distribution(observations)) if reference_coef is not None else None
        if reference_distribution is not None:
            policy_objective = policy_objective - reference_coef * exact_kl(distribution, reference_distribution).mean()
        kl = self._constraint_kl(old_distribution, distribution)

        # Actor parameters, found structurally: those the action distribution (hence the KL) depends on
        params = [param for param in self.policy.parameters() if param.requires_grad]
        if self.kl_convention == "paper":
            kl_grads = th.autograd.grad(kl, params, create_graph=True, allow_unused=True)
        else:
            # One backward pass per parameter, as contrib: the double-backward graph then has the same structure, so the
            # Fisher-vector products are bit-identical to contrib's (one pass for all differs in the last bits)
            kl_grads = tuple(
                th.autograd.grad(kl, param, create_graph=True, retain_graph=True, allow_unused=True)[0] for param in params
            )
        actor_params = [param for param, grad in zip(params, kl_grads, strict=True) if grad is not None]
        if not actor_params:
            raise RuntimeError(f"{type(self).__name__}: the action distribution does not depend on any trainable parameter")
        grad_kl = th.cat([grad.reshape(-1) for grad in kl_grads if grad is not None])
        objective_grad = flat_grad(policy_objective, actor_params, retain_graph=True)
        fisher_vector_product = fisher_vector_product_fn(grad_kl, actor_params, self.cg_damping)

        paper_kl: list[float] = [0.0]  # KL(π_old ‖ π_new) summed over action dims, of the last evaluated step

        def evaluate() -> tuple[th.Tensor, th.Tensor]:
            new_distribution = self.policy.get_distribution(observations, **masks)
            new_ratio = th.exp(new_distribution.log_prob(actions) - old_log_prob)
            constraint_kl = self._constraint_kl(old_distribution, new_distribution)
            if self.kl_convention != "paper":
                paper_kl[0] = exact_kl(old_distribution, new_distribution).mean().item()
            surrogate = (advantages * new_ratio).mean()
            if reference_distribution is not None:
                surrogate = surrogate - reference_coef * exact_kl(new_distribution, reference_distribution).mean()
            return surrogate, constraint_kl

        return ActorProblem(actor_params, policy_objective, objective_grad, fisher_vector_product, evaluate, paper_kl)

    def _solve_actor_step(self, problem: ActorProblem) -> ActorStepStats:
        """
        CG, maximal step and line search (or NPG step) on the quantities of ``problem``, in place.

        :param problem: the actor step's quantities at θ_old
        :return: the step's statistics
        """
        actor_params, policy_objective, objective_grad, fisher_vector_product, evaluate, paper_kl = problem
        objective_before = policy_objective.item()
        if not (math.isfinite(objective_before) and bool(th.isfinite(objective_grad).all())):
            return self._skip_actor_step("surrogate objective or gradient", objective_before)

        # Search direction s ≈ (F + λI)⁻¹ g
        # contrib starts CG from small noise (instability when the gradient is tiny); this consumes the torch RNG
        x0 = 1e-4 * th.randn_like(objective_grad) if self.kl_convention == "contrib" else None
        search_direction, cg_residual = conjugate_gradient(
            fisher_vector_product, objective_grad, max_iter=self.cg_max_steps, x0=x0
        )
        if not bool(th.isfinite(search_direction).all()):
            return self._skip_actor_step("conjugate-gradient solution", objective_before, cg_residual)
        step = max_step_size(self.target_kl, search_direction, fisher_vector_product(search_direction))
        if step is None:
            if not bool(search_direction.any()):
                # Zero gradient: nothing to do, not an error
                no_step = LineSearchResult(False, 0, 0.0, 0.0, 0.0, 0.0)
                return ActorStepStats(objective_before, no_step, 0.0, 0.0, cg_residual, False)
            return self._skip_actor_step("or non-positive sᵀFs", objective_before, cg_residual)
        expected_improvement_rate = float(objective_grad.dot(search_direction))

        if self.step_rule == "npg":
            result = apply_fixed_step(
                actor_params,
                search_direction,
                step,
                evaluate,
                objective_before,
                expected_improvement_rate=expected_improvement_rate,
            )
        else:
            result = backtracking_line_search(
                actor_params,
                search_direction,
                step,
                evaluate,
                objective_before,
                self.target_kl,
                expected_improvement_rate=expected_improvement_rate,
                shrinking_factor=self.line_search_shrinking_factor,
                max_iter=self.line_search_max_iter,
                strict_kl=self.kl_convention == "contrib",
            )
        if not result.success:
            return ActorStepStats(objective_before, result, 0.0, 0.0, cg_residual, False)
        accepted_kl = result.kl if paper_kl is None or self.kl_convention == "paper" else paper_kl[0]
        return ActorStepStats(
            objective_before + result.surrogate_improvement,
            result,
            accepted_kl,
            result.step_fraction * step,
            cg_residual,
            False,
        )

    def _critic_step(self, actor_params: list[th.Tensor]) -> tuple[list[float], int]:
        """The reference path's critic epochs (see ``sb3_trust.common.trpo_update.critic_epochs``)."""
        return critic_epochs(self.policy, self.rollout_buffer, self.n_critic_updates, self.batch_size, actor_params)

    def _reference_loss_coef(self) -> float | None:
        """:return: β of the reference KL when it is placed in the loss, else ``None``"""
        if reference_active(self) and self.reference_kl_mode == "loss":
            return current_reference_coef(self)
        return None

    def train(self) -> None:
        """
        Update policy using the currently gathered rollout buffer. Non-finite numbers in the rollout and interruptions
        leave the policy, the optimizer and the counters as they were before the update (see ``on_non_finite``).
        """
        guarded_update(self, self._update, ("_n_updates", "_n_actor_steps_skipped", "_reference_kl_coef"))

    def _update(self) -> None:
        """One update: the actor's trust-region step, then the critic's regression."""
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        # Update optimizer learning rate
        self._update_learning_rate(self.policy.optimizer)

        # The actor's natural-gradient step (line search or NPG), in place, then the critic's regression
        runner = self._accelerated("train", accel.can_run, accel.trpo_step)  # None: the reference path
        problem = (self._actor_problem if runner is None else runner.actor_problem)(self._actor_batch())
        actor_stats = self._solve_actor_step(problem)
        value_losses, n_critic_skipped = (self._critic_step if runner is None else runner.critic_step)(problem.actor_params)

        self._n_updates += 1
        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())
        record_update(type(self).__name__, self.logger, actor_stats, value_losses, n_critic_skipped, self._n_updates)
        self.logger.record("train/actor_step_skipped", self._n_actor_steps_skipped)
        self.logger.record("train/explained_variance", explained_var)
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        # KL(π ‖ π_ref) after the update: logged, and drives the reference β controller if any
        after_update(self)
