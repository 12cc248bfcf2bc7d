"""evaluate stage: the untouched test holdout, scored once: metrics, a confusion matrix and a
gallery of the mistakes."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from stages import metrics
from stages.dataset import load_split, write_csv
from stages.modeling import load_checkpoint
from stages.params import EvaluateParams, load_section
from stages.train import Normalizer

PROCESSED_DIR, MODEL_DIR = Path("data/processed"), Path("models")
REPORT_DIR = Path("reports/evaluate")


@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, images: np.ndarray, mean: list[float],
                          std: list[float], batch_size: int) -> np.ndarray:
    normalize = Normalizer(mean, std, channels_last=False)
    batches = torch.from_numpy(images).permute(0, 3, 1, 2)
    out = [model(normalize(batches[i:i + batch_size])).softmax(1)
           for i in range(0, len(batches), batch_size)]
    return torch.cat(out).numpy().astype(np.float64)


def label_of(cls: dict) -> str:
    return f"{cls['class_id']}:{cls['name']}"  # names repeat (two SPIDER-MAN), ids do not


def plot_confusion(matrix: np.ndarray, names: list[str], path: Path) -> None:
    size = max(6.0, 0.28 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_yticks(range(len(names)), names, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            ax.text(j, i, str(count), ha="center", va="center", fontsize=5,
                    color="white" if count > matrix.max() / 2 else "black")
    ax.set_title("Test confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gallery(images: np.ndarray, captions: list[str], path: Path) -> None:
    cols = 4
    rows = max(1, -(-len(images) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 2.9))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, image, caption in zip(np.atleast_1d(axes).ravel(), images, captions, strict=False):
        ax.imshow(image)
        ax.set_title(caption, fontsize=6)
    if not len(images):
        fig.text(0.5, 0.5, "no misclassified test images", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate(params: EvaluateParams, processed_dir: Path = PROCESSED_DIR,
             model_dir: Path = MODEL_DIR, out_dir: Path = REPORT_DIR) -> dict[str, float]:
    model, meta = load_checkpoint(model_dir)
    classes = meta["classes"]
    test = load_split(processed_dir / "test.npz")
    labels = test["labels"]
    probs = predict_probabilities(model, test["images"], meta["mean"], meta["std"],
                                  params.batch_size)
    predicted = probs.argmax(1)
    n = len(classes)
    result = {
        "accuracy": metrics.top_k_accuracy(probs, labels, 1),
        "top5_accuracy": metrics.top_k_accuracy(probs, labels, 5),
        "macro_f1": metrics.macro_f1(labels, predicted, n),
        "ece": metrics.expected_calibration_error(probs, labels, params.ece_bins),
        "loss": metrics.negative_log_likelihood(probs, labels),
        "test_images": len(labels),
    }
    result = {k: round(v, 6) if isinstance(v, float) else v for k, v in result.items()}

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    per_class = metrics.per_class_accuracy(labels, predicted, n)
    support = np.bincount(labels, minlength=n)
    (out_dir / "per_class.json").write_text(json.dumps(
        [{**c, "accuracy": acc, "test_images": int(s)}
         for c, acc, s in zip(classes, per_class, support, strict=True)], indent=2) + "\n")
    names = [label_of(c) for c in classes]
    write_csv(out_dir / "predictions.csv",
              ["path", "actual", "predicted", "confidence"],
              [[p, names[t], names[q], round(float(probs[i, q]), 6)]
               for i, (p, t, q) in enumerate(zip(test["paths"], labels, predicted, strict=True))])
    plot_confusion(metrics.confusion_matrix(labels, predicted, n), names,
                   out_dir / "confusion_matrix.png")
    wrong = np.flatnonzero(predicted != labels)[:params.gallery_size]
    plot_gallery(test["images"][wrong],
                 [f"true {names[labels[i]]}\npred {names[predicted[i]]} "
                  f"({probs[i, predicted[i]]:.2f})" for i in wrong],
                 out_dir / "misclassified.png")
    return result


def main() -> None:
    print(evaluate(load_section("evaluate")))


if __name__ == "__main__":
    main()
