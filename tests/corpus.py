"""Generated corpora and script runs shared by the end-to-end tests."""

import concurrent.futures
import json
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


# DiVers release fields (the dataset's documentation): light files keep these, full files all
DIVERS_LIGHT_FIELDS = ("id", "artist", "title", "youtube_id", "dvi", "tags_yt_title")
DIVERS_TITLE_TAGS = (["live"], ["cover", "guitar"], ["acoustic"], [], None, ["cover", "piano"])
DIVERS_NOISE_SEGMENT = 5.0  # seconds per segment index of the fake release's noise_inds_sparse


def divers_release(root, works=8, versions=4, seconds=20.0, seed=0, light=False, test_works=3):
    """A fake DiVers release in the documented layout, from synthetic audio: ``root/audio``
    holds ``<yt[:2]>/<yt>.wav``; ``root/divers.json`` (or ``divers_light.json``) is
    ``{split: {clique: {version: {field: value}}}}``. The last ``test_works`` works are the test
    split, one work is valid, the rest train. Version 0 of a work has a Discogs-VI id
    (``V-...``), the others a YouTube id; the fields cycle through lists, empty lists and nulls.
    Full files give ``filename`` as the authors' absolute ``.mp4`` path (another root and
    extension than the user's), and ``noise_inds_sparse``: segment 0 (the first
    ``DIVERS_NOISE_SEGMENT`` seconds) of every YouTube version is marked non-music.
    Returns (path of the JSON file, audio root)."""
    rendered, audio = root / "rendered", root / "audio"
    synth.make_corpus(
        str(rendered), works=works, versions=versions, seconds=seconds, seed=seed, formats=("wav",)
    )
    splits = {"train": {}, "valid": {}, "test": {}}
    for w in range(works):
        split = "test" if w >= works - test_works else "train"
        split = "valid" if w == works - test_works - 1 else split
        clique = f"C-{w + 1:07d}"
        entries = splits[split].setdefault(clique, {})
        for v in range(versions):
            youtube_id = f"{chr(97 + w % 26)}{chr(65 + v % 26)}yt{w:03d}{v:02d}"
            (audio / youtube_id[:2]).mkdir(parents=True, exist_ok=True)
            target = audio / youtube_id[:2] / f"{youtube_id}.wav"
            os.replace(rendered / f"work{w:03d}" / f"v{v}.wav", target)
            version = f"V-{w * versions + v + 1:07d}" if v == 0 else youtube_id
            i = w * versions + v
            fields = {
                "id": version,
                "artist": f"Artist {w}-{v}",
                "title": None if v == 3 else f"Work {w}",
                "youtube_id": youtube_id,
                "dvi": v == 0,
                "tags_yt_title": DIVERS_TITLE_TAGS[i % len(DIVERS_TITLE_TAGS)],
                "filename": f"/data/divers/audio/{youtube_id[:2]}/{youtube_id}.mp4",
                "track_writer_names": [f"Writer {w}"],
                "release_artist_names": [] if v else [f"Artist {w}-0"],
                "release_genres": ["Rock"] if w % 2 else ["Jazz", "Pop"],
                "release_styles": [["Rock", "Punk"]] if w % 2 else [],
                "country": None if v else "UK",
                "released": "1999",
                "yt_title": f"Work {w} {' '.join(DIVERS_TITLE_TAGS[i % 6] or [])}".strip(),
                "yt_view_count": 1000 * i,
                "tempo": 90.0 + i,
                "cues_yt_title": [],
                "noise_inds_sparse": [] if v == 0 else [0],
            }
            entries[version] = {k: fields[k] for k in DIVERS_LIGHT_FIELDS} if light else fields
    path = root / ("divers_light.json" if light else "divers.json")
    path.write_text(json.dumps(splits, indent=1))
    return path, audio
