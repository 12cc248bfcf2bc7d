import numpy as np
import pytest
from sklearn.metrics import f1_score, top_k_accuracy_score

from stages import metrics

# Four test images, three classes, worked by hand in the comments below.
PROBS = np.array([
    [0.7, 0.2, 0.1],  # true 0, predicted 0
    [0.5, 0.4, 0.1],  # true 1, predicted 0 (true class second)
    [0.1, 0.3, 0.6],  # true 2, predicted 2
    [0.3, 0.5, 0.2],  # true 2, predicted 1 (true class last)
])
LABELS = np.array([0, 1, 2, 2])
PREDICTED = PROBS.argmax(1)


def test_top_k_accuracy():
    assert metrics.top_k_accuracy(PROBS, LABELS, 1) == 0.5
    assert metrics.top_k_accuracy(PROBS, LABELS, 2) == 0.75
    assert metrics.top_k_accuracy(PROBS, LABELS, 5) == 1.0  # k larger than classes
    assert metrics.top_k_accuracy(PROBS, LABELS, 2) == top_k_accuracy_score(LABELS, PROBS, k=2)


def test_confusion_and_per_class_accuracy():
    assert metrics.confusion_matrix(LABELS, PREDICTED, 3).tolist() == [
        [1, 0, 0], [1, 0, 0], [0, 1, 1]]
    assert metrics.per_class_accuracy(LABELS, PREDICTED, 4) == [1.0, 0.0, 0.5, None]


def test_macro_f1():
    # F1: class 0 = 2·1/(1+2) = 2/3, class 1 = 0, class 2 = 2·1/(2+1) = 2/3 → mean 4/9
    assert metrics.macro_f1(LABELS, PREDICTED, 3) == pytest.approx(4 / 9)
    # a class that never occurs (index 3) does not dilute the mean
    assert metrics.macro_f1(LABELS, PREDICTED, 4) == pytest.approx(4 / 9)
    assert metrics.macro_f1(LABELS, PREDICTED, 3) == pytest.approx(
        f1_score(LABELS, PREDICTED, average="macro"))


def test_expected_calibration_error():
    # 5 bins: (0.4, 0.6] holds confidences .5 ✗, .6 ✓, .5 ✗: |1/3 − 0.5333| · 3/4 = 0.15
    #         (0.6, 0.8] holds .7 ✓: |1 − 0.7| · 1/4 = 0.075
    assert metrics.expected_calibration_error(PROBS, LABELS, bins=5) == pytest.approx(0.225)
    perfect = np.eye(3)[[0, 1, 2]]
    assert metrics.expected_calibration_error(perfect, np.array([0, 1, 2])) == 0.0


def test_negative_log_likelihood():
    expected = -np.mean(np.log([0.7, 0.4, 0.6, 0.2]))
    assert metrics.negative_log_likelihood(PROBS, LABELS) == pytest.approx(expected)
