"""Small datasets in the Kaggle layout, built from a few real LEGO photos, for tests."""

from __future__ import annotations

import csv
import http.server
import shutil
import threading
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path


def mini_dataset(lego_dir: Path, dest: Path, classes: int = 3, per_class: int = 4,
                 release: str = "current") -> Path:
    """`classes` real classes with `per_class` training images each (+1 test image each in the
    current release; the legacy release marks half of each class `valid` instead)."""
    with (lego_dir / "index.csv").open() as handle:
        by_class: dict[int, list[str]] = defaultdict(list)
        for row in csv.DictReader(handle):
            by_class[int(row["class_id"])].append(row["path"])
    chosen = sorted(by_class)[:classes]
    with (lego_dir / "test.csv").open() as handle:
        tests = [r for r in csv.DictReader(handle) if int(r["class_id"]) in chosen]
    dest.mkdir(parents=True)
    with (lego_dir / "metadata.csv").open() as src, (dest / "metadata.csv").open("w") as out:
        lines = src.read().splitlines()
        out.write("\n".join([lines[0], *[ln for ln in lines[1:]
                                         if int(ln.split(",")[0]) in chosen]]) + "\n")
    rows = []
    for class_id in chosen:
        for i, path in enumerate(by_class[class_id][:per_class]):
            (dest / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(lego_dir / path, dest / path)
            rows.append((path, class_id, "valid" if i % 2 else "train"))
    if release == "legacy":
        lines = [",path,class_id,train-valid"] + [f"{i},{p},{c},{s}" for i, (p, c, s) in
                                                  enumerate(rows)]
    else:
        lines = ["path,class_id"] + [f"{p},{c}" for p, c, _ in rows]
        test_rows = []
        for class_id in chosen:
            row = next(r for r in tests if int(r["class_id"]) == class_id)
            (dest / "test").mkdir(exist_ok=True)
            shutil.copy(lego_dir / row["path"], dest / row["path"])
            test_rows.append(f"{row['path']},{class_id}")
        (dest / "test.csv").write_text("\n".join(["path,class_id", *test_rows]) + "\n")
    (dest / "index.csv").write_text("\n".join(lines) + "\n")
    return dest


@contextmanager
def http_server(directory: Path, handler_class=None):
    """Serve `directory` on 127.0.0.1 at a free port; yields the base URL."""
    handler = handler_class or http.server.SimpleHTTPRequestHandler

    class Quiet(handler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(directory), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
