"""
What TrustPPO logs about one update, written into buffers made once instead of kept as tensors per minibatch.

SB3 PPO turns each minibatch's statistics into Python floats (one ``.item()`` each). TrustPPO reduces the ratios per
minibatch at the end of each epoch, and everything once, after the update. Keeping a handful of small tensors per
minibatch until then raised the peak RSS by about 7 MB over SB3's on LunarLander-v3's zoo config (1024 minibatches per
update), so every minibatch writes into rows and slices of the buffers below (the per-sample ratios of one epoch only,
not of all of them); only the minibatch sizes are kept, as ints.
"""

import torch as th

from sb3_trust.ppo.analytic import MinibatchTerms
from sb3_trust.ppo.fused import N_SCALARS

# The per-minibatch reductions of the ratios, one row each, written at the end of every epoch
RATIO_MEAN, RATIO_MAX, CLIP_FRACTION, APPROX_KL, N_REDUCED = range(5)


def per_minibatch(values: th.Tensor, sizes: list[int], reduce: str, out: th.Tensor) -> None:
    """
    :param values: the per-sample values of consecutive minibatches, concatenated
    :param sizes: the minibatches' sizes (they sum to ``len(values)``)
    :param reduce: ``"mean"`` or ``"amax"``
    :param out: ``[len(sizes)]``, receives each minibatch's reduction (in one call when the sizes are equal)
    """
    if len(set(sizes)) == 1:
        getattr(th, reduce)(values.view(len(sizes), sizes[0]), dim=1, out=out)
    else:
        th.stack([getattr(th, reduce)(value) for value in values.split(sizes)], out=out)


class UpdateStats:
    """
    The per-minibatch statistics of one TrustPPO update: the scalars (``N_SCALARS`` per minibatch) and the
    probability ratios and log-ratios of every sample of the current epoch, reduced per minibatch (mean and largest
    ratio, clip fraction, k3 KL estimate) at the end of each epoch. Reused from update to update.
    """

    def __init__(self) -> None:
        self._scalars = th.empty(0, N_SCALARS)
        self._reduced = th.empty(N_REDUCED, 0)
        self._ratio = th.empty(0)
        self._log_ratio = th.empty(0)
        self.sizes: list[int] = []
        self._clip_range = 0.0
        self._offset = self._epoch_start = 0

    def begin(self, n_minibatches: int, n_samples: int, clip_range: float, dtype: th.dtype, device: th.device) -> None:
        """
        Start an update (forget the previous one's statistics).

        :param n_minibatches: the most minibatches the update can have
        :param n_samples: the most samples in one epoch
        :param clip_range: ε, for the clip fraction
        :param dtype: the policy's floating-point type
        :param device: the policy's device
        """
        if (
            self._scalars.shape[0] < n_minibatches
            or self._ratio.shape[0] < n_samples
            or self._ratio.dtype != dtype
            or self._ratio.device != th.device(device)
        ):
            self._scalars = th.empty(n_minibatches, N_SCALARS, dtype=dtype, device=device)
            self._reduced = th.empty(N_REDUCED, n_minibatches, dtype=dtype, device=device)
            self._ratio = th.empty(n_samples, dtype=dtype, device=device)
            self._log_ratio = th.empty(n_samples, dtype=dtype, device=device)
        self.sizes = []
        self._clip_range = clip_range
        self._offset = self._epoch_start = 0

    def begin_epoch(self) -> None:
        """Start an epoch (``approx_kl`` is the mean over the last epoch's minibatches, as SB3)."""
        self._epoch_start = len(self.sizes)
        self._offset = 0

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

    def next_epoch(self, sizes: list[int]) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """
        ``next`` for all the minibatches of an epoch at once (``FusedPPO.epoch`` writes them in one call).

        :param sizes: the epoch's minibatch sizes
        :return: where their ratios ``[sum(sizes)]``, log-ratios ``[sum(sizes)]`` and scalars
            ``[len(sizes), N_SCALARS]`` go, one minibatch after the other
        """
        start, row = self._offset, len(self.sizes)
        self._offset += sum(sizes)
        self.sizes.extend(sizes)
        return self._ratio[start : self._offset], self._log_ratio[start : self._offset], self._scalars[row : len(self.sizes)]

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

    @th.no_grad()
    def end_epoch(self) -> None:
        """Reduce the epoch's ratios per minibatch (also after an early stop, for the minibatches it had)."""
        sizes = self.sizes[self._epoch_start :]
        if not sizes:
            return
        out = self._reduced[:, self._epoch_start : len(self.sizes)]
        ratio, log_ratio = self._ratio[: self._offset], self._log_ratio[: self._offset]
        per_minibatch(ratio, sizes, "mean", out[RATIO_MEAN])
        per_minibatch(ratio, sizes, "amax", out[RATIO_MAX])
        temporary = ratio - 1
        clipped = th.gt(temporary.abs_(), self._clip_range, out=temporary)
        per_minibatch(clipped, sizes, "mean", out[CLIP_FRACTION])
        # sb3_trust.common.kl.approx_kl_k3 of each minibatch, in place: exp(r) - 1 - r
        kl = th.exp(log_ratio, out=temporary).sub_(1).sub_(log_ratio)
        per_minibatch(kl, sizes, "mean", out[APPROX_KL])

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

    def clip_fraction(self) -> float:
        """:return: the mean over minibatches of the fraction of samples with ``|ratio - 1| > ε`` (after ``end_epoch``)"""
        return self._reduced[CLIP_FRACTION, : len(self.sizes)].mean().item()

    def ratio_mean(self) -> float:
        """:return: the mean over minibatches of the mean ratio (after ``end_epoch``)"""
        return self._reduced[RATIO_MEAN, : len(self.sizes)].mean().item()

    def ratio_max(self) -> float:
        """:return: the largest ratio of the update (after ``end_epoch``)"""
        return self._reduced[RATIO_MAX, : len(self.sizes)].max().item()

    def last_epoch_kl(self) -> float:
        """:return: the mean over the last epoch's minibatches of the k3 estimate ``mean(exp(r) - 1 - r)``, r = log-ratio"""
        return self._reduced[APPROX_KL, self._epoch_start : len(self.sizes)].mean().item()
