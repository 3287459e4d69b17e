"""
Access to SB3's rollout buffers beyond ``get()``.
"""

from collections.abc import Generator

import numpy as np
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.type_aliases import DictRolloutBufferSamples, RolloutBufferSamples


def iterate_rollout_in_order(
    rollout_buffer: RolloutBuffer, chunk_size: int = 4096
) -> Generator[RolloutBufferSamples | DictRolloutBufferSamples, None, None]:
    """
    Iterate over a full rollout buffer in storage order, in chunks, without shuffling.
    Unlike ``rollout_buffer.get()``, this consumes no random numbers, so it can be used for diagnostics without
    changing the minibatch order of later updates.

    :param rollout_buffer: a full rollout buffer that ``get()`` has already flattened
    :param chunk_size: samples per chunk
    :return: generator of samples
    """
    if not rollout_buffer.generator_ready:
        raise RuntimeError("iterate_rollout_in_order() needs a rollout buffer that get() has already flattened")
    n_samples = rollout_buffer.buffer_size * rollout_buffer.n_envs
    for start in range(0, n_samples, chunk_size):
        yield rollout_buffer._get_samples(np.arange(start, min(start + chunk_size, n_samples)))
