import os

os.environ.setdefault("NMREF_FAST", "1")   # tiny data and epochs everywhere under pytest (DESIGN.md)

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
