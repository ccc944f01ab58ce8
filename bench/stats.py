"""Figures computed from measurements."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile: the smallest value with at least `fraction` of all the
    values at or below it."""
    return sorted_values[max(0, math.ceil(fraction * len(sorted_values)) - 1)]
