"""
What TrustPPO logs about one update, written into buffers made once instead of kept as tensors per minibatch.

SB3 PPO turns each minibatch's statistics into Python floats (one ``.item()`` each). TrustPPO reduces them once, after
the update. Keeping a handful of small tensors per minibatch until then raised the peak RSS by about 7 MB over SB3's
on LunarLander-v3's zoo config (1024 minibatches per update), so every minibatch writes into rows and slices of the
buffers below; only the minibatch sizes are kept, as ints.
"""

import torch as th

from sb3_trust.ppo.analytic import MinibatchTerms
from sb3_trust.ppo.fused import N_SCALARS


def mean_over_minibatches(values: th.Tensor, sizes: list[int]) -> float:
    """
    :param values: the per-sample values of consecutive minibatches, concatenated
    :param sizes: the minibatches' sizes (they sum to ``len(values)``)
    :return: the mean over minibatches of each minibatch's mean (how SB3 reduces its logged statistics), in one
        reduction when the minibatches have the same size
    """
    if len(set(sizes)) == 1:
        return values.view(len(sizes), sizes[0]).mean(dim=1).mean().item()
    return th.stack([value.mean() for value in values.split(sizes)]).mean().item()


class UpdateStats:
    """
    The per-minibatch statistics of one TrustPPO update: the scalars (``N_SCALARS`` per minibatch) and the
    probability ratios and log-ratios of every sample of every epoch. Reused from update to update.
    """

    def __init__(self) -> None:
        self._scalars = th.empty(0, N_SCALARS)
        self._ratio = th.empty(0)
        self._log_ratio = th.empty(0)
        self.sizes: list[int] = []
        self._epoch_start = 0

    def begin(self, n_minibatches: int, n_ratios: int, dtype: th.dtype, device: th.device) -> None:
        """
        Start an update (forget the previous one's statistics).

        :param n_minibatches: the most minibatches the update can have
        :param n_ratios: the most samples over all its epochs
        :param dtype: the policy's floating-point type
        :param device: the policy's device
        """
        if (
            self._scalars.shape[0] < n_minibatches
            or self._ratio.shape[0] < n_ratios
            or self._ratio.dtype != dtype
            or self._ratio.device != th.device(device)
        ):
            self._scalars = th.empty(n_minibatches, N_SCALARS, dtype=dtype, device=device)
            self._ratio = th.empty(n_ratios, dtype=dtype, device=device)
            self._log_ratio = th.empty(n_ratios, dtype=dtype, device=device)
        self.sizes = []
        self._offset = self._epoch_start = 0

    def begin_epoch(self) -> None:
        """Start an epoch (``approx_kl`` is the mean over the last epoch's minibatches, as SB3)."""
        self._epoch_start = len(self.sizes)

    def next(self, n: int) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """
        :param n: the next minibatch's size
        :return: where its ratios ``[n]``, log-ratios ``[n]`` and scalars ``[N_SCALARS]`` go (the fused kernels write
            there directly; ``store`` copies the other paths' terms there)
        """
        start = self._offset
        self._offset += n
        row = len(self.sizes)
        self.sizes.append(n)
        return self._ratio[start : self._offset], self._log_ratio[start : self._offset], self._scalars[row]

    @staticmethod
    @th.no_grad()
    def store(terms: MinibatchTerms, slots: tuple[th.Tensor, th.Tensor, th.Tensor]) -> None:
        """
        :param terms: a minibatch's terms
        :param slots: where they go (``next``); nothing is copied if the terms are already there
        """
        ratio, log_ratio, scalars = slots
        if terms.ratio is not ratio:
            ratio.copy_(terms.ratio)
            log_ratio.copy_(terms.log_ratio)
            named = (terms.policy_loss, terms.value_loss, terms.entropy_loss, terms.loss, terms.value_clip_fraction)
            scalars.copy_(th.stack([value.detach() for value in named]))

    @property
    def ratio(self) -> th.Tensor:
        """The ratios of every minibatch so far, concatenated."""
        return self._ratio[: self._offset]

    def mean(self, column: int) -> float:
        """
        :param column: one of the scalars (``POLICY_LOSS``, ...)
        :return: its mean over the minibatches so far
        """
        return self._scalars[: len(self.sizes), column].mean().item()

    def last(self, column: int) -> float:
        """
        :param column: one of the scalars
        :return: its value in the last minibatch
        """
        return self._scalars[len(self.sizes) - 1, column].item()

    def clip_fraction(self, clip_range: float) -> float:
        """
        :param clip_range: ε
        :return: the mean over minibatches of the fraction of samples with ``|ratio - 1| > ε``
        """
        clipped = self.ratio - 1  # one temporary, reused in place
        th.gt(clipped.abs_(), clip_range, out=clipped)
        return mean_over_minibatches(clipped, self.sizes)

    def ratio_mean(self) -> float:
        """:return: the mean over minibatches of the mean ratio"""
        return mean_over_minibatches(self.ratio, self.sizes)

    def last_epoch_kl(self) -> float:
        """:return: the mean over the last epoch's minibatches of the k3 estimate ``mean(exp(r) - 1 - r)``, r = log-ratio"""
        start = sum(self.sizes[: self._epoch_start])
        log_ratio = self._log_ratio[start : self._offset]
        kl = th.exp(log_ratio).sub_(1).sub_(log_ratio)  # exp(r) - 1 - r, one temporary
        return mean_over_minibatches(kl, self.sizes[self._epoch_start :])
