"""
Warnings that point at the user's code: the line of the first frame outside sb3_trust, SB3 and rl-zoo3 (the user's
``TrustPPO(...)``, ``learn()`` or ``load()`` call), rather than at the line inside the library that found the problem.
"""

import inspect
import os
import warnings

import stable_baselines3

# sb3_trust/ (this file is sb3_trust/common/messages.py) and SB3's package folder
_LIBRARY_DIRS = (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
    os.path.dirname(os.path.abspath(stable_baselines3.__file__)) + os.sep,
)


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """
    ``warnings.warn`` attributed to the user's call (so ``python -W error`` and warning filters by module see it there).

    :param message: what happened, and how to fix or silence it
    :param category: the warning class
    """
    frame = inspect.currentframe()
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_LIBRARY_DIRS):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
