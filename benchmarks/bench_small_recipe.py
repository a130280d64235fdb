"""Small-collection recipes on re-arranged versions (issue 20): how much MAP a CPU training run
adds over the untrained model on works it never saw, for CLEWS and the triplet baseline.

The corpus is ``python -m lib.synth --variation arrangement`` (every version re-arranged:
instruments, accompaniment, voicings, drums, ornaments, key, tempo, structure, mix). Its works are
split once and for all, by number, so that every run is measured on the same held-out works:

    test   the last --test_works works          (never trained on, never used for selection)
    valid  the --valid_works works before them  (picks the best checkpoint)
    train  the first --train_works works

For each config and seed: train.py (the config's own epochs, its checkpoint_epoch0.ckpt is the
untrained model), then test.py on the test works, whole tracks and 20 s windows every 5 s. One
table: model, seed, untrained and trained MAP at both levels, training wall time; then mean +- s.d.
over seeds per model.

    .venv/bin/python -m benchmarks.bench_small_recipe                      # both configs, 3 seeds
    .venv/bin/python -m benchmarks.bench_small_recipe --configs config/small-clews.yaml \
        --seeds 0 --set training.numepochs=10 data.audiolen=16            # one experiment

Every step is a command a user would type; their logs are under OUT/logs. Runs that finished are
reused (same config, seed and overrides), so an interrupted benchmark resumes.
"""

import argparse
import hashlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time

from lib.metadata import load_metadata, save_metadata

LEVELS = {
    "track": ["qslen=-1", "cslen=-1"],
    "20s": ["qslen=20", "qshop=5", "cslen=20", "cshop=5"],
}
CHECKPOINTS = {"untrained": "checkpoint_epoch0.ckpt", "trained": "checkpoint_best.ckpt"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/out/small_recipe")
    parser.add_argument(
        "--configs", nargs="+", default=["config/small-clews.yaml", "config/small-dvinetp.yaml"]
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], help="key=value overrides for train.py")
    parser.add_argument("--tag", default=None, help="name of the runs (default: from --set)")
    parser.add_argument("--works", type=int, default=800, help="works in the corpus")
    parser.add_argument("--versions", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--train_works", type=int, default=500)
    parser.add_argument("--valid_works", type=int, default=50)
    parser.add_argument("--test_works", type=int, default=100)
    parser.add_argument("--njobs", type=int, default=-1)
    args = parser.parse_args(argv)
    spare = args.works - args.valid_works - args.test_works
    if not 2 <= args.train_works <= spare or args.valid_works < 2 or args.test_works < 2:
        parser.error(f"need 2 <= --train_works <= {spare} and at least 2 valid and test works")
    return args


def run(cmd, log):
    """Run ``cmd`` from the repository root, its output into ``log``; seconds it took."""
    start = time.time()
    print(f"$ {shlex.join(cmd)}", flush=True)
    with open(log, "w") as handle:
        rc = subprocess.call(cmd, stdout=handle, stderr=subprocess.STDOUT)
    if rc != 0:
        sys.exit(f"error: exit status {rc} of {cmd[1]}; see {log}")
    return time.time() - start


def render_corpus(out, logs, works, versions, seconds, variation, njobs, samplerate=16000):
    """Render ``works`` x ``versions`` synthetic versions (seed 0, ``python -m lib.synth``) into
    OUT/audio and index them all in one split, once (reused after). Returns (audio folder,
    metadata file)."""
    audio = os.path.join(out, "audio")
    if not os.path.isfile(os.path.join(audio, ".complete")):
        cmd = [sys.executable, "-m", "lib.synth", f"--out={audio}", f"--works={works}"]
        cmd += [f"--versions={versions}", f"--seconds={seconds:g}", "--seed=0"]
        cmd += [f"--variation={variation}", f"--njobs={njobs}", f"--samplerate={samplerate}"]
        run(cmd, os.path.join(logs, "corpus.log"))
        open(os.path.join(audio, ".complete"), "w").close()
    every = os.path.join(out, "metadata-all.pt")
    if not os.path.isfile(every):
        cmd = [sys.executable, "data_preproc.py", "--dataset=folder", f"--path_audio={audio}"]
        cmd += ["--ext_in=any", "--split=0,0,1", f"--njobs={njobs}", f"--fn_out={every}"]
        run(cmd, os.path.join(logs, "preproc.log"))
    return audio, every


def corpus(args, logs):
    """Render the corpus once, then the metadata file with the fixed split. Returns (audio
    folder, metadata file)."""
    audio, every = render_corpus(
        args.out, logs, args.works, args.versions, args.seconds, "arrangement", args.njobs
    )
    meta = os.path.join(
        args.out, f"metadata-{args.train_works}-{args.valid_works}-{args.test_works}.pt"
    )
    if not os.path.isfile(meta):
        info, splits = load_metadata(every)
        fixed = fixed_split(splits["test"], args.train_works, args.valid_works, args.test_works)
        save_metadata(meta, info, fixed, about={"from": every, "split": "by work number"})
    return audio, meta


def fixed_split(cliques, n_train, n_valid, n_test):
    """{clique: [keys]} -> {"train", "valid", "test": {clique: [keys]}} by sorted clique name:
    test the last ``n_test``, valid the ``n_valid`` before them, train the first ``n_train``
    (the same test and valid works whatever ``n_train``)."""
    works = sorted(cliques)
    if n_train + n_valid + n_test > len(works):
        raise ValueError(
            f"{n_train} + {n_valid} + {n_test} = {n_train + n_valid + n_test} works asked, "
            f"{len(works)} available"
        )
    parts = {
        "train": works[:n_train],
        "valid": works[len(works) - n_test - n_valid : len(works) - n_test],
        "test": works[len(works) - n_test :],
    }
    return {name: {w: cliques[w] for w in chosen} for name, chosen in parts.items()}


def run_name(conf, seed, overrides, tag):
    model = os.path.splitext(os.path.basename(conf))[0]
    if tag is None and overrides:
        tag = hashlib.sha1(" ".join(overrides).encode()).hexdigest()[:8]
    return f"{model}-{tag}-s{seed}" if tag else f"{model}-s{seed}"


def train_and_test(args, conf, seed, audio, meta, logs):
    """One row: {model, seed, untrained/trained MAP per level, seconds}; reused when done."""
    name = run_name(conf, seed, args.set, args.tag)
    runs = os.path.join(args.out, "runs")
    row_file = os.path.join(runs, name, "row.json")
    if os.path.isfile(row_file):
        with open(row_file) as handle:
            return json.load(handle)
    cmd = [sys.executable, "train.py", f"jobname={name}", f"conf={conf}", f"seed={seed}"]
    cmd += [f"path.audio={audio}", f"path.meta={meta}", f"path.logs={runs}"]
    # a cache of its own: every run's time includes decoding the audio once (data.decoded_cache)
    cache = os.path.join(runs, name, "cache")
    cmd += [f"path.cache={cache}", *args.set]
    seconds = run(cmd, os.path.join(logs, f"{name}-train.log"))
    shutil.rmtree(cache, ignore_errors=True)
    row = {"run": name, "seed": seed, "overrides": args.set, "train_seconds": seconds}
    for model, checkpoint in CHECKPOINTS.items():
        for level, windows in LEVELS.items():
            out = os.path.join(args.out, "results", name, f"{model}-{level}")
            cmd = [sys.executable, "test.py", f"checkpoint={os.path.join(runs, name, checkpoint)}"]
            cmd += windows + [f"cache_dir={os.path.join(args.out, 'cache', 'embeddings')}"]
            run(cmd + [f"out={out}"], os.path.join(logs, f"{name}-test-{model}-{level}.log"))
            with open(os.path.join(out, "results.json")) as handle:
                row[f"{model}_{level}"] = json.load(handle)["runs"][0]["MAP"]["mean"]
    with open(row_file, "w") as handle:
        json.dump(row, handle, indent=1)
    return row


def table(rows):
    head = f"{'run':<32}{'untrained':>18}{'trained':>18}{'gain':>18}{'train':>9}"
    lines = [head, f"{'':<32}" + f"{'track   20 s':>18}" * 3 + f"{'min':>9}"]

    def cells(values):
        return "".join(f"{a:>10.3f}{b:>8.3f}" for a, b in values)

    for row in rows:
        pairs = [(row[f"{m}_track"], row[f"{m}_20s"]) for m in CHECKPOINTS]
        gain = (pairs[1][0] - pairs[0][0], pairs[1][1] - pairs[0][1])
        lines.append(f"{row['run']:<32}{cells(pairs + [gain])}{row['train_seconds'] / 60:>9.1f}")
    by_model = {}
    for row in rows:
        by_model.setdefault(row["run"].rsplit("-s", 1)[0], []).append(row)
    lines.append("mean +- s.d. over seeds (gain = trained - untrained)")
    for model, group in by_model.items():
        parts = [_mean_sd([r[f"trained_{level}"] for r in group]) for level in LEVELS]
        parts += [
            _mean_sd([r[f"trained_{level}"] - r[f"untrained_{level}"] for r in group])
            for level in LEVELS
        ]
        lines.append(
            f"  {model} ({_seeds(len(group))}): trained MAP track {parts[0]}, 20 s {parts[1]}; "
            f"gain track {parts[2]}, 20 s {parts[3]}"
        )
    lines += _paired_differences(by_model)
    return "\n".join(lines)


def _paired_differences(by_model):
    """Lines comparing the first model with each other one on the seeds both ran: the trained
    MAP difference per seed, mean +- s.d. (the seed fixes the initial weights' random stream and
    the batches, so pairing removes part of the seed-to-seed spread)."""
    models = list(by_model)
    first = {r["seed"]: r for r in by_model[models[0]]} if models else {}
    lines = []
    for other in models[1:]:
        second = {r["seed"]: r for r in by_model[other]}
        seeds = sorted(set(first) & set(second))
        if not seeds:
            continue
        parts = [
            _mean_sd([first[s][f"trained_{lv}"] - second[s][f"trained_{lv}"] for s in seeds])
            for lv in LEVELS
        ]
        lines.append(
            f"  {models[0]} - {other}, paired by seed ({_seeds(len(seeds))}): trained MAP "
            f"track {parts[0]}, 20 s {parts[1]}"
        )
    return lines


def _mean_sd(values):
    """'mean +-s.d.'; one value has no s.d. (printed as n/a, not as a spread of 0)."""
    sd = f"{statistics.stdev(values):.3f}" if len(values) > 1 else "n/a"
    return f"{statistics.mean(values):.3f} +-{sd}"


def _seeds(count):
    return f"{count} seed" + ("" if count == 1 else "s")


def main(argv=None):
    args = parse_args(argv)
    logs = os.path.join(args.out, "logs")
    os.makedirs(logs, exist_ok=True)
    audio, meta = corpus(args, logs)
    _, splits = load_metadata(meta)
    sizes = {s: (len(c), sum(map(len, c.values()))) for s, c in splits.items()}
    print("works (tracks): " + ", ".join(f"{s} {w} ({t})" for s, (w, t) in sizes.items()))
    rows = []
    for conf in args.configs:
        for seed in args.seeds:
            rows.append(train_and_test(args, conf, seed, audio, meta, logs))
            print(table(rows), flush=True)
    print("\n" + table(rows))
    with open(os.path.join(args.out, "table.txt"), "a") as handle:
        handle.write(table(rows) + "\n\n")


if __name__ == "__main__":
    main()
