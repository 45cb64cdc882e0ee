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


def entity_metrics(
    predicted: np.ndarray, labels: np.ndarray, id2label: dict[int, str], strict: bool = False
) -> dict[str, float]:
    """Entity-level precision / recall / F1 (micro, and F1 per entity type) with seqeval, over
    the positions where ``labels >= 0`` (first sub-tokens); strict = IOB2 mode."""
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    y_true, y_pred = [], []
    for pred_row, gold_row in zip(predicted, labels, strict=True):
        real = gold_row >= 0
        y_true.append([id2label[int(t)] for t in gold_row[real]])
        y_pred.append([id2label[int(t)] for t in pred_row[real]])
    kw = {"mode": "strict", "scheme": IOB2} if strict else {}
    report = classification_report(y_true, y_pred, output_dict=True, zero_division=0, **kw)
    out = {
        "f1": float(f1_score(y_true, y_pred, zero_division=0, **kw)),
        "precision": float(precision_score(y_true, y_pred, zero_division=0, **kw)),
        "recall": float(recall_score(y_true, y_pred, zero_division=0, **kw)),
        "token_accuracy": float(np.mean(np.concatenate(y_true) == np.concatenate(y_pred))),
    }
    for name, row in report.items():
        if name not in ("micro avg", "macro avg", "weighted avg"):
            out[f"f1_{name}"] = float(row["f1-score"])
    return out
