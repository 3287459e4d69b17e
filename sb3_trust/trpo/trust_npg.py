from typing import Any

from sb3_trust.trpo.trust_trpo import StepRule, TrustTRPO


class TrustNPG(TrustTRPO):
    """
    Natural policy gradient: ``TrustTRPO`` with ``step_rule="npg"`` by default (fixed step ``sqrt(2 δ / sᵀ F s)``
    along the CG direction, no line search). All keywords are those of ``TrustTRPO``; see its docstring.
    """

    def __init__(self, *args: Any, step_rule: StepRule = "npg", **kwargs: Any):
        super().__init__(*args, step_rule=step_rule, **kwargs)
