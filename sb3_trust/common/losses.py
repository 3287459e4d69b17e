"""
The value-function loss and the advantage normalisation of the PPO family, as small pure functions on tensors.
The policy losses are TrustPPO's registry, ``sb3_trust.ppo.losses``.
"""

import torch as th
from torch.nn import functional as F

VF_CLIP_MODES = ("sb3", "max")


def normalize_advantages(advantages: th.Tensor) -> th.Tensor:
    """
    ``(A - mean(A)) / (std(A) + 1e-8)``, as SB3 does; a single sample is returned unchanged
    (its std is NaN, see https://github.com/DLR-RM/stable-baselines3/issues/325).

    :param advantages: advantages of one (mini)batch
    :return: normalised advantages
    """
    if len(advantages) < 2:
        return advantages
    return (advantages - advantages.mean()) / (advantages.std() + 1e-8)


def value_loss(
    values: th.Tensor,
    old_values: th.Tensor,
    returns: th.Tensor,
    clip_range_vf: float | None,
    mode: str = "sb3",
) -> tuple[th.Tensor, th.Tensor]:
    """
    Value-function loss with optional clipping of the change in prediction, ``V_clip = V_old + clip(V - V_old, -ε_v, ε_v)``.

    - no clipping (``clip_range_vf=None``): ``mean((R - V)²)``
    - ``mode="sb3"`` (SB3 PPO): ``mean((R - V_clip)²)``, the MSE of the clipped prediction only
    - ``mode="max"`` (OpenAI Baselines, CleanRL): ``mean(max((R - V)², (R - V_clip)²))``, pessimistic

    Both are plain MSEs (no 0.5 factor, unlike Baselines and CleanRL), so ``vf_coef`` keeps SB3's meaning.

    :param values: current predictions V(s)
    :param old_values: predictions at collection time V_old(s)
    :param returns: TD(λ) targets R
    :param clip_range_vf: ε_v, or ``None`` for no clipping
    :param mode: ``"sb3"`` or ``"max"``
    :return: the loss, and the fraction of samples whose prediction change was clipped
    """
    if clip_range_vf is None:
        return F.mse_loss(returns, values), th.zeros((), device=values.device)
    values_clipped = old_values + th.clamp(values - old_values, -clip_range_vf, clip_range_vf)
    clip_fraction = th.mean((th.abs(values - old_values) > clip_range_vf).float())
    if mode == "sb3":
        return F.mse_loss(returns, values_clipped), clip_fraction
    if mode == "max":
        return th.max((returns - values) ** 2, (returns - values_clipped) ** 2).mean(), clip_fraction
    raise ValueError(f"`vf_clip_mode` must be one of {VF_CLIP_MODES}, got {mode!r}")
