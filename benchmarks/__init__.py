"""Side-by-side benchmarks of sb3_trust against SB3 PPO and sb3-contrib TRPO (``python -m benchmarks --help``)."""
