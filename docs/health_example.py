"""
The example of the training health monitor in docs/health.md: TrustPPO on CartPole-v1 with a learning rate 150 times too
large. Prints the warnings and the summary, and saves the figure (``python docs/health_example.py``).
"""

import pathlib
import warnings

import torch as th

from sb3_trust import HealthWarning, TrustHealthCallback, TrustPPO

th.set_num_threads(1)
warnings.simplefilter("always", HealthWarning)
warnings.formatwarning = lambda message, category, *args, **kwargs: f"{category.__name__}: {message}\n"

model = TrustPPO("MlpPolicy", "CartPole-v1", n_steps=256, learning_rate=0.05, seed=0, device="cpu")
health = TrustHealthCallback()
model.learn(256 * 40, callback=health)
print(health.summary())
health.plot(str(pathlib.Path(__file__).with_name("health_example.png")))
