"""The README's Python API example, run as it is written, with its demo paths pointed at a
generated corpus and a small checkpoint."""

import contextlib
import io
import os
import re

from lib import synth
from lib.audio import load_audio, write_audio
from lib.metadata import save_metadata
from tests.corpus import ROOT
from tests.matching.test_inference import tiny_checkpoint

SR = 16000


def readme_api_block():
    text = (ROOT / "README.md").read_text()
    section = text.split("**The Python API**", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs(tmp_path, monkeypatch):
    path, _ = tiny_checkpoint(tmp_path, randomise=3)
    audio = tmp_path / "audio"
    synth.make_corpus(str(audio), works=6, versions=3, seconds=16, seed=2, formats=("wav", "mp3"))
    files = {w: sorted((audio / f"work{w:03d}").iterdir()) for w in range(6)}
    valid = {f"w{w}": [f"w{w}v{v}" for v in range(3)] for w in (0, 1, 2)}
    info = {
        f"w{w}v{v}": {"clique": f"w{w}", "filename": str(files[w][v].relative_to(audio))}
        for w in (0, 1, 2)
        for v in range(3)
    }
    meta = tmp_path / "metadata.pt"
    save_metadata(str(meta), info, {"valid": valid})
    clip = tmp_path / "clip.wav"
    # on the catalogue's window grid (every 5 s): its windows are the track's own
    write_audio(str(clip), load_audio(str(files[4][1]), SR, 5.0, 8.0), SR)
    (tmp_path / "more").mkdir()
    write_audio(str(tmp_path / "more" / "song.mp3"), load_audio(str(files[5][0]), SR), SR)

    code = readme_api_block()
    paths = {
        "runs/demo/runs/demo-clews/checkpoint_last.ckpt": path,
        "runs/demo/clips/work002-unseen-version.wav": clip,
        "runs/demo/metadata-demo.pt": meta,
        "runs/demo/audio": audio,
        "cat/": tmp_path / "cat",
        "more/song.mp3": tmp_path / "more" / "song.mp3",
    }
    for name, real in paths.items():
        assert f'"{name}"' in code, name
        code = code.replace(f'"{name}"', repr(str(real)))
    monkeypatch.chdir(tmp_path)  # nothing of the example lands in the repository
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {})
    lines = printed.getvalue().splitlines()
    assert lines[-4] in ("version found", "no version found"), lines
    rank, track = lines[-3].split()[:2]
    assert rank == "1" and track == "work004/v1"  # the clip's own track, first
    assert len(os.listdir(tmp_path / "cat" / "added")) > 0
