# This file is here just to define MlpPolicy/CnnPolicy/MultiInputPolicy, as SB3 and sb3-contrib TRPO do.
from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy, MultiInputActorCriticPolicy

MlpPolicy = ActorCriticPolicy
CnnPolicy = ActorCriticCnnPolicy
MultiInputPolicy = MultiInputActorCriticPolicy
