from sb3_trust.trpo.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from sb3_trust.trpo.trust_npg import TrustNPG
from sb3_trust.trpo.trust_trpo import TrustTRPO

__all__ = ["CnnPolicy", "MlpPolicy", "MultiInputPolicy", "TrustNPG", "TrustTRPO"]
