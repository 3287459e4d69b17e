"""
Minibatches from SB3's ``RolloutBuffer`` without its per-minibatch numpy-to-torch copies.

``FlatRollout`` converts the flattened buffer to tensors once per update (zero-copy views of the numpy arrays) and
indexes them per minibatch. It draws the minibatch order exactly as ``RolloutBuffer.get()`` does (one
``np.random.permutation`` per epoch), so training with it consumes the same random numbers and sees the same
minibatches as with SB3's generator.
"""

from collections.abc import Generator
from typing import NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer

_FIELDS = ("observations", "actions", "values", "log_probs", "advantages", "returns")


class Minibatch(NamedTuple):
    """The fields of SB3's ``RolloutBufferSamples``, plus the sample indices in the flattened rollout."""

    observations: th.Tensor
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    indices: th.Tensor


def flatten_rollout_buffer(rollout_buffer: RolloutBuffer) -> None:
    """
    Flatten the buffer's arrays to ``[n_steps * n_envs, ...]`` as the first call of ``RolloutBuffer.get()`` does.

    :param rollout_buffer: a full rollout buffer
    """
    if not rollout_buffer.generator_ready:
        for name in _FIELDS:
            rollout_buffer.__dict__[name] = rollout_buffer.swap_and_flatten(rollout_buffer.__dict__[name])
        rollout_buffer.generator_ready = True


class FlatRollout:
    """
    The whole rollout as torch tensors.

    :param rollout_buffer: a full ``RolloutBuffer`` (exactly that class: subclasses may store more or differently)
    :param device: torch device
    :param table: the previous rollout's ``table``, reused for this one's when it has the same shape and device (a
        fresh table per update fragments the heap: the peak memory grows), or ``None``
    """

    def __init__(self, rollout_buffer: RolloutBuffer, device: th.device, table: th.Tensor | None = None) -> None:
        flatten_rollout_buffer(rollout_buffer)
        self.n_samples = rollout_buffer.buffer_size * rollout_buffer.n_envs

        def as_tensor(array: np.ndarray) -> th.Tensor:
            return th.as_tensor(array, device=device)

        # One [n_samples, width] table of every field, so that a minibatch is a single indexing operation. In float32:
        # the observations as the policy converts them (`preprocess_obs` of a Box is `.float()`), the actions when
        # that is exact (float32 already, or the indices of a Discrete space, which the losses read with `.long()`)
        observations = rollout_buffer.observations.reshape(self.n_samples, -1).astype(np.float32, copy=False)
        actions = rollout_buffer.actions.reshape(self.n_samples, -1)
        if isinstance(rollout_buffer.action_space, spaces.Discrete):
            actions = actions.astype(np.float32)
        columns = [
            observations,
            actions,
            rollout_buffer.values.reshape(self.n_samples, 1),
            rollout_buffer.log_probs.reshape(self.n_samples, 1),
            rollout_buffer.advantages.reshape(self.n_samples, 1),
            rollout_buffer.returns.reshape(self.n_samples, 1),
        ]
        self.same_dtype = all(column.dtype == np.float32 for column in columns)
        self.obs_shape = rollout_buffer.observations.shape[1:]
        self.action_shape = rollout_buffer.actions.shape[1:]
        if self.same_dtype:
            shape = (self.n_samples, sum(column.shape[1] for column in columns))
            if table is not None and table.shape == shape and table.device.type == "cpu" and th.device(device).type == "cpu":
                np.concatenate(columns, axis=1, out=table.numpy())
                self.table = table
            else:
                self.table = th.as_tensor(np.concatenate(columns, axis=1), device=device)
            widths = [column.shape[1] for column in columns]
            self.splits = widths
        self.observations = as_tensor(rollout_buffer.observations)
        self.actions = as_tensor(rollout_buffer.actions)
        self.old_values = as_tensor(rollout_buffer.values).flatten()
        self.old_log_prob = as_tensor(rollout_buffer.log_probs).flatten()
        self.advantages = as_tensor(rollout_buffer.advantages).flatten()
        self.returns = as_tensor(rollout_buffer.returns).flatten()
        self.device = device

    @staticmethod
    def supports(rollout_buffer: RolloutBuffer) -> bool:
        """
        :param rollout_buffer: the buffer
        :return: whether this class can read it (a plain ``RolloutBuffer``)
        """
        return type(rollout_buffer) is RolloutBuffer

    def minibatches(self, batch_size: int | None) -> Generator[Minibatch, None, None]:
        """
        One epoch of shuffled minibatches, in the order ``RolloutBuffer.get(batch_size)`` would give.

        :param batch_size: minibatch size (``None``: the whole rollout)
        :return: generator of minibatches
        """
        permutation = th.as_tensor(np.random.permutation(self.n_samples), device=self.device)
        if batch_size is None:
            batch_size = self.n_samples
        # the whole epoch gathered at once; minibatches are slices of it
        shuffled = self.table[permutation] if self.same_dtype else None
        for start in range(0, self.n_samples, batch_size):
            indices = permutation[start : start + batch_size]
            if shuffled is not None:
                rows = shuffled[start : start + batch_size]
                obs, actions, values, log_prob, advantages, returns = th.split(rows, self.splits, dim=1)
                yield Minibatch(
                    obs.reshape(-1, *self.obs_shape),
                    actions.reshape(-1, *self.action_shape),
                    values.flatten(),
                    log_prob.flatten(),
                    advantages.flatten(),
                    returns.flatten(),
                    indices,
                )
                continue
            yield Minibatch(
                self.observations[indices],
                self.actions[indices],
                self.old_values[indices],
                self.old_log_prob[indices],
                self.advantages[indices],
                self.returns[indices],
                indices,
            )
