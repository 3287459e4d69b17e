import os

from sb3_trust.common.health import HealthThresholds, HealthWarning, TrustHealthCallback
from sb3_trust.common.kl import exact_kl
from sb3_trust.common.schedules import CosineSchedule, LinearSchedule, linear_schedule
from sb3_trust.ppo import TrustPPO
from sb3_trust.trpo import TrustNPG, TrustTRPO

# Read version from file
version_file = os.path.join(os.path.dirname(__file__), "version.txt")
with open(version_file) as file_handler:
    __version__ = file_handler.read().strip()

__all__ = [
    "CosineSchedule",
    "HealthThresholds",
    "HealthWarning",
    "LinearSchedule",
    "TrustHealthCallback",
    "TrustNPG",
    "TrustPPO",
    "TrustTRPO",
    "exact_kl",
    "linear_schedule",
]
