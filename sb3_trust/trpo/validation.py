"""
TrustTRPO's keyword checks, run before anything is built: sb3-contrib asserts, we raise ``ValueError``/``TypeError``
naming the parameter, the value and what is allowed.
"""

from collections.abc import Mapping
from typing import Any

from sb3_trust.common.validation import check_choice, check_common_on_policy_kwargs, check_number

KL_CONVENTIONS = ("paper", "contrib")
STEP_RULES = ("line_search", "npg")


def check_trust_trpo_kwargs(given: Mapping[str, Any]) -> None:
    """
    :param given: the keywords given to ``TrustTRPO.__init__`` (its ``locals()``)
    """
    check_common_on_policy_kwargs(given)
    check_number("cg_max_steps", given["cg_max_steps"], low=1, integer=True)
    check_number("cg_damping", given["cg_damping"], low=0.0)
    shrinking = given["line_search_shrinking_factor"]
    check_number("line_search_shrinking_factor", shrinking, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
    check_number("line_search_max_iter", given["line_search_max_iter"], low=1, integer=True)
    check_number("n_critic_updates", given["n_critic_updates"], low=0, integer=True)
    check_number("target_kl", given["target_kl"], low=0.0, low_inclusive=False)
    check_number("sub_sampling_factor", given["sub_sampling_factor"], low=1, integer=True)
    check_choice("kl_convention", given["kl_convention"], KL_CONVENTIONS)
    check_choice("step_rule", given["step_rule"], STEP_RULES)
