import json
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "make_datas.sh"


def _write(path, payload):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def _fake_repo(root, valid_name="valid"):
    src = root / "discogs-vi-2" / "data" / "dvi2" / "dataset"
    for split in ("train", valid_name, "test"):
        _write(src / f"{split}.json", {"C-1": [{"version_id": f"plain-{split}"}]})
        _write(src / "matched" / f"{split}.json", {"C-1": [{"version_id": f"matched-{split}"}]})
    return root / "discogs-vi-2"


def _version(path):
    return json.loads(path.read_text())["C-1"][0]["version_id"]


def test_copies_the_three_datasets(tmp_path):
    work = tmp_path / "clews"
    work.mkdir()
    _fake_repo(tmp_path)
    run = subprocess.run(["bash", str(SCRIPT)], cwd=work, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    data = work / "data"
    for split in ("train", "valid", "test"):
        assert _version(data / "dvi2" / f"{split}.json") == f"plain-{split}"
        assert _version(data / "dvi2fm" / f"{split}.json") == f"matched-{split}"
    assert _version(data / "dvi2fm_light" / "train.json") == "matched-train"
    assert _version(data / "dvi2fm_light" / "test.json") == "matched-test"
    assert _version(data / "dvi2fm_light" / "valid.json") == "plain-valid"


def test_path_argument_and_old_val_spelling(tmp_path):
    repo = _fake_repo(tmp_path / "elsewhere", valid_name="val")
    run = subprocess.run(
        ["bash", str(SCRIPT), str(repo)], cwd=tmp_path, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert _version(tmp_path / "data" / "dvi2" / "valid.json") == "plain-val"


def test_missing_source_is_a_clear_error_and_copies_nothing(tmp_path):
    repo = _fake_repo(tmp_path)
    (repo / "data" / "dvi2" / "dataset" / "matched" / "test.json").unlink()
    work = tmp_path / "clews"
    work.mkdir()
    run = subprocess.run(["bash", str(SCRIPT)], cwd=work, capture_output=True, text=True)
    assert run.returncode != 0
    assert "missing ../discogs-vi-2/data/dvi2/dataset/matched/test.json" in run.stderr
    assert not (work / "data").exists()
