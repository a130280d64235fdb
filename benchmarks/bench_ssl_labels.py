"""Does self-supervised pre-training help when version labels are scarce? (issue 23; the
experiment of ``../shared/reference/multiview_ssl.md`` section 7.5 at CPU scale.)

The corpus is the demo's (``python -m lib.synth``, cover variation), its works split by number:

    test   the last --test_works works        (never trained on, never used for selection)
    valid  the --valid_works works before them (picks the best checkpoint)
    extra  the --extra_works works before them (unlabelled audio: pre-training only)
    train  the first --train_works works       (labelled; a fraction of them per budget)

Pre-training (per method of --methods and seed): ``train.py ssl.method=M`` for --pre_epochs on the
train and extra tracks, no label read; its ``encoder.pt`` is tested as it is (the zero-label MAP),
and so is the first method's epoch-0 checkpoint (``untrained``: the random encoder, the floor).
Then for every label fraction (--fractions) and seed, with ``data.label_fraction=F
data.label_seed=S seed=S``: ``scratch`` (the config from random weights) and ``<method>-ft``
(the config from the pre-trained encoder, ``checkpoint=.../encoder.pt``), --epochs each; at the
smallest fraction also ``scratch-long``, --long_epochs (96: about the training examples that a
pre-training, 1,800 steps of 8 x 2 views, plus a fine-tuning see there). Every
run trains on ``--audiolen`` s excerpts (10 s, where the demo config has 20 s: less CPU) read
from the decoded-audio cache, and is tested on the test works, whole tracks and 20 s windows
every 5 s. One table: arm x fraction, MAP mean +- s.d. over seeds at both levels, the minutes
of training (summed over seeds), and the wall time.

    .venv/bin/python -m benchmarks.bench_ssl_labels                      # the full experiment
    .venv/bin/python -m benchmarks.bench_ssl_labels --seeds 0 --fractions 0.5 --epochs 2 \\
        --pre_epochs 2 --long_epochs 4 --train_works 8 --extra_works 4 --valid_works 4 \\
        --test_works 6  # smoke

Every step is a command a user would type; logs under OUT/logs. Finished runs are reused, so an
interrupted benchmark resumes.
"""

import argparse
import json
import os
import sys
import time

from benchmarks.bench_small_recipe import LEVELS, _mean_sd, render_corpus, run
from lib.metadata import load_metadata, save_metadata

CONFIG = "config/demo-clews.yaml"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/out/ssl_labels")
    parser.add_argument("--conf", default=CONFIG)
    parser.add_argument("--methods", nargs="+", default=["contrastive", "clews"])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=12, help="scratch and fine-tuning runs")
    parser.add_argument("--pre_epochs", type=int, default=12, help="pre-training runs")
    parser.add_argument(
        "--long_epochs",
        type=int,
        default=96,
        help="scratch-long at the smallest fraction (0: none): as many training examples as"
        " a pre-training plus a fine-tuning see there, with the defaults",
    )
    parser.add_argument(
        "--audiolen", type=float, default=10.0, help="data.audiolen (s) of every train.py run"
    )
    parser.add_argument("--set", nargs="*", default=[], help="key=value for every train.py run")
    parser.add_argument("--train_works", type=int, default=200)
    parser.add_argument("--extra_works", type=int, default=100)
    parser.add_argument("--valid_works", type=int, default=20)
    parser.add_argument("--test_works", type=int, default=40)
    parser.add_argument("--versions", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--njobs", type=int, default=-1)
    return parser.parse_args(argv)


def split_by_number(cliques, n_train, n_extra, n_valid, n_test):
    """{clique: keys} -> (labelled splits, pre-training splits) by sorted clique name: the
    labelled metadata's train is the first ``n_train`` works; the pre-training metadata's train
    adds the next ``n_extra``; valid and test are the same in both."""
    works = sorted(cliques)
    total = n_train + n_extra + n_valid + n_test
    if total > len(works):
        raise ValueError(f"{total} works asked, {len(works)} available")
    start_valid = len(works) - n_test - n_valid

    def pick(names):
        return {w: cliques[w] for w in names}

    held = {
        "valid": pick(works[start_valid : start_valid + n_valid]),
        "test": pick(works[start_valid + n_valid :]),
    }
    labelled = {"train": pick(works[:n_train]), **held}
    pretraining = {"train": pick(works[: n_train + n_extra]), **held}
    return labelled, pretraining


def corpus(args, logs):
    """Render the corpus once and write both metadata files; (audio, labelled, pre-training)."""
    works = args.train_works + args.extra_works + args.valid_works + args.test_works
    audio, every = render_corpus(
        args.out, logs, works, args.versions, args.seconds, "cover", args.njobs
    )
    info, splits = load_metadata(every)
    sizes = (args.train_works, args.extra_works, args.valid_works, args.test_works)
    labelled, pretraining = split_by_number(splits["test"], *sizes)
    paths = [os.path.join(args.out, f"metadata-{n}.pt") for n in ("labelled", "pretraining")]
    for path, parts in zip(paths, (labelled, pretraining)):
        save_metadata(path, info, parts, about={"from": every, "split": "by work number"})
    return audio, *paths


def train(args, name, meta, audio, extra, logs):
    """train.py for one run (reused when it finished before); the seconds it took."""
    runs = os.path.join(args.out, "runs")
    done = os.path.join(runs, name, "seconds.txt")
    if os.path.isfile(done):
        with open(done) as handle:
            return float(handle.read())
    cmd = [sys.executable, "train.py", f"jobname={name}", f"conf={args.conf}"]
    cmd += [f"path.audio={audio}", f"path.meta={meta}", f"path.logs={runs}"]
    # The decoded-audio cache: decoding every excerpt again took half of a step's time.
    cmd += [f"data.audiolen={args.audiolen:g}", "data.decoded_cache=true"]
    cmd += [f"path.cache={os.path.join(args.out, 'cache')}", *args.set, *extra]
    seconds = run(cmd, os.path.join(logs, f"{name}-train.log"))
    with open(done, "w") as handle:
        handle.write(f"{seconds:.1f}")
    return seconds


def test(args, name, checkpoint, audio, meta, logs):
    """Test MAP at both levels of ``checkpoint`` (of run ``name``) on the test works."""
    out = {}
    for level, windows in LEVELS.items():
        folder = os.path.join(args.out, "results", name, level)
        if not os.path.isfile(os.path.join(folder, "results.json")):
            cmd = [sys.executable, "test.py", f"checkpoint={checkpoint}", *windows]
            cmd += [f"path_audio={audio}", f"path_meta={meta}", f"out={folder}"]
            cmd += [f"cache_dir={os.path.join(args.out, 'cache', 'embeddings')}"]
            run(cmd, os.path.join(logs, f"{name}-test-{level}.log"))
        with open(os.path.join(folder, "results.json")) as handle:
            out[level] = json.load(handle)["runs"][0]["MAP"]["mean"]
    return out


def labelled_run(args, arm, fraction, seed, epochs, encoder, audio, meta):
    """Train run ``arm`` on ``fraction`` of the labelled cliques (drawn with ``seed``) for
    ``epochs``, from ``encoder`` (None: random weights), and test its best checkpoint; its row."""
    name = f"{arm}-f{fraction:g}-s{seed}"
    extra = [f"data.label_fraction={fraction:g}", f"data.label_seed={seed}"]
    extra += [f"seed={seed}", f"training.numepochs={epochs}"]
    extra += [] if encoder is None else [f"checkpoint={encoder}"]
    logs = os.path.join(args.out, "logs")
    seconds = train(args, name, meta, audio, extra, logs)
    best = os.path.join(args.out, "runs", name, "checkpoint_best.ckpt")
    scores = test(args, name, best, audio, meta, logs)
    return {"arm": arm, "fraction": fraction, "seed": seed, "seconds": seconds, **scores}


def table(rows):
    """Rows {arm, fraction (None: zero-label), seed, track, 20s, seconds} -> the printed table:
    one line per arm and fraction, mean +- s.d. over seeds."""
    groups = {}
    for row in rows:
        groups.setdefault((row["arm"], row["fraction"]), []).append(row)
    head = f"{'arm':<26}{'labels':>8}{'seeds':>7}{'track MAP':>18}{'20 s MAP':>18}{'min':>8}"
    lines = [head]
    for (arm, fraction), group in sorted(groups.items(), key=lambda g: (g[0][1] or 0, g[0][0])):
        labels = "none" if fraction is None else f"{100 * fraction:g}%"
        cells = [_mean_sd([r[level] for r in group]) for level in LEVELS]
        minutes = sum(r["seconds"] for r in group) / 60
        lines.append(
            f"{arm:<26}{labels:>8}{len(group):>7}{cells[0]:>18}{cells[1]:>18}{minutes:>8.1f}"
        )
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    logs = os.path.join(args.out, "logs")
    os.makedirs(logs, exist_ok=True)
    start = time.time()
    audio, labelled, pretraining = corpus(args, logs)
    runs = os.path.join(args.out, "runs")
    rows = []
    for method in args.methods:
        for seed in args.seeds:
            name = f"pre-{method}-s{seed}"
            extra = [f"ssl.method={method}", f"seed={seed}"]
            extra.append(f"training.numepochs={args.pre_epochs}")
            seconds = train(args, name, pretraining, audio, extra, logs)
            scores = test(args, name, os.path.join(runs, name, "encoder.pt"), audio, labelled, logs)
            arm = f"{method} (no labels)"
            rows.append({"arm": arm, "fraction": None, "seed": seed, "seconds": seconds, **scores})
            if method == args.methods[0]:
                # The floor: the same encoder before pre-training (its epoch-0 checkpoint).
                before = os.path.join(runs, name, "checkpoint_epoch0.ckpt")
                scores = test(args, f"untrained-s{seed}", before, audio, labelled, logs)
                row = {"arm": "untrained", "fraction": None, "seed": seed, "seconds": 0}
                rows.append({**row, **scores})
    for fraction in args.fractions:
        for seed in args.seeds:
            starts = {"scratch": None}
            for m in args.methods:
                starts[f"{m}-ft"] = os.path.join(runs, f"pre-{m}-s{seed}", "encoder.pt")
            for arm, encoder in starts.items():
                row = labelled_run(args, arm, fraction, seed, args.epochs, encoder, audio, labelled)
                rows.append(row)
            print(table(rows), flush=True)
    if args.long_epochs:
        # The reference's fairness control: is a pre-trained arm's gain more than its extra steps?
        for seed in args.seeds:
            fraction, epochs = min(args.fractions), args.long_epochs
            row = labelled_run(args, "scratch-long", fraction, seed, epochs, None, audio, labelled)
            rows.append(row)
    text = table(rows) + f"\nwall time {(time.time() - start) / 60:.1f} min"
    print("\n" + text)
    with open(os.path.join(args.out, "table.txt"), "a") as handle:
        handle.write(text + "\n\n")


if __name__ == "__main__":
    main()
