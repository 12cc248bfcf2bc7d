"""transform stage: decode every image once into a compact uint8 cache, and record the reference
statistics that drift monitoring compares live traffic against."""

from __future__ import annotations

import csv
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stages.dataset import save_arrays, write_csv
from stages.imaging import RESIZE_RULE, STAT_NAMES, image_stats, load_rgb, resize_center_crop
from stages.params import TransformParams, load_section
from stages.split import SPLIT_DIR, SPLIT_NAMES

RAW_DIR, PROCESSED_DIR = Path("data/raw"), Path("data/processed")


def _prepare(path: Path, size: int) -> np.ndarray:
    return resize_center_crop(load_rgb(path), size)


def cache_split(name: str, params: TransformParams, raw_dir: Path, split_dir: Path,
                out_dir: Path) -> tuple[np.ndarray, list[dict]]:
    with (split_dir / f"{name}.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    size = params.image_size
    images = np.zeros((len(rows), size, size, 3), np.uint8)
    # PIL releases the GIL while decoding and resizing, so threads use both cores.
    with ThreadPoolExecutor(params.workers) as pool:
        done = pool.map(lambda row: _prepare(raw_dir / row["path"], size), rows)
        for i, image in enumerate(tqdm(done, total=len(rows), desc=f"transform {name}",
                                       unit="img")):
            images[i] = image
    save_arrays(out_dir / f"{name}.npz", images=images,
                labels=np.array([int(r["label"]) for r in rows], np.int64),
                class_ids=np.array([int(r["class_id"]) for r in rows], np.int64),
                paths=np.array([r["path"] for r in rows], dtype=str))
    stats = [{"split": name, "path": row["path"], **image_stats(img)}
             for row, img in zip(rows, images, strict=True)]
    return images, stats


def summarize(values: np.ndarray) -> dict[str, float]:
    q = np.quantile(values, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"mean": float(values.mean()), "std": float(values.std()),
            **{f"q{int(p * 100):02d}": float(v) for p, v in zip((0.05, .25, .5, .75, .95), q,
                                                                 strict=True)}}


def transform(params: TransformParams, raw_dir: Path = RAW_DIR, split_dir: Path = SPLIT_DIR,
              out_dir: Path = PROCESSED_DIR) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    all_stats, train_images = [], None
    for name in SPLIT_NAMES:
        images, stats = cache_split(name, params, raw_dir, split_dir, out_dir)
        all_stats += stats
        if name == "train":
            train_images = images
    write_csv(out_dir / "image_stats.csv", ["split", "path", *STAT_NAMES],
              [[s["split"], s["path"], *(round(s[k], 6) for k in STAT_NAMES)] for s in all_stats])
    pixels = train_images.reshape(-1, 3).astype(np.float64) / 255.0
    train_stats = [s for s in all_stats if s["split"] == "train"]
    reference = {
        "image_size": params.image_size,
        "resize_rule": RESIZE_RULE,
        "images": {name: sum(s["split"] == name for s in all_stats) for name in SPLIT_NAMES},
        "channel_mean": [round(float(v), 6) for v in pixels.mean(axis=0)],
        "channel_std": [round(float(v), 6) for v in pixels.std(axis=0)],
        "train_image_stats": {k: summarize(np.array([s[k] for s in train_stats]))
                              for k in STAT_NAMES},
    }
    (out_dir / "reference.json").write_text(json.dumps(reference, indent=2) + "\n")
    return reference


def main() -> None:
    reference = transform(load_section("transform"))
    print(f"data/processed: {reference['images']} images at {reference['image_size']} px")


if __name__ == "__main__":
    main()
