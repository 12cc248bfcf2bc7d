"""package stage: `bentoml build` the service with the exported model inside, and export the Bento
as one archive, `bentos/<package.name>.bento` (`bentoml import` it anywhere, or containerize it).

BentoML keeps built Bentos in a store under BENTOML_HOME; a throwaway one is used here so that the
stage leaves nothing behind but its declared output.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from stages.params import PackageParams, load_section

ONNX_DIR, BENTO_DIR, BENTOFILE = Path("models/onnx"), Path("bentos"), Path("bentofile.yaml")


class PackageError(RuntimeError):
    """`bentoml build` or `bentoml export` failed; the message carries its output."""


def _bentoml(args: list[str], env: dict[str, str], cwd: Path) -> str:
    bentoml = Path(sys.executable).with_name("bentoml")
    command = [str(bentoml) if bentoml.exists() else "bentoml", *args]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise PackageError(f"`bentoml {' '.join(args)}` failed ({done.returncode}):\n"
                           f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def bento_version(model_version: str) -> str:
    """BentoML versions allow [a-z0-9_.-]; the model version is `<git rev>-<onnx hash>`."""
    return re.sub(r"[^a-z0-9_.-]", "-", model_version.lower())


def package(params: PackageParams, onnx_dir: Path = ONNX_DIR, out_dir: Path = BENTO_DIR,
            build_dir: Path = Path(".")) -> dict[str, Any]:
    contract = json.loads((onnx_dir / "model.json").read_text())
    version = bento_version(contract["model_version"])
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = (out_dir / f"{params.name}.bento").resolve()
    with tempfile.TemporaryDirectory(prefix="bentoml-home-") as home:
        env = {**os.environ, "BENTOML_HOME": home, "BENTOML_DO_NOT_TRACK": "True",
               "MINIFIG_MODEL_DIR": str(onnx_dir.resolve())}
        tag = f"{params.name}:{version}"
        _bentoml(["build", "-f", str(BENTOFILE), "--name", params.name, "--version", version,
                  "--label", f"model_version={contract['model_version']}",
                  "--label", f"git_revision={contract['git_revision']}",
                  "--label", f"onnx_sha256={contract['onnx_sha256'][:16]}",
                  "--output", "tag", "."], env, build_dir)
        _bentoml(["export", tag, str(archive)], env, build_dir)
    return {"tag": tag, "archive": str(archive), "bytes": archive.stat().st_size,
            "model_version": contract["model_version"]}


def main() -> None:
    summary = package(load_section("package"))
    print(f"{summary['archive']}: Bento {summary['tag']} ({summary['bytes'] / 2**20:.1f} MB)")


if __name__ == "__main__":
    main()
