"""Peak memory of the two jobs whose input can grow without bound, each run in a fresh process:

1. one long 44.1 kHz stereo mp3 (1 min, 10 min, 2 h) decoded whole to 16 kHz mono: how much the
   peak RSS (VmHWM) rises while decoding it block by block (``lib.audio.load_audio``) against
   the decoder it replaced (every frame kept at the file's rate, then downmixed and resampled
   at once), on the same file in the same run; and ``inference.py``'s peak on it (PSS of the
   process and its decoding workers: a page they share counts once);
2. ``test.py`` on a cached evaluation of N tracks x 56 windows x 1024-d (20 s windows every
   5 s, N = 5,000 and 20,000; 32 queries against all N candidates, the engine's block size):
   the peak PSS beyond the cache's own size should not grow with N. The cache is written
   beforehand with the entry test.py looks up (random embeddings around one centre per work),
   so no audio is embedded; the audio files are links to one short file.

    .venv/bin/python -m benchmarks.bench_memory [--hours 2] [--tracks 5000 20000] [--full]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import av
import numpy as np
import soxr
import torch
from omegaconf import OmegaConf

from benchmarks.common import music_like
from lib import extract, store
from lib.audio import load_audio, write_audio
from lib.checkpoint import load_checkpoint, run_config, save_checkpoint
from lib.dataset import Dataset
from lib.metadata import save_metadata
from lib.model_base import build_model

MiB = 2**20
QUERIES = 32  # one block of the retrieval engine


###################################################################################################
# measuring
###################################################################################################


def tree_pss(pid):
    """(total, anonymous) proportional set size in bytes of ``pid`` and its descendants: a page
    shared by a parent and its forked workers counts once, split between them (their RSS
    would count it in each)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    family, grown = {pid}, True
    while grown:
        more = {p for p, parent in parents.items() if parent in family} - family
        family |= more
        grown = bool(more)
    total = anon = 0
    for member in family:
        try:
            with open(f"/proc/{member}/smaps_rollup") as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
        except OSError:
            continue
        total += int(fields.get("Pss", "0 kB").split()[0]) * 1024
        anon += int(fields.get("Pss_Anon", "0 kB").split()[0]) * 1024
    return total, anon


def peak_rss():
    """This process's peak resident set size in bytes (VmHWM)."""
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def rss():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_measured(cmd, timeout):
    """Run ``cmd``; (seconds, peak total PSS, peak anonymous PSS, output). Fails loudly."""
    with tempfile.TemporaryFile(mode="w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
        peak = peak_anon = 0
        while proc.poll() is None:
            total, anon = tree_pss(proc.pid)
            peak, peak_anon = max(peak, total), max(peak_anon, anon)
            if time.perf_counter() - start > timeout:
                proc.kill()
                raise SystemExit(f"{' '.join(cmd)}: still running after {timeout} s")
            time.sleep(0.05)
        elapsed = time.perf_counter() - start
        log.seek(0)
        text = log.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{text[-3000:]}")
    return elapsed, peak, peak_anon, text


###################################################################################################
# 1. inference.py on a long file
###################################################################################################


def write_long_mp3(path, seconds, sr=44100, piece_seconds=60):
    """A ``seconds``-long stereo mp3 of a synthetic song looped (a gain change per loop),
    encoded block by block: the benchmark itself never holds the whole signal."""
    piece = music_like(piece_seconds, seed=1, sr=sr).astype(np.float32)
    tmp = path + ".part"
    with av.open(tmp, mode="w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=sr)
        stream.layout, stream.bit_rate = "stereo", 128000
        written, hop, loop = 0, 1152 * 16, 0
        while written < seconds * sr:
            gain = 0.6 + 0.4 * ((loop * 7) % 5) / 4
            for i in range(0, piece.shape[1], hop):
                block = np.ascontiguousarray(gain * piece[:, i : i + hop])
                block = block[:, : int(seconds * sr) - written]
                if block.shape[1] == 0:
                    break
                frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = sr, written
                for packet in stream.encode(frame):
                    container.mux(packet)
                written += block.shape[1]
            loop += 1
        for packet in stream.encode(None):
            container.mux(packet)
    os.replace(tmp, path)


def decode_at_once(path, samplerate):
    """The decoder before block-by-block decoding: every frame kept at the file's rate, joined,
    then downmixed and resampled in one go."""
    with av.open(path) as container:
        to_float = av.AudioResampler(format="fltp")
        chunks, rate = [], None
        for frame in container.decode(audio=0):
            rate = frame.sample_rate
            chunks += [f.to_ndarray() for f in to_float.resample(frame)]
    x = np.concatenate(chunks, axis=-1)
    del chunks
    y = soxr.resample(x.mean(0), rate, samplerate)
    return y / max(1.0, float(np.abs(y).max()))


def decode_child(how, path, samplerate):
    """In a child process: decode ``path`` the old or the new way and print the bytes its peak
    RSS rose by while decoding, and the output's bytes."""
    load_audio(path, samplerate, duration=1.0)  # FFmpeg's and soxr's own start-up memory
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # the peak so far (imports) is forgotten: VmHWM starts again here
    before = rss()
    y = decode_at_once(path, samplerate) if how == "at-once" else load_audio(path, samplerate)
    print(f"{peak_rss() - before} {y.nbytes}")


def decode_rise(how, path, samplerate):
    """(MiB the peak RSS rose by while decoding, output MiB, seconds), in a fresh process."""
    cmd = [sys.executable, "-m", "benchmarks.bench_memory", "--decode", how, path,
           f"--rate={samplerate}"]
    elapsed, _, _, text = run_measured(cmd, timeout=3600)
    rise, nbytes = map(int, text.split()[-2:])
    return rise / MiB, nbytes / MiB, elapsed


def make_checkpoint(path, name, zdim=None, samplerate=None):
    """A checkpoint of config/<name>.yaml with random weights (memory does not depend on them),
    with another embedding size or sample rate if given."""
    conf = OmegaConf.load(f"config/{name}.yaml")
    if zdim is not None:
        conf.model.zdim = zdim
    if samplerate is not None:
        conf.data.samplerate = samplerate
    torch.manual_seed(0)
    model = build_model(conf.model, sr=conf.data.samplerate)
    save_checkpoint({"model": model.state_dict(), "conf": OmegaConf.to_container(conf)}, path)
    return model


def inference_part(args, out):
    name = "dvi2-clews" if args.full else "demo-clews"
    ckpt = os.path.join(out, f"{name}-random.ckpt")
    model = make_checkpoint(ckpt, name, samplerate=16000)  # the rate of every full-size config
    params = sum(p.numel() for p in model.parameters())
    print(f"1. one 44.1 kHz stereo mp3, decoded to {model.sr} Hz mono; each run in a fresh "
          "process. Decoding: how much the peak RSS rose while decoding the whole file, at once "
          f"(before) and block by block (now). inference.py ({name}, {params:,} parameters, "
          "20 s windows every 5 s): peak PSS of the process and its decoding workers.")
    first = None
    for seconds in sorted({60, 600, args.hours * 3600}):
        path = os.path.join(out, f"long-{seconds:.0f}s.mp3")
        if not os.path.isfile(path):
            start = time.perf_counter()
            write_long_mp3(path, seconds)
            print(f"   (wrote {path}: {os.path.getsize(path) / MiB:.0f} MiB in "
                  f"{time.perf_counter() - start:.0f} s)")
        native = seconds * 44100 * 2 * 4 / MiB
        old, output, old_s = decode_rise("at-once", path, model.sr)
        new, _, new_s = decode_rise("blocks", path, model.sr)
        fn_out = os.path.join(out, f"long-{seconds:.0f}s.pt")
        elapsed, peak, _, _ = run_measured(
            [sys.executable, "inference.py", f"--checkpoint={ckpt}", f"--fn_in={path}",
             f"--fn_out={fn_out}", "--win_len=20", "--hop_size=5", "--overwrite"], timeout=7200)
        windows = torch.load(fn_out).shape[0]
        first = peak if first is None else first
        print(f"   {seconds / 60:5.0f} min ({native:,.0f} MiB at 44.1 kHz stereo float32, output "
              f"{output:,.0f} MiB): decoding +{old:,.0f} MiB at once ({old_s:.1f} s) vs "
              f"+{new:,.0f} MiB by blocks ({new_s:.1f} s): {old / new:.1f}x less; inference.py "
              f"peak {peak / MiB:,.0f} MiB (+{(peak - first) / MiB:,.0f} MiB over 1 min; "
              f"{windows} windows, {elapsed:.0f} s)")


###################################################################################################
# 2. test.py on a cached evaluation of N tracks
###################################################################################################


def write_metadata(path, ntracks, per_work=4):
    """A test partition of ``ntracks`` tracks in works of ``per_work``; the first QUERIES are
    labelled dvi:True (the queries)."""
    info, cliques = {}, {}
    for i in range(ntracks):
        work = f"w{i // per_work:05d}"
        key = f"{work}/v{i % per_work}"
        info[key] = {"id": i, "clique": work, "version": f"v{i % per_work}",
                     "filename": f"{key}.wav", "dvi": i < QUERIES}
        cliques.setdefault(work, []).append(key)
    save_metadata(path, info, {"train": {}, "valid": {}, "test": cliques})
    return info


def link_audio(root, info, audio_name):
    for entry in info.values():
        path = os.path.join(root, entry["filename"])
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.symlink(os.path.abspath(audio_name), path)


def seed_cache(ckpt, meta, audio_root, cache_dir, windows, dim, seed=0):
    """Write the cache entry test.py will look up for this checkpoint, metadata and windows
    (its config read as test.py reads it, ``extract.cache_parts`` / ``cache_entry``), through
    the sharded writer of test.py's extraction. Returns (folder, size in bytes)."""
    conf, _ = run_config(ckpt, load_checkpoint(ckpt))
    conf.path.audio, conf.path.meta = audio_root, meta
    conf.data.path = conf.path
    dataset = Dataset(conf.data, "test", fullsongs=True, checks=True)
    keys = list(dataset.versions)
    parts = extract.cache_parts(ckpt, OmegaConf.to_container(conf.model, resolve=True), "test",
                                dataset, keys, "32-true")
    folder, key = extract.cache_entry(cache_dir, parts, windows)
    if extract.load_store(folder, key) is not None:
        return folder, os.path.getsize(os.path.join(folder, "z.npy"))
    os.makedirs(folder, exist_ok=True)
    n, nwin = len(keys), windows.nwin
    shard = store.open_shard(folder, 0, 1, n, nwin, dim)
    rng = np.random.default_rng(seed)
    step = 1000
    for first in range(0, n, step):
        rows = range(first, min(n, first + step))
        works = np.array([dataset.clique_id[dataset.clique_of[keys[r]]] for r in rows])
        centres = np.random.default_rng(works[:, None] + seed).standard_normal((len(rows), 1, dim))
        noise = rng.standard_normal((len(rows), nwin, dim))
        z = centres + 1.5 * noise
        z /= np.linalg.norm(z, axis=-1, keepdims=True)
        shard["z"][rows.start : rows.stop] = z.astype(np.float16)
        shard["mask"][rows.start : rows.stop] = False
        shard["done"][rows.start : rows.stop] = True
    store.flush_shard(shard)
    del shard
    extract.merge_shards(folder, key, keys, dataset, 1, extract.cache_manifest(windows, parts))
    if extract.load_store(folder, key) is None:
        raise SystemExit(f"{folder}: the seeded cache does not read back")
    return folder, os.path.getsize(os.path.join(folder, "z.npy"))


def evaluation_part(args, out):
    dim, slen, shop, maxlen = 1024, 20.0, 5.0, 295.0
    ckpt = os.path.join(out, "demo-clews-1024.ckpt")
    model = make_checkpoint(ckpt, "demo-clews", zdim=dim)
    windows = extract.settings_for(model, slen, shop, maxlen)
    audio = os.path.join(out, "short.wav")
    write_audio(audio, np.zeros(model.sr, np.float32) + 0.01, model.sr)
    print(f"\n2. test.py, {QUERIES} queries against N tracks x {windows.nwin} windows x {dim}-d "
          f"fp16 from the cache ({slen:g} s windows every {shop:g} s, bpwr-10):")
    base = None
    for n in args.tracks:
        root = os.path.join(out, f"eval-{n}")
        meta = os.path.join(root, "metadata.pt")
        info = write_metadata(meta, n)
        link_audio(os.path.join(root, "audio"), info, audio)
        start = time.perf_counter()
        folder, size = seed_cache(ckpt, meta, os.path.join(root, "audio"),
                                  os.path.join(root, "cache"), windows, dim)
        seeded = time.perf_counter() - start
        cmd = [sys.executable, "test.py", f"checkpoint={ckpt}", f"path_meta={meta}",
               f"path_audio={os.path.join(root, 'audio')}",
               f"cache_dir={os.path.join(root, 'cache')}",
               f"qslen={slen}", f"qshop={shop}", f"cslen={slen}", f"cshop={shop}",
               f"maxlen={maxlen}", "redux=bpwr-10", "qfilter=dvi:True", "nworkers=0",
               "fabric.accelerator=cpu", f"out={os.path.join(root, 'results')}"]
        elapsed, peak, anon, text = run_measured(cmd, timeout=3600)
        if "from the cache" not in text:
            raise SystemExit(f"test.py did not use the seeded cache {folder}:\n{text[-2000:]}")
        beyond = (peak - size) / MiB
        base = beyond if base is None else base
        print(f"   N = {n:6,}: cache {size / MiB:6,.0f} MiB (written in {seeded:.0f} s); test.py "
              f"peak PSS {peak / MiB:6,.0f} MiB (anonymous {anon / MiB:,.0f} MiB), "
              f"{beyond:,.0f} MiB beyond the cache ({beyond / base:.2f}x the smallest N), "
              f"{elapsed:.0f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=2.0, help="length of the long file")
    parser.add_argument("--tracks", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--full", action="store_true", help="full-size CLEWS for part 1")
    parser.add_argument("--skip", default="", help="parts to skip, e.g. 2")
    parser.add_argument("--out", default="benchmarks/out/memory")
    parser.add_argument("--decode", nargs=2, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=int, default=16000, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.decode:  # a child process of part 1
        decode_child(*args.decode, args.rate)
        return
    os.makedirs(args.out, exist_ok=True)
    if "1" not in args.skip:
        inference_part(args, args.out)
    if "2" not in args.skip:
        evaluation_part(args, args.out)


if __name__ == "__main__":
    main()
