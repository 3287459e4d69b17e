from sb3_trust.ppo.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from sb3_trust.ppo.trust_ppo import TrustPPO

__all__ = ["CnnPolicy", "MlpPolicy", "MultiInputPolicy", "TrustPPO"]
