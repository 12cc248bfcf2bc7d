"""The DVC remote on Google Cloud Storage, proven against a real GCS JSON API on loopback.

`gcp-storage-emulator` serves the API on 127.0.0.1. Every temporary clone keeps the committed
`.dvc/config` (the real `gs://` remote, only the bucket renamed with the one documented command)
and points the remote at the emulator with `dvc remote modify --local`, exactly as a developer
keeps machine-specific settings out of git.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, _merge, free_port, run_cmd
from tests.datasets import mini_dataset

BUCKET = "minifig-test"
REMOTE = "storage"
PLACEHOLDER_URL = "gs://minifig-dvc-CHANGE-ME/storage"
EXPERIMENT = "one-epoch"
# A new seed too: with the same seed the best-epoch checkpoint of one epoch equals the baseline's
# model, and the experiment would have no new cached object to push.
EXPERIMENT_SET = ("train.epochs=1", "train.seed=1")
EXPERIMENT_FILES = ("models/model.safetensors", "models/model.json",
                    "dvclive/train/metrics.json", "reports/evaluate/metrics.json")
FAILURE_BOUND_S = 60
WORKFLOW = REPO / ".github/workflows/pr-experiment.yml"
# All test traffic stays on 127.0.0.1: plain GCSFileSystem (the experimental zonal/HNS probe
# talks gRPC/TLS to Google and hangs), no GCE metadata probe, no DVC analytics daemon.
LOCAL_ONLY_ENV = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "NO_GCE_CHECK": "true",
                  "DVC_NO_ANALYTICS": "1"}


# ---------------------------------------------------------------------------- helpers


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def file_states(root: Path, skip: frozenset[str] = frozenset()) -> dict[str, tuple[str, int]]:
    """Content hash and mtime of every file under `root`, skipping top-level names in `skip`."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (sha256_file(p), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in skip}


def workspace_state(repo: Path) -> dict[str, tuple[str, int]]:
    return file_states(repo, skip=frozenset({".git", ".dvc"}))


def cache_state(repo: Path) -> dict[str, tuple[str, int]]:
    return file_states(repo / ".dvc/cache")


def digests_of(repo: Path, names: tuple[str, ...]) -> dict[str, str]:
    return {name: sha256_file(repo / name) for name in names}


def cached_objects(repo: Path) -> set[str]:
    objects = repo / ".dvc/cache/files/md5"
    return {str(p.relative_to(objects)) for p in objects.rglob("*") if p.is_file()}


def output_digests(repo: Path) -> dict[str, str]:
    """sha256 of every file of every output recorded in dvc.lock (cached or not)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    digests = {}
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            target = repo / out["path"]
            files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() \
                else [target]
            digests.update({str(f.relative_to(repo)): sha256_file(f) for f in files})
    return digests


def dvc(args: list[str], repo: Path, check: bool = True,
        timeout: float = 300) -> subprocess.CompletedProcess:
    return run_cmd(["dvc", *args], repo, timeout=timeout, check=check, env=LOCAL_ONLY_ENV)


def timed_dvc(args: list[str], repo: Path, check: bool = True,
              timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    done = dvc(args, repo, check=check, timeout=timeout)
    return done, time.perf_counter() - started


def point_remote_at(repo: Path, endpoint: str, remote: str = REMOTE) -> None:
    """Machine-local settings only (.dvc/config.local): the committed config stays the real one."""
    dvc(["remote", "modify", "--local", remote, "endpointurl", endpoint], repo)
    dvc(["remote", "modify", "--local", remote, "allow_anonymous_login", "true"], repo)


def add_local_remote(repo: Path, name: str, url: str, endpoint: str) -> None:
    dvc(["remote", "add", "--local", name, url], repo)
    point_remote_at(repo, endpoint, name)


def clone(origin: Path, dest: Path, endpoint: str) -> Path:
    """A teammate's fresh clone: git only, empty DVC cache, remote pointed at the emulator."""
    run_cmd(["git", "clone", "-q", str(origin), str(dest)], dest.parent)
    run_cmd(["git", "config", "user.email", "teammate@example.com"], dest)
    run_cmd(["git", "config", "user.name", "Teammate"], dest)
    assert not (dest / ".dvc/cache").exists()
    point_remote_at(dest, endpoint)
    return dest


def output_of(done: subprocess.CompletedProcess) -> str:
    return done.stdout + done.stderr


# ---------------------------------------------------------------------------- emulator


@dataclass
class Emulator:
    url: str
    bucket: str

    def object_names(self, prefix: str) -> list[str]:
        names, token = [], ""
        while True:
            query = f"prefix={prefix}" + (f"&pageToken={token}" if token else "")
            with urllib.request.urlopen(f"{self.url}/storage/v1/b/{self.bucket}/o?{query}",
                                        timeout=10) as response:
                page = json.load(response)
            names += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken", "")
            if not token:
                return names

    def upload(self, local: Path, name: str) -> None:
        request = urllib.request.Request(
            f"{self.url}/upload/storage/v1/b/{self.bucket}/o?uploadType=media&name={name}",
            data=local.read_bytes(), method="POST",
            headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200


def wait_until_serving(url: str, bucket: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"gcp-storage-emulator exited {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b/{bucket}", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.25)
    pytest.fail(f"gcp-storage-emulator did not answer within 30 s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> Iterator[Emulator]:
    root = tmp_path_factory.mktemp("gcs")
    port = free_port()
    log = root / "emulator.log"
    binary = Path(sys.executable).parent / "gcp-storage-emulator"
    with log.open("w") as log_handle:
        process = subprocess.Popen(
            [str(binary), "-d", str(root / "data"), "start", "--host", "127.0.0.1",
             "--port", str(port), "--default-bucket", BUCKET, "-q"],
            stdout=log_handle, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url, BUCKET, process, log)
        yield Emulator(url, BUCKET)
    finally:
        # SIGKILL: its data lives in a temp dir, and SIGTERM takes ~3 s to act.
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


# ---------------------------------------------------------------------------- shared repos


@dataclass
class Source:
    repo: Path
    origin: Path
    push_seconds: float
    push_output: str
    digests: dict[str, str]      # every output at push time
    cached_objects: set[str]     # .dvc/cache/files/md5 at push time


@pytest.fixture(scope="module")
def source(tmp_path_factory, emulator, reproduced_repo) -> Source:
    """The session's reproduced tiny pipeline, copied with its cache, given the committed GCS
    remote, committed to a bare `origin` and pushed."""
    root = tmp_path_factory.mktemp("team")
    repo = root / "repo"
    shutil.copytree(reproduced_repo, repo, symlinks=True)
    # other modules' experiments share that cache; keep only what this workspace uses
    dvc(["gc", "--workspace", "--force"], repo)
    (repo / ".dvc/config").write_text((REPO / ".dvc/config").read_text())
    dvc(["remote", "modify", REMOTE, "url", f"gs://{BUCKET}/storage"], repo)  # the README's step
    run_cmd(["git", "add", "-A"], repo)
    run_cmd(["git", "commit", "-qm", "GCS remote"], repo)
    origin = root / "origin.git"
    run_cmd(["git", "init", "-q", "--bare", "-b", "main", str(origin)], root)
    run_cmd(["git", "remote", "add", "origin", str(origin)], repo)
    run_cmd(["git", "push", "-q", "origin", "main"], repo)
    point_remote_at(repo, emulator.url)
    pushed, seconds = timed_dvc(["push"], repo)
    return Source(repo, origin, seconds, output_of(pushed), output_digests(repo),
                  cached_objects(repo))


@dataclass
class PulledClone:
    repo: Path
    pull_seconds: float
    pull_output: str
    digests: dict[str, str]


@pytest.fixture(scope="module")
def pulled_clone(tmp_path_factory, source, emulator) -> PulledClone:
    repo = clone(source.origin, tmp_path_factory.mktemp("teammate") / "minifig", emulator.url)
    pulled, seconds = timed_dvc(["pull"], repo)
    return PulledClone(repo, seconds, output_of(pulled), output_digests(repo))


# ---------------------------------------------------------------------------- config (fast)


def test_committed_config_is_the_real_gcs_remote():
    text = (REPO / ".dvc/config").read_text()
    assert re.search(r"^\[core\]\s*\n\s*remote = storage\s*$", text, re.M)
    assert f"url = {PLACEHOLDER_URL}" in text
    assert re.search(r"^\s*version_aware = false\s*$", text, re.M)
    for local_only in ("127.0.0.1", "localhost", "endpointurl", "allow_anonymous_login",
                       "credentialpath", "private_key"):
        assert local_only not in text, f"{local_only} belongs in .dvc/config.local, not git"
    assert "/config.local" in (REPO / ".dvc/.gitignore").read_text().split()


@pytest.mark.parametrize("name", [
    "gha-creds-1a2b3c4d5e6f7a8b.json", "sa-key.json", "minifig-ci-key.json",
    "service-account.json", "keys/minifig.json", "application_default_credentials.json",
    "credentials.json", "key.p12", "kaggle.json", ".env"])
def test_gitignore_covers_key_files(tmp_path, name):
    run_cmd(["git", "init", "-q"], tmp_path)
    (tmp_path / ".gitignore").write_text((REPO / ".gitignore").read_text())
    done = run_cmd(["git", "check-ignore", "-q", name], tmp_path, check=False)
    assert done.returncode == 0, f"{name} is not ignored by .gitignore"


def load_workflow() -> dict:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    workflow["on"] = workflow.pop(True, workflow.get("on"))  # YAML 1.1 reads `on` as true
    return workflow


def workflow_steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def test_pr_workflow_runs_the_experiment_and_comments_the_diff():
    workflow = load_workflow()
    assert "pull_request" in workflow["on"]
    steps = workflow_steps(workflow)
    checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0
    python = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python@"))
    assert str(python["with"]["python-version"]) == "3.11"
    script = "\n".join(s.get("run", "") for s in steps)
    for command in ("pip install -e '.[dev]'", "dvc pull", "dvc exp run",
                    "dvc metrics diff origin/main --md", "dvc params diff origin/main --md",
                    "cml comment create"):
        assert command in script, command
    runs = [s.get("run", "") for s in steps]
    assert runs.index(next(r for r in runs if "dvc pull" in r)) < \
        runs.index(next(r for r in runs if "dvc exp run" in r))


def test_pr_workflow_authenticates_with_workload_identity_federation_only():
    workflow = load_workflow()
    assert workflow["permissions"]["id-token"] == "write"
    auth = next(s for s in workflow_steps(workflow)
                if s.get("uses", "").startswith("google-github-actions/auth@"))
    assert set(auth["with"]) == {"workload_identity_provider", "service_account"}
    for value in auth["with"].values():
        assert re.fullmatch(r"\$\{\{ (vars|secrets)\.[A-Z_]+ \}\}", value), value
    code = "\n".join(line.split("#")[0] for line in WORKFLOW.read_text().splitlines())
    for leaked in ("credentials_json", "private_key", "BEGIN " + "PRIVATE KEY", "ya29.", "AIza",
                   "iam.gserviceaccount.com", "workloadIdentityPools/"):
        assert leaked not in code, f"inline secret or account id: {leaked}"


# ---------------------------------------------------------------------------- round trips


@pytest.mark.slow
def test_push_stores_content_addressed_objects(source, emulator):
    assert "pushed" in source.push_output
    prefix = "storage/files/md5/"
    remote = {name.removeprefix(prefix) for name in emulator.object_names(prefix)}
    assert source.cached_objects and source.cached_objects <= remote
    assert remote - source.cached_objects <= cached_objects(source.repo)  # experiments' pushes
    print(f"\ndvc push of {len(remote)} objects: {source.push_seconds:.1f} s")


@pytest.mark.slow
def test_local_remote_settings_never_reach_git(source, emulator):
    committed = run_cmd(["git", "show", "HEAD:.dvc/config"], source.repo).stdout
    assert f"url = gs://{BUCKET}/storage" in committed
    assert "127.0.0.1" not in committed and "allow_anonymous_login" not in committed
    local = (source.repo / ".dvc/config.local").read_text()
    assert emulator.url in local and "allow_anonymous_login = true" in local
    assert run_cmd(["git", "status", "--porcelain", "--ignored", ".dvc/config.local"],
                   source.repo).stdout.startswith("!!")


@pytest.mark.slow
def test_pull_restores_every_output_byte_identical(source, pulled_clone):
    expected = source.digests
    assert "models/model.safetensors" in expected and any(
        path.startswith("data/raw/") and path.endswith(".jpg") for path in expected)
    assert re.search(r"\d+ files fetched", pulled_clone.pull_output), pulled_clone.pull_output
    assert pulled_clone.digests == expected
    print(f"\ndvc pull into an empty cache: {pulled_clone.pull_seconds:.1f} s")


@pytest.mark.slow
def test_pulled_clone_is_in_sync_with_the_remote(pulled_clone):
    done = dvc(["status", "--cloud"], pulled_clone.repo)
    assert f"Cache and remote '{REMOTE}' are in sync" in done.stdout


@pytest.mark.slow
def test_repro_after_pull_reruns_nothing(pulled_clone):
    done = dvc(["repro"], pulled_clone.repo)
    assert "Data and pipelines are up to date" in output_of(done)
    assert "Running stage" not in output_of(done)


@dataclass
class SharedExperiment:
    source_digests: dict[str, str]
    baseline_digests: dict[str, str]
    receiver: Path


@pytest.fixture(scope="module")
def shared_experiment(tmp_path_factory, source, emulator) -> SharedExperiment:
    """`dvc exp run` + `dvc exp push origin` in one clone; `dvc exp pull origin` in another."""
    baseline = digests_of(source.repo, EXPERIMENT_FILES)
    overrides = [arg for setting in EXPERIMENT_SET for arg in ("-S", setting)]
    dvc(["exp", "run", "-n", EXPERIMENT, *overrides], source.repo, timeout=600)
    produced = digests_of(source.repo, EXPERIMENT_FILES)
    pushed = dvc(["exp", "push", "origin", EXPERIMENT], source.repo)
    assert f"Pushed experiment {EXPERIMENT} to Git remote 'origin'" in pushed.stdout
    receiver = clone(source.origin, tmp_path_factory.mktemp("reviewer") / "minifig",
                     emulator.url)
    pulled = dvc(["exp", "pull", "origin", EXPERIMENT], receiver)
    assert EXPERIMENT in pulled.stdout
    dvc(["exp", "apply", EXPERIMENT], receiver)
    dvc(["pull"], receiver)
    return SharedExperiment(produced, baseline, receiver)


@pytest.mark.slow
def test_pulled_experiment_has_the_same_model_and_metrics(shared_experiment):
    received = digests_of(shared_experiment.receiver, EXPERIMENT_FILES)
    assert received == shared_experiment.source_digests
    model = "models/model.safetensors"  # only `dvc exp push` sent this one to the remote
    assert received[model] != shared_experiment.baseline_digests[model]
    params = yaml.safe_load((shared_experiment.receiver / "params.yaml").read_text())
    assert params["train"]["epochs"] == 1 and params["train"]["seed"] == 1


@pytest.mark.slow
def test_pulled_experiment_diffs_against_main_as_the_pr_comment_does(shared_experiment):
    params = dvc(["params", "diff", "origin/main", "--md"], shared_experiment.receiver).stdout
    assert re.search(r"\|\s*params\.yaml\s*\|\s*train\.epochs\s*\|\s*2\s*\|\s*1\s*\|", params)
    assert re.search(r"\|\s*params\.yaml\s*\|\s*train\.seed\s*\|\s*0\s*\|\s*1\s*\|", params)
    metrics = dvc(["metrics", "diff", "origin/main", "--md"], shared_experiment.receiver).stdout
    assert re.search(r"\|\s*dvclive/train/metrics\.json\s*\|\s*step\s*\|\s*1\s*\|\s*0\s*\|",
                     metrics)


# ---------------------------------------------------------------------------- failures


@dataclass(frozen=True)
class FailureCase:
    remote: str                # a remote added with --local for this case
    args: tuple[str, ...]      # the dvc command
    patterns: tuple[str, ...]  # each must appear in its output


CONNECT_ERROR = r"Cannot connect to host 127\.0\.0\.1:\d+"
# gcsfs retries a refused connection 6 times (~35 s of backoff, hard-coded), and a full
# `dvc pull` on an empty cache repeats that for every directory output several times (~6 min
# measured). The pull case therefore targets one file output: one retry cycle, same code path.
FAILURE_CASES = {
    "unreachable-push": FailureCase("unreachable", ("push", "-r", "unreachable"),
                                    (CONNECT_ERROR,)),
    "unreachable-pull": FailureCase("unreachable",
                                    ("pull", "-r", "unreachable", "models/model.safetensors"),
                                    (CONNECT_ERROR, "failed to pull data from the cloud")),
    "missing-bucket-push": FailureCase("missing-bucket", ("push", "-r", "missing-bucket"),
                                       ("no-such-bucket",)),
    "missing-bucket-pull": FailureCase("missing-bucket", ("pull", "-r", "missing-bucket"),
                                       ("no-such-bucket",)),
}


@dataclass
class FailureOutcome:
    returncode: int
    output: str
    seconds: float
    state_before: tuple[dict, dict]
    state_after: tuple[dict, dict]


def repo_state(repo: Path) -> tuple[dict, dict]:
    return workspace_state(repo), cache_state(repo)


def add_failing_remote(repo: Path, name: str, emulator: Emulator) -> None:
    if name == "unreachable":
        closed = f"http://127.0.0.1:{free_port()}"  # bound then released: nothing listens
        add_local_remote(repo, name, f"gs://{BUCKET}/storage", closed)
    else:
        add_local_remote(repo, name, "gs://no-such-bucket/storage", emulator.url)


def run_concurrently(commands: dict[str, tuple[list[str], Path]], log_dir: Path,
                     timeout: float) -> dict[str, tuple[int, str, float]]:
    """Start every command at once; return each one's exit code, output and own duration."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           **LOCAL_ONLY_ENV}
    started = time.perf_counter()
    running = {}
    for key, (args, cwd) in commands.items():
        log = (log_dir / f"{key}.log").open("w")
        running[key] = (subprocess.Popen(args, cwd=cwd, env=env, stdout=log,
                                         stderr=subprocess.STDOUT), log)
    finished: dict[str, tuple[int, str, float]] = {}
    while len(finished) < len(running) and time.perf_counter() - started < timeout:
        for key, (process, log) in running.items():
            if key not in finished and process.poll() is not None:
                log.close()
                output = (log_dir / f"{key}.log").read_text()
                finished[key] = (process.returncode, output, time.perf_counter() - started)
        time.sleep(0.2)
    for key, (process, log) in running.items():
        if key not in finished:
            process.kill()
            process.wait()
            log.close()
            pytest.fail(f"{' '.join(commands[key][0])} still running after {timeout:.0f} s")
    return finished


@pytest.fixture(scope="module")
def failures(tmp_path_factory, source, pulled_clone, emulator) -> dict[str, FailureOutcome]:
    """All bad-remote commands at once, each in its own repo (no DVC lock contention), so the
    unreachable cases' retry waits overlap. Pushes run where the cache is full, pulls in fresh
    clones with an empty cache."""
    root = tmp_path_factory.mktemp("failures")
    repos = {"unreachable-push": source.repo, "missing-bucket-push": pulled_clone.repo,
             "unreachable-pull": clone(source.origin, root / "fresh-a", emulator.url),
             "missing-bucket-pull": clone(source.origin, root / "fresh-b", emulator.url)}
    for key, repo in repos.items():
        add_failing_remote(repo, FAILURE_CASES[key].remote, emulator)
    before = {key: repo_state(repo) for key, repo in repos.items()}
    results = run_concurrently(
        {key: (["dvc", *FAILURE_CASES[key].args], repo) for key, repo in repos.items()},
        root, timeout=FAILURE_BOUND_S + 60)
    return {key: FailureOutcome(*results[key], before[key], repo_state(repos[key]))
            for key in repos}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(FAILURE_CASES))
def test_bad_remote_fails_clearly_in_bounded_time_and_touches_nothing(failures, case):
    outcome = failures[case]
    assert outcome.returncode != 0
    for pattern in FAILURE_CASES[case].patterns:
        assert re.search(pattern, outcome.output), outcome.output[-2000:]
    assert outcome.seconds < FAILURE_BOUND_S, f"{case} took {outcome.seconds:.0f} s"
    assert outcome.state_after == outcome.state_before
    print(f"\n{case}: failed in {outcome.seconds:.1f} s")


# ---------------------------------------------------------------------------- gs:// source


def zip_folder(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zipped.write(path, f"lego/{path.relative_to(folder)}")
    return archive


def run_download_stage(workdir: Path, source_url: str, sha256: str | None,
                       emulator: Emulator) -> subprocess.CompletedProcess:
    """`python -m stages.download`, as `dvc repro` runs it, with gcsfs's emulator settings."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"] = _merge(raw["data"], {"source": source_url, "sha256": sha256})
    workdir.mkdir(exist_ok=True)
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**LOCAL_ONLY_ENV, "STORAGE_EMULATOR_HOST": emulator.url, "FSSPEC_GS_TOKEN": "anon",
           "PYTHONPATH": str(REPO)}
    return run_cmd([sys.executable, "-m", "stages.download"], workdir, timeout=120,
                   check=False, env=env)


@pytest.mark.slow
def test_gs_download_source_end_to_end(lego_dir, tmp_path, emulator):
    folder = mini_dataset(lego_dir, tmp_path / "mini")
    archive = zip_folder(folder, tmp_path / "lego.zip")
    emulator.upload(archive, "datasets/lego.zip")
    done = run_download_stage(tmp_path / "work", f"gs://{BUCKET}/datasets/lego.zip",
                              sha256_file(archive), emulator)
    assert done.returncode == 0, output_of(done)[-3000:]
    raw = tmp_path / "work/data/raw"
    report = json.loads((raw / "download_report.json").read_text())
    assert report["images"] == {"index.csv": 12, "test.csv": 3} and report["skipped"] == []
    assert report["source"] == f"gs://{BUCKET}/datasets/lego.zip"
    images = {str(p.relative_to(folder)): sha256_file(p) for p in folder.rglob("*.jpg")}
    assert {str(p.relative_to(raw)): sha256_file(p) for p in raw.rglob("*.jpg")} == images
    assert (raw / "metadata.csv").read_text() == (folder / "metadata.csv").read_text()


@pytest.mark.slow
def test_gs_download_of_a_missing_object_names_the_url(tmp_path, emulator):
    url = f"gs://{BUCKET}/datasets/absent.zip"
    done = run_download_stage(tmp_path / "work", url, None, emulator)
    assert done.returncode != 0
    assert f"data.source: {url} does not exist" in output_of(done)
    assert not (tmp_path / "work/data/raw").exists()
