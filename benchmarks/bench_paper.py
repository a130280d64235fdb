"""The paper's experiments at laptop scale (issue 34): every model of the paper, trained with the
same CPU budget on weak-label corpora and on an arrangement corpus, 3 seeds, evaluated with the
paper's protocol at track level and at segment level; then CLEWS's ablations.

Corpora (8 kHz, 4 versions per work, split once by work number, ``fixed_split``):

    partial      python -m lib.synth --variation partial: each version (key, tempo, structure,
                 mix, sometimes the lead instrument) is a 20-50% part of its 90 s work inside a
                 60-180 s track of other music (weak labels: most segments match nothing);
                 220 / 10 / 40 training / validation / test works
    scores       python -m lib.score_corpus: the same on real compositions (music21's scores
                 through FluidSynth); 120 / 10 / 40 works
    arrangement  python -m lib.synth --variation arrangement: 30 s versions re-arranged
                 throughout (every 20 s window of a version has a counterpart in the others);
                 220 / 10 / 40 works
    (partial-arrangement: partial, re-arranged as well; only with --corpora)

Models: ``config/small-<model>.yaml`` (CLEWS, DVINet+, CQTNet, ByteCover2x, ByteCover3x,
CoverHunter-C, MOVE on the pitch classes of the audio), each at the learning rate it does best
with on the validation works (0.25x / 1x / 4x its config's, seed 0, first), trained by
``train.py`` for as many steps as fill the corpus's budget (``CORPORA``, ``STEP_SECONDS``: the
same minutes of 2 cores for every model) on the corpus's excerpts, and tested by ``test.py`` on
the held-out works: whole tracks (MAP, MR1 and the paper's NAR = ``ARP``) and query windows of
10, 20, 30 and 60 s (back to back over the query track) against candidate windows of 20 s every
5 s, reduced with each model's reduction (the original's segment-level evaluation). The floor:
each model's untrained weights (``checkpoint_epoch0.ckpt`` of seed 0) and two training-free
pitch-class baselines.

    .venv/bin/python -m benchmarks.bench_paper                    # everything (hours on 2 cores)
    .venv/bin/python -m benchmarks.bench_paper --corpora partial --models clews dvinetp \\
        --seeds 0 --ablations none                                # a part of it
    .venv/bin/python -m benchmarks.bench_paper --table            # the tables of what ran

``benchmarks/paper_analysis.py`` splits the segment-level results by where each query window
and each relevant pair meet the work (``spans.json``).

Each finished run is one small JSON file in ``--results`` (kept in the repository), so a run
that was interrupted, or that ran in another session, is reused and not trained again; the audio,
checkpoints and logs stay under ``--out``.
"""

import argparse
import glob
import itertools
import json
import os
import statistics
import sys

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from benchmarks.bench_small_recipe import fixed_split, render_corpus, run
from lib.metadata import load_metadata, save_metadata
from lib.metrics import random_ranking_ap
from lib.synth import SPANS_FILE

# excerpts: the partial corpus trains on 60 s excerpts of its 60-180 s tracks (the paper: 150 s of
# tracks of about 4 min), so that two excerpts of versions of a work hold the same passage of it
# often enough (``excerpt_overlap``: 46% of pairs at 60 s, 7% at 20 s); the models that embed a
# whole excerpt at once (the paper's 150 s shingles) get 60 s shingles there
WHOLE_EXCERPT = ("dvinetp", "cqtnet", "bytecover2x", "move")
CORPORA = {
    "partial": {"source": "synth", "variation": "partial", "seconds": 90.0,
                "works": (220, 10, 40), "excerpt": 60, "budget_min": 10},
    "scores": {"source": "scores", "variation": "partial", "seconds": 90.0,
               "works": (120, 10, 40), "excerpt": 60, "budget_min": 10},
    "arrangement": {"source": "synth", "variation": "arrangement", "seconds": 30.0,
                    "works": (220, 10, 40), "excerpt": 20, "budget_min": 8},
    # the first weak-label corpus tried: re-arranged partial versions; CLEWS learned next to
    # nothing from it in 10 minutes (track MAP 0.046 -> 0.061), so it is not run by default
    "partial-arrangement": {"source": "synth", "variation": "partial-arrangement",
                            "seconds": 90.0, "works": (220, 10, 40), "excerpt": 60,
                            "budget_min": 10},
}
DEFAULT_CORPORA = ("partial", "arrangement", "scores")  # the two first
MODELS = ("clews", "dvinetp", "cqtnet", "bytecover2x", "bytecover3x", "coverhunterc", "move")
NAMES = {
    "clews": "CLEWS",
    "dvinetp": "DVINet+",
    "cqtnet": "CQTNet",
    "bytecover2x": "ByteCover2x",
    "bytecover3x": "ByteCover3x",
    "coverhunterc": "CoverHunter-C",
    "move": "MOVE",
}
# seconds of one training step (8 anchors x 4 versions) on 2 cores by excerpt length, measured
# with --measure_steps on an otherwise idle machine (forward, backward and Adam on random audio);
# a run gets the steps that fill its corpus's budget, with STEP_OVERHEAD for loading and
# validation
STEP_SECONDS = {
    20: {"clews": 1.08, "dvinetp": 1.34, "cqtnet": 1.41, "bytecover2x": 0.94,
         "bytecover3x": 1.08, "coverhunterc": 1.26, "move": 0.46},
    60: {"clews": 3.34, "dvinetp": 5.48, "cqtnet": 5.64, "bytecover2x": 3.13,
         "bytecover3x": 3.47, "coverhunterc": 7.63, "move": 6.00},
}
STEP_OVERHEAD = 1.15
STEPS_PER_EPOCH = 50  # training.numepochs x limit_batches = the budget's steps
# CLEWS's ablations (the paper's section 5.3), on the weak-label corpus: train.py overrides
ABLATIONS = {
    "pos-mean": ["model.loss.redux.pos=mean"],
    "pos-min": ["model.loss.redux.pos=min"],
    "pos-best-1": ["model.loss.redux.pos=best-1"],
    "pos-max": ["model.loss.redux.pos=max"],
    # not in the list: best-1 is min by definition (the mean of the 1 best segment pair),
    # best-5 the mean of the 5 best pairs with replacement: bpwr-5 without its disjointness
    "pos-best-5": ["model.loss.redux.pos=best-5"],
    # not in the paper's ablations: fewer best pairs without replacement, as the DVI2 fork's
    # configs for its own data (bpwr-3, bpwr-2); ``shingle_facts`` counts the pairs that can match
    "pos-bpwr-3": ["model.loss.redux.pos=bpwr-3"],
    "pos-bpwr-2": ["model.loss.redux.pos=bpwr-2"],
    "neg-mean": ["model.loss.redux.neg=mean"],
    "gamma-2": ["model.loss.gamma=2"],
    "gamma-10": ["model.loss.gamma=10"],
    # not in the paper's ablations: its shingle length (20 s, the candidate windows') instead of
    # the small recipe's 10 s
    "shingles-20": ["model.shingling.len=20", "model.shingling.hop=20"],
    # nor this: the whole 60 s excerpt as one shingle, as the models that lead on the weak-label
    # corpus embed it (DVINet+, ByteCover2x): CLEWS's loss then meets one segment pair per pair of
    # excerpts, and its reductions are that pair's distance
    "shingles-60": ["model.shingling.len=60", "model.shingling.hop=60"],
    # not in the paper's ablations either: the batch layout, a suspect of the issue's. The same
    # 32 excerpts per step as 16 works x 2 versions (twice the works to contrast, one positive
    # per anchor), and the paper's 4 versions of twice the works (64 excerpts per step: half the
    # steps fill the budget, ``budget``)
    "batch-16x2": ["training.batchsize=16", "data.n_per_class=2"],
    "batch-16": ["training.batchsize=16"],
}
ABLATION_CORPUS = "partial"
# learning-rate tuning, the same for every model: its config's rate times each factor, seed 0, the
# tuning corpus's budget, judged by the mean MAP of every level on the validation works only; the
# chosen rate then trains every seed of every corpus
TUNING_CORPUS = "partial"
LR_FACTORS = (0.25, 1.0, 4.0)
LR_EXTEND = 2  # extra factors beyond an end of the grid that scored best (tuning_grid)
TUNING_FILE = "tuning.json"
CANDIDATE_LENGTH, CANDIDATE_HOP = 20, 5  # seconds (the original's default hop)
METRICS = ("MAP", "MR1", "ARP")
IN_WORK = " (work only)"  # a floor on the test tracks cut to where they play their work
# the trained model is the last epoch's: the validation excerpts start at 0 s, where a partial
# version mostly plays other music, so validation MAP cannot pick a checkpoint there
CHECKPOINTS = {"untrained": "checkpoint_epoch0.ckpt", "trained": "checkpoint_last.ckpt"}
ANALYSIS_FILE = "analysis.json"  # benchmarks/paper_analysis.py's, beside the rows
UNTUNED = "untuned"  # the subfolder of --results for rows trained at a rate tuning did not choose
UNTRAINED_SEED = 0  # the untrained floor: the first seed's initial weights of each model


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/out/paper", help="audio, runs and logs")
    parser.add_argument(
        "--results", default="benchmarks/results/paper", help="one JSON file per finished run"
    )
    parser.add_argument(
        "--corpora", nargs="+", choices=list(CORPORA), default=list(DEFAULT_CORPORA)
    )
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--ablations",
        nargs="+",
        default=list(ABLATIONS),
        help=f"CLEWS variants on the {ABLATION_CORPUS} corpus ({', '.join(ABLATIONS)}) or none",
    )
    parser.add_argument("--query_lengths", type=int, nargs="+", default=[10, 20, 30, 60])
    parser.add_argument(
        "--lr_factors", type=float, nargs="+", default=list(LR_FACTORS), help="learning rates "
        f"tried per model on {TUNING_CORPUS}'s validation works, as multiples of its config's "
        "(1 alone: no tuning)"
    )
    parser.add_argument(
        "--lr_extend", type=int, default=LR_EXTEND, help="while the best rate is at an end of "
        "the grid, try the next multiple beyond it, at most this many more"
    )
    parser.add_argument("--train_works", type=int, default=None, help="(default: the corpus's)")
    parser.add_argument("--valid_works", type=int, default=None)
    parser.add_argument("--test_works", type=int, default=None)
    parser.add_argument("--versions", type=int, default=4)
    parser.add_argument("--njobs", type=int, default=-1)
    parser.add_argument(
        "--epochs", type=int, default=None, help="whole epochs for every model (a smoke run; "
        "default: the steps of the corpus's budget, STEP_SECONDS)"
    )
    parser.add_argument(
        "--budget_min", type=float, default=None, help="minutes of training per run instead of "
        "the corpus's (its runs are the variant '<N>min', in a table of their own)"
    )
    parser.add_argument("--table", action="store_true", help="only print the tables of --results")
    parser.add_argument(
        "--measure_steps",
        action="store_true",
        help="only time one training step of every model at each excerpt length (STEP_SECONDS)",
    )
    args = parser.parse_args(argv)
    args.ablations = [] if args.ablations == ["none"] else args.ablations
    unknown = sorted(set(args.ablations) - set(ABLATIONS))
    if unknown:
        parser.error(f"unknown ablation(s) {', '.join(unknown)}; valid: {', '.join(ABLATIONS)}")
    if 1.0 not in args.lr_factors or min(args.lr_factors) <= 0:
        parser.error("--lr_factors must be > 0 and include 1 (the config's rate)")
    if args.lr_extend < 0:
        parser.error(f"--lr_extend must be >= 0, got {args.lr_extend}")
    if args.budget_min is not None and args.budget_min <= 0:
        parser.error(f"--budget_min must be > 0, got {args.budget_min:g}")
    given = [n for n in (args.train_works, args.valid_works, args.test_works) if n is not None]
    if given and min(given) < 2:
        parser.error("need at least 2 training, validation and test works")
    return args


###################################################################################################
# Corpora
###################################################################################################


def corpus_sizes(args, name):
    """(training, validation, test) works of corpus ``name``: its own, or the command line's."""
    own = CORPORA[name]["works"]
    given = (args.train_works, args.valid_works, args.test_works)
    return tuple(g if g is not None else o for g, o in zip(given, own))


def scores_command(audio, works, versions, njobs, work_seconds):
    """The command that renders the real-composition corpus (``lib.score_corpus``, partial
    versions of works of ``work_seconds``, at 8 kHz, seed 0) into ``audio``; ``lib.synth``'s
    corpora are rendered by ``bench_small_recipe.render_corpus``, which then indexes either."""
    cmd = [sys.executable, "-m", "lib.score_corpus", f"--out={audio}", f"--works={works}"]
    cmd += [f"--versions={versions}", "--seed=0", "--samplerate=8000", "--variation=partial"]
    return cmd + [f"--work_seconds={work_seconds:g}", f"--njobs={njobs}"]


def corpus(args, name):
    """Render corpus ``name`` once and write its metadata with the fixed split (reused after).
    Returns (audio folder, metadata file)."""
    out = os.path.join(args.out, name)
    logs = os.path.join(out, "logs")
    os.makedirs(logs, exist_ok=True)
    sizes = corpus_sizes(args, name)
    spec = CORPORA[name]
    audio = os.path.join(out, "audio")
    if spec["source"] == "scores" and not os.path.isfile(os.path.join(audio, ".complete")):
        command = scores_command(audio, sum(sizes), args.versions, args.njobs, spec["seconds"])
        run(command, os.path.join(logs, "corpus.log"))
        open(os.path.join(audio, ".complete"), "w").close()
    audio, every = render_corpus(
        out, logs, sum(sizes), args.versions, spec["seconds"], spec["variation"], args.njobs, 8000
    )
    meta = os.path.join(out, "metadata-{}-{}-{}.pt".format(*sizes))
    if not os.path.isfile(meta):
        info, splits = load_metadata(every)
        fixed = fixed_split(splits["test"], *sizes)
        save_metadata(meta, info, fixed, about={"from": every, "split": "by work number"})
    return audio, meta


def work_time(span, start, end):
    """The work's own time (s) heard between ``start`` and ``end`` s of a version whose
    ``spans.json`` entry is ``span``, as (first, last), or None when that stretch holds none of it
    (the version plays its part of the work at a constant rate)."""
    low, high = max(start, span["start"]), min(end, span["end"])
    if high <= low:
        return None
    rate = (span["work_end"] - span["work_start"]) / (span["end"] - span["start"])
    return (span["work_start"] + (low - span["start"]) * rate,
            span["work_start"] + (high - span["start"]) * rate)


def same_passage(x, y, passage_s):
    """Whether two stretches of work time (``work_time``) share ``passage_s`` s or more."""
    return x is not None and y is not None and min(x[1], y[1]) - max(x[0], y[0]) >= passage_s


def excerpt_draws(spans, keys, excerpt_s, draws, seed):
    """Training excerpts of ``excerpt_s`` s drawn as the training loader draws them: for every
    ordered pair of versions of one work among the files ``keys`` (work/version.ext), ``draws``
    uniform starts of each; yields (``spans.json`` entry of a, start of a, entry of b, start of b),
    starts in seconds."""
    rng = np.random.default_rng(seed)
    works = {}
    for key in keys:
        works.setdefault(key.split("/")[0], []).append(spans[key])
    for versions in works.values():
        for a, b in itertools.permutations(versions, 2):
            for _ in range(draws):
                start_a = rng.uniform(0, max(0.0, a["duration"] - excerpt_s))
                start_b = rng.uniform(0, max(0.0, b["duration"] - excerpt_s))
                yield a, start_a, b, start_b


def excerpt_overlap(spans, keys, excerpt_s, draws=20, passage_s=5.0, seed=0):
    """How often random training excerpts of ``excerpt_s`` s of two versions of one work hold
    music of that work, from ``spans.json`` (``spans``) of the files ``keys`` (work/version.ext):
    {"one": an excerpt holds some of its work, "both": both excerpts of a version pair do, "same":
    they hold the same passage of the work (at least ``passage_s`` s of its own time in common)},
    over ``draws`` uniform starts per ordered pair of versions, as the training loader draws them.
    Sections that come back in a work's form make "same" a lower bound of what matches."""
    counts = {"one": 0, "both": 0, "same": 0}
    total = 0
    for a, start_a, b, start_b in excerpt_draws(spans, keys, excerpt_s, draws, seed):
        x = work_time(a, start_a, start_a + excerpt_s)
        y = work_time(b, start_b, start_b + excerpt_s)
        total += 1
        counts["one"] += x is not None
        if x is not None and y is not None:
            counts["both"] += 1
            counts["same"] += same_passage(x, y, passage_s)
    return {k: v / max(total, 1) for k, v in counts.items()}


def matching_shingle_pairs(spans, keys, excerpt_s, shingle_s, draws=20, passage_s=5.0, seed=0):
    """How many segment pairs of two training excerpts can truly match, the count CLEWS's
    positive reduction ``bpwr-r`` assumes to be r: each excerpt of ``excerpt_s`` s (uniform starts,
    ``draws`` per ordered pair of versions of a work, as ``excerpt_overlap``) cut in back-to-back
    shingles of ``shingle_s`` s, and the largest number of disjoint shingle pairs (one shingle of
    each excerpt, each shingle in one pair at most) that hold the same passage of the work
    (``passage_s`` s or more in common). {"n": number of shingles per excerpt, "shares": [share of
    excerpt pairs with 0, 1, ..., n such pairs]}."""
    from scipy.optimize import linear_sum_assignment

    n = int(excerpt_s // shingle_s)
    counts = np.zeros(n + 1)
    for a, start_a, b, start_b in excerpt_draws(spans, keys, excerpt_s, draws, seed):
        x = [work_time(a, start_a + i * shingle_s, start_a + (i + 1) * shingle_s)
             for i in range(n)]
        y = [work_time(b, start_b + j * shingle_s, start_b + (j + 1) * shingle_s)
             for j in range(n)]
        shared = np.array([[same_passage(u, v, passage_s) for v in y] for u in x], float)
        rows, cols = linear_sum_assignment(shared, maximize=True)
        counts[int(shared[rows, cols].sum())] += 1
    return {"n": n, "shares": (counts / max(counts.sum(), 1)).tolist()}


def step_seconds(model, excerpt, repeats=3):
    """Seconds of one training step of ``config/small-<model>.yaml`` with the partial corpus's
    excerpt settings for ``excerpt`` s (``excerpt_overrides``): forward, loss, backward and an
    Adam step on a batch of random audio, the fastest of ``repeats`` after a first one."""
    import time

    import torch

    from lib.config import load_run_config
    from lib.model_base import build_model

    conf = load_run_config(os.path.join("config", f"small-{model}.yaml"))
    if model in WHOLE_EXCERPT:
        conf.model.shingling.len = conf.model.shingling.hop = float(excerpt)
    torch.manual_seed(0)
    net = build_model(conf.model, sr=conf.data.samplerate)
    optim = torch.optim.Adam(net.parameters(), lr=conf.training.optim.lr)
    per_class, anchors = conf.data.n_per_class, conf.training.batchsize
    x = 0.1 * torch.randn(anchors * per_class, int(excerpt * conf.data.samplerate))
    labels = torch.arange(anchors).repeat_interleave(per_class)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        z, extra = net.embed(net.prepare(x))
        loss, _ = net.loss(labels, torch.arange(len(x)), z, extra)
        optim.zero_grad()
        loss.backward()
        optim.step()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def measure_steps(models):
    """Print STEP_SECONDS as measured on this machine."""
    for excerpt in sorted({spec["excerpt"] for spec in CORPORA.values()}):
        cells = {m: round(step_seconds(m, excerpt), 2) for m in models}
        print(f"{excerpt}: {cells}", flush=True)


###################################################################################################
# Runs
###################################################################################################


def run_name(corpus_name, model, variant, seed):
    return f"{corpus_name}-{model}" + (f"-{variant}" if variant else "") + f"-s{seed}"


def trained_checkpoint(out, corpus_name, run, untuned=False):
    """The trained checkpoint of ``run`` under ``--out`` (in the ``UNTUNED`` folder if set
    aside there)."""
    runs = os.path.join(out, corpus_name, "runs", *([UNTUNED] if untuned else []))
    return os.path.join(runs, run, CHECKPOINTS["trained"])


def spans_file(out, corpus_name):
    """Where a partial corpus under ``--out`` says where each version plays its work."""
    return os.path.join(out, corpus_name, "audio", SPANS_FILE)


def excerpt_overrides(corpus_name, model):
    """train.py overrides that set the corpus's training excerpts for ``model``."""
    excerpt = CORPORA[corpus_name]["excerpt"]
    out = [f"data.audiolen={excerpt}"]
    if model in WHOLE_EXCERPT:
        out += [f"model.shingling.len={excerpt}", f"model.shingling.hop={excerpt}"]
    return out


def excerpts_per_step(model, overrides=()):
    """Excerpts in one training step (anchors x versions per anchor) of
    ``config/small-<model>.yaml`` with train.py ``overrides``."""
    from lib.config import apply_overrides, load_run_config, parse_overrides, run_keys

    conf = load_run_config(os.path.join("config", f"small-{model}.yaml"))
    apply_overrides(conf, parse_overrides(overrides), run_keys(conf))
    return conf.training.batchsize * conf.data.n_per_class


def budget(corpus_name, model, minutes=None, overrides=()):
    """(epochs, steps per epoch) that fill ``minutes`` (default: the corpus's training budget)
    for ``model`` trained with ``overrides``: a step's time is ``STEP_SECONDS`` (measured with
    the config's batch) scaled by the excerpts per step, as the models' CPU time is."""
    spec = CORPORA[corpus_name]
    minutes = spec["budget_min"] if minutes is None else minutes
    scale = excerpts_per_step(model, overrides) / excerpts_per_step(model)
    step = STEP_SECONDS[spec["excerpt"]][model] * STEP_OVERHEAD * scale
    steps = max(1, round(minutes * 60 / step))
    epochs = max(1, round(steps / STEPS_PER_EPOCH))
    return epochs, round(steps / epochs)


def evaluation_levels(query_lengths):
    """{level: test.py window arguments}: whole tracks, then query windows of each length back to
    back against ``CANDIDATE_LENGTH`` s candidate windows every ``CANDIDATE_HOP`` s (one call)."""
    lengths = ",".join(str(q) for q in query_lengths)
    return {
        "track": ["qslen=-1", "cslen=-1"],
        "segments": [
            f"qslen=[{lengths}]",
            f"qshop=[{lengths}]",
            f"cslen={CANDIDATE_LENGTH}",
            f"cshop={CANDIDATE_HOP}",
        ],
    }


def read_results(path):
    """{level name: {metric: [mean, c.i.]}} of a test.py results.json: "track" for whole-track
    queries, "q<seconds>" for query windows."""
    with open(path) as handle:
        results = json.load(handle)
    out = {}
    for entry in results["runs"]:
        slen = entry["query"]["slen"]
        level = "track" if slen <= 0 else f"q{slen:g}"
        out[level] = {m: [entry[m]["mean"], entry[m]["ci95"]] for m in METRICS}
    return out


def run_settings(args, corpus_name, model, overrides, minutes=None):
    """{epochs, steps_per_epoch, overrides} of a run: ``--epochs`` whole epochs in a smoke run,
    else the steps that fill ``minutes`` (``budget``)."""
    if args.epochs:
        epochs, per_epoch = args.epochs, None
    else:
        epochs, per_epoch = budget(corpus_name, model, minutes, overrides)
    return {"epochs": epochs, "steps_per_epoch": per_epoch, "overrides": overrides}


def train(args, corpus_name, name, model, seed, settings, audio, meta):
    """train.py of run ``name`` with ``settings`` (``train_and_test``); seconds it took."""
    out = os.path.join(args.out, corpus_name)
    runs, logs = os.path.join(out, "runs"), os.path.join(out, "logs")
    conf = os.path.join("config", f"small-{model}.yaml")
    epochs, per_epoch = settings["epochs"], settings["steps_per_epoch"]
    cmd = [sys.executable, "train.py", f"jobname={name}", f"conf={conf}", f"seed={seed}"]
    cmd += [f"path.audio={audio}", f"path.meta={meta}", f"path.logs={runs}"]
    cmd += [f"path.cache={os.path.join(out, 'cache')}"]  # decoded audio, shared by the runs
    cmd += [f"training.numepochs={epochs}", f"training.save_freq={epochs}"]
    cmd += settings["overrides"]
    if per_epoch is not None:
        cmd.append(f"limit_batches={per_epoch}")
    seconds = run(cmd, os.path.join(logs, f"{name}-train.log"))
    # a run that an earlier session left interrupted (or finished but untested) resumes, and
    # this call then took a part of its training time, or none of it
    return max(seconds, logged_training_seconds(os.path.join(runs, name)))


def logged_training_seconds(run_dir):
    """Seconds of training that the TensorBoard logs in ``run_dir`` span: from each train.py
    call's first record to its last epoch's, summed over the calls (one event file each; 0
    without any). Short of a call's own wall time by its start-up (about 15 s) and, for a call
    that was killed, by its unfinished epoch."""
    total = 0.0
    for path in glob.glob(os.path.join(run_dir, "events.out.tfevents.*")):
        events = EventAccumulator(path, size_guidance={"scalars": 0})
        events.Reload()
        times = [e.wall_time for tag in events.Tags()["scalars"] for e in events.Scalars(tag)]
        if times:
            total += max(times) - events.FirstEventTimestamp()
    return total


def evaluate(args, corpus_name, name, which, checkpoint, partition="test"):
    """{level: {metric: [mean, c.i.]}} of test.py on ``checkpoint`` of run ``name`` at every
    level, on the test (or validation) works."""
    out = os.path.join(args.out, corpus_name)
    prefix = which if partition == "test" else f"{partition}-{which}"
    found = {}
    for level, windows in evaluation_levels(args.query_lengths).items():
        results = os.path.join(out, "results", name, f"{prefix}-{level}")
        path = os.path.join(out, "runs", name, checkpoint)
        cmd = [sys.executable, "test.py", f"checkpoint={path}", f"partition={partition}"]
        cmd += windows + [f"cache_dir={os.path.join(out, 'cache', 'embeddings')}"]
        cmd += [f"out={results}"]
        run(cmd, os.path.join(out, "logs", f"{name}-test-{prefix}-{level}.log"))
        found.update(read_results(os.path.join(results, "results.json")))
    return found


def train_and_test(args, corpus_name, model, variant, variant_overrides, seed, audio, meta):
    """One run: train.py for the corpus's budget, then test.py of its last checkpoint (and, for
    ``UNTRAINED_SEED`` of a main run, its untrained one) at every level. Returns its row (reused
    from ``--results`` when it exists with the same settings)."""
    name = run_name(corpus_name, model, variant, seed)
    factor = chosen_factor(args, model)
    overrides = excerpt_overrides(corpus_name, model) + list(variant_overrides)
    overrides += lr_overrides(model, factor)
    settings = run_settings(args, corpus_name, model, overrides, args.budget_min)
    row_file = os.path.join(args.results, f"{name}.json")
    if os.path.isfile(row_file):
        with open(row_file) as handle:
            row = json.load(handle)
        if {k: row.get(k) for k in settings} != settings:
            sys.exit(
                f"error: {row_file} ran {row['epochs']} epochs with {row['overrides']}, not "
                f"{settings['epochs']} with {overrides}: give another --results for other settings"
            )
        return row
    adopted, tuning_seconds = adopt_tuning_run(args, corpus_name, model, variant, seed, factor)
    seconds = train(args, corpus_name, name, model, seed, settings, audio, meta)
    if adopted:  # train.py only found its last checkpoint finished: the tuning's training time
        seconds = tuning_seconds
    row = {"run": name, "corpus": corpus_name, "model": model, "variant": variant, "seed": seed}
    row.update(settings, train_seconds=None if seconds is None else round(seconds, 1))
    for which, checkpoint in CHECKPOINTS.items():
        if which == "untrained" and (seed != UNTRAINED_SEED or variant is not None):
            continue
        row[which] = evaluate(args, corpus_name, name, which, checkpoint)
    os.makedirs(args.results, exist_ok=True)
    with open(row_file, "w") as handle:
        json.dump(row, handle, indent=1)
    return row


EXCERPTS_CHECKED = (10, 20, 30, 60, 90)  # seconds, for ``excerpt_facts``
# seconds, for ``shingle_facts``: the small CLEWS's shingles and the ablation ``shingles-20``'s
SHINGLES_CHECKED = (10, 20)
FACT_FILES = {"excerpts": "-excerpts.json", "shingle pairs": "-shingle-pairs.json"}


def training_spans(audio, meta):
    """(``spans.json`` of the corpus in ``audio``, the files of its training works), or None for a
    corpus without spans."""
    spans_path = os.path.join(audio, SPANS_FILE)
    if not os.path.isfile(spans_path):
        return None
    with open(spans_path) as handle:
        spans = json.load(handle)
    info, splits = load_metadata(meta)
    return spans, [info[k]["filename"] for versions in splits["train"].values() for k in versions]


def corpus_fact(args, corpus_name, kind, audio, meta, compute):
    """The corpus's fact ``kind`` (a ``FACT_FILES`` key): ``compute(spans, keys)`` of its training
    works, saved as ``<corpus><FACT_FILES[kind]>`` and reused when done; None without spans."""
    row_file = os.path.join(args.results, corpus_name + FACT_FILES[kind])
    if os.path.isfile(row_file):
        with open(row_file) as handle:
            return json.load(handle)
    training = training_spans(audio, meta)
    if training is None:
        return None
    row = compute(*training)
    os.makedirs(args.results, exist_ok=True)
    with open(row_file, "w") as handle:
        json.dump(row, handle, indent=1)
    return row


def excerpt_facts(args, corpus_name, audio, meta):
    """``excerpt_overlap`` of the training works of a partial corpus for excerpts of
    ``EXCERPTS_CHECKED`` seconds."""
    return corpus_fact(
        args, corpus_name, "excerpts", audio, meta,
        lambda spans, keys: {str(s): excerpt_overlap(spans, keys, s) for s in EXCERPTS_CHECKED},
    )


def shingle_facts(args, corpus_name, audio, meta):
    """``matching_shingle_pairs`` of the training works of a partial corpus, for its training
    excerpts cut in shingles of ``SHINGLES_CHECKED`` seconds: {"excerpt": s, "<shingle s>": ...}."""
    excerpt = CORPORA[corpus_name]["excerpt"]

    def compute(spans, keys):
        row = {"excerpt": excerpt}
        for shingle in SHINGLES_CHECKED:
            row[str(shingle)] = matching_shingle_pairs(spans, keys, excerpt, shingle)
        return row

    return corpus_fact(args, corpus_name, "shingle pairs", audio, meta, compute)


def pitch_class_floor(args, corpus_name, audio, meta):
    """The training-free pitch-class baselines on the test works (``bench_pitch_class_baseline``),
    whole tracks: {"mean chroma" | "2D-FFT": {"track": {metric: [mean, c.i.]}}}, and on a corpus
    with spans the same on each track cut to where it plays its work (names + ``IN_WORK``: is
    the corpus solvable once the other music is gone?); reused when done."""
    row_file = os.path.join(args.results, f"{corpus_name}-pitch-classes.json")
    row = {}
    if os.path.isfile(row_file):
        with open(row_file) as handle:
            row = json.load(handle)
    from benchmarks import bench_pitch_class_baseline as pcb

    spans_path = os.path.join(audio, SPANS_FILE)
    wanted = {"": None, **({IN_WORK: spans_path} if os.path.isfile(spans_path) else {})}
    missing = {suffix: path for suffix, path in wanted.items() if "2D-FFT" + suffix not in row}
    for suffix, path in missing.items():
        scores = pcb.scores(meta, audio, "test", pcb.DEFAULT_CONF, pcb.load_spans(path))
        for name, agg in scores.items():
            row[name + suffix] = {"track": {m: list(agg[m]) for m in METRICS}}
    if missing:
        os.makedirs(args.results, exist_ok=True)
        with open(row_file, "w") as handle:
            json.dump(row, handle, indent=1)
    return row


###################################################################################################
# Tables
###################################################################################################


def fact_kind(name):
    """The ``FACT_FILES`` kind of a results file's ``name``, or None."""
    return next((kind for kind, suffix in FACT_FILES.items() if name.endswith(suffix)), None)


def load_rows(results):
    """(run rows, {corpus: pitch-class floor}, {corpus: {fact kind: fact}}) of the JSON files
    in ``results`` (fact kinds: ``FACT_FILES``)."""
    rows, floors, facts = [], {}, {}
    if not os.path.isdir(results):
        return rows, floors, facts
    for name in sorted(os.listdir(results)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(results, name)) as handle:
            data = json.load(handle)
        if name.endswith("-pitch-classes.json"):
            floors[name[: -len("-pitch-classes.json")]] = data
        elif (kind := fact_kind(name)) is not None:
            facts.setdefault(name[: -len(FACT_FILES[kind])], {})[kind] = data
        elif name not in (ANALYSIS_FILE, TUNING_FILE):
            rows.append(data)
    return rows, floors, facts


def mean_sd(values, digits=3):
    """'mean +-s.d.' over seeds; one value has no s.d."""
    sd = f"{statistics.stdev(values):.{digits}f}" if len(values) > 1 else "n/a"
    return f"{statistics.mean(values):.{digits}f} +-{sd}"


def model_variant_rank(model, variant):
    """Sort key of a (model, variant): models in ``MODELS``' order, the main run first, then the
    ablations in ``ABLATIONS``' order, then other variants by name."""
    order = [None, *ABLATIONS]
    position = order.index(variant) if variant in order else len(order)
    return MODELS.index(model), position, variant or ""


def group(rows):
    """{(corpus, model, variant): [rows by seed]} in the order of CORPORA, MODELS, ABLATIONS."""
    groups = {}
    for row in rows:
        groups.setdefault((row["corpus"], row["model"], row["variant"]), []).append(row)
    def rank(key):
        corpus_name, model, variant = key
        return (list(CORPORA).index(corpus_name), *model_variant_rank(model, variant))

    return {key: sorted(groups[key], key=lambda r: r["seed"]) for key in sorted(groups, key=rank)}


def label(model, variant):
    return NAMES[model] + (f" ({variant})" if variant else "")


def levels_of(rows):
    """The query-window levels that every row has, shortest first."""
    common = set.intersection(*(set(r["trained"]) for r in rows)) - {"track"}
    return sorted(common, key=lambda level: float(level[1:]))


def render(header, rows, widths, markdown=False):
    """A table as fixed-width text (first column left-aligned, the others right-aligned to
    ``widths``) or as markdown; a row given as a string is a sub-heading."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in rows:
            cells = [f"*{row}*"] + [""] * (len(header) - 1) if isinstance(row, str) else row
            lines.append("| " + " | ".join(cell.strip() for cell in cells) + " |")
        return "\n".join(lines)

    def line(cells):
        first, *rest = cells
        return (f"{first:<{widths[0]}}" + "".join(
            f"{cell:>{width}}" for cell, width in zip(rest, widths[1:])
        )).rstrip()

    return "\n".join([line(header)] + [row if isinstance(row, str) else line(row) for row in rows])


def track_table(groups, floors, corpus_name, markdown=False):
    """The paper's track-level table for one corpus: MAP (+ the mean 95% c.i. of the runs), MR1,
    NAR, mean +- s.d. over seeds; the untrained models and pitch-class baselines below."""
    header = ["model", "seeds", "MAP", "run c.i.", "MR1", "NAR (%)", "steps", "train min"]
    widths = [28, 6, 16, 10, 16, 16, 7, 10]

    def cells(entries):
        values = {m: [e[m][0] for e in entries] for m in METRICS}
        ci = statistics.mean(e["MAP"][1] for e in entries)
        return [mean_sd(values["MAP"]), "+-" + format(ci, ".3f"), mean_sd(values["MR1"], 1),
                mean_sd(values["ARP"], 2)]

    rows = []
    for (name, model, variant), runs in groups.items():
        if name == corpus_name and variant is None:
            entries = [r["trained"]["track"] for r in runs]
            steps = runs[0]["epochs"] * (runs[0]["steps_per_epoch"] or 0)
            # wall time of the runs that recorded it (a tuning run adopted before its time was
            # recorded did not)
            seconds = [r["train_seconds"] for r in runs if r["train_seconds"] is not None]
            minutes = f"{statistics.mean(seconds) / 60:.1f}" if seconds else "-"
            rows.append([label(model, variant), str(len(runs)), *cells(entries),
                         str(steps or "-"), minutes])
    rows.append("floors (no training):")
    for (name, model, variant), runs in groups.items():
        untrained = [r["untrained"]["track"] for r in runs if "untrained" in r]
        if name == corpus_name and variant is None and untrained:
            rows.append(["  untrained " + NAMES[model], str(len(untrained)), *cells(untrained),
                         "", ""])
    for baseline, levels in floors.get(corpus_name, {}).items():
        rows.append(["  " + baseline, "-", *cells([levels["track"]]), "", ""])
    return render(header, rows, widths, markdown)


def segment_table(groups, corpus_name, variants=(None,), models=MODELS, markdown=False):
    """The paper's segment-level table: MAP for each query length, mean +- s.d. over seeds,
    trained (and untrained below for the main models)."""
    chosen = {
        k: v
        for k, v in groups.items()
        if k[0] == corpus_name and k[2] in variants and k[1] in models
    }
    if not chosen:
        return ""
    levels = levels_of([r for runs in chosen.values() for r in runs])
    header = ["model", "seeds", "track", *(level[1:] + " s" for level in levels)]
    widths = [28, 6] + [16] * (len(levels) + 1)
    rows = []
    for which in ("trained", "untrained") if variants == (None,) else ("trained",):
        if which == "untrained":
            rows.append("untrained:")
        for (_, model, variant), runs in chosen.items():
            runs = [r for r in runs if which in r]
            if not runs:
                continue
            rows.append([label(model, variant), str(len(runs))] + [
                mean_sd([r[which][level]["MAP"][0] for r in runs]) for level in ["track", *levels]
            ])
    return render(header, rows, widths, markdown)


def paired_lines(groups, corpus_name, ablations=False):
    """CLEWS - every other model (or, with ``ablations``, every CLEWS variant), paired by seed,
    MAP at each level."""
    reference = ("clews", None)
    first = {r["seed"]: r for r in groups.get((corpus_name, *reference), [])}
    lines = []
    for (name, model, variant), runs in groups.items():
        if name != corpus_name or (model, variant) == reference:
            continue
        if not (variant in ABLATIONS if ablations else variant is None):
            continue
        second = {r["seed"]: r for r in runs}
        seeds = sorted(set(first) & set(second))
        if not seeds:
            continue
        levels = ["track", *levels_of([first[s] for s in seeds] + [second[s] for s in seeds])]
        parts = [
            f"{level} "
            + mean_sd(
                [
                    first[s]["trained"][level]["MAP"][0] - second[s]["trained"][level]["MAP"][0]
                    for s in seeds
                ]
            )
            for level in levels
        ]
        lines.append(f"CLEWS - {label(model, variant)} ({len(seeds)} seeds): " + ", ".join(parts))
    return lines


def excerpt_lines(excerpts):
    """What training excerpts of each length hold (``excerpt_facts``), on the training works of a
    partial corpus."""
    lines = []
    for seconds, share in excerpts.items():
        lines.append(
            f"{seconds:>3} s: one holds music of its work {share['one']:.0%}, both of a pair "
            f"{share['both']:.0%}, the same passage of it (>= 5 s) {share['same']:.0%}"
        )
    return lines


def shingle_lines(pairs):
    """How many disjoint shingle pairs of two training excerpts hold the same passage
    (``shingle_facts``): what ``bpwr-r`` assumes to be at least r."""
    lines = []
    for shingle, row in pairs.items():
        if shingle == "excerpt":
            continue
        shares = ", ".join(f"{k}: {p:.1%}" for k, p in enumerate(row["shares"]))
        lines.append(f"{shingle:>3} s shingles ({row['n']} per excerpt): {shares}")
    return lines


def fact_lines(facts, markdown=False):
    """The lines of a partial corpus's facts ({kind: fact}, ``load_rows``) above its tables."""
    gap = [""] if markdown else []
    out = []
    if "excerpts" in facts:
        out += ["training excerpts (uniform starts) of versions of one work:", *gap,
                *bullets(excerpt_lines(facts["excerpts"]), markdown), ""]
    if "shingle pairs" in facts:
        excerpt = facts["shingle pairs"]["excerpt"]
        out += [f"disjoint shingle pairs of two {excerpt} s training excerpts of one work that "
                "hold the same passage (>= 5 s), share of excerpt pairs with 0, 1, ... such pairs:",
                *gap, *bullets(shingle_lines(facts["shingle pairs"]), markdown), ""]
    return out


def tuning_lines(tuning, markdown=False):
    """Validation MAP (mean over levels) of each model at each learning-rate factor tried, the
    best starred (the one chosen once its ``tuning_grid`` is complete)."""
    if not tuning:
        return []
    names = [f"{f:g}" for f in sorted({float(f) for tried in tuning.values() for f in tried})]
    header = ["model", "config lr", *(n + "x" for n in names)]
    rows = []
    for model in MODELS:
        tried = tuning.get(model)
        if not tried:
            continue
        best = max(tried, key=lambda f: validation_score(tried[f]))
        cells = [
            format(validation_score(tried[n]), ".3f") + ("*" if n == best else " ")
            if n in tried else "-"
            for n in names
        ]
        rows.append([NAMES[model], format(config_lr(model), ".0e"), *cells])
    title = (f"learning rates tried on the {TUNING_CORPUS} corpus's validation works (seed 0, "
             "mean MAP over levels; * = the best)")
    return [heading(title, markdown), render(header, rows, [16] + [10] * (len(names) + 1),
                                             markdown), ""]


def heading(title, markdown=False):
    return f"#### {title}\n" if markdown else f"== {title} =="


def bullets(lines, markdown=False):
    """Indented lines as text, a list in markdown."""
    return [("- " + line.strip()) if markdown else ("  " + line) for line in lines]


def tables(rows, floors, facts=None, tuning=None, markdown=False):
    """Every table of the benchmark's finished runs, as text or (``markdown``) for the README."""
    groups = group(rows)
    gap = [""] if markdown else []  # markdown needs a blank line between a paragraph and a table
    out = tuning_lines(tuning, markdown=markdown)
    for corpus_name in CORPORA:
        if not any(k[0] == corpus_name for k in groups):
            continue
        if facts and corpus_name in facts:
            out += fact_lines(facts[corpus_name], markdown)
        out += [
            heading(f"{corpus_name} corpus: track level (trained = the last epoch's model)",
                    markdown),
            track_table(groups, floors, corpus_name, markdown),
            "",
            heading(f"{corpus_name} corpus: segment level, MAP (query windows back to back "
                    f"against {CANDIDATE_LENGTH} s candidate windows every {CANDIDATE_HOP} s)",
                    markdown),
            segment_table(groups, corpus_name, markdown=markdown),
            "",
            "differences in MAP, paired by seed:",
            *gap,
            *bullets(paired_lines(groups, corpus_name), markdown),
            "",
        ]
    for corpus_name in CORPORA:
        longer = sorted({k[2] for k in groups if k[0] == corpus_name and is_budget_variant(k[2])})
        if longer:
            models = tuple(m for m in MODELS if any((corpus_name, m, v) in groups for v in longer))
            out += [
                heading(f"{corpus_name} corpus: other training budgets, MAP (no variant: the "
                        f"corpus's {CORPORA[corpus_name]['budget_min']:g} min)", markdown),
                segment_table(groups, corpus_name, (None, *longer), models, markdown),
                "",
            ]
    if any(k[2] in ABLATIONS for k in groups):
        out += [
            heading(f"CLEWS ablations on the {ABLATION_CORPUS} corpus, MAP", markdown),
            segment_table(groups, ABLATION_CORPUS, (None, *ABLATIONS), ("clews",), markdown),
            "",
            "differences in MAP, paired by seed:",
            *gap,
            *bullets(paired_lines(groups, ABLATION_CORPUS, ablations=True), markdown),
            "",
        ]
    return "\n".join(out)


def chance_map(args, corpus_name):
    """MAP of random rankings on the corpus's test works (``--test_works`` x ``--versions``, the
    sizes the rows were run with): each track a query, its other versions relevant among all the
    other tracks."""
    ntracks = corpus_sizes(args, corpus_name)[2] * args.versions
    return random_ranking_ap(ntracks - 1, args.versions - 1)


def plot(args, rows, path):
    """MAP against query length per model, one panel per corpus (mean +- s.d. over seeds), on
    one scale from 0 with the chance level (``chance_map``) drawn: a panel near chance is read as
    one."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    groups = {k: v for k, v in group(rows).items() if k[2] is None}
    names = [c for c in CORPORA if any(k[0] == c for k in groups)]
    if not names:
        return
    fig, axes = plt.subplots(
        1, len(names), figsize=(5.5 * len(names), 4), dpi=120, squeeze=False, sharey=True
    )
    for ax, corpus_name in zip(axes[0], names):
        for (name, model, _), runs in groups.items():
            if name != corpus_name:
                continue
            levels = levels_of(runs)
            x = [float(level[1:]) for level in levels]
            values = np.array([[r["trained"][level]["MAP"][0] for level in levels] for r in runs])
            sd = values.std(0, ddof=1) if len(runs) > 1 else np.zeros(len(levels))
            ax.errorbar(x, values.mean(0), yerr=sd, marker="o", capsize=3, label=NAMES[model])
        ax.axhline(chance_map(args, corpus_name), color="0.4", linestyle="--",
                   label="random ranking")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{corpus_name} corpus")
        ax.set_xlabel("query length (s)")
        ax.set_ylabel("MAP")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


###################################################################################################


def prepare(args, corpus_name):
    """Corpus ``name`` rendered and split (``corpus``), with its floors and excerpt facts;
    (audio folder, metadata file)."""
    audio, meta = corpus(args, corpus_name)
    _, splits = load_metadata(meta)
    sizes = ", ".join(f"{s} {len(c)}" for s, c in splits.items())
    print(f"{corpus_name} corpus: works {sizes}", flush=True)
    pitch_class_floor(args, corpus_name, audio, meta)
    excerpt_facts(args, corpus_name, audio, meta)
    shingle_facts(args, corpus_name, audio, meta)
    return audio, meta


###################################################################################################
# Learning-rate tuning
###################################################################################################


def config_lr(model):
    from lib.config import load_run_config

    return load_run_config(os.path.join("config", f"small-{model}.yaml")).training.optim.lr


def lr_overrides(model, factor):
    """train.py overrides for ``factor`` times the config's learning rate (none for 1)."""
    return [] if factor == 1 else [f"training.optim.lr={config_lr(model) * factor:.6g}"]


def tuning_variant(factor):
    return f"lr{factor:g}x"


def read_tuning(args):
    path = os.path.join(args.results, TUNING_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as handle:
        return json.load(handle)


def validation_score(levels):
    """The tuning criterion: mean MAP over the levels of a validation evaluation."""
    return statistics.mean(v["MAP"][0] for v in levels.values())


def tuning_grid(tried, factors, extend=0):
    """The factors to try (floats, ascending): ``factors``, then, while the best of the grid is at
    one of its ends, the next multiple beyond that end (the grid's ratio there), at most
    ``extend`` more: a rate at the edge of a grid has not been shown to be the best one.
    ``tried`` is {factor as recorded, e.g. "0.25": validation levels}."""
    grid = sorted(factors)
    if len(grid) < 2:
        return grid
    for _ in range(extend):
        if any(f"{f:g}" not in tried for f in grid):
            break
        best = max(grid, key=lambda f: validation_score(tried[f"{f:g}"]))
        if best == grid[0]:
            grid.insert(0, grid[0] * grid[0] / grid[1])
        elif best == grid[-1]:
            grid.append(grid[-1] * grid[-1] / grid[-2])
        else:
            break
    return grid


def next_factor(tried, factors, extend=0):
    """The next factor of ``tuning_grid`` to try, or None once the grid is complete."""
    missing = [f for f in tuning_grid(tried, factors, extend) if f"{f:g}" not in tried]
    return missing[0] if missing else None


def best_factor(tried, factors, extend=0):
    """The factor (as recorded, e.g. "0.25") with the best validation score over the whole
    ``tuning_grid`` once it was all tried, else None."""
    if next_factor(tried, factors, extend) is not None:
        return None
    grid = [f"{f:g}" for f in tuning_grid(tried, factors, extend)]
    return max(grid, key=lambda f: validation_score(tried[f]))


def chosen_factor(args, model):
    """The factor of the best validation score once the tuning grid was tried (1 before that, or
    without tuning)."""
    best = best_factor(read_tuning(args).get(model, {}), args.lr_factors, args.lr_extend)
    return 1.0 if len(args.lr_factors) == 1 or best is None else float(best)


def tune_model(args, model, audio, meta):
    """``tune`` ``model`` at every factor of its grid not tried yet, the grid's extensions
    included (each known only once the factors before it were tried)."""
    while True:
        factor = next_factor(read_tuning(args).get(model, {}), args.lr_factors, args.lr_extend)
        if factor is None:
            return
        tune(args, model, factor, audio, meta)
        print(f"{model}: tried {factor:g}x its learning rate", flush=True)


def record_tuning(args, model, factor, levels):
    tuning = read_tuning(args)
    tuning.setdefault(model, {})[f"{factor:g}"] = levels
    os.makedirs(args.results, exist_ok=True)
    with open(os.path.join(args.results, TUNING_FILE), "w") as handle:
        json.dump(tuning, handle, indent=1)


def tuning_run_name(args, model, factor):
    """The run that tunes ``model`` at ``factor``: the main run of seed 0 at the config's rate
    (factor 1), unless its row was kept from a session whose run folder is gone (another
    ``--out``, a machine since replaced): a run of its own then, since validation needs the
    checkpoint and the row stays as it is."""
    main_run = run_name(TUNING_CORPUS, model, None, UNTRAINED_SEED)
    if factor == 1:
        row = os.path.join(args.results, f"{main_run}.json")
        checkpoint = trained_checkpoint(args.out, TUNING_CORPUS, main_run)
        if not os.path.isfile(row) or os.path.isfile(checkpoint):
            return main_run
    return run_name(TUNING_CORPUS, model, tuning_variant(factor), UNTRAINED_SEED)


def tune(args, model, factor, audio, meta):
    """Train ``model`` at ``factor`` times its rate (seed 0, the tuning corpus's budget; the
    main run of seed 0 for factor 1 where it can, ``tuning_run_name``) and record its validation
    MAP in ``TUNING_FILE``."""
    if f"{factor:g}" in read_tuning(args).get(model, {}):
        return
    seed = UNTRAINED_SEED
    name = tuning_run_name(args, model, factor)
    if name == run_name(TUNING_CORPUS, model, None, seed):  # tested as well
        train_and_test(args, TUNING_CORPUS, model, None, [], seed, audio, meta)
    else:
        overrides = excerpt_overrides(TUNING_CORPUS, model) + lr_overrides(model, factor)
        settings = run_settings(args, TUNING_CORPUS, model, overrides)
        seconds = train(args, TUNING_CORPUS, name, model, seed, settings, audio, meta)
        seconds_file = os.path.join(args.out, TUNING_CORPUS, "runs", name, TRAIN_SECONDS_FILE)
        with open(seconds_file, "w") as handle:
            json.dump({"train_seconds": round(seconds, 1)}, handle)
    levels = evaluate(args, TUNING_CORPUS, name, "trained", CHECKPOINTS["trained"], "valid")
    record_tuning(args, model, factor, levels)


TRAIN_SECONDS_FILE = "bench_train_seconds.json"  # in a tuning run's folder, for its adoption


def adopt_tuning_run(args, corpus_name, model, variant, seed, factor):
    """Rename the tuning run of ``model`` at its chosen ``factor`` (other than 1) to the main run
    of seed 0 that it equals (same corpus, seed, budget and overrides), so that train.py resumes
    it finished instead of training it again. Returns (whether it did, the seconds its training
    took: None when the tuning run predates their record)."""
    main_run = (corpus_name, variant, seed, args.budget_min) == (
        TUNING_CORPUS, None, UNTRAINED_SEED, None)
    if factor == 1 or not main_run:
        return False, None
    runs = os.path.join(args.out, corpus_name, "runs")
    source = os.path.join(runs, run_name(corpus_name, model, tuning_variant(factor), seed))
    target = os.path.join(runs, run_name(corpus_name, model, None, seed))
    if not os.path.isfile(os.path.join(source, CHECKPOINTS["trained"])) or os.path.exists(target):
        return False, None
    os.replace(source, target)
    print(f"{os.path.basename(source)}: the tuning run at the chosen rate, adopted as "
          f"{os.path.basename(target)}", flush=True)
    seconds_file = os.path.join(target, TRAIN_SECONDS_FILE)
    if not os.path.isfile(seconds_file):
        return True, None
    with open(seconds_file) as handle:
        return True, json.load(handle)["train_seconds"]


def set_aside_untuned(args, model):
    """Move the rows of ``model`` trained at another rate than the chosen one into
    ``--results/untuned`` (kept: what the untuned model did), and their run folders under
    ``--out`` into ``untuned`` folders (train.py would resume them)."""
    wanted = lr_overrides(model, chosen_factor(args, model))
    rows = [r for r in load_rows(args.results)[0] if r["model"] == model]
    stale = [r for r in rows if [o for o in r["overrides"] if o.startswith("training.optim.lr=")]
             != wanted]
    if not stale:
        return
    os.makedirs(os.path.join(args.results, UNTUNED), exist_ok=True)
    for row in stale:
        name = f"{row['run']}.json"
        os.replace(os.path.join(args.results, name), os.path.join(args.results, UNTUNED, name))
        for kind in ("runs", "results"):
            folder = os.path.join(args.out, row["corpus"], kind)
            if os.path.isdir(os.path.join(folder, row["run"])):
                os.makedirs(os.path.join(folder, UNTUNED), exist_ok=True)
                target = os.path.join(folder, UNTUNED, row["run"])
                os.replace(os.path.join(folder, row["run"]), target)
        print(f"{name}: not at the tuned rate, moved to {UNTUNED}/", flush=True)


###################################################################################################
# The analysis of each run (benchmarks/paper_analysis.py), kept beside the rows
###################################################################################################


def fingerprint(row):
    """What tells a run from another of its name (one trained again at another rate after its
    row moved to untuned/): its overrides and its measured training time."""
    return {"overrides": row["overrides"], "train_seconds": row["train_seconds"]}


def row_key(row, untuned):
    """The row's place among the rows: its run name, under ``UNTUNED``/ if set aside there."""
    return f"{UNTUNED}/{row['run']}" if untuned else row["run"]


def read_analysis(results):
    """{row key: {"corpus", "row": fingerprint, "lengths": {length (int): result}}} kept in
    ``ANALYSIS_FILE`` by paper_analysis."""
    path = os.path.join(results, ANALYSIS_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as handle:
        data = json.load(handle)
    kept = {}
    for key, entry in data.items():
        if not {"corpus", "row", "lengths"} <= set(entry):
            print(f"{path}: {key}: no run fingerprint (an older format): not reused",
                  file=sys.stderr)
            continue
        kept[key] = {**entry, "lengths": {int(n): r for n, r in entry["lengths"].items()}}
    return kept


def kept_result(kept, row):
    """The kept analysis of this very run (wherever its row was when it was analysed), or None."""
    for untuned in (False, True):
        entry = kept.get(row_key(row, untuned))
        if entry is not None and entry["row"] == fingerprint(row):
            return entry["lengths"]
    return None


def record_analysis(args, corpus_name, row):
    """Analyse a finished run of a corpus with spans while its checkpoint and embedding caches
    are here (``paper_analysis --record_only``): a later session keeps the analysis, not them."""
    checkpoint = trained_checkpoint(args.out, corpus_name, row["run"])
    if not os.path.isfile(spans_file(args.out, corpus_name)) or not os.path.isfile(checkpoint):
        return
    if kept_result(read_analysis(args.results), row):
        return
    cmd = [sys.executable, "-m", "benchmarks.paper_analysis", f"--out={args.out}"]
    cmd += [f"--results={args.results}", "--corpora", corpus_name, "--record_only"]
    run(cmd, os.path.join(args.out, corpus_name, "logs", f"{row['run']}-analysis.log"))
    if kept_result(read_analysis(args.results), row) is None:
        sys.exit(f"error: paper_analysis kept no analysis of {row['run']} in {args.results}")


def missing_analyses(args, corpus_name):
    """The main rows of a corpus with spans that have neither a kept analysis nor a checkpoint
    here (rows of an earlier session that ended before analyses were kept)."""
    if not os.path.isfile(spans_file(args.out, corpus_name)):
        return []
    kept = read_analysis(args.results)
    return [
        row for row in load_rows(args.results)[0]
        if row["corpus"] == corpus_name and kept_result(kept, row) is None
        and not os.path.isfile(trained_checkpoint(args.out, corpus_name, row["run"]))
    ]


def reproduce_for_analysis(args, row, audio, meta):
    """Train a finished run again (the same seed, settings and steps: train.py is deterministic
    on a CPU), test it, and analyse it if it gives its row's MAP at every level: the analysis is
    then of the run the row reports. Returns whether it did."""
    corpus_name, name = row["corpus"], row["run"]
    settings = {k: row[k] for k in ("epochs", "steps_per_epoch", "overrides")}
    train(args, corpus_name, name, row["model"], row["seed"], settings, audio, meta)
    levels = evaluate(args, corpus_name, name, "trained", CHECKPOINTS["trained"])
    pairs = {level: (row["trained"][level]["MAP"][0], levels[level]["MAP"][0])
             for level in row["trained"]}
    differ = {level: maps for level, maps in pairs.items() if abs(maps[0] - maps[1]) > 1e-6}
    if differ:
        print(f"error: {name} trained again did not give its row's MAP (row, again: {differ}); "
              "not analysed", file=sys.stderr, flush=True)
        return False
    record_analysis(args, corpus_name, row)
    return True


def budget_variant(minutes):
    """The variant name of runs trained for ``minutes`` instead of their corpus's budget."""
    return f"{minutes:g}min"


def is_budget_variant(variant):
    return variant is not None and variant.endswith("min") and variant not in ABLATIONS


def plan(args):
    """[(corpus, model, variant, overrides, seed)] in the order they run: seed by seed, so every
    model has a first seed early; the ablations after the main runs of their corpus. With
    ``--budget_min`` every variant is suffixed by ``budget_variant``."""
    tag = None if args.budget_min is None else budget_variant(args.budget_min)

    def named(variant):
        return tag if variant is None else variant if tag is None else f"{variant}-{tag}"

    jobs = []
    if len(args.lr_factors) > 1:  # one job per model: its grid grows while an end is the best
        jobs += [("tune", model, None, None, None) for model in args.models]
    for corpus_name in args.corpora:
        for seed in args.seeds:
            jobs += [(corpus_name, m, named(None), [], seed) for m in args.models]
        if corpus_name == ABLATION_CORPUS:
            for seed in args.seeds:
                jobs += [
                    (corpus_name, "clews", named(v), ABLATIONS[v], seed) for v in args.ablations
                ]
    return jobs


def report(args):
    """Print the tables; write them as text and as markdown (``tables.md``, for the README), and
    the plot, to ``--results``."""
    rows, floors, facts = load_rows(args.results)
    tuning = read_tuning(args)
    text = tables(rows, floors, facts, tuning)
    print(text)
    os.makedirs(args.results, exist_ok=True)
    with open(os.path.join(args.results, "tables.txt"), "w") as handle:
        handle.write(text)
    with open(os.path.join(args.results, "tables.md"), "w") as handle:
        handle.write(tables(rows, floors, facts, tuning, markdown=True))
    plot(args, rows, os.path.join(args.results, "map_vs_query_length.png"))


def main(argv=None):
    args = parse_args(argv)
    if args.table:
        report(args)
        return 0
    if args.measure_steps:
        measure_steps(args.models)
        return 0
    prepared = {}  # each corpus when its first run comes: renders, floors
    jobs = plan(args)
    tuned = set()
    for done, (corpus_name, model, variant, overrides, seed) in enumerate(jobs, 1):
        source = TUNING_CORPUS if corpus_name == "tune" else corpus_name
        if source not in prepared:
            prepared[source] = prepare(args, source)
        audio, meta = prepared[source]
        if corpus_name == "tune":
            tune_model(args, model, audio, meta)
            print(f"[{done}/{len(jobs)}] {model}: learning rate tuned", flush=True)
            continue
        if model not in tuned:
            set_aside_untuned(args, model)
            tuned.add(model)
        row = train_and_test(args, corpus_name, model, variant, overrides, seed, audio, meta)
        record_analysis(args, corpus_name, row)
        print(f"[{done}/{len(jobs)}] {run_name(corpus_name, model, variant, seed)}", flush=True)
    # last, the analyses an earlier session could not keep: their runs trained again
    failed = []
    for corpus_name in prepared:
        rows = missing_analyses(args, corpus_name)
        for done, row in enumerate(rows, 1):
            if not reproduce_for_analysis(args, row, *prepared[corpus_name]):
                failed.append(row["run"])
            print(f"[analysis {done}/{len(rows)}] {row['run']}", flush=True)
    report(args)
    if failed:
        print(f"error: not reproduced, so not analysed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
