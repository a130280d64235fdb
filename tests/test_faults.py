"""Fault tests across the entry points, each run as the user would run it (a subprocess): the
exit status, one clear line naming the file and the problem, and nothing else lost.

Bad audio (corrupt, truncated, empty, silent, text, a directory, deleted after preprocessing) in
preprocessing, training, evaluation, inference and matching. Untrusted files: a checkpoint or
metadata file carrying a pickle that would run a command is refused by every script before
anything executes; filter expressions and config values stay data. Wrong usage: misspelt keys,
wrong paths, a checkpoint of another model, an empty split. Full disk while checkpoints,
embeddings and the evaluation cache are written.

Faults tested next to the feature they hit: kill -9 during a training epoch
(tests/test_train.py), NaN/inf losses (tests/test_train.py), kill -9 during inference
(tests/matching/test_inference.py), colliding outputs (tests/matching/test_inference.py)."""

import csv
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from lib.audio import write_audio
from lib.checkpoint import load_checkpoint
from lib.preproc import load_metadata, save_metadata
from tests.corpus import ROOT, folder_corpus, run_script
from tests.matching.test_inference import tiny_checkpoint

SR = 16000


class Hostile:
    """Unpickling this runs ``touch marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return folder_corpus(tmp_path_factory.mktemp("faults"), 4, 3, 8, seed=5, split="0.5,0.25,0.25")


@pytest.fixture(scope="module")
def checkpoint(corpus):
    """A tiny CLEWS checkpoint (config inside) whose paths point at the corpus."""
    data = {"samplerate": SR, "audiolen": 4, "n_per_class": 2, "nworkers": 0}
    paths = {"audio": str(corpus / "audio"), "meta": str(corpus / "meta.pt")}
    path, _ = tiny_checkpoint(corpus, data=data, path=paths)
    return path


def last_line(result):
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def script(*args):
    return run_script([sys.executable, *map(str, args)])


def train_args(data, logs, job, *extra):
    """train.py on ``data`` (a folder with audio/ and meta.pt): tiny CPU settings."""
    return [
        "train.py",
        f"jobname={job}",
        "conf=config/demo-clews.yaml",
        f"path.audio={data / 'audio'}",
        f"path.meta={data / 'meta.pt'}",
        f"path.logs={logs}",
        "fabric.accelerator=cpu",
        "data.samplerate=16000",
        "data.audiolen=4",
        "training.batchsize=2",
        *extra,
    ]


def evaluation_args(checkpoint, data, cache, *extra, meta=None):
    """test.py of ``checkpoint`` on ``data`` (audio/ and meta.pt, or ``meta``) on CPU."""
    return [
        "test.py",
        f"checkpoint={checkpoint}",
        f"path_audio={data / 'audio'}",
        f"path_meta={meta or data / 'meta.pt'}",
        f"cache_dir={cache}",
        "accelerator=cpu",
        *extra,
    ]


###################################################################################################
# Bad audio
###################################################################################################

# what each kind of bad file is called in reports
REASONS = {
    "corrupt": "not a readable audio file",
    "truncated-m4a": "truncated: its 'mdat' box",
    "truncated-wav": "truncated",
    "empty": "empty file (0 bytes)",
    "silence": "silent",
    "text": "not a readable audio file",
    "directory": "is a directory",
    "deleted": "file not found",
}


def spoil(path, kind, scratch):
    """Turn the audio file ``path`` (a Path) into a bad file of ``kind``, keeping its name;
    ``scratch`` is a folder for intermediate files."""
    good = path.read_bytes() if path.is_file() else b""
    path.unlink(missing_ok=True)
    if kind == "corrupt":
        path.write_bytes(np.random.default_rng(0).bytes(6000))
    elif kind == "truncated-m4a":
        whole = scratch / "whole.m4a"
        write_audio(whole, 0.3 * np.sin(np.arange(8 * SR) / SR * 2000).astype(np.float32), SR)
        data = whole.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated-wav":
        path.write_bytes(good[: len(good) // 3])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "silence":
        write_audio(path, np.zeros(8 * SR, np.float32), SR)
    elif kind == "text":
        path.write_text("this is a text file, not audio\n" * 40)
    elif kind == "directory":
        path.mkdir()
    else:
        assert kind == "deleted"


@pytest.fixture()
def data(corpus, tmp_path):
    """A copy of the corpus (audio and metadata) to spoil; (root, info, splits)."""
    root = tmp_path / "data"
    shutil.copytree(corpus / "audio", root / "audio")
    shutil.copy(corpus / "meta.pt", root / "meta.pt")
    info, splits = load_metadata(root / "meta.pt")
    return root, info, splits


def versions(root, info, splits, split):
    """Audio paths of every version of ``split``, clique by clique."""
    return [[root / "audio" / info[k]["filename"] for k in keys] for keys in splits[split].values()]


def test_bad_audio_in_preprocessing_is_listed_and_the_rest_kept(corpus, tmp_path):
    audio = tmp_path / "audio"
    shutil.copytree(corpus / "audio", audio)
    names = {
        "corrupt": "corrupt.mp3",
        "truncated-m4a": "cut.m4a",
        "empty": "empty.wav",
        "silence": "silence.flac",
        "text": "text.mp3",
        "directory": "folder.mp3",
    }
    work = sorted(audio.iterdir())[0]
    for kind, name in names.items():
        spoil(work / name, kind, tmp_path)
    meta = tmp_path / "meta.pt"
    result = script(
        "data_preproc.py",
        "--dataset=folder",
        f"--path_audio={audio}",
        "--ext_in=any",
        f"--fn_out={meta}",
        "--njobs=2",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "6 versions left out" in result.stdout
    with open(tmp_path / "meta.rejected.tsv", newline="") as handle:
        rejected = {r["filename"]: r["reason"] for r in csv.DictReader(handle, delimiter="\t")}
    assert rejected.keys() == {f"{work.name}/{n}" for n in names.values()}
    for kind, name in names.items():
        assert REASONS[kind] in rejected[f"{work.name}/{name}"], (kind, rejected)
    info, splits = load_metadata(meta)
    assert sum(len(v) for s in splits.values() for v in s.values()) == 12  # every good version


def test_bad_audio_in_training_is_reported_and_replaced(data, tmp_path):
    root, info, splits = data
    (a0, a1, _), (b0, b1, _) = versions(root, info, splits, "train")
    (c0, c1, _), *_ = versions(root, info, splits, "valid")
    faults = {
        a0: "deleted",
        a1: "corrupt",
        b0: "empty",
        b1: "truncated-wav",
        c0: "directory",
        c1: "silence",
    }
    for path, kind in faults.items():
        spoil(path, kind, tmp_path)
    result = script(
        *train_args(root, tmp_path / "logs", "bad", "data.nworkers=1", "training.numepochs=1")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = tmp_path / "logs" / "bad" / "bad_audio.tsv"
    with open(log, newline="") as handle:
        listed = {r["file"]: r["reason"] for r in csv.DictReader(handle, delimiter="\t")}
    for path, kind in faults.items():
        if kind == "silence":  # a silent excerpt is legitimate training data (intros, breaks)
            assert str(path) not in listed
            continue
        assert REASONS[kind] in listed[str(path)], (kind, listed)
        assert str(path) in result.stderr
    assert load_checkpoint(tmp_path / "logs" / "bad" / "checkpoint_last.ckpt")["epoch"] == 1


def test_bad_audio_in_evaluation_names_every_file(data, checkpoint, tmp_path):
    root, info, splits = data
    (d0, d1, d2), *_ = versions(root, info, splits, "test")
    command = evaluation_args(checkpoint, root, tmp_path / "cache")
    spoil(d0, "deleted", tmp_path)
    result = script(*command)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "1 audio file(s) of split 'test' missing" in last_line(result)
    assert str(d0) in last_line(result) and "data_preproc.py" in last_line(result)
    spoil(d0, "corrupt", tmp_path)
    spoil(d1, "truncated-m4a", tmp_path)
    spoil(d2, "text", tmp_path)
    result = script(*command)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = last_line(result)
    assert "3 track(s) could not be read" in line  # all of them, not just the first
    for path in (d0, d1, d2):
        assert f"{path}: not a readable audio file" in line


def test_bad_audio_in_inference_and_matching(checkpoint, corpus, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    goods = sorted((corpus / "audio").rglob("*.wav"))[:2]
    for i, good in enumerate(goods):
        shutil.copy(good, folder / f"good{i}.wav")
    names = {
        "corrupt": "corrupt.mp3",
        "truncated-m4a": "cut.m4a",
        "empty": "empty.wav",
        "silence": "silence.wav",
        "text": "text.mp3",
    }
    for kind, name in names.items():
        spoil(folder / name, kind, tmp_path)
    spoil(folder / "folder.mp3", "directory", tmp_path)  # walked into like any folder
    out = tmp_path / "out"
    result = script(
        "inference.py", f"--checkpoint={checkpoint}", f"--path_in={folder}", f"--path_out={out}"
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert sorted(p.name for p in out.glob("*.pt")) == ["good0.pt", "good1.pt"]
    failures = (out / "inference_failures.log").read_text()
    for kind, name in names.items():
        assert f"{folder / name}: {REASONS[kind]}" in failures, (kind, failures)
    single = script(
        "inference.py",
        f"--checkpoint={checkpoint}",
        f"--fn_in={folder / 'folder.mp3'}",
        f"--fn_out={tmp_path / 'x.pt'}",
    )
    assert single.returncode != 0 and "folder.mp3: is a directory" in last_line(single)

    catalogue = tmp_path / "catalogue"
    index = script(
        "match.py", "index", f"--checkpoint={checkpoint}", f"--audio={folder}", f"--out={catalogue}"
    )
    assert index.returncode == 1 and "5 file(s) could not be read" in index.stderr
    assert "Catalogue" in index.stdout and "2 tracks" in index.stdout
    clips = [folder / name for name in names.values()] + [folder / "good0.wav"]
    query = script("match.py", "query", f"--catalogue={catalogue}", *clips)
    assert query.returncode == 1 and "Traceback" not in query.stderr
    for kind, name in names.items():
        assert f"{folder / name}: {REASONS[kind]}" in query.stderr, (kind, query.stderr)
    assert "good0" in query.stdout  # the readable clip is still answered


###################################################################################################
# Untrusted files
###################################################################################################


@pytest.fixture()
def hostile_checkpoint(tmp_path, checkpoint):
    marker = tmp_path / "pwned"
    path = tmp_path / "run" / "evil.ckpt"
    path.parent.mkdir()
    state = load_checkpoint(checkpoint)
    torch.save({"model": state["model"], "conf": Hostile(marker), "epoch": 1}, path)
    return path, marker


@pytest.mark.parametrize(
    "entry", ["train", "test", "inference", "match-index", "match-mirex"], ids=str
)
def test_hostile_checkpoint_is_refused_by_every_script(entry, hostile_checkpoint, corpus, tmp_path):
    path, marker = hostile_checkpoint
    audio = corpus / "audio"
    one = sorted(audio.rglob("*.wav"))[0]
    listing = tmp_path / "list.txt"
    listing.write_text(f"{one}\n")
    commands = {
        "train": [
            "train.py",
            "jobname=f",
            "conf=config/demo-clews.yaml",
            f"checkpoint={path}",
            f"path.logs={tmp_path / 'logs'}",
            f"path.audio={audio}",
            f"path.meta={corpus / 'meta.pt'}",
            "fabric.accelerator=cpu",
        ],
        "test": ["test.py", f"checkpoint={path}", "accelerator=cpu"],
        "inference": ["inference.py", f"--checkpoint={path}", f"--fn_in={one}", "--fn_out=x.pt"],
        "match-index": [
            "match.py",
            "index",
            f"--checkpoint={path}",
            f"--audio={audio}",
            f"--out={tmp_path / 'cat'}",
        ],
        "match-mirex": [
            "match.py",
            "mirex",
            f"--checkpoint={path}",
            f"--collection={listing}",
            f"--queries={listing}",
            f"--out={tmp_path / 'mirex.txt'}",
        ],
    }
    result = script(*commands[entry])
    assert result.returncode != 0
    assert not marker.exists(), "the pickle ran"
    assert "evil.ckpt" in result.stderr and "refused" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "mirex.txt").exists()


def test_hostile_metadata_is_refused_by_train_and_test(corpus, checkpoint, tmp_path):
    marker = tmp_path / "pwned"
    meta = tmp_path / "evil-meta.pt"
    info, splits = load_metadata(corpus / "meta.pt")
    torch.save({"info": info, "split": splits, "about": Hostile(marker)}, meta)
    train = script(
        "train.py",
        "jobname=f",
        "conf=config/demo-clews.yaml",
        f"path.meta={meta}",
        f"path.audio={corpus / 'audio'}",
        f"path.logs={tmp_path / 'logs'}",
        "fabric.accelerator=cpu",
    )
    test = script("test.py", f"checkpoint={checkpoint}", f"path_meta={meta}", "accelerator=cpu")
    for result in (train, test):
        assert result.returncode == 1, result.stderr[-2000:]
        assert "evil-meta.pt" in last_line(result) and "refused" in last_line(result)
        assert "Traceback" not in result.stderr
    assert not marker.exists()


def test_filters_and_config_values_stay_data(checkpoint, tmp_path):
    marker = tmp_path / "pwned"
    code = f"__import__('os').system('touch {marker}')"
    result = script("test.py", f"checkpoint={checkpoint}", f"qfilter=release_genres:{code}")
    assert result.returncode == 2 and "qfilter" in last_line(result)
    yaml = tmp_path / "evil.yaml"
    yaml.write_text(f"jobname: !!python/object/apply:os.system ['touch {marker}']\n")
    result = script("train.py", "jobname=f", f"conf={yaml}", f"path.logs={tmp_path}")
    assert result.returncode == 2 and "evil.yaml" in last_line(result)
    result = script(
        "train.py",
        "conf=config/demo-clews.yaml",
        f"jobname={code}",
        f"path.logs={tmp_path}",
        "path.meta=/nonexistent/meta.pt",
    )
    assert result.returncode != 0
    assert not marker.exists()


def test_inference_outputs_stay_in_the_output_folder(checkpoint, corpus, tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    wav = sorted((corpus / "audio").rglob("*.wav"))[0].read_bytes()
    for name in ("..wav", "...wav", "a b.wav", "-x.wav", "sub/..wav"):
        (src / name).write_bytes(wav)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "linked.wav").write_bytes(wav)
    os.symlink(outside, src / "link")  # a link out of the input folder
    out = tmp_path / "out"
    result = script(
        "inference.py", f"--checkpoint={checkpoint}", f"--path_in={src}", f"--path_out={out}"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    written = [p for p in tmp_path.rglob("*.pt")]
    assert written and all(
        os.path.realpath(p).startswith(str(out.resolve()) + os.sep) for p in written
    )
    assert not list(outside.glob("*.pt"))


###################################################################################################
# Wrong usage
###################################################################################################


def test_misspelt_config_key_names_the_closest_one(tmp_path):
    result = script(
        "train.py",
        "jobname=f",
        "conf=config/demo-clews.yaml",
        "traning.batchsize=2",
        f"path.logs={tmp_path}",
    )
    assert result.returncode == 2
    assert "traning" in last_line(result) and "training" in last_line(result)
    assert "Traceback" not in result.stderr


def test_missing_config_and_wrong_dataset_paths(tmp_path):
    result = script("train.py", "jobname=f", "conf=config/nope.yaml")
    assert result.returncode == 2 and "config/nope.yaml" in last_line(result)
    result = script(
        "train.py",
        "jobname=f",
        "conf=config/demo-clews.yaml",
        f"path.meta={tmp_path / 'none.pt'}",
        f"path.logs={tmp_path}",
        "fabric.accelerator=cpu",
    )
    assert result.returncode == 1 and "none.pt" in last_line(result)
    assert "Traceback" not in result.stderr
    result = script(
        "data_preproc.py",
        "--dataset=folder",
        f"--path_audio={tmp_path / 'nothing'}",
        "--ext_in=wav",
        f"--fn_out={tmp_path / 'm.pt'}",
    )
    assert result.returncode != 0 and "nothing" in last_line(result)
    assert not (tmp_path / "m.pt").exists()


def test_checkpoint_of_another_model(checkpoint, tmp_path):
    result = script(
        "test.py", f"checkpoint={checkpoint}", "conf=config/demo-dvinetp.yaml", "accelerator=cpu"
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "checkpoint_best.ckpt" in last_line(result)
    assert "Traceback" not in result.stderr


def test_empty_split_is_one_clear_line(corpus, checkpoint, tmp_path):
    info, splits = load_metadata(corpus / "meta.pt")
    splits = dict(splits, test={})
    meta = tmp_path / "empty-test.pt"
    save_metadata(meta, info, splits)
    result = script("test.py", f"checkpoint={checkpoint}", f"path_meta={meta}", "accelerator=cpu")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "empty-test.pt" in last_line(result) and "test" in last_line(result)
    assert "Traceback" not in result.stderr


###################################################################################################
# Interrupted work
###################################################################################################

# runs a script with torch.save dying (SIGKILL) halfway through writing the epoch-2
# checkpoint_last: a kill -9 that lands inside a checkpoint write, every time
DIE_IN_CHECKPOINT_WRITE = """
import io, os, runpy, signal, sys, torch
real_save = torch.save
def save(obj, handle, *args, **kwargs):
    target = os.readlink(f"/proc/self/fd/{handle.fileno()}") if hasattr(handle, "fileno") else ""
    if "checkpoint_last.ckpt" in target and isinstance(obj, dict) and obj.get("epoch") == 2:
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        handle.write(buffer.getvalue()[: buffer.tell() // 2])
        handle.flush()
        os.fsync(handle.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, handle, *args, **kwargs)
torch.save = save
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_kill_during_a_checkpoint_write_then_resume(corpus, tmp_path):
    args = train_args(
        corpus,
        tmp_path,
        "killed",
        "data.nworkers=0",
        "training.numepochs=3",
        "training.save_freq=1",
    )
    killed = run_script([sys.executable, "-c", DIE_IN_CHECKPOINT_WRITE, *args])
    assert killed.returncode == -9, killed.stderr[-2000:]
    run = tmp_path / "killed"
    half = list(run.glob("checkpoint_last.ckpt.*.tmp"))
    assert len(half) == 1  # the half-written temporary; checkpoint_last itself is untouched
    assert load_checkpoint(run / "checkpoint_last.ckpt")["epoch"] == 1
    resumed = script(*args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Removed {half[0]}" in resumed.stdout and "Resumed after epoch 1" in resumed.stdout
    assert not list(run.glob("*.tmp"))
    for path in run.glob("*.ckpt"):  # epoch0-3, best, last: every checkpoint on disk loads
        assert "model" in load_checkpoint(path), path
    assert load_checkpoint(run / "checkpoint_last.ckpt")["epoch"] == 3
    assert {p.name for p in run.glob("checkpoint_epoch*.ckpt")} == {
        f"checkpoint_epoch{e}.ckpt" for e in range(4)
    }


def test_evaluation_killed_while_embedding_resumes_where_it_stopped(data, checkpoint, tmp_path):
    root, info, splits = data
    everything = tmp_path / "all.pt"  # every version in the test split: more tracks to embed
    save_metadata(everything, info, dict(splits, test={**splits["train"], **splits["test"]}))

    def command(cache):
        args = evaluation_args(checkpoint, root, cache, "nworkers=0", meta=everything)
        return [sys.executable, *args]

    straight = run_script(command(tmp_path / "other"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        command(tmp_path / "cache"), cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        flags = list((tmp_path / "cache").rglob("done.npy"))
        if flags:
            try:
                done = int(np.load(flags[0]).sum())
            except (OSError, ValueError):
                done = 0
            if done >= 3:
                break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert 3 <= done < 9, "the kill did not land during the extraction"
    resumed = run_script(command(tmp_path / "cache"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming:" in resumed.stdout and "tracks already embedded" in resumed.stdout
    # the same scores as the run that was never interrupted
    score = [line for line in straight.stdout.splitlines() if "MAP" in line]
    assert score and score == [line for line in resumed.stdout.splitlines() if "MAP" in line]


###################################################################################################
# Distributed faults
###################################################################################################


def no_process_left(marker):
    """No process whose command line contains ``marker`` is still running."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = open(f"/proc/{entry}/cmdline", "rb").read().decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline:
                return False
    return True


def test_one_training_process_failing_stops_the_whole_run(data, tmp_path):

    root, info, splits = data
    (a0, a1, a2), _ = versions(root, info, splits, "train")
    for path in (a0, a1, a2):  # a whole clique unreadable: the process that draws it fails
        spoil(path, "corrupt", tmp_path)
    job = f"ddp-fault-{os.getpid()}"
    start = time.time()
    result = script(
        *train_args(
            root,
            tmp_path / "logs",
            job,
            "fabric.devices=2",
            "data.nworkers=1",
            "training.batchsize=1",
            "training.numepochs=2",
        )
    )
    elapsed = time.time() - start
    assert result.returncode != 0 and elapsed < 120, (result.returncode, elapsed)
    assert "every version of clique" in result.stderr and str(a0.parent) in result.stderr
    assert "another process of this run failed" in result.stderr
    assert no_process_left(f"jobname={job}")


@pytest.mark.parametrize("rank", [0, 1])
def test_one_evaluation_process_failing_stops_the_whole_run(rank, data, checkpoint, tmp_path):

    root, info, splits = data
    tracks = [p for clique in versions(root, info, splits, "test") for p in clique]
    spoil(tracks[rank], "corrupt", tmp_path)  # process r embeds tracks r, r + 2, ...
    start = time.time()
    job = f"eval-fault-{os.getpid()}-{rank}"
    result = script(
        *evaluation_args(checkpoint, root, tmp_path / "cache", "fabric.ngpus=2", f"jobname={job}")
    )
    elapsed = time.time() - start
    assert result.returncode != 0 and elapsed < 120, (result.returncode, elapsed)
    assert f"1 track(s) could not be read: {tracks[rank]}" in result.stderr
    assert "another process of this run failed" in last_line(result)
    assert no_process_left(job)


###################################################################################################
# Full disk
###################################################################################################


def file_size_limit(nbytes):
    """For ``preexec_fn``: the child cannot grow a file past ``nbytes`` (EFBIG, "File too
    large"): a full disk that needs no special file system. DataLoader workers pass tensors
    through shared-memory files, so runs under this limit use no workers."""

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return apply


def test_full_disk_while_saving_a_checkpoint(corpus, tmp_path):
    args = train_args(corpus, tmp_path, "full", "data.nworkers=0")
    first = script(*args, "training.numepochs=1")
    assert first.returncode == 0, first.stderr[-2000:]
    run = tmp_path / "full"
    before = {p.name: p.read_bytes() for p in run.glob("*.ckpt")}
    command = [sys.executable, *map(str, args), "training.numepochs=2"]
    full = run_script(command, preexec_fn=file_size_limit(200_000))
    assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr[-3000:]
    line = last_line(full)
    assert line.startswith(f"error: {run / 'checkpoint_last.ckpt'}: could not be written (File")
    assert "run the same command again" in line
    assert {p.name: p.read_bytes() for p in run.glob("*.ckpt")} == before
    assert not list(run.glob("*.tmp"))
    again = run_script(command)
    assert again.returncode == 0 and "Resumed after epoch 1" in again.stdout
    assert load_checkpoint(run / "checkpoint_last.ckpt")["epoch"] == 2


def test_full_disk_while_embedding(checkpoint, corpus, tmp_path):
    evaluation = [sys.executable, *evaluation_args(checkpoint, corpus, tmp_path / "cache")]
    full = run_script(evaluation, preexec_fn=file_size_limit(5000))
    assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr[-3000:]
    assert "z.npy: could not be written (File too large)" in last_line(full)
    assert "MAP" in run_script(evaluation).stdout  # the same command, with room, finishes

    out = tmp_path / "out"
    inference = [
        sys.executable,
        "inference.py",
        f"--checkpoint={checkpoint}",
        f"--path_in={corpus / 'audio'}",
        f"--path_out={out}",
        "--nworkers=0",
    ]
    full = run_script(inference, preexec_fn=file_size_limit(1000))
    assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr[-3000:]
    assert ".pt: could not be written (File too large)" in last_line(full)
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.tmp"))
    assert run_script(inference).returncode == 0
    assert len(list(out.rglob("*.pt"))) == 12


def can_mount_in_a_namespace():
    try:
        probe = subprocess.run(
            ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /tmp"],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


@pytest.mark.skipif(
    not can_mount_in_a_namespace(), reason="no user namespace to mount a small tmpfs in"
)
def test_really_full_disk_under_the_embedding_cache(checkpoint, corpus, tmp_path):
    """A cache on a tmpfs with 16 KiB free: memory-mapped arrays must reserve their blocks when
    made, or the first write into the map kills the process with SIGBUS and no message."""
    disk = tmp_path / "disk"
    disk.mkdir()
    fill = f"mount -t tmpfs -o size=1m tmpfs {disk} && head -c 1032192 /dev/zero > {disk}/filler"
    evaluation = evaluation_args(checkpoint, corpus, disk / "cache")
    command = ["unshare", "-rm", "sh", "-c", f'{fill} && exec "$@"', "sh", sys.executable]
    full = run_script(command + evaluation)
    assert full.returncode == 1 and "Traceback" not in full.stderr, (full.returncode, full.stderr)
    assert "could not be written (No space left on device)" in last_line(full)


@pytest.mark.skipif(
    not can_mount_in_a_namespace(), reason="no user namespace to mount a small tmpfs in"
)
def test_tiny_shared_memory_does_not_stall_the_decoding_workers(checkpoint, corpus, tmp_path):
    """A /dev/shm of 256 KiB (Docker gives 64 MB; a track is more): the workers that decode
    whole tracks hand them over through their pipe, so inference and test.py go on; through
    shared memory torch's DataLoader would wait forever."""
    mount = 'mount -t tmpfs -o size=256k tmpfs /dev/shm && exec "$@"'
    small = ["timeout", "120", "unshare", "-rm", "sh", "-c", mount]  # a stall fails in 2 min
    inference = [
        "inference.py",
        f"--checkpoint={checkpoint}",
        f"--path_in={corpus / 'audio'}",
        f"--path_out={tmp_path / 'out'}",
        "--nworkers=2",
    ]
    evaluation = evaluation_args(checkpoint, corpus, tmp_path / "cache", "nworkers=2")
    for args in (inference, evaluation):
        result = run_script([*small, "sh", sys.executable, *args])
        assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "out").rglob("*.pt"))) == 12
    assert "MAP" in result.stdout
