"""split stage: stratified, seeded train/validation lists, the test holdout and the class map."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from stages.dataset import (
    INDEX,
    TEST,
    DataError,
    Record,
    has_release_column,
    read_metadata,
    read_records,
    write_csv,
)
from stages.params import SplitParams, load_section

RAW_DIR, SPLIT_DIR = Path("data/raw"), Path("data/split")
SPLIT_NAMES = ("train", "val", "test")


def stratified_holdout(records: list[Record], fraction: float,
                       rng: np.random.Generator) -> tuple[list[Record], list[Record]]:
    """Split per class; every class with >= 2 records gives at least one to the holdout and
    keeps at least one."""
    by_class: dict[int, list[Record]] = defaultdict(list)
    for record in records:
        by_class[record.class_id].append(record)
    keep, holdout = [], []
    for class_id in sorted(by_class):
        members = by_class[class_id]
        order = rng.permutation(len(members))
        n_out = 0 if len(members) < 2 else min(len(members) - 1,
                                                max(1, round(len(members) * fraction)))
        holdout += [members[i] for i in order[:n_out]]
        keep += [members[i] for i in order[n_out:]]
    return sorted(keep, key=lambda r: r.path), sorted(holdout, key=lambda r: r.path)


def split(params: SplitParams, raw_dir: Path = RAW_DIR, out_dir: Path = SPLIT_DIR) -> dict:
    classes = read_metadata(raw_dir)
    index = read_records(raw_dir / INDEX)
    rng = np.random.default_rng(params.seed)
    if (raw_dir / TEST).exists():
        pool, test = index, read_records(raw_dir / TEST)
    else:  # the legacy release ships no test set: hold one out before anything else
        pool, test = stratified_holdout(index, params.test_fraction, rng)
    if params.use_release_column:
        if not has_release_column(raw_dir):
            raise DataError(f"split.use_release_column is true but {raw_dir / INDEX} has no "
                            "train-valid column (current release). Set it to false")
        train = [r for r in pool if r.release_split == "train"]
        val = [r for r in pool if r.release_split == "valid"]
    else:
        train, val = stratified_holdout(pool, params.val_fraction, rng)

    label_of = {c.class_id: c.index for c in classes}
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, records in zip(SPLIT_NAMES, (train, val, test), strict=True):
        write_csv(out_dir / f"{name}.csv", ["path", "class_id", "label"],
                  [[r.path, r.class_id, label_of[r.class_id]] for r in records])
    write_csv(out_dir / "classes.csv", ["index", "class_id", "name"],
              [[c.index, c.class_id, c.name] for c in classes])
    empty = sorted({c.class_id for c in classes} - {r.class_id for r in train})
    summary = {"classes": len(classes), "train": len(train), "val": len(val), "test": len(test),
               "classes_without_training_images": empty}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def read_classes(split_dir: Path = SPLIT_DIR) -> list[dict]:
    """The class map: [{"index", "class_id", "name"}] in model-output order."""
    with (split_dir / "classes.csv").open(newline="", encoding="utf-8") as handle:
        return [{"index": int(r["index"]), "class_id": int(r["class_id"]), "name": r["name"]}
                for r in csv.DictReader(handle)]


def main() -> None:
    summary = split(load_section("split"))
    print(f"data/split: {summary}")


if __name__ == "__main__":
    main()
