"""The Cloud Run image, without a Docker engine: the Dockerfile's rules are checked by parsing it,
and (slow) its install step and CMD are replayed in a fresh venv holding only what it copies."""

from __future__ import annotations

import contextlib
import fnmatch
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from stages.export import export
from stages.params import ExportParams
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN_PACKAGES = {"torch", "torchvision", "timm", "tensorflow", "jax"}


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def instructions(name: str) -> list[str]:
    return [args for keyword, args in dockerfile() if keyword == name]


def copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY."""
    out = []
    for args in instructions("COPY"):
        parts = json.loads(args) if args.startswith("[") else shlex.split(args)
        parts = [p for p in parts if not p.startswith("--")]
        out.append((parts[:-1], parts[-1]))
    return out


def copied_files() -> set[str]:
    return {source for sources, _ in copies() for source in sources}


def requirements() -> dict[str, str]:
    pins = {}
    for line in (REPO / "service/requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def cmd_line() -> str:
    [cmd] = instructions("CMD")
    argv = json.loads(cmd)
    assert argv[:2] == ["sh", "-c"], "shell form via sh -c, so that $PORT is expanded"
    return argv[2]


def test_base_image_is_python_311_slim() -> None:
    assert instructions("FROM") == ["python:3.11-slim"]


def test_runs_as_a_non_root_user_set_before_cmd() -> None:
    keywords = [keyword for keyword, _ in dockerfile()]
    users = instructions("USER")
    assert users, "USER is required"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert keywords.index("USER") < keywords.index("CMD")
    last_user = max(i for i, k in enumerate(keywords) if k == "USER")
    assert all(k not in {"RUN", "COPY", "ADD"} for k in keywords[last_user:]), (
        "nothing installed or copied after dropping root (it would be root-owned and unneeded)")
    assert any("useradd" in run for run in instructions("RUN"))


def test_listens_on_port_with_default_8080() -> None:
    command = cmd_line()
    assert command.startswith("exec "), "exec: bentoml must receive Cloud Run's SIGTERM"
    assert re.search(r"--port\s+\"?\$\{PORT:-8080\}\"?", command)
    assert "--host 0.0.0.0" in command
    assert "8080" in instructions("EXPOSE")[0].split()
    assert any("PORT=8080" in env for env in instructions("ENV"))


def test_healthcheck_uses_python_urllib_on_health() -> None:
    [check] = instructions("HEALTHCHECK")
    assert "CMD" in check and "urllib.request" in check and "/health" in check
    assert "PORT" in check
    assert "curl" not in check and "wget" not in check, "python:3.11-slim has neither"


def test_serving_requirements_are_pinned_and_torch_free() -> None:
    pins = requirements()
    assert not FORBIDDEN_PACKAGES & set(pins)
    assert not any(name.startswith("nvidia") for name in pins)
    for name in ("bentoml", "onnxruntime", "numpy", "pillow", "pyyaml", "pydantic",
                 "prometheus-client"):
        assert name in pins, name
    for name, version in pins.items():
        assert version == importlib.metadata.version(name), f"{name} pin differs from .venv"
    [install] = [run for run in instructions("RUN") if "pip install" in run]
    assert "-r service/requirements.txt" in install and "torch" not in install


def test_copies_only_serving_files() -> None:
    for sources, _ in copies():
        for source in sources:
            assert source not in {".", "./", "*"}, "no whole-context COPY"
            assert (source.startswith(("service/", "models/onnx/"))
                    or source in {"stages/__init__.py", "stages/imaging.py", "stages/params.py",
                                  "params.yaml"}), source
    assert not instructions("ADD")


def test_copies_everything_the_service_imports() -> None:
    code = ("import json, sys, service.service; from pathlib import Path; root = Path.cwd(); "
            "print(json.dumps(sorted(str(Path(m.__file__).relative_to(root)) "
            "for m in list(sys.modules.values()) if getattr(m, '__file__', None) "
            "and Path(m.__file__).is_relative_to(root) and '.venv' not in m.__file__)))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=True)
    imported = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert "service/service.py" in imported
    assert imported <= copied_files(), imported - copied_files()
    needed_at_runtime = {"params.yaml", "models/onnx/model.onnx", "models/onnx/model.json"}
    assert needed_at_runtime <= copied_files()


def test_dockerignore_lets_exactly_the_copied_files_through() -> None:
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "allow-list: exclude everything, then re-include"
    allowed = {line[1:] for line in lines if line.startswith("!")}
    for source in copied_files():
        assert any(fnmatch.fnmatch(source, pattern) for pattern in allowed), source


def test_bentofile_packs_the_same_files() -> None:
    bentofile = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    assert bentofile["service"] == "service.service:Minifig"
    assert set(bentofile["include"]) == copied_files()
    assert bentofile["python"]["requirements_txt"] == "service/requirements.txt"
    assert bentofile["python"]["lock_packages"] is False


# --- the image's install step and CMD, replayed in a fresh venv ---------------------------------


@pytest.fixture(scope="module")
def image_root(real_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """WORKDIR of the image: exactly the files the Dockerfile copies (models/onnx from a real
    export, since the repository's own is a DVC output)."""
    root = tmp_path_factory.mktemp("image") / "app"
    onnx_dir = root.parent / "export" / "onnx"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root.parent)
        export(ExportParams(), real_run.models_dir, real_run.processed_dir, onnx_dir,
               root.parent / "export.json")
    for sources, destination in copies():
        for source in sources:
            origin = onnx_dir / Path(source).name if source.startswith("models/onnx/") else (
                REPO / source)
            target = root / destination / Path(source).name if destination.endswith("/") else (
                root / destination)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target)
    return root


@pytest.fixture(scope="module")
def serving_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip install -r service/requirements.txt` into a new venv, as the image's RUN does."""
    venv = tmp_path_factory.mktemp("serving-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    done = subprocess.run([str(venv / "bin/pip"), "install", "-q", "-r",
                           str(REPO / "service/requirements.txt")],
                          capture_output=True, text=True, timeout=1200, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return venv


def _image_env(venv: Path, home: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    for args in instructions("ENV"):
        env.update(dict(pair.split("=", 1) for pair in shlex.split(args)))
    env.update({"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "PORT": str(port),
                "BENTOML_HOME": str(home), "HOME": str(home)})
    return env


@pytest.fixture(scope="module")
def image_server(image_root: Path, serving_venv: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict]]:
    home, port = tmp_path_factory.mktemp("image-home"), free_port()
    env = _image_env(serving_venv, home, port)
    # Inside the container the server must bind 0.0.0.0; on this host it stays on loopback.
    command = cmd_line().replace("--host 0.0.0.0", "--host 127.0.0.1")
    log = home / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(["sh", "-c", command], cwd=image_root, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield f"http://127.0.0.1:{port}", env
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            print(f"\nimage server log tail:\n{log.read_text()[-1500:]}")


@pytest.mark.slow
def test_image_cmd_serves_correct_predictions_without_torch(
        image_server: tuple[str, dict], serving_venv: Path, image_root: Path, real_run,
        lego_dir: Path) -> None:
    url, env = image_server
    test = np.load(real_run.processed_dir / "test.npz")
    contract = json.loads((image_root / "models/onnx/model.json").read_text())
    index_to_class = {c["index"]: c["class_id"] for c in contract["classes"]}
    import onnxruntime as ort

    from stages.imaging import normalize

    session = ort.InferenceSession(str(image_root / "models/onnx/model.onnx"),
                                   providers=["CPUExecutionProvider"])
    prep = contract["preprocessing"]
    offline = session.run(None, {"image": normalize(test["images"], prep["mean"],
                                                    prep["std"])})[0].argmax(1)
    right = int(np.flatnonzero(offline == test["labels"])[0])
    photo = (lego_dir / str(test["paths"][right])).read_bytes()

    deadline, response = time.monotonic() + 120, None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            response = httpx.post(f"{url}/predict", files={"image": ("fig.jpg", photo)},
                                  timeout=10)
            if response.status_code == 200:
                break
        time.sleep(0.1)
    assert response is not None and response.status_code == 200, "image CMD never served"
    top1 = response.json()["predictions"][0]["class_id"]
    assert top1 == index_to_class[int(test["labels"][right])]

    healthcheck = json.loads(instructions("HEALTHCHECK")[0].split("CMD", 1)[1].strip())
    assert subprocess.run(healthcheck, env=env, timeout=30).returncode == 0
    no_torch = subprocess.run([str(serving_venv / "bin/python"), "-c", "import torch"],
                              capture_output=True, text=True, timeout=60, check=False)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr


# --- the package stage: a Bento archive with the model inside ------------------------------------


@pytest.mark.slow
def test_package_builds_a_bento_archive_with_the_model(image_root: Path, tmp_path: Path) -> None:
    import tarfile

    from stages.package import package
    from stages.params import PackageParams

    shutil.copytree(image_root, tmp_path / "ctx")  # the serving files, as the image has them
    shutil.copy(REPO / "bentofile.yaml", tmp_path / "ctx" / "bentofile.yaml")
    global_home = Path.home() / "bentoml"
    before = sorted(global_home.rglob("*")) if global_home.exists() else []

    summary = package(PackageParams(name="minifig-test"), tmp_path / "ctx/models/onnx",
                      tmp_path / "ctx/bentos", tmp_path / "ctx")

    contract = json.loads((image_root / "models/onnx/model.json").read_text())
    archive = tmp_path / "ctx/bentos/minifig-test.bento"
    assert sorted(p.name for p in archive.parent.iterdir()) == ["minifig-test.bento"]
    assert summary["tag"] == f"minifig-test:{contract['model_version']}"
    with tarfile.open(archive) as bento:
        names = set(bento.getnames())
        meta = yaml.safe_load(bento.extractfile("./bento.yaml").read())
        shipped_requirements = bento.extractfile("./env/python/requirements.txt").read().decode()
        shipped_onnx = bento.extractfile("./src/models/onnx/model.onnx").read()
    assert shipped_onnx == (image_root / "models/onnx/model.onnx").read_bytes()
    assert {"./src/service/service.py", "./src/params.yaml", "./src/stages/imaging.py"} <= names
    assert not any(n.startswith("./src/stages/") and n.endswith(("train.py", "modeling.py"))
                   for n in names)
    assert meta["labels"]["model_version"] == contract["model_version"]
    shipped = {re.split(r"[=<>\[ ]", line.strip())[0].lower()
               for line in shipped_requirements.splitlines()
               if line.strip() and not line.startswith(("#", "-"))}
    assert "bentoml" in shipped and "onnxruntime" in shipped
    assert not FORBIDDEN_PACKAGES & shipped
    after = sorted(global_home.rglob("*")) if global_home.exists() else []
    assert after == before, "the build must not touch the global BentoML store"
