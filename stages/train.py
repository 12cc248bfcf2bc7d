"""train stage: fine-tune a timm classifier on the transform cache, keep the best checkpoint by
validation accuracy, and log params and per-epoch metrics with dvclive."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from dvclive import Live
from timm.utils import ModelEmaV3
from torch import nn
from torchvision.transforms import v2
from tqdm import tqdm

from stages.dataset import load_split
from stages.modeling import build_model, save_checkpoint
from stages.params import ModelParams, TrainParams, load_params
from stages.split import SPLIT_DIR, read_classes

PROCESSED_DIR, MODEL_DIR, LIVE_DIR = Path("data/processed"), Path("models"), Path("dvclive/train")


def seed_everything(seed: int, threads: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def train_mode(model: nn.Module, freeze_batchnorm: bool) -> None:
    model.train()
    if freeze_batchnorm:  # batch statistics of a few augmented images are poor estimates
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def augmenter(params: TrainParams, size: int) -> v2.Compose:
    aug = params.augment
    steps: list[nn.Module] = [v2.RandomResizedCrop(size, scale=(aug.crop_scale_min, 1.0),
                                                   antialias=True)]
    if aug.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if aug.rotation_degrees:
        steps.append(v2.RandomRotation(aug.rotation_degrees))
    if aug.color_jitter:
        j = aug.color_jitter
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
    if aug.trivial_augment:
        steps.append(v2.TrivialAugmentWide())
    if aug.random_erasing:
        steps.append(v2.RandomErasing(aug.random_erasing, value=0))
    return v2.Compose(steps)


class Normalizer:
    """uint8 NCHW -> normalised float, in the memory format training uses."""

    def __init__(self, mean: list[float], std: list[float], channels_last: bool):
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = (batch.float() / 255.0 - self.mean) / self.std
        return x.contiguous(memory_format=self.format)


def as_tensors(split: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.from_numpy(split["images"]).permute(0, 3, 1, 2).contiguous(),
            torch.from_numpy(split["labels"]))


def warmup_cosine(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


@torch.no_grad()
def evaluate_loss_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                           normalize: Normalizer, batch_size: int) -> tuple[float, float]:
    """True means over the whole set (not a mean of batch means)."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(labels), batch_size):
        logits = model(normalize(images[start:start + batch_size]))
        target = labels[start:start + batch_size]
        loss_sum += nn.functional.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(1) == target).sum().item()
    return loss_sum / len(labels), correct / len(labels)


def is_better(candidate: tuple[float, float], best: tuple[float, float] | None) -> bool:
    """Higher validation accuracy wins; on a tie, lower validation loss."""
    if best is None:
        return True
    (acc, loss), (best_acc, best_loss) = candidate, best
    return acc > best_acc or (acc == best_acc and loss < best_loss)


def train(model_params: ModelParams, params: TrainParams, processed_dir: Path = PROCESSED_DIR,
          split_dir: Path = SPLIT_DIR, out_dir: Path = MODEL_DIR, live_dir: Path = LIVE_DIR,
          progress: bool = True) -> dict[str, float]:
    seed_everything(params.seed, params.threads)
    classes = read_classes(split_dir)
    train_x, train_y = as_tensors(load_split(processed_dir / "train.npz"))
    val_x, val_y = as_tensors(load_split(processed_dir / "val.npz"))
    size = train_x.shape[-1]
    model, preprocessing = build_model(model_params.name, len(classes), model_params.weights,
                                       model_params.drop_rate)
    if params.channels_last:
        model = model.to(memory_format=torch.channels_last)
    normalize = Normalizer(preprocessing["mean"], preprocessing["std"], params.channels_last)
    augment = augmenter(params, size)
    # random-init statistics are not worth keeping
    freeze_bn = params.freeze_batchnorm and model_params.weights != "none"

    steps_per_epoch = math.ceil(len(train_y) / params.batch_size)
    head = list(model.get_classifier().parameters())
    head_ids = {id(p) for p in head}
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    optimizer = torch.optim.AdamW(
        [{"params": backbone, "lr": params.lr * params.backbone_lr_scale},
         {"params": head, "lr": params.lr}], weight_decay=params.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        params.epochs * steps_per_epoch, round(params.warmup_epochs * steps_per_epoch)))
    criterion = nn.CrossEntropyLoss(label_smoothing=params.label_smoothing)
    order_rng = torch.Generator().manual_seed(params.seed)
    # the averaged weights are what gets validated and saved; the raw ones keep training
    ema = ModelEmaV3(model, decay=params.ema_decay, use_warmup=True) if params.ema_decay else None
    kept = ema.module if ema else model

    best, best_epoch, started = None, 0, time.perf_counter()
    with Live(str(live_dir), dvcyaml=None, save_dvc_exp=False) as live:
        live.log_params({"model": model_params.model_dump(), "train": params.model_dump()})
        for epoch in range(1, params.epochs + 1):
            train_mode(model, freeze_bn)
            loss_sum, correct = 0.0, 0
            order = torch.randperm(len(train_y), generator=order_rng)
            batches = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{params.epochs}",
                           unit="batch", disable=not progress)
            for step in batches:
                idx = order[step * params.batch_size:(step + 1) * params.batch_size]
                x = normalize(torch.stack([augment(img) for img in train_x[idx]]))
                y = train_y[idx]
                logits = model(x)
                loss = criterion(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                if ema:
                    ema.update(model, step=(epoch - 1) * steps_per_epoch + step + 1)
                loss_sum += loss.item() * len(y)
                correct += (logits.argmax(1) == y).sum().item()
                batches.set_postfix(loss=f"{loss.item():.3f}")
            val_loss, val_acc = evaluate_loss_accuracy(kept, val_x, val_y, normalize,
                                                       params.batch_size * 2)
            live.log_metric("train/loss", loss_sum / len(train_y))
            live.log_metric("train/accuracy", correct / len(train_y))
            live.log_metric("val/loss", val_loss)
            live.log_metric("val/accuracy", val_acc)
            live.log_metric("lr", scheduler.get_last_lr()[-1])
            if is_better((val_acc, val_loss), best):
                best, best_epoch = (val_acc, val_loss), epoch
                save_checkpoint(kept, {
                    "model_name": model_params.name,
                    "weights": model_params.weights,
                    "image_size": int(size),
                    "mean": preprocessing["mean"],
                    "std": preprocessing["std"],
                    "classes": classes,
                    "best_epoch": epoch,
                    "val_accuracy": val_acc,
                    "val_loss": round(val_loss, 6),
                }, out_dir)
            print(f"epoch {epoch}: train loss {loss_sum / len(train_y):.4f} acc "
                  f"{correct / len(train_y):.3f} | val loss {val_loss:.4f} acc {val_acc:.3f}")
            live.next_step()
        summary = {"best_epoch": best_epoch, "best_val_accuracy": best[0],
                   "best_val_loss": round(best[1], 6),
                   "train_seconds": round(time.perf_counter() - started, 1)}
        live.summary.update(summary)
    return summary


def main() -> None:
    params = load_params()
    print(train(params.model, params.train))


if __name__ == "__main__":
    main()
