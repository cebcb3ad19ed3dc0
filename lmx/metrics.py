"""Classification metrics (scikit-learn does the counting)."""
from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def classification(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 (over labels present in either array, as sklearn defines it)."""
    return {
        "accuracy": float(skm.accuracy_score(labels, predictions)),
        "macro_f1": float(skm.f1_score(labels, predictions, average="macro", zero_division=0)),
    }
