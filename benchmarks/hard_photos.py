"""Which test photos do the experiments get wrong? Counts, per photo, the `dvc exp` experiments
of this repository (pretrained, real data) whose reports/evaluate/predictions.csv misclassifies
it. Usage: python benchmarks/hard_photos.py [top_n]"""

from __future__ import annotations

import csv
import subprocess
import sys
from collections import Counter

import yaml


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def experiment_refs() -> list[str]:
    refs = git("for-each-ref", "--format=%(refname)", "refs/exps").split()
    return [r for r in refs if r.count("/") == 4]  # refs/exps/<base[:2]>/<base[2:]>/<name>


def main(top_n: int = 8) -> None:
    wrong, runs = Counter(), []
    for ref in experiment_refs():
        try:
            params = yaml.safe_load(git("show", f"{ref}:params.yaml"))
            predictions = git("show", f"{ref}:reports/evaluate/predictions.csv")
        except subprocess.CalledProcessError:
            continue  # not a completed experiment of this pipeline
        if params["data"]["source"] == "embedded" or params["model"]["weights"] == "none":
            continue
        rows = list(csv.DictReader(predictions.splitlines()))
        misses = [r for r in rows if r["actual"] != r["predicted"]]
        _, _, head, tail, name = ref.split("/")
        runs.append((f"{name} (on {(head + tail)[:7]})", 1 - len(misses) / len(rows)))
        wrong.update((r["path"], r["actual"]) for r in misses)
    for name, accuracy in runs:
        print(f"{name:34s} test accuracy {accuracy:.3f}")
    print(f"\nmisclassified by how many of the {len(runs)} experiments:")
    for (path, actual), count in wrong.most_common(top_n):
        print(f"{count:3d}  {path}  (true {actual})")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
