"""
Training health monitor: the rules of thumb for healthy PPO-style training, checked after every update.

Healthy trust-region training looks like this: the mean KL between consecutive policies stays small (about 0.02 or
less; above 0.1 the updates are too aggressive), the clip fraction stays under about 20 %, the probability ratios stay
near 1, the entropy decreases but not to 0, the advantages are roughly symmetric around 0, the value function
explains the returns, and the returns improve. :class:`TrustHealthCallback` reads the values the algorithm logged
under ``train/`` after each update, keeps a short history, and flags each rule that is broken, with what to try.

The rules are pure functions of the history (:data:`HEALTH_RULES`), so they can be checked on hand-built histories.
A rule whose inputs were not logged (SB3 PPO logs no ratios, TRPO no entropy loss) is "not checked", never broken.
"""

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import TensorBoardOutputFormat

from sb3_trust.common.messages import warn


class HealthWarning(UserWarning):
    """A training-health rule became broken (filter it with ``warnings.simplefilter("ignore", HealthWarning)``)."""


@dataclass
class HealthThresholds:
    """
    The thresholds of the health rules; every field can be overridden (``TrustHealthCallback(thresholds={...})``).

    :param window: number of updates averaged before a rule is checked (smooths the noise of one update)
    :param warmup_updates: updates before the value-function rules (``advantages``, ``explained_variance``,
        ``returns``) are checked: the value function starts untrained, so early advantages are biased on any run
    :param value_window: number of updates averaged for the value-function rules (the explained variance of a
        rollout with few episodes is noisy: a healthy CartPole run dips below 0 for single updates)
    :param kl_max: mean KL between the policies before and after an update (``train/kl``, else ``train/approx_kl``)
        above which the updates are too large. Healthy runs stay at or under about 0.02; above 0.1 they are far too
        aggressive (the warning says so)
    :param clip_fraction_max: fraction of samples whose ratio was clipped (``train/clip_fraction``)
    :param entropy_min_fraction: entropy below this fraction of its first value is a collapse (checked when the first
        value is positive; for a Gaussian policy starting at σ=1, 0.1 of the initial entropy is σ ≈ 0.28)
    :param ratio_max: largest probability ratio π_new/π_old seen in an update (``train/ratio_max``)
    :param ratio_mean_tolerance: largest allowed ``|train/ratio_mean - 1|`` (E_old[π_new/π_old] = 1 for any policy
        change in expectation; drift shows that the samples no longer represent the new policy)
    :param advantage_bias_max: largest allowed ``|mean(A)| / mean(|R|)`` of a rollout's raw (not normalised)
        advantages A and value targets R: the share of the returns the value function misses on average. The mean is
        compared with the returns, not with the std of A: on a healthy CartPole run the critic lags the improving
        returns, and the raw mean stays at 1-3 std for tens of updates, but under a quarter of the returns
    :param advantage_skew_max: largest allowed ``|skew|`` of the raw advantages of a rollout; ``None`` (default):
        logged (``health/adv_skew``) but not checked, because terminations give healthy runs a long tail of large
        negative advantages (skew -3 to -8 on CartPole-v1 with the zoo's settings)
    :param advantage_clip: normalised advantages ``|(A - mean) / std|`` above this count as clipped (the statistic
        ``health/adv_clip_fraction``: what a normalise-then-clip to ±``advantage_clip`` would cut; our algorithms do
        not clip, so these few samples dominate the gradient of their minibatch)
    :param explained_variance_min: explained variance of the value function (``train/explained_variance``) below
        which it is too poor (0: no better than predicting the mean return)
    :param return_patience: updates without a new best mean episode return (by ``return_min_improvement``) before
        the returns count as not improving
    :param return_min_improvement: relative improvement, of ``|best|``, that counts as a new best
    :param return_target: mean episode return at or above which the returns rule is healthy (a converged run stops
        improving; ``None``: no target)
    """

    window: int = 3
    warmup_updates: int = 15
    value_window: int = 5
    kl_max: float = 0.02
    clip_fraction_max: float = 0.2
    entropy_min_fraction: float = 0.1
    ratio_max: float = 3.0
    ratio_mean_tolerance: float = 0.1
    advantage_bias_max: float = 0.5
    advantage_skew_max: float | None = None
    advantage_clip: float = 3.0
    explained_variance_min: float = 0.0
    return_patience: int = 20
    return_min_improvement: float = 0.05
    return_target: float | None = None


# A check sees the history (one dict per update, oldest first) and the thresholds. It returns None when it cannot
# tell (inputs not logged, warm-up), else (broken, value, detail): value is what is compared, detail says why.
CheckResult = tuple[bool, float, str] | None
History = Sequence[dict[str, float]]


@dataclass(frozen=True)
class HealthRule:
    """
    One rule of healthy training.

    :param name: the rule's name (``health/<name>`` is logged, 1 when broken)
    :param healthy: what healthy training looks like
    :param advice: what to try when the rule is broken
    :param check: the rule
    """

    name: str
    healthy: str
    advice: str
    check: Callable[[History, HealthThresholds], CheckResult]


def _recent(history: History, key: str, window: int) -> float | None:
    """:return: the mean of ``key`` over the last ``window`` updates that logged it, or ``None`` if none did"""
    values = [row[key] for row in history[-window:] if key in row and math.isfinite(row[key])]
    return float(np.mean(values)) if values else None


def _first(history: History, key: str) -> float | None:
    """:return: the first logged value of ``key``, or ``None``"""
    return next((row[key] for row in history if key in row and math.isfinite(row[key])), None)


def _warming_up(history: History, thresholds: HealthThresholds) -> bool:
    return len(history) <= thresholds.warmup_updates


def check_kl(history: History, thresholds: HealthThresholds) -> CheckResult:
    kl = _recent(history, "kl", thresholds.window)
    if kl is None:
        return None
    severity = " (above 0.1: far too aggressive)" if kl > 0.1 else ""
    return kl > thresholds.kl_max, kl, f"mean KL {kl:.4f} > {thresholds.kl_max}{severity}"


def check_clip_fraction(history: History, thresholds: HealthThresholds) -> CheckResult:
    fraction = _recent(history, "clip_fraction", thresholds.window)
    if fraction is None:
        return None
    return fraction > thresholds.clip_fraction_max, fraction, f"clip fraction {fraction:.3f} > {thresholds.clip_fraction_max}"


def check_entropy(history: History, thresholds: HealthThresholds) -> CheckResult:
    initial, entropy = _first(history, "entropy"), _recent(history, "entropy", thresholds.window)
    # A first entropy <= 0 (a narrow Gaussian) has no meaningful fraction
    if initial is None or entropy is None or initial <= 0:
        return None
    floor = thresholds.entropy_min_fraction * initial
    return entropy < floor, entropy, f"entropy {entropy:.4f} < {thresholds.entropy_min_fraction} x initial {initial:.4f}"


def check_ratio(history: History, thresholds: HealthThresholds) -> CheckResult:
    ratio_max = _recent(history, "ratio_max", thresholds.window)
    ratio_mean = _recent(history, "ratio_mean", thresholds.window)
    if ratio_max is None and ratio_mean is None:
        return None
    drift = abs(ratio_mean - 1.0) if ratio_mean is not None else 0.0
    too_large = ratio_max is not None and ratio_max > thresholds.ratio_max
    too_far = drift > thresholds.ratio_mean_tolerance
    details = []
    if too_large:
        details.append(f"max ratio {ratio_max:.2f} > {thresholds.ratio_max}")
    if too_far:
        details.append(f"|mean ratio - 1| {drift:.3f} > {thresholds.ratio_mean_tolerance}")
    value = ratio_max if ratio_max is not None else 1.0 + drift
    return too_large or too_far, value, ", ".join(details)


def check_advantages(history: History, thresholds: HealthThresholds) -> CheckResult:
    if _warming_up(history, thresholds):
        return None
    bias, skew = _recent(history, "adv_bias", thresholds.value_window), _recent(history, "adv_skew", thresholds.value_window)
    if bias is None and skew is None:
        return None
    details = []
    if bias is not None and bias > thresholds.advantage_bias_max:
        details.append(f"|mean advantage| / mean |return| {bias:.2f} > {thresholds.advantage_bias_max}")
    if skew is not None and thresholds.advantage_skew_max is not None and abs(skew) > thresholds.advantage_skew_max:
        details.append(f"|skew| {abs(skew):.2f} > {thresholds.advantage_skew_max}")
    return bool(details), bias if bias is not None else abs(skew), ", ".join(details)  # type: ignore[arg-type]


def check_explained_variance(history: History, thresholds: HealthThresholds) -> CheckResult:
    if _warming_up(history, thresholds):
        return None
    explained = _recent(history, "explained_variance", thresholds.value_window)
    if explained is None:
        return None
    minimum = thresholds.explained_variance_min
    return explained < minimum, explained, f"explained variance {explained:.3f} < {minimum}"


def check_returns(history: History, thresholds: HealthThresholds) -> CheckResult:
    returns = [row["return"] for row in history if "return" in row and math.isfinite(row["return"])]
    if _warming_up(history, thresholds) or not returns:
        return None
    latest = returns[-1]
    if thresholds.return_target is not None and latest >= thresholds.return_target:
        return False, latest, ""
    patience = thresholds.return_patience
    if len(returns) <= patience:
        return None
    # A new best within the last `patience` updates, by a margin that the noise of the episode buffer rarely reaches
    best_before = max(returns[:-patience])
    best_recent = max(returns[-patience:])
    margin = thresholds.return_min_improvement * max(abs(best_before), 1e-8)
    return (
        best_recent < best_before + margin,
        latest,
        f"no new best mean return in {patience} updates (best {best_before:.4g}, since then at most {best_recent:.4g})",
    )


HEALTH_RULES: tuple[HealthRule, ...] = (
    HealthRule(
        "kl",
        "mean KL per update at or under ~0.02",
        "lower the learning rate, use fewer epochs (n_epochs) or larger minibatches, or set target_kl",
        check_kl,
    ),
    HealthRule(
        "clip_fraction",
        "clip fraction under ~0.2",
        "lower the learning rate or n_epochs, raise the batch (n_steps, batch_size), or widen clip_range",
        check_clip_fraction,
    ),
    HealthRule(
        "entropy",
        "entropy decreasing, but not to 0",
        "raise ent_coef, lower the learning rate; for Gaussian policies check log_std_init / use_sde",
        check_entropy,
    ),
    HealthRule(
        "ratio",
        "probability ratios near 1",
        "lower the learning rate or n_epochs; set target_kl to stop an update early",
        check_ratio,
    ),
    HealthRule(
        "advantages",
        "raw advantages centred: |mean| small next to the returns",
        "tune the value function (vf_coef, its learning rate, more epochs), check gamma / gae_lambda, "
        "normalise or clip the rewards (VecNormalize)",
        check_advantages,
    ),
    HealthRule(
        "explained_variance",
        "explained variance above 0 and rising",
        "tune the value learning rate / vf_coef, give the critic more capacity or epochs, normalise the rewards",
        check_explained_variance,
    ),
    HealthRule(
        "returns",
        "mean episode return improving",
        "check the other rules first; then tune the learning rate, raise the batch, raise ent_coef if exploration "
        "stalled (set return_target when the task is solved)",
        check_returns,
    ),
)

# The logged keys a history row reads, first one found wins (ours, then SB3's)
_TRAIN_KEYS: dict[str, tuple[str, ...]] = {
    "kl": ("train/kl", "train/approx_kl"),
    "clip_fraction": ("train/clip_fraction",),
    "ratio_max": ("train/ratio_max",),
    "ratio_mean": ("train/ratio_mean",),
    "explained_variance": ("train/explained_variance",),
    "value_loss": ("train/value_loss",),
}


def advantage_statistics(advantages: np.ndarray, returns: np.ndarray | None = None, clip: float = 3.0) -> dict[str, float]:
    """
    Statistics of the raw advantages of one rollout.

    :param advantages: the advantages (any shape)
    :param returns: the value targets of the rollout (``advantages + values``), for ``adv_bias``
    :param clip: normalised advantages ``|(A - mean) / std|`` above this count as clipped
    :return: ``adv_mean``, ``adv_std``, ``adv_skew`` (third standardised moment; 0 when the std is 0),
        ``adv_clip_fraction`` (fraction of samples beyond ``clip`` after normalisation) and, given the returns,
        ``adv_bias`` = ``|mean(A)| / mean(|returns|)`` (how far the value function lags the returns it predicts)
    """
    values = np.asarray(advantages, dtype=np.float64).ravel()
    mean, std = float(values.mean()), float(values.std())
    stats = {"adv_mean": mean, "adv_std": std, "adv_skew": 0.0, "adv_clip_fraction": 0.0}
    if returns is not None:
        stats["adv_bias"] = abs(mean) / max(float(np.mean(np.abs(returns))), 1e-8)
    if std >= 1e-12:
        normalised = (values - mean) / std
        stats["adv_skew"] = float(np.mean(normalised**3))
        stats["adv_clip_fraction"] = float(np.mean(np.abs(normalised) > clip))
    return stats


def evaluate_rules(history: History, thresholds: HealthThresholds) -> dict[str, CheckResult]:
    """:return: each rule's result on ``history`` (``None``: not checked)"""
    return {rule.name: rule.check(history, thresholds) for rule in HEALTH_RULES}


class TrustHealthCallback(BaseCallback):
    """
    Check the health of training after every update, against the rules of :data:`HEALTH_RULES`.

    Works with TrustPPO, TrustTRPO, TrustNPG and SB3's on-policy algorithms (PPO, A2C): each rule is checked when
    the values it needs were logged, and reported "not checked" otherwise.

    **When values are read.** SB3's ``learn()`` runs: collect a rollout (``on_rollout_start`` ... ``on_rollout_end``),
    dump the logs (every ``log_interval`` iterations), ``train()``. ``train()`` records ``train/*`` in
    ``model.logger.name_to_value``, where they stay until the next dump, i.e. through the whole next rollout. So the
    values of update ``k`` are read at the end of rollout ``k + 1`` (``on_rollout_end``, before that dump), and those
    of the last update in ``on_training_end``. A new update is recognised by ``train/n_updates`` (or the model's
    ``_n_updates``) changing, so ``log_interval > 1`` does not read an update twice. The ``health/*`` keys recorded
    then go out in the same dump as the ``train/*`` values they judge.

    **What a history row holds** (one per update ``k``): the ``train/`` values of update ``k``; the entropy of the
    policy (``-train/entropy_loss``, else computed on up to ``entropy_samples`` observations of the rollout when the
    algorithm logs none, e.g. TRPO); the statistics of the raw advantages of rollout ``k`` (the one update ``k``
    consumed; computed from ``model.rollout_buffer.advantages`` at the end of that rollout); and the mean episode
    return in ``model.ep_info_buffer`` after the update.

    **Warnings.** A rule warns (:class:`HealthWarning`, and printed when ``verbose >= 1``) when it becomes broken, and
    again only after it has been healthy in between: once per stretch, not every update.

    **Logged keys**: ``health/<rule>`` (1 broken, 0 healthy; not logged when not checked), ``health/n_broken``,
    ``health/adv_mean``, ``health/adv_std``, ``health/adv_skew``, ``health/adv_clip_fraction``, ``health/adv_bias``
    (per rollout; see :func:`advantage_statistics`), and a
    histogram ``health/advantages`` when the logger writes to TensorBoard.

    :param thresholds: the thresholds: a :class:`HealthThresholds`, or a dict of the fields to change
    :param warn: emit a :class:`HealthWarning` when a rule becomes broken
    :param histogram: write a TensorBoard histogram of each rollout's advantages (when a TensorBoard logger is set)
    :param entropy_samples: observations used to compute the entropy when the algorithm logs none (0: never)
    :param verbose: 1 to print the warnings as well
    """

    def __init__(
        self,
        thresholds: HealthThresholds | dict[str, Any] | None = None,
        warn: bool = True,
        histogram: bool = True,
        entropy_samples: int = 1024,
        verbose: int = 0,
    ):
        super().__init__(verbose)
        if thresholds is None:
            thresholds = HealthThresholds()
        elif isinstance(thresholds, dict):
            thresholds = dataclasses.replace(HealthThresholds(), **thresholds)
        self.thresholds = thresholds
        self.warn = warn
        self.histogram = histogram
        self.entropy_samples = entropy_samples
        # One dict per update; the results of the rules per update; the events (a rule becoming broken)
        self.history: list[dict[str, float]] = []
        self.results: list[dict[str, CheckResult]] = []
        self.events: list[tuple[int, str, str]] = []
        self._broken: dict[str, bool] = {rule.name: False for rule in HEALTH_RULES}
        self._pending_advantages: dict[str, float] | None = None
        self._last_update_id: float | None = None

    # --- callback hooks
    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        # The previous update's train/* values are still in the logger (the dump comes after this hook)
        self._read_update()
        buffer = self.model.rollout_buffer
        self._pending_advantages = advantage_statistics(buffer.advantages, buffer.returns, self.thresholds.advantage_clip)
        for key, value in self._pending_advantages.items():
            self.logger.record(f"health/{key}", value)
        if self.histogram:
            self._write_histogram(buffer.advantages)

    def _on_training_end(self) -> None:
        # The last update's values were never dumped: read them now
        self._read_update()

    # --- reading
    def _update_id(self) -> float | None:
        logged = self.logger.name_to_value.get("train/n_updates")
        if logged is not None:
            return float(logged)
        n_updates = getattr(self.model, "_n_updates", None)
        return None if n_updates is None else float(n_updates)

    def _read_update(self) -> None:
        """Append the row of the last update, if there was one since the last read, and check the rules."""
        update_id = self._update_id()
        if update_id is None or update_id == self._last_update_id or self._pending_advantages is None:
            return
        self._last_update_id = update_id
        logged = self.logger.name_to_value
        row: dict[str, float] = {"timesteps": float(self.model.num_timesteps)}
        for name, keys in _TRAIN_KEYS.items():
            key = next((key for key in keys if key in logged), None)
            if key is not None:
                row[name] = float(logged[key])
        entropy = self._entropy()
        if entropy is not None:
            row["entropy"] = entropy
        row.update(self._pending_advantages)
        self._pending_advantages = None
        episodes = self.model.ep_info_buffer
        if episodes:
            row["return"] = float(np.mean([info["r"] for info in episodes]))
        self.add(row)

    def _entropy(self) -> float | None:
        logged = self.logger.name_to_value.get("train/entropy_loss")
        if logged is not None:
            return -float(logged)
        if self.entropy_samples <= 0:
            return None
        observations = self.model.rollout_buffer.observations
        if not isinstance(observations, np.ndarray):  # Dict observations: not computed
            return None
        # (n_steps, n_envs, *shape) after collection, (n_steps * n_envs, *shape) once train() has read the buffer
        flat = observations.reshape(-1, *self.model.observation_space.shape)
        # Evenly spaced samples: cheap and deterministic (no draw from the model's random stream)
        index = np.linspace(0, len(flat) - 1, min(self.entropy_samples, len(flat))).astype(int)
        masks = getattr(self.model.rollout_buffer, "action_masks", None)  # with action masking: the masked entropy
        masked = {} if masks is None else {"action_masks": masks.reshape(len(flat), -1)[index]}
        with th.no_grad():
            obs_tensor, _ = self.model.policy.obs_to_tensor(flat[index])
            entropy = self.model.policy.get_distribution(obs_tensor, **masked).entropy()
        return None if entropy is None else float(entropy.mean())

    def _write_histogram(self, advantages: np.ndarray) -> None:
        for output in self.logger.output_formats:
            if isinstance(output, TensorBoardOutputFormat):
                output.writer.add_histogram("health/advantages", advantages.ravel(), self.model.num_timesteps)

    # --- checking
    @property
    def _attached(self) -> bool:
        """Whether the callback runs in a model (``add`` also checks hand-built histories, with no model)"""
        return getattr(self, "model", None) is not None

    def add(self, row: dict[str, float]) -> dict[str, CheckResult]:
        """
        Append one update's row to the history, check the rules, log ``health/*`` and warn where a rule became
        broken (the callback calls this; it is public to check hand-built histories).

        :param row: the update's values (keys: ``kl``, ``clip_fraction``, ``entropy``, ``ratio_max``,
            ``ratio_mean``, ``adv_bias``, ``adv_skew``, ``explained_variance``, ``return``, ``timesteps``, ...)
        :return: each rule's result (``None``: not checked)
        """
        self.history.append(row)
        results = evaluate_rules(self.history, self.thresholds)
        self.results.append(results)
        update = len(self.history)
        n_broken = 0
        for rule in HEALTH_RULES:
            result = results[rule.name]
            broken = result is not None and result[0]
            n_broken += broken
            if result is not None and self._attached:
                self.logger.record(f"health/{rule.name}", float(broken))
            if broken and not self._broken[rule.name]:
                self._report(update, rule, result[2])  # type: ignore[index]
            # Only a healthy check ends a stretch: "not checked" keeps the rule's state
            if result is not None:
                self._broken[rule.name] = broken
        if self._attached:
            self.logger.record("health/n_broken", n_broken)
        return results

    def _report(self, update: int, rule: HealthRule, detail: str) -> None:
        message = f"training health: {rule.name} broken at update {update}: {detail}. Try: {rule.advice}"
        self.events.append((update, rule.name, message))
        if self.warn:
            warn(message, HealthWarning)
        if self.verbose >= 1:
            print(message)

    # --- reporting
    def broken_rules(self) -> set[str]:
        """:return: the names of the rules that were broken at some update"""
        return {name for results in self.results for name, result in results.items() if result is not None and result[0]}

    def summary(self) -> str:
        """
        :return: a text summary: per rule, the updates at which it was broken (count, first, last), how many
            stretches, and what to try
        """
        n_updates = len(self.history)
        timesteps = int(self.history[-1]["timesteps"]) if self.history else 0
        lines = [f"Training health: {n_updates} updates, {timesteps} timesteps; {len(self.broken_rules())} rule(s) broken"]
        lines.append(f"{'rule':<20}{'broken':>10}{'first':>8}{'last':>8}{'warnings':>10}  healthy when")
        for rule in HEALTH_RULES:
            updates = [i + 1 for i, results in enumerate(self.results) if (r := results[rule.name]) is not None and r[0]]
            checked = any(results[rule.name] is not None for results in self.results)
            warned = sum(name == rule.name for _, name, _ in self.events)
            if not checked:
                lines.append(f"{rule.name:<20}{'not checked':>10}{'':>8}{'':>8}{'':>10}  {rule.healthy}")
                continue
            first, last = (str(updates[0]), str(updates[-1])) if updates else ("-", "-")
            lines.append(f"{rule.name:<20}{len(updates):>4}/{n_updates:<5}{first:>8}{last:>8}{warned:>10}  {rule.healthy}")
        for rule in HEALTH_RULES:
            if rule.name in self.broken_rules():
                lines.append(f"- {rule.name}, try: {rule.advice}")
        return "\n".join(lines)

    def plot(self, path: str | None = None) -> Any:
        """
        Plot KL, clip fraction, entropy, explained variance and mean return over training, with the thresholds
        and the updates where the rule was broken shaded (needs matplotlib).

        :param path: save the figure there (any format matplotlib knows), if given
        :return: the matplotlib figure
        """
        import matplotlib

        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        initial = _first(self.history, "entropy")  # the entropy rule's floor is a fraction of the first entropy
        panels = (
            ("kl", "kl", "KL per update", self.thresholds.kl_max),
            ("clip_fraction", "clip_fraction", "clip fraction", self.thresholds.clip_fraction_max),
            ("entropy", "entropy", "entropy", None if initial is None else self.thresholds.entropy_min_fraction * initial),
            ("explained_variance", "explained_variance", "explained variance", self.thresholds.explained_variance_min),
            ("return", "returns", "mean episode return", None),
        )
        figure, axes = plt.subplots(len(panels), 1, figsize=(7, 9), sharex=True)
        steps = np.array([row["timesteps"] for row in self.history])
        for axis, (key, rule, title, threshold) in zip(axes, panels, strict=True):
            values = np.array([row.get(key, np.nan) for row in self.history])
            axis.plot(steps, values, color="C0")
            if threshold is not None:
                axis.axhline(threshold, color="C3", linestyle="--", linewidth=1)
            for step, results in zip(steps, self.results, strict=True):
                result = results[rule]
                if result is not None and result[0]:
                    axis.axvline(step, color="C3", alpha=0.15, linewidth=4)
            axis.set_ylabel(title)
            if np.all(np.isnan(values)):
                axis.text(0.5, 0.5, "not logged", transform=axis.transAxes, ha="center", va="center")
        axes[-1].set_xlabel("timesteps")
        figure.suptitle("Training health (red: rule broken at that update; dashed: threshold)")
        figure.tight_layout()
        if path is not None:
            figure.savefig(path, dpi=100)
        return figure
