"""match.py serve, started for real (a subprocess on 127.0.0.1, a free port) and used over HTTP
as a browser or a script would: a clip's page and JSON, the players' audio, the catalogue page,
and refused uploads (not audio, empty, too large, no file) that leave the server answering."""

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

import match
from lib import synth
from lib.audio import load_audio, write_audio
from lib.server import post_upload, wait_for_url
from tests.corpus import ROOT
from tests.test_inference import tiny_checkpoint

SR = 16000


def start_server(catalogue, *extra):
    """(process, base URL) of ``match.py serve`` on a free local port."""
    command = [sys.executable, "match.py", "serve", f"--catalogue={catalogue}", "--port=0"]
    process = subprocess.Popen(
        [*command, "--device=cpu", *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    url = wait_for_url(process.stdout, lines.append)
    if url is not None and url.startswith("http://127.0.0.1:"):
        return process, url
    process.kill()
    raise AssertionError("the server did not start:\n" + "".join(lines))


def post_clip(url, name, data, fmt=None, field="clip"):
    """(status, body text) of a multipart upload of ``data`` as file ``name``."""
    return post_upload(url, name, data, fmt, field, timeout=120)


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=60) as reply:
            return reply.status, reply.read(), reply.headers
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    path, _ = tiny_checkpoint(root, randomise=3)  # 2 s windows
    audio = root / "audio"
    synth.make_corpus(str(audio), works=6, versions=2, seconds=30, seed=6, formats=("wav", "mp3"))
    cat = root / "cat"
    index = ["index", f"--checkpoint={path}", f"--audio={audio}", f"--out={cat}"]
    assert match.main([*index, "--device=cpu", "--hop_size=1", "--nworkers=0"]) == 0
    process, url = start_server(cat, "--max_upload_mb=1", "--topk=3")
    yield root, audio, url
    process.terminate()
    process.wait(timeout=30)


def clip_bytes(root, audio, work, version, start, seconds=10.0, ext="mp3"):
    """An excerpt of a catalogue track, quieter, with noise, re-encoded."""
    source = sorted((audio / f"work{work:03d}").glob(f"v{version}.*"))[0]
    x = load_audio(str(source), SR)[int(start * SR) : int((start + seconds) * SR)]
    x = 0.7 * x + 0.003 * np.random.default_rng(0).standard_normal(x.size).astype(np.float32)
    path = root / f"clip{work}{version}{start:g}.{ext}"
    write_audio(str(path), x, SR)
    return path.read_bytes()


def test_a_clip_gives_its_track_first_with_where(served):
    root, audio, url = served
    data = clip_bytes(root, audio, 3, 1, 12.0)
    status, text = post_clip(url, "my clip.mp3", data, fmt="json")
    assert status == 200, text
    result = json.loads(text)
    best = result["matches"][0]
    assert best["id"] == "work003/v1" and len(result["matches"]) == 3
    assert best["track_s"][0] == pytest.approx(12.0, abs=1.0)
    assert result["clip"] == "my clip.mp3" and result["found"] is None  # not calibrated
    # the page shows the same ranking, with players that start where the match is
    status, page = post_clip(url, "my clip.mp3", data)
    assert status == 200 and "work003/v1" in page and "not calibrated" in page
    row = best["row"]
    start = f"{best['track_s'][0]:.1f}"
    assert f"audio/track/{row}#t={start}," in page
    token = re.search(r"audio/clip/([0-9a-f]+)", page).group(1)
    status, body, headers = get(url + f"audio/clip/{token}")
    assert status == 200 and body == data
    status, body, _ = get(url + f"audio/track/{row}")
    source = sorted((audio / "work003").glob("v1.*"))[0]
    assert status == 200 and body == source.read_bytes()


def test_refused_uploads_say_why_and_the_server_keeps_answering(served):
    root, audio, url = served
    status, text = post_clip(url, "notes.txt", b"hello", fmt="json")
    assert status == 415 and "not an audio file name" in json.loads(text)["error"]
    status, text = post_clip(url, "noise.mp3", np.random.bytes(5000), fmt="json")
    assert status == 422 and "could not be used as audio" in json.loads(text)["error"]
    status, text = post_clip(url, "empty.wav", b"")
    assert status == 400 and "the file is empty" in text and "Traceback" not in text
    status, text = post_clip(url, "big.wav", b"\0" * 2_000_000)  # limit: 1 MB
    assert status == 413 and "larger than this server" in text and "limit of 1 MB" in text
    status, text = post_clip(url, "a.mp3", b"abc", field="other", fmt="json")
    assert status == 400 and "no file in the request" in text
    status, _, _ = get(url + "audio/track/999")
    assert status == 404
    status, _, _ = get(url + "audio/clip/..%2f..%2fetc%2fpasswd")
    assert status == 404
    # and still answers
    status, text = post_clip(url, "c.wav", clip_bytes(root, audio, 1, 0, 3.0, ext="wav"), "json")
    assert status == 200 and json.loads(text)["matches"][0]["id"] == "work001/v0"


def test_catalogue_page(served):
    _, _, url = served
    status, body, _ = get(url + "catalogue")
    text = body.decode()
    assert status == 200 and "12 tracks" in text and "work005/v1" in text
    assert "not calibrated" in text
    status, body, _ = get(url)
    assert status == 200 and b"<form" in body and b"Record a clip" in body
