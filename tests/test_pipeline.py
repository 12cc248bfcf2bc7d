"""`dvc repro` and `dvc exp` on the real dvc.yaml, in a temporary git repository."""

import json
import time

import pytest
import yaml

from tests.conftest import TINY, _merge, make_pipeline_repo, run_cmd

pytestmark = pytest.mark.slow
DATA_STAGES = ("download", "split", "transform")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The pipeline, reproduced once on a tiny embedded config and committed."""
    pipeline_repo = make_pipeline_repo(tmp_path_factory.mktemp("pipeline"))
    params_path = pipeline_repo / "params.yaml"
    raw = yaml.safe_load(params_path.read_text())
    for section, values in TINY.items():
        raw[section] = _merge(raw[section], values)
    params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    run_cmd(["git", "add", "-A"], pipeline_repo)
    run_cmd(["git", "commit", "-qm", "pipeline code"], pipeline_repo)  # as in a fresh clone
    run_cmd(["dvc", "repro"], pipeline_repo, timeout=900)
    run_cmd(["git", "add", "-A"], pipeline_repo)
    run_cmd(["git", "commit", "-qm", "baseline"], pipeline_repo)
    return pipeline_repo


def test_repro_builds_every_declared_output(repo):
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    dvc_yaml = yaml.safe_load((repo / "dvc.yaml").read_text())
    assert set(lock["stages"]) == set(dvc_yaml["stages"])
    for stage in dvc_yaml["stages"].values():
        for out in stage.get("outs", []):
            path = out if isinstance(out, str) else next(iter(out))
            assert (repo / path).exists(), path
    metrics = json.loads((repo / "reports/evaluate/metrics.json").read_text())
    assert {"accuracy", "top5_accuracy", "macro_f1", "ece"} <= set(metrics)


def test_second_repro_is_a_fast_no_op(repo):
    started = time.perf_counter()
    done = run_cmd(["dvc", "repro"], repo)
    elapsed = time.perf_counter() - started
    assert "Data and pipelines are up to date" in done.stdout + done.stderr
    assert elapsed < 10, f"no-op dvc repro took {elapsed:.1f} s"
    status = run_cmd(["dvc", "status"], repo)
    assert "up to date" in status.stdout


def test_train_param_change_reruns_nothing_upstream(repo):
    run_cmd(["dvc", "exp", "run", "-n", "one-epoch", "-S", "train.epochs=1"], repo, timeout=600)
    shown = json.loads(run_cmd(["dvc", "exp", "show", "--json"], repo).stdout)
    experiments = [exp for rev in shown for exp in (rev.get("experiments") or [])]
    one_epoch = next(e for e in experiments if e["name"] == "one-epoch")
    data = one_epoch["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["train"]["epochs"] == 1
    assert "accuracy" in data["metrics"]["reports/evaluate/metrics.json"]["data"]
    live = data["metrics"]["dvclive/train/metrics.json"]["data"]
    assert live["step"] == 0  # one epoch really ran


def test_exp_run_logs_skip_the_data_stages(repo):
    done = run_cmd(["dvc", "exp", "run", "-S", "train.lr=3e-3"], repo, timeout=600)
    log = done.stdout + done.stderr
    for stage in DATA_STAGES:
        assert f"'{stage}' didn't change, skipping" in log
    assert "Running stage 'train'" in log and "Running stage 'evaluate'" in log


@pytest.mark.parametrize("override, message", [
    ("train.epochs=ten", "'train.epochs' = 'ten' (str) is invalid"),
    ("train.batch_size=0", "'train.batch_size' = 0 (int) is invalid"),
])
def test_wrong_typed_override_fails_clearly(repo, override, message):
    done = run_cmd(["dvc", "exp", "run", "-S", override], repo, check=False, timeout=300)
    assert done.returncode != 0
    assert message in done.stdout + done.stderr
