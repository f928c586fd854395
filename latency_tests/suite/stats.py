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


def trimmed_mean(values: Sequence[float], trim: float = 0.2) -> float:
    """The mean with the `trim` share of values dropped at each end (at least one each
    from five values up): robust to outliers like a median, but moves smoothly when a
    few values jump between two clusters, where a median can jump with them."""
    if not values:
        return math.nan
    ordered = sorted(values)
    cut = int(len(ordered) * trim)
    return float(np.mean(ordered[cut: len(ordered) - cut]))
