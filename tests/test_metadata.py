"""lib.metadata: metadata files of other pipelines (the DiVers authors' divers.pt) refused by the
safe loader with one line that offers the conversion, and the conversion itself."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lib.metadata import DatasetError, convert_metadata, load_metadata

ROOT = Path(__file__).resolve().parents[1]


class Timestamp:
    """Stands for a table library's class that a pipeline left in its metadata."""

    def __init__(self, text):
        self.text = text


def authors_file(path, extra=None):
    """A metadata file as the DiVers authors' pipeline writes it: the original's dict with
    numpy arrays, numpy scalars and NaN for missing values in the songs' fields."""
    song = {
        "id": np.int64(0),
        "clique": "C-0000001",
        "version": "V-0000001",
        "filename": "aB/aBxyz.mp4",
        "noise_inds_sparse": np.array([0, 3, 4]),
        "tempo": np.float64(121.5),
        "yt_view_count": np.int64(12),
        "country": float("nan"),
        "tags_yt_title": ["live"],
        "release_styles": [("Rock", "Punk")],
        **(extra or {}),
    }
    other = {**song, "id": 1, "version": "V-0000002", "noise_inds_sparse": np.array([], int)}
    info = {"C-0000001:V-0000001": song, "C-0000001:V-0000002": other}
    split = {"train": {}, "valid": {}, "test": {"C-0000001": list(info)}}
    torch.save({"info": info, "split": split}, path)
    return path


def preproc_cli(*args):
    cmd = [sys.executable, "data_preproc.py", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_loader_refuses_numpy_values_in_one_line_that_offers_the_conversion(tmp_path):
    path = authors_file(tmp_path / "divers.pt")
    with pytest.raises(DatasetError) as caught:
        load_metadata(path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message and "numpy" in message and "refused" in message
    assert f"python data_preproc.py --convert={path} --fn_out=" in message


def test_conversion_gives_plain_values_that_the_loader_reads(tmp_path):
    source = authors_file(tmp_path / "divers.pt")
    run = preproc_cli(f"--convert={source}", f"--fn_out={tmp_path / 'plain.pt'}")
    assert run.returncode == 0, run.stderr
    assert "2 songs" in run.stdout
    info, splits = load_metadata(tmp_path / "plain.pt")
    song = info["C-0000001:V-0000001"]
    assert song["noise_inds_sparse"] == [0, 3, 4] and type(song["noise_inds_sparse"][0]) is int
    assert song["tempo"] == 121.5 and type(song["tempo"]) is float
    assert song["id"] == 0 and type(song["id"]) is int
    assert "country" not in song  # NaN, a table's missing value, is left out like a null
    assert song["release_styles"] == [["Rock", "Punk"]]
    assert info["C-0000001:V-0000002"]["noise_inds_sparse"] == []
    assert splits["test"] == {"C-0000001": list(info)}
    about = torch.load(tmp_path / "plain.pt", weights_only=True)["about"]
    assert about["converted_from"] == str(source)


def test_conversion_refuses_other_classes_unless_trusted_and_writes_nothing(tmp_path):
    source = authors_file(tmp_path / "divers.pt", {"released": Timestamp("1999")})
    target = tmp_path / "plain.pt"
    run = preproc_cli(f"--convert={source}", f"--fn_out={target}")
    assert run.returncode != 0 and not target.exists()
    assert "Timestamp" in run.stderr and "--trust_pickle" in run.stderr
    # trusted, the file is read, but a value that is not data still is not written
    with pytest.raises(DatasetError, match="field 'released' holds a Timestamp"):
        convert_metadata(source, target, trust=True)
    assert not target.exists()


def test_trusted_conversion_of_a_plain_file(tmp_path):
    source = authors_file(tmp_path / "divers.pt")
    assert convert_metadata(source, tmp_path / "plain.pt", trust=True) == 2
    assert load_metadata(tmp_path / "plain.pt")[0]["C-0000001:V-0000001"]["tempo"] == 121.5


def test_trust_pickle_needs_convert(tmp_path):
    run = preproc_cli("--trust_pickle", f"--fn_out={tmp_path / 'x.pt'}")
    assert run.returncode == 2 and "--trust_pickle goes with --convert" in run.stderr
    run = preproc_cli(f"--fn_out={tmp_path / 'x.pt'}", "--path_audio=.")
    assert run.returncode == 2 and "--dataset is required" in run.stderr
    assert not os.path.exists(tmp_path / "x.pt")
