"""Generated corpora and script runs shared by the end-to-end tests."""

import os
import subprocess
from pathlib import Path

import data_preproc
from lib import synth

ROOT = Path(__file__).resolve().parents[1]


def folder_corpus(root, works, versions, seconds, seed, split):
    """Render ``works`` x ``versions`` wav files under ``root/audio`` and write ``root/meta.pt``
    with the train/valid/test fractions ``split`` (e.g. "0.6,0.4,0"). Returns ``root``."""
    audio = root / "audio"
    synth.make_corpus(
        str(audio), works=works, versions=versions, seconds=seconds, seed=seed, formats=("wav",)
    )
    meta = root / "meta.pt"
    args = ["--dataset=folder", f"--path_audio={audio}", "--ext_in=wav", f"--fn_out={meta}"]
    assert data_preproc.main(args + [f"--split={split}", "--njobs=1"]) == 0
    return root


def run_script(cmd, env=None):
    """Run a top-level script from the repository root with one OpenMP thread per process."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=full_env, timeout=600)
