"""Classification metrics on arrays of probabilities, checked against hand-worked examples."""

from __future__ import annotations

import numpy as np


def top_k_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def macro_f1(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    """Mean F1 over the classes that occur as truth or prediction (as scikit-learn does)."""
    matrix = confusion_matrix(labels, predicted, num_classes)
    tp = np.diag(matrix).astype(float)
    support, predicted_count = matrix.sum(1), matrix.sum(0)
    present = (support + predicted_count) > 0
    denominator = support + predicted_count
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return float(f1[present].mean())


def per_class_accuracy(labels: np.ndarray, predicted: np.ndarray,
                       num_classes: int) -> list[float | None]:
    """Recall of each class; None where the class has no examples."""
    matrix = confusion_matrix(labels, predicted, num_classes)
    support = matrix.sum(1)
    return [float(matrix[i, i] / support[i]) if support[i] else None for i in range(num_classes)]


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Equal-width confidence bins over (0, 1]; sum of |accuracy - confidence| weighted by the
    share of samples in each bin."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(ece)


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)).mean())
