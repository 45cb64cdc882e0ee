"""Task metrics from kept libraries (scikit-learn, SciPy), never re-derived by hand."""

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def classification_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, average="macro")),
        "mcc": float(matthews_corrcoef(labels, predictions)),
    }


def regression_metrics(predictions: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    return {
        "pearson": float(pearsonr(predictions, targets).statistic),
        "spearman": float(spearmanr(predictions, targets).statistic),
        "mse": float(np.mean((predictions - targets) ** 2)),
    }


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(spearmanr(a, b).statistic)
