import base64
import hashlib
import http.server
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from stages.dataset import DataError
from stages.download import download
from tests.conftest import make_params
from tests.datasets import http_server, mini_dataset


def data_params(**values):
    return make_params(data=values).data


def zip_folder(folder: Path, archive: Path, top: str = "lego") -> Path:
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zipped.write(path, f"{top}/{path.relative_to(folder)}")
    return archive


def test_real_dataset_folder(lego_dir, tmp_path):
    report = download(data_params(source=str(lego_dir)), tmp_path / "raw")
    assert report["classes"] == 37
    assert report["images"] == {"index.csv": 361, "test.csv": 76}
    assert report["skipped"] == [] and report["release"] == "current"
    assert len(list((tmp_path / "raw").rglob("*.jpg"))) == 437
    assert json.loads((tmp_path / "raw/download_report.json").read_text()) == report


def test_legacy_release_keeps_train_valid_column(lego_dir, tmp_path):
    source = mini_dataset(lego_dir, tmp_path / "legacy", release="legacy")
    report = download(data_params(source=str(source)), tmp_path / "raw")
    assert report["release"] == "legacy" and "test.csv" not in report["images"]
    header = (tmp_path / "raw/index.csv").read_text().splitlines()[0]
    assert header == ",path,class_id,train-valid"


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_local_archive_with_checksum(lego_dir, tmp_path, kind):
    folder = mini_dataset(lego_dir, tmp_path / "mini")
    archive = tmp_path / f"lego.{kind}"
    if kind == "zip":
        zip_folder(folder, archive)
    else:
        with tarfile.open(archive, "w:gz") as tarred:
            tarred.add(folder, arcname="lego")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    report = download(data_params(source=str(archive), sha256=digest), tmp_path / "raw")
    assert report["images"] == {"index.csv": 12, "test.csv": 3}
    with pytest.raises(DataError, match="sha256 mismatch"):
        download(data_params(source=str(archive), sha256="0" * 64), tmp_path / "raw2")
    assert not (tmp_path / "raw2").exists()


def test_https_archive_from_a_loopback_server(lego_dir, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    zip_folder(mini_dataset(lego_dir, tmp_path / "mini"), served / "lego.zip")
    with http_server(served) as url:
        report = download(data_params(source=f"{url}/lego.zip"), tmp_path / "raw")
        assert report["classes"] == 3
        with pytest.raises(DataError, match="does not exist"):
            download(data_params(source=f"{url}/missing.zip"), tmp_path / "raw2")


def test_kaggle_without_credentials_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"no Kaggle credentials.*kaggle\.json.*KAGGLE_KEY"):
        download(data_params(source="kaggle:ihelon/lego-minifigures-classification"),
                 tmp_path / "raw")


def test_kaggle_download_sends_credentials(lego_dir, tmp_path, monkeypatch):
    served = tmp_path / "served"
    target = served / "datasets/download/ihelon"
    target.mkdir(parents=True)
    zip_folder(mini_dataset(lego_dir, tmp_path / "mini"), target / "lego-minifigures")
    expected = "Basic " + base64.b64encode(b"alice:s3cret").decode()

    class NeedsAuth(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            if self.headers.get("Authorization") != expected:
                self.send_error(401)
                return
            super().do_GET()

        do_HEAD = do_GET

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg/kaggle.json").write_text('{"username": "alice", "key": "s3cret"}')
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    with http_server(served, NeedsAuth) as url:
        monkeypatch.setenv("KAGGLE_API_ENDPOINT", url)
        report = download(data_params(source="kaggle:ihelon/lego-minifigures"), tmp_path / "raw")
        assert report["classes"] == 3
        monkeypatch.setenv("KAGGLE_KEY", "wrong")
        monkeypatch.setenv("KAGGLE_USERNAME", "alice")
        with pytest.raises(DataError, match="could not download"):
            download(data_params(source="kaggle:ihelon/lego-minifigures"), tmp_path / "raw2")


def _break(folder: Path, how: str) -> str:
    index = (folder / "index.csv").read_text().splitlines()
    victim = index[2].split(",")[0]
    if how == "missing":
        (folder / victim).unlink()
    elif how == "not an image":
        (folder / victim).write_bytes(b"this is not a jpeg")
    elif how == "truncated":
        data = (folder / victim).read_bytes()
        (folder / victim).write_bytes(data[: len(data) // 3])
    elif how == "unknown class":
        index[2] = f"{victim},999"
        (folder / "index.csv").write_text("\n".join(index) + "\n")
    return victim


@pytest.mark.parametrize("how, message", [
    ("missing", "file is missing"),
    ("not an image", "not a recognised image format"),
    ("truncated", "corrupt or truncated"),
    ("unknown class", "class_id 999 is not in metadata.csv"),
])
def test_bad_images_fail_naming_the_file_and_keep_the_old_data(lego_dir, tmp_path, how, message):
    good = mini_dataset(lego_dir, tmp_path / "good")
    raw = tmp_path / "raw"
    download(data_params(source=str(good)), raw)
    before = sorted(p.relative_to(raw) for p in raw.rglob("*"))

    bad = mini_dataset(lego_dir, tmp_path / "bad")
    victim = _break(bad, how)
    with pytest.raises(DataError) as err:
        download(data_params(source=str(bad)), raw)
    assert victim in str(err.value) and message in str(err.value)
    assert "on_corrupt: skip" in str(err.value)
    assert sorted(p.relative_to(raw) for p in raw.rglob("*")) == before  # nothing lost

    report = download(data_params(source=str(bad), on_corrupt="skip"), raw)
    assert [s["path"] for s in report["skipped"]] == [victim]
    assert message in report["skipped"][0]["problem"]
    assert victim not in (raw / "index.csv").read_text()
    assert report["images"]["index.csv"] == 11


@pytest.mark.parametrize("csv_text, message", [
    ("file,label\na.jpg,1\n", r"lacks column\(s\) \['path', 'class_id'\]"),
    ("path,class_id\nmarvel/0001/001.jpg,one\n", r"line 2: class_id 'one' is not an integer"),
])
def test_wrong_csv_is_a_clear_error(lego_dir, tmp_path, csv_text, message):
    bad = mini_dataset(lego_dir, tmp_path / "bad")
    (bad / "index.csv").write_text(csv_text)
    with pytest.raises(DataError, match=message):
        download(data_params(source=str(bad)), tmp_path / "raw")


def test_missing_metadata_and_unknown_source(lego_dir, tmp_path):
    bad = mini_dataset(lego_dir, tmp_path / "bad")
    (bad / "metadata.csv").unlink()
    with pytest.raises(DataError, match=r"metadata\.csv: missing"):
        download(data_params(source=str(bad)), tmp_path / "raw")
    with pytest.raises(DataError, match="neither 'embedded'"):
        download(data_params(source=str(tmp_path / "nope")), tmp_path / "raw")


def test_zip_slip_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("../../escaped.txt", "x")
    with pytest.raises(DataError, match="escapes"):
        download(data_params(source=str(archive)), tmp_path / "raw")
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_leftover_temporary_folders_are_cleaned(lego_dir, tmp_path):
    bad = mini_dataset(lego_dir, tmp_path / "bad")
    _break(bad, "missing")
    with pytest.raises(DataError):
        download(data_params(source=str(bad)), tmp_path / "data" / "raw")
    assert list((tmp_path / "data").iterdir()) == []
    shutil.rmtree(bad)
