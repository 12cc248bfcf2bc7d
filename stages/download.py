"""download stage: fetch the dataset into data/raw/ and verify every listed image.

Everything is assembled in a temporary folder beside data/raw/ and moved into place only when
complete and verified, so a failed or interrupted download never leaves a half dataset.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

from tqdm import tqdm

from stages.dataset import (
    INDEX,
    METADATA,
    TEST,
    DataError,
    Record,
    has_release_column,
    read_metadata,
    read_records,
)
from stages.imaging import ImageError, load_rgb
from stages.params import DataParams, load_section

RAW_DIR = Path("data/raw")
REPORT = "download_report.json"
KAGGLE_ENDPOINT = "https://www.kaggle.com/api/v1"
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def kaggle_credentials() -> tuple[str, str]:
    user, key = os.environ.get("KAGGLE_USERNAME"), os.environ.get("KAGGLE_KEY")
    if user and key:
        return user, key
    config = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle")) / "kaggle.json"
    if config.is_file():
        creds = json.loads(config.read_text())
        return creds["username"], creds["key"]
    raise DataError(
        "data.source is a Kaggle dataset but no Kaggle credentials were found. Create an API "
        "token at kaggle.com → Settings → API, then either save it as ~/.kaggle/kaggle.json "
        "(chmod 600) or export KAGGLE_USERNAME and KAGGLE_KEY. Never commit the token.")


def fetch(url: str, dest: Path, **storage_options: object) -> None:
    """Copy a remote file (any fsspec URL) to `dest` with a progress bar."""
    import fsspec
    from fsspec.callbacks import TqdmCallback

    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    try:
        fs.get_file(path, str(dest), callback=TqdmCallback(
            tqdm_kwargs={"desc": f"download {Path(path).name}", "unit": "B",
                         "unit_scale": True}))
    except FileNotFoundError:
        raise DataError(f"data.source: {url} does not exist (check the URL)") from None
    except Exception as exc:
        raise DataError(f"data.source: could not download {url}: {type(exc).__name__}: {exc}") \
            from None


def extract(archive: Path, dest: Path) -> None:
    name = archive.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zipped:
            for member in zipped.namelist():
                target = (dest / member).resolve()
                if not target.is_relative_to(dest.resolve()):
                    raise DataError(f"{archive}: member {member!r} escapes the archive folder")
            zipped.extractall(dest)
    elif name.endswith(ARCHIVE_SUFFIXES):
        with tarfile.open(archive) as tarred:
            tarred.extractall(dest, filter="data")
    else:
        raise DataError(f"{archive}: unsupported archive type; use .zip, .tar, .tar.gz or .tgz")


def find_root(folder: Path) -> Path:
    """The folder holding index.csv: the top level or one or two levels down."""
    for pattern in (INDEX, f"*/{INDEX}", f"*/*/{INDEX}"):
        hits = sorted(folder.glob(pattern))
        if hits:
            return hits[0].parent
    raise DataError(f"no {INDEX} found in the downloaded data (looked two levels deep). "
                    "data.source must point at the Kaggle LEGO minifigures layout")


def _archive_source(archive: Path, work: Path, sha256: str | None) -> Path:
    digest = sha256_of(archive)
    if sha256 and digest != sha256.lower():
        raise DataError(f"data.sha256 mismatch for {archive.name}: expected {sha256}, got "
                        f"{digest}. The download is corrupt or the source changed")
    extract(archive, work / "extracted")
    return find_root(work / "extracted")


def acquire(params: DataParams, work: Path) -> Path:
    """Put the source's files under `work` and return the dataset root inside it."""
    source = params.source
    if source == "embedded":
        if params.sha256:
            raise DataError("data.sha256 only applies to archives; set it to null for embedded")
        from stages.synthetic import generate_dataset

        embedded = params.embedded
        generate_dataset(work / "embedded", classes=embedded.classes,
                         train_per_class=embedded.train_per_class,
                         test_per_class=embedded.test_per_class,
                         image_size=embedded.image_size, seed=embedded.seed,
                         release=embedded.release)
        return work / "embedded"
    if source.startswith("kaggle:"):
        user, key = kaggle_credentials()
        slug = source.removeprefix("kaggle:").strip("/")
        if slug.count("/") != 1:
            raise DataError(f"data.source {source!r}: expected kaggle:<owner>/<dataset>")
        endpoint = os.environ.get("KAGGLE_API_ENDPOINT", KAGGLE_ENDPOINT).rstrip("/")
        archive = work / "kaggle.zip"
        token = base64.b64encode(f"{user}:{key}".encode()).decode()
        fetch(f"{endpoint}/datasets/download/{slug}", archive,
              headers={"Authorization": f"Basic {token}"})
        return _archive_source(archive, work, params.sha256)
    if "://" in source:
        archive = work / Path(source.split("?")[0]).name
        fetch(source, archive)
        return _archive_source(archive, work, params.sha256)
    local = Path(source).expanduser()
    if local.is_dir():
        if params.sha256:
            raise DataError("data.sha256 only applies to archives; set it to null for a folder")
        return find_root(local)
    if local.is_file():
        return _archive_source(local, work, params.sha256)
    raise DataError(f"data.source {source!r} is neither 'embedded', a URL, kaggle:<owner>/"
                    "<dataset>, nor an existing folder or archive. Fix data.source in params.yaml")


def verify(root: Path, on_corrupt: str) -> tuple[dict[str, list[Record]], list[dict[str, str]]]:
    """Check every listed image; return the good records per CSV and the skipped ones."""
    class_ids = {c.class_id for c in read_metadata(root)}
    listed = {INDEX: read_records(root / INDEX)}
    if (root / TEST).exists():
        listed[TEST] = read_records(root / TEST)
    total = sum(len(records) for records in listed.values())
    good: dict[str, list[Record]] = {}
    skipped: list[dict[str, str]] = []
    with tqdm(total=total, desc="verify images", unit="img") as bar:
        for csv_name, records in listed.items():
            good[csv_name] = []
            for record in records:
                problem = _problem(root, record, class_ids)
                bar.update()
                if problem is None:
                    good[csv_name].append(record)
                elif on_corrupt == "skip":
                    skipped.append({"csv": csv_name, "path": record.path, "problem": problem})
                else:
                    raise DataError(f"{csv_name}: {record.path}: {problem}. Fix or remove the "
                                    "file, or set data.on_corrupt: skip to leave it out")
    return good, skipped


def _problem(root: Path, record: Record, class_ids: set[int]) -> str | None:
    if record.class_id not in class_ids:
        return f"class_id {record.class_id} is not in {METADATA}"
    image = root / record.path
    if not image.resolve().is_relative_to(root.resolve()):
        return "path points outside the dataset folder"
    if not image.is_file():
        return "file is missing"
    try:
        load_rgb(image)
    except ImageError as exc:
        return str(exc).removeprefix(f"{image}: ")
    return None


def assemble(root: Path, good: dict[str, list[Record]], staging: Path) -> None:
    """Copy the CSVs (rewritten when something was skipped) and the good images."""
    staging.mkdir(parents=True)
    shutil.copy2(root / METADATA, staging / METADATA)
    legacy = has_release_column(root)
    for csv_name, records in good.items():
        lines = [",path,class_id,train-valid" if legacy else "path,class_id"]
        for i, r in enumerate(records):
            lines.append(f"{i},{r.path},{r.class_id},{r.release_split}" if legacy
                         else f"{r.path},{r.class_id}")
        (staging / csv_name).write_text("\n".join(lines) + "\n")
        for record in records:
            target = staging / record.path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / record.path, target)


def download(params: DataParams, out_dir: Path = RAW_DIR) -> dict:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}-", dir=out_dir.parent) as tmp:
        work = Path(tmp)
        root = acquire(params, work)
        good, skipped = verify(root, params.on_corrupt)
        staging = work / "staging"
        assemble(root, good, staging)
        report = {
            "source": params.source,
            "release": "legacy" if has_release_column(root) else "current",
            "classes": len(read_metadata(root)),
            "images": {name: len(records) for name, records in good.items()},
            "skipped": skipped,
        }
        (staging / REPORT).write_text(json.dumps(report, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    return report


def main() -> None:
    report = download(load_section("data"))
    print(f"data/raw: {report['classes']} classes, {report['images']} images, "
          f"{len(report['skipped'])} skipped")


if __name__ == "__main__":
    main()
