"""
Picklable schedules ``progress_remaining -> value`` (``progress_remaining`` goes from 1 at the start of training
to 0 at the end, as in SB3).

They are plain classes, not lambdas, so they survive ``save()``/``load()`` (SB3 pickles them with the model).
Any of ``learning_rate``, ``clip_range``, ``clip_range_vf``, ``ent_coef`` and ``kl_coef`` accepts a float or one of
these.
"""

import math

from stable_baselines3.common.utils import ConstantSchedule, FloatSchedule, LinearSchedule

__all__ = ["ConstantSchedule", "CosineSchedule", "FloatSchedule", "LinearSchedule", "linear_schedule"]


def linear_schedule(start: float, end: float = 0.0) -> LinearSchedule:
    """
    Linear annealing from ``start`` to ``end`` over the whole training (rl-zoo3's ``lin_<start>``).

    :param start: value at the start of training
    :param end: value at the end of training
    :return: SB3's picklable ``LinearSchedule``
    """
    return LinearSchedule(start, end, end_fraction=1.0)


class CosineSchedule:
    """
    Cosine annealing from ``start`` to ``end``:
    ``end + (start - end) * (1 + cos(pi * (1 - progress_remaining))) / 2``.

    :param start: value at ``progress_remaining = 1``
    :param end: value at ``progress_remaining = 0``
    """

    def __init__(self, start: float, end: float = 0.0) -> None:
        self.start = start
        self.end = end

    def __call__(self, progress_remaining: float) -> float:
        progress = min(max(1.0 - progress_remaining, 0.0), 1.0)
        return float(self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * progress)))

    def __repr__(self) -> str:
        return f"CosineSchedule(start={self.start}, end={self.end})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CosineSchedule) and (self.start, self.end) == (other.start, other.end)
