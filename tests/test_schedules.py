import math
import pickle

import pytest

from sb3_trust import CosineSchedule, linear_schedule


def test_cosine_schedule_values_and_pickle():
    schedule = CosineSchedule(1.0, 0.2)
    assert schedule(1.0) == pytest.approx(1.0)
    assert schedule(0.0) == pytest.approx(0.2)
    assert schedule(0.5) == pytest.approx(0.6)
    assert schedule(0.75) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert pickle.loads(pickle.dumps(schedule)) == schedule


def test_linear_schedule_values_and_pickle():
    schedule = linear_schedule(1e-3)
    assert schedule(1.0) == pytest.approx(1e-3)
    assert schedule(0.25) == pytest.approx(0.25e-3)
    assert pickle.loads(pickle.dumps(schedule))(0.5) == pytest.approx(0.5e-3)
