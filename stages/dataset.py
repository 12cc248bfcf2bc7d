"""Reading the Kaggle "LEGO Minifigures Classification" layout and the split lists.

Both releases are understood: the current one (`index.csv` = `path,class_id`, plus `test.csv`)
and the legacy one (`index.csv` = `,path,class_id,train-valid`, no test set).
"""

from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INDEX, TEST, METADATA = "index.csv", "test.csv", "metadata.csv"
METADATA_COLUMNS = ("class_id", "lego_ids", "lego_names", "minifigure_name")
RELEASE_COLUMN = "train-valid"


class DataError(ValueError):
    """The dataset does not match the expected layout; the message names file, row and fix."""


@dataclass(frozen=True)
class Record:
    path: str
    class_id: int
    release_split: str | None = None  # "train" / "valid" in the legacy release


@dataclass(frozen=True)
class ClassInfo:
    index: int
    class_id: int
    name: str


def _rows(csv_path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: missing. The dataset needs index.csv and metadata.csv "
                        "(and test.csv in the current release) at its top level")
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"{csv_path}: header {header} lacks column(s) {missing}; expected "
                            f"at least {list(required)}")
        return list(reader)


def _class_id(value: str, csv_path: Path, line: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataError(f"{csv_path}, line {line}: class_id {value!r} is not an integer") from None


def read_records(csv_path: Path) -> list[Record]:
    rows = _rows(csv_path, ("path", "class_id"))
    records = []
    for line, row in enumerate(rows, start=2):
        if not row.get("path"):
            raise DataError(f"{csv_path}, line {line}: empty path")
        split = row.get(RELEASE_COLUMN)
        if split is not None and split not in ("train", "valid"):
            raise DataError(f"{csv_path}, line {line}: {RELEASE_COLUMN} is {split!r}; "
                            "expected 'train' or 'valid'")
        records.append(Record(row["path"], _class_id(row["class_id"], csv_path, line), split))
    return records


def read_metadata(root: Path) -> list[ClassInfo]:
    """Classes in class_id order; `index` is the model output position."""
    csv_path = root / METADATA
    names: dict[int, str] = {}
    for line, row in enumerate(_rows(csv_path, ("class_id", "minifigure_name")), start=2):
        class_id = _class_id(row["class_id"], csv_path, line)
        if class_id in names:
            raise DataError(f"{csv_path}, line {line}: class_id {class_id} is listed twice")
        names[class_id] = row["minifigure_name"]
    if len(names) < 2:
        raise DataError(f"{csv_path}: a classifier needs at least 2 classes, found {len(names)}")
    return [ClassInfo(i, cid, names[cid]) for i, cid in enumerate(sorted(names))]


def has_release_column(root: Path) -> bool:
    with (root / INDEX).open(newline="", encoding="utf-8-sig") as handle:
        return RELEASE_COLUMN in (csv.DictReader(handle).fieldnames or [])


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def save_arrays(path: Path, **arrays: np.ndarray) -> None:
    """Like np.savez, but byte-identical for identical arrays (np.savez stamps the time)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)),
                             buffer.getvalue())


def load_split(path: Path) -> dict[str, np.ndarray]:
    """A transform cache file: images (NHWC uint8), labels (int64), class_ids, paths."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}
