"""Small statistics on lists that may be empty (NaN then, never an exception)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile, linear between the closest ranks; NaN for no values."""
    return float(np.percentile(np.asarray(values, float), q)) if values else math.nan


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else math.nan
