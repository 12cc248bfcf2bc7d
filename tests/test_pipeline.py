"""`dvc repro` and `dvc exp` on the real dvc.yaml, in temporary git repositories."""

import json
import time

import pytest
import yaml

from tests.conftest import clone_repo, run_cmd

pytestmark = pytest.mark.slow
DATA_STAGES = ("download", "split", "transform")


@pytest.fixture(scope="module")
def repo(reproduced_repo, tmp_path_factory):
    return clone_repo(reproduced_repo, tmp_path_factory.mktemp("exp") / "repo")


def test_repro_builds_every_declared_output(reproduced_repo):
    lock = yaml.safe_load((reproduced_repo / "dvc.lock").read_text())
    dvc_yaml = yaml.safe_load((reproduced_repo / "dvc.yaml").read_text())
    assert set(lock["stages"]) == set(dvc_yaml["stages"])
    for stage in lock["stages"].values():  # the lock has `${...}` in paths resolved
        for out in stage["outs"]:
            assert (reproduced_repo / out["path"]).exists(), out["path"]
    metrics = json.loads((reproduced_repo / "reports/evaluate/metrics.json").read_text())
    assert {"accuracy", "top5_accuracy", "macro_f1", "ece"} <= set(metrics)


def test_second_repro_is_a_fast_no_op(repo):
    started = time.perf_counter()
    done = run_cmd(["dvc", "repro"], repo)
    elapsed = time.perf_counter() - started
    print(f"no-op dvc repro: {elapsed:.2f} s")
    assert "Data and pipelines are up to date" in done.stdout + done.stderr
    assert elapsed < 10, f"no-op dvc repro took {elapsed:.1f} s"
    assert "up to date" in run_cmd(["dvc", "status"], repo).stdout


def test_train_param_change_reruns_only_what_depends_on_it(repo):
    before = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    # another seed too: the tiny baseline's best epoch can be its first, giving the same model
    done = run_cmd(["dvc", "exp", "run", "-n", "one-epoch", "-S", "train.epochs=1",
                    "-S", "train.seed=1"], repo)
    log = done.stdout + done.stderr
    after = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for stage in DATA_STAGES:
        assert f"'{stage}' didn't change, skipping" in log
        assert after[stage] == before[stage]
    for stage in ("train", "evaluate"):
        assert after[stage]["outs"] != before[stage]["outs"], stage
    shown = json.loads(run_cmd(["dvc", "exp", "show", "--json"], repo).stdout)
    experiments = [exp for rev in shown for exp in (rev.get("experiments") or [])]
    one_epoch = next(e for e in experiments if e["name"] == "one-epoch")
    data = one_epoch["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["train"]["epochs"] == 1
    assert "accuracy" in data["metrics"]["reports/evaluate/metrics.json"]["data"]
    assert data["metrics"]["dvclive/train/metrics.json"]["data"]["step"] == 0  # one epoch ran


@pytest.mark.parametrize("override, message", [
    ("train.epochs=ten", "'train.epochs' = 'ten' (str) is invalid"),
    ("train.batch_size=0", "'train.batch_size' = 0 (int) is invalid"),
    ("+train.learning_rate=0.1", "unknown key 'train.learning_rate'"),
])
def test_bad_override_fails_clearly(repo, override, message):
    done = run_cmd(["dvc", "exp", "run", "-S", override], repo, check=False, timeout=300)
    run_cmd(["git", "checkout", "params.yaml"], repo)
    assert done.returncode != 0
    assert message in done.stdout + done.stderr
