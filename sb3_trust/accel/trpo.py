"""
TrustTRPO's update on the accelerator: the actor step's quantities in closed form (``sb3_trust.accel.trpo_kernels``)
for the reference path's CG, maximal step and line search, and the critic's minibatch Adam steps, in place on the
policy's own parameters and ``th.optim.Adam`` state.
"""

import numpy as np
import torch as th

from sb3_trust.accel import kernels, trpo_kernels
from sb3_trust.accel.network import PackedPolicy
from sb3_trust.accel.step import AdamRunner, _numpy
from sb3_trust.accel.threads import match_torch_threads
from sb3_trust.common.trust_region import ActorBatch, ActorProblem


class TRPOStep(AdamRunner):
    """
    The accelerator's TrustTRPO (and TrustNPG) update for ``model`` (``can_run(model, "train") is None``).

    :param model: the TrustTRPO model
    """

    @staticmethod
    def _stepped(packed: PackedPolicy) -> slice:
        """:return: the critic's parameters (the critic step's Adam steps only them)"""
        n_critic = len(packed.params) - packed.n_actor_params - (0 if packed.categorical else 1)
        return slice(packed.n_actor_params, packed.n_actor_params + n_critic)

    def _actor_layout(self, packed: PackedPolicy) -> tuple[list[th.Tensor], np.ndarray]:
        """
        :return: the actor's parameters in the policy's order (as the reference path finds them: the flat vectors' layout)
            and where each starts in a flat vector, in the kernels' order (``[W, b]`` per layer, then ``log_std`` or 0)
        """
        actor = packed.params[: packed.n_actor_params] + ([] if packed.categorical else [packed.params[-1]])
        in_actor = {id(param) for param in actor}
        ordered = [param for param in self.model.policy.parameters() if id(param) in in_actor]
        starts = dict(zip(map(id, ordered), np.cumsum([0] + [param.numel() for param in ordered[:-1]]), strict=True))
        offsets = [int(starts[id(param)]) for param in actor] + ([0] if packed.categorical else [])
        return ordered, np.array(offsets, np.int64)

    def actor_problem(self, batch: ActorBatch) -> ActorProblem:
        """
        What TrustTRPO's reference ``_actor_problem`` returns, in closed form (the surrogate's gradient and the
        Fisher-vector products at θ_old; ``evaluate`` at the parameters the line search writes in place).

        :param batch: the actor batch (advantages already normalised if so configured; no action masks)
        :return: the problem
        """
        match_torch_threads()  # for the products made here and in the returned functions
        packed = self._pack()
        actor_params, offsets = self._actor_layout(packed)
        layout, arrays = packed.layout, packed.arrays
        obs, actions = _numpy(batch.observations, 2), _numpy(batch.actions, 2)  # type: ignore[arg-type]
        old_log_prob, advantages = _numpy(batch.old_log_prob, 1), _numpy(batch.advantages, 1)
        grad = th.empty(sum(param.numel() for param in actor_params))
        surrogate, outputs, old_a, old_b = trpo_kernels.actor_problem(
            arrays, layout, obs, actions, old_log_prob, advantages, offsets, grad.numpy()
        )
        old_log_std = old_b if packed.categorical else packed.views[-1].copy()
        contrib = self.model.kl_convention == "contrib"
        kl_scale = 1.0 / packed.n_out if contrib and not packed.categorical else 1.0
        damping = float(self.model.cg_damping)
        weights = packed.views[: packed.n_actor_params : 2]
        tangents, scratch = (
            kernels.array_list([np.empty((obs.shape[0], weight.shape[0]), np.float32) for weight in weights]) for _ in range(2)
        )

        def fisher_vector_product(vector: th.Tensor) -> th.Tensor:
            vector = vector.detach().contiguous()
            product = th.empty_like(vector)
            trpo_kernels.fisher_vector_product(
                arrays, layout, outputs, old_b, vector.numpy(), offsets, product.numpy(), damping, kl_scale, tangents, scratch
            )
            return product

        results = np.zeros(trpo_kernels.N_RESULTS, np.float64)
        paper_kl = [0.0]

        def evaluate() -> tuple[th.Tensor, th.Tensor]:
            trpo_kernels.evaluate(
                arrays, layout, obs, actions, old_log_prob, advantages, old_a, old_b, old_log_std, contrib, results
            )
            paper_kl[0] = float(results[trpo_kernels.R_PAPER_KL])
            return th.tensor(results[trpo_kernels.R_SURROGATE]), th.tensor(results[trpo_kernels.R_CONSTRAINT_KL])

        return ActorProblem(actor_params, th.tensor(surrogate), grad, fisher_vector_product, evaluate, paper_kl)

    def critic_step(self, actor_params: list[th.Tensor]) -> tuple[list[float], int]:
        """
        What TrustTRPO's reference ``_critic_step`` does: ``n_critic_updates`` epochs of minibatches of ``batch_size``,
        a minibatch with a non-finite loss skipped, the actor untouched; in one kernel call. The minibatches are those
        of ``rollout_buffer.get(batch_size)`` (SB3's ``RolloutBuffer``, which ``can_run`` requires): one
        ``np.random.permutation`` of the samples per epoch, drawn here in the same order, so the NumPy RNG stays in step.

        :param actor_params: the parameters of the actor step (the kernel does not step them)
        :return: the minibatch losses, and the number of minibatches skipped because of a non-finite loss
        """
        match_torch_threads()
        model = self.model
        buffer = model.rollout_buffer
        arrays, created = self._adam_state()
        packed = self._packed
        assert packed is not None
        size = buffer.buffer_size * buffer.n_envs
        draws = [np.random.permutation(size) for _ in range(model.n_critic_updates)]
        permutations = np.array(draws, np.int64).reshape(-1, size)
        # get() flattens the buffer's arrays (n_steps, n_envs, ...) -> (n_steps * n_envs, ...) in place at its first call
        observations, returns = buffer.observations, buffer.returns
        if not buffer.generator_ready:
            observations, returns = buffer.swap_and_flatten(observations), buffer.swap_and_flatten(returns)
        losses = np.zeros(model.n_critic_updates * -(-size // model.batch_size), np.float64)
        n_skipped = trpo_kernels.critic_epochs(
            arrays,
            packed.layout,
            np.ascontiguousarray(observations.reshape(size, -1), dtype=np.float32),
            np.ascontiguousarray(returns.reshape(size), dtype=np.float32),
            permutations,
            model.batch_size,
            self._hyper_parameters(),
            self._grad_buffer,
            losses,
        )
        if n_skipped < len(losses):
            created = []  # the state a step was applied with stays
        self._forget(created)
        return losses.tolist(), n_skipped
