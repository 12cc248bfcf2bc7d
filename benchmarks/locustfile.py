"""Load test for the minifig service: real test photos POSTed to /predict (and a few batches).

    locust -f benchmarks/locustfile.py --host http://127.0.0.1:3000 --headless \
        --users 16 --spawn-rate 16 --run-time 60s

MINIFIG_LEGO_DIR points at the LEGO dataset (default ../shared/datasets/lego-minifigures).
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

from locust import HttpUser, between, task

REPO = Path(__file__).resolve().parents[1]
LEGO_DIR = Path(os.environ.get("MINIFIG_LEGO_DIR",
                               REPO.parent / "shared/datasets/lego-minifigures"))


def _photos() -> list[tuple[str, bytes]]:
    with (LEGO_DIR / "test.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise RuntimeError(f"no test photos listed in {LEGO_DIR / 'test.csv'}")
    return [(Path(r["path"]).name, (LEGO_DIR / r["path"]).read_bytes()) for r in rows]


PHOTOS = _photos()


class MinifigUser(HttpUser):
    wait_time = between(0.0, 0.05)

    @task(10)
    def predict(self) -> None:
        name, data = random.choice(PHOTOS)
        with self.client.post("/predict", files={"image": (name, data, "image/jpeg")},
                              data={"top_k": "3"}, name="/predict",
                              catch_response=True) as response:
            if response.status_code != 200 or not response.json().get("predictions"):
                response.failure(f"{response.status_code}: {response.text[:200]}")

    @task(1)
    def predict_batch(self) -> None:
        chosen = random.sample(PHOTOS, 4)
        files = [("images", (name, data, "image/jpeg")) for name, data in chosen]
        with self.client.post("/predict_batch", files=files, name="/predict_batch",
                              catch_response=True) as response:
            if response.status_code != 200 or len(response.json()["results"]) != 4:
                response.failure(f"{response.status_code}: {response.text[:200]}")
