"""Generated corpora and script runs shared by the end-to-end tests."""

import concurrent.futures
import os
import subprocess
from pathlib import Path

import torch

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


def run_script(cmd, env=None, preexec_fn=None):
    """Run a top-level script from the repository root with one OpenMP thread per process
    (``preexec_fn`` runs in the child before the script, e.g. to set resource limits)."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=600,
        preexec_fn=preexec_fn,
    )


def run_scripts_together(*cmds):
    """``run_script`` of independent commands at the same time (one core each); their
    ``CompletedProcess`` results in order."""
    with concurrent.futures.ThreadPoolExecutor(len(cmds)) as pool:
        return list(pool.map(run_script, cmds))


def randomised(model, seed):
    """Every parameter and BatchNorm statistic random (gains away from their 0 init), as after
    training."""
    gen = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    for key, value in sd.items():
        if key.startswith("cqt.") or not value.is_floating_point():
            continue
        noise = torch.randn(value.shape, generator=gen)
        if key.endswith("running_var"):
            sd[key] = 0.5 + noise.abs()
        elif key.endswith(("gain", "weight")) and value.ndim <= 1:
            sd[key] = 1.0 + 0.3 * noise
        else:
            sd[key] = value + 0.1 * noise
    return sd
