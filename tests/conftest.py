"""Shared fixtures. Stage functions are called directly on tiny configs; `real_run` trains once
per session on the real LEGO photos at a CI-friendly size and is reused by later tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # timm's hub fails fast instead of retrying
os.environ.setdefault("DVC_NO_ANALYTICS", "1")  # no analytics daemon phoning home from tests

REPO = Path(__file__).resolve().parents[1]
LEGO_DIR = Path(os.environ.get("MINIFIG_LEGO_DIR",
                               REPO.parent / "shared/datasets/lego-minifigures"))
PIPELINE_FILES = ("stages", "service", "dvc.yaml", "params.yaml", "bentofile.yaml", ".dvcignore")


@pytest.fixture(scope="session")
def lego_dir() -> Path:
    if not (LEGO_DIR / "index.csv").is_file():
        pytest.fail(f"real LEGO dataset not found at {LEGO_DIR}: set MINIFIG_LEGO_DIR")
    return LEGO_DIR


def make_params(**sections):
    """Validated Params with the given sections overridden (nested dicts merge)."""
    import yaml

    from stages.params import parse_params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, values in sections.items():
        raw[name] = _merge(raw.get(name, {}), values)
    return parse_params(raw)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


TINY = {
    "data": {"embedded": {"classes": 4, "train_per_class": 8, "test_per_class": 3,
                          "image_size": 96}},
    "transform": {"image_size": 64},
    "model": {"name": "mobilenetv3_small_050", "weights": "none", "drop_rate": 0.0},
    "train": {"epochs": 2, "batch_size": 16, "backbone_lr_scale": 1.0},
}


@pytest.fixture
def tiny_params():
    return make_params(**TINY)


@dataclass
class Run:
    raw_dir: Path
    split_dir: Path
    processed_dir: Path
    models_dir: Path
    live_dir: Path
    train_metrics: dict


def run_data_stages(params, root: Path) -> Run:
    from stages.download import download
    from stages.split import split
    from stages.transform import transform

    run = Run(root / "raw", root / "split", root / "processed", root / "models",
              root / "dvclive", {})
    download(params.data, run.raw_dir)
    split(params.split, run.raw_dir, run.split_dir)
    transform(params.transform, run.raw_dir, run.split_dir, run.processed_dir)
    return run


def run_training(params, run: Run) -> Run:
    from stages.train import train

    run.train_metrics = train(params.model, params.train, run.processed_dir, run.split_dir,
                              run.models_dir, run.live_dir, progress=False)
    return run


# The CI-sized real-data run: the default recipe (ImageNet Lite0 weights) at 160 px, 5 epochs.
REAL_CI = {
    "transform": {"image_size": 160},
    "train": {"epochs": 5, "warmup_epochs": 0.5},
}


@pytest.fixture(scope="session")
def real_run(lego_dir, tmp_path_factory) -> Run:
    params = make_params(data={"source": str(lego_dir)}, **REAL_CI)
    return run_training(params, run_data_stages(params, tmp_path_factory.mktemp("real")))


@pytest.fixture(scope="session")
def embedded_run(tmp_path_factory) -> Run:
    params = make_params(**TINY)
    return run_training(params, run_data_stages(params, tmp_path_factory.mktemp("embedded")))


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cmd(args: list[str], cwd: Path, timeout: float = 600, check: bool = True,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command with the venv's tools first on PATH; fail with its output if it fails."""
    bin_dir = str(Path(sys.executable).parent)
    full_env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", **(env or {})}
    done = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {done.returncode}\n{done.stdout[-3000:]}\n"
                    f"{done.stderr[-5000:]}")
    return done


@pytest.fixture
def pipeline_repo(tmp_path) -> Path:
    return make_pipeline_repo(tmp_path)


def make_pipeline_repo(tmp_path: Path) -> Path:
    """A fresh git + DVC repository holding this project's pipeline code and params."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in PIPELINE_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy2(source, repo / name)
    run_cmd(["git", "init", "-q", "-b", "main"], repo)
    run_cmd(["git", "config", "user.email", "ci@example.com"], repo)
    run_cmd(["git", "config", "user.name", "CI"], repo)
    run_cmd(["dvc", "init", "-q"], repo)
    run_cmd(["dvc", "config", "core.autostage", "true"], repo)
    return repo


def write_params(repo: Path, sections: dict) -> None:
    import yaml

    path = repo / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    for name, values in sections.items():
        raw[name] = _merge(raw[name], values)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.fixture(scope="session")
def reproduced_repo(tmp_path_factory) -> Path:
    """The whole pipeline reproduced once on the tiny embedded config, committed with its
    dvc.lock. Treat it as read-only: work in `clone_repo(...)` copies."""
    repo = make_pipeline_repo(tmp_path_factory.mktemp("reproduced"))
    write_params(repo, TINY)
    run_cmd(["git", "add", "-A"], repo)
    run_cmd(["git", "commit", "-qm", "pipeline code"], repo)  # as in a fresh clone
    run_cmd(["dvc", "repro"], repo, timeout=900)
    run_cmd(["git", "add", "-A"], repo)
    run_cmd(["git", "commit", "-qm", "reproduced"], repo)
    return repo


def clone_repo(source: Path, dest: Path, share_cache: bool = True) -> Path:
    """A git clone; with `share_cache` it uses the source's DVC cache and checks outputs out."""
    run_cmd(["git", "clone", "-q", str(source), str(dest)], source.parent)
    if share_cache:
        run_cmd(["dvc", "cache", "dir", "--local", str(source / ".dvc/cache")], dest)
        run_cmd(["dvc", "checkout", "-q"], dest)
    return dest
