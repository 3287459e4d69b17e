from sb3_trust.trpo.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from sb3_trust.trpo.trust_trpo import TrustNPG, TrustTRPO

__all__ = ["CnnPolicy", "MlpPolicy", "MultiInputPolicy", "TrustNPG", "TrustTRPO"]
