import csv
import json

import numpy as np
import pytest
import torch

from stages.dataset import load_split, save_arrays
from stages.evaluate import evaluate
from stages.modeling import load_checkpoint
from stages.train import (
    Normalizer,
    as_tensors,
    augmenter,
    evaluate_loss_accuracy,
    is_better,
    train,
)
from tests.conftest import TINY, _merge, make_params, run_data_stages, run_training


def read_tsv(path):
    with path.open() as handle:
        return [float(r[path.stem]) for r in csv.DictReader(handle, delimiter="\t")]


def test_overfits_one_batch(embedded_run, tmp_path):
    """Eight images, no augmentation, no regularisation: the loop must drive them to 100 %."""
    processed = tmp_path / "processed"
    processed.mkdir()
    train_cache = np.load(embedded_run.processed_dir / "train.npz")
    batch = {k: train_cache[k][:8] for k in train_cache.files}
    save_arrays(processed / "train.npz", **batch)
    save_arrays(processed / "val.npz", **batch)
    params = make_params(**{**TINY, "train": {
        "epochs": 25, "batch_size": 8, "lr": 0.003, "weight_decay": 0.0, "warmup_epochs": 0.0,
        "label_smoothing": 0.0, "augment": {"hflip": False, "crop_scale_min": 1.0,
                                            "rotation_degrees": 0.0, "color_jitter": 0.0,
                                            "trivial_augment": False, "random_erasing": 0.0}}})
    train(params.model, params.train, processed, embedded_run.split_dir, tmp_path / "models",
          tmp_path / "live", progress=False)
    losses = read_tsv(tmp_path / "live/plots/metrics/train/loss.tsv")
    accuracy = read_tsv(tmp_path / "live/plots/metrics/train/accuracy.tsv")
    assert accuracy[-3:] == [1.0, 1.0, 1.0]
    assert max(losses[-3:]) < 0.01 * losses[0]


def test_checkpoint_is_the_best_validation_epoch(embedded_run):
    plots = embedded_run.live_dir / "plots/metrics"
    accuracy, loss = read_tsv(plots / "val/accuracy.tsv"), read_tsv(plots / "val/loss.tsv")
    best = max(range(len(accuracy)), key=lambda i: (accuracy[i], -loss[i]))
    meta = json.loads((embedded_run.models_dir / "model.json").read_text())
    assert meta["best_epoch"] == best + 1 == embedded_run.train_metrics["best_epoch"]
    assert meta["val_accuracy"] == accuracy[best]


def test_selection_rule():
    assert is_better((0.8, 1.0), None)
    assert is_better((0.8, 1.0), (0.7, 0.1))
    assert is_better((0.8, 0.9), (0.8, 1.0))  # tie on accuracy: lower loss wins
    assert not is_better((0.8, 1.1), (0.8, 1.0))
    assert not is_better((0.7, 0.1), (0.8, 1.0))


def test_same_params_same_metrics_and_weights(embedded_run, tmp_path):
    params = make_params(**TINY)
    again = run_training(params, run_data_stages(params, tmp_path))
    assert again.train_metrics | {"train_seconds": 0} == \
        embedded_run.train_metrics | {"train_seconds": 0}
    assert (again.models_dir / "model.safetensors").read_bytes() == \
        (embedded_run.models_dir / "model.safetensors").read_bytes()


def test_ema_validates_and_saves_the_averaged_weights(embedded_run, tmp_path):
    """With ema_decay, the averaged weights are what is validated, compared and saved."""
    params = make_params(**_merge(TINY, {"train": {"ema_decay": 0.9}}))
    metrics = train(params.model, params.train, embedded_run.processed_dir,
                    embedded_run.split_dir, tmp_path / "models", tmp_path / "live", progress=False)
    saved = (tmp_path / "models/model.safetensors").read_bytes()
    assert saved != (embedded_run.models_dir / "model.safetensors").read_bytes()
    # the saved weights are the ones whose validation numbers were logged and compared
    model, meta = load_checkpoint(tmp_path / "models")
    val_x, val_y = as_tensors(load_split(embedded_run.processed_dir / "val.npz"))
    loss, accuracy = evaluate_loss_accuracy(model, val_x, val_y,
                                            Normalizer(meta["mean"], meta["std"], False), 64)
    assert accuracy == meta["val_accuracy"] == metrics["best_val_accuracy"]
    assert loss == pytest.approx(meta["val_loss"], abs=1e-5)


def test_dvclive_logs_params_and_epoch_metrics(embedded_run):
    logged = (embedded_run.live_dir / "params.yaml").read_text()
    assert "mobilenetv3_small_050" in logged and "label_smoothing" in logged
    summary = json.loads((embedded_run.live_dir / "metrics.json").read_text())
    assert summary["step"] == TINY["train"]["epochs"] - 1
    assert {"train", "val", "best_val_accuracy", "best_epoch"} <= set(summary)
    assert len(read_tsv(embedded_run.live_dir / "plots/metrics/val/accuracy.tsv")) == 2


@pytest.mark.slow
def test_real_photos_ci_sized_run_beats_a_high_bar(real_run, tmp_path):
    """ImageNet Lite0 fine-tuned for a few epochs at 160 px on the real 37-class photos.
    Chance is 2.7 %; a broken mapping, split, label or loss cannot reach this."""
    result = evaluate(make_params().evaluate, real_run.processed_dir, real_run.models_dir,
                      tmp_path / "report")
    print("CI-sized real-data run:", real_run.train_metrics, result)
    assert result["accuracy"] >= 0.5
    assert result["top5_accuracy"] >= 0.75
    for name in ("confusion_matrix.png", "misclassified.png", "predictions.csv",
                 "per_class.json", "metrics.json"):
        assert (tmp_path / "report" / name).stat().st_size > 0


def augmented(options: dict) -> torch.Tensor:
    params = make_params(train={"augment": options}).train
    torch.manual_seed(0)
    images = torch.randint(1, 256, (8, 3, 80, 80), generator=torch.Generator().manual_seed(1),
                           dtype=torch.uint8)
    out = torch.stack([augmenter(params, 64)(image) for image in images])
    assert out.shape == (8, 3, 64, 64) and out.dtype == torch.uint8  # the cache's format
    return out


def test_augmentation_options_change_the_images():
    plain = augmented({})
    assert not torch.equal(augmented({"trivial_augment": True}), plain)
    # erasing blanks rectangles to 0, a value the input never has
    unrotated = {"rotation_degrees": 0.0}  # rotation fills the corners with 0 too
    erased = augmented({**unrotated, "random_erasing": 0.9})
    assert (erased == 0).float().mean() > 10 * (augmented(unrotated) == 0).float().mean()
