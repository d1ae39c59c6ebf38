"""Accuracy metrics for explicit ratings (NumPy in, Python float out)."""
from __future__ import annotations

import numpy as np


def rmse(predictions, targets) -> float:
    """Root mean squared error."""
    e = np.asarray(predictions, np.float64) - np.asarray(targets, np.float64)
    return float(np.sqrt(np.mean(e * e)))


def mae(predictions, targets) -> float:
    """Mean absolute error."""
    e = np.asarray(predictions, np.float64) - np.asarray(targets, np.float64)
    return float(np.mean(np.abs(e)))
