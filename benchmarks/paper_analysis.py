"""Where the matches of ``bench_paper``'s segment level come from (issue 34, item 5).

``bench_paper`` reports the original's segment-level protocol: every back-to-back query window of
a query track against every 20 s candidate window, reduced to one distance per track pair. In a
weak-label corpus most of those query windows hold other music, so that protocol mixes two
questions. This analysis separates them, from the embeddings ``test.py`` already cached for each
run (no model is run again) and the corpus's ``spans.json`` (where each version plays its work):

    all windows       the protocol as reported (re-computed here: it must equal ``test.py``'s MAP)
    clip in work      one query window per track: the one that overlaps the track's part of the
                      work most ("which tracks are versions of this clip?")
    clip outside      the window that overlaps it least (no shared music: MAP at chance level)

and, for the whole-window protocol, the rank of each relevant candidate split by whether the
pair shares a passage of the work (>= ``SHARED_SECONDS`` of the same bars) or none: the share of
irrelevant candidates ranked after it (0.5 = chance). A pair that shares nothing can only be
found by chance (or by what a version keeps of its work's sound): that part of MAP is out of
every model's reach.

Each run's analysis is kept in ``analysis.json`` beside the rows with what tells that run from
another of its name (its overrides and training time), so the rows of earlier sessions, whose
checkpoints and caches are gone, keep theirs: ``bench_paper`` analyses each run as it finishes
(``--record_only``), a call without it reports every kept analysis, and a row with neither a
checkpoint nor a kept analysis is named and the exit status is 1.

    .venv/bin/python -m benchmarks.paper_analysis --out /work/bench_paper_out
"""

import argparse
import json
import os
import statistics
import sys

import numpy as np
import torch

from benchmarks.bench_paper import (
    ANALYSIS_FILE,
    CANDIDATE_HOP,
    CANDIDATE_LENGTH,
    UNTUNED,
    fingerprint,
    kept_result,
    label,
    load_rows,
    model_variant_rank,
    read_analysis,
    row_key,
    spans_file,
    trained_checkpoint,
)
from lib import metrics, store, tensor_ops
from lib.checkpoint import load_trained_model
from lib.extract import file_digest, load_store
from lib.metadata import load_metadata
from lib.retrieval import Embeddings, query_block_distances
from lib.synth import SPANS_FILE

SHARED_SECONDS = 5.0  # a relevant pair "shares a passage" from this many seconds of the work
QUERIES = ("all windows", "clip in work", "clip outside")
PAIRS = ("shared", "none")
# the whole-window protocol again with these segment reductions at evaluation (test.py redux=)
REDUCTIONS = ("min", "bpwr-5", "bpwr-10", "mean")
LENGTHS = (10, 20, 30, 60)  # query windows, seconds (bench_paper's)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/out/paper", help="bench_paper's --out")
    parser.add_argument("--results", default="benchmarks/results/paper", help="its rows")
    parser.add_argument("--corpora", nargs="+", default=["partial", "scores"])
    parser.add_argument(
        "--record_only", action="store_true",
        help="only analyse the runs whose checkpoints are here and keep their analyses (no "
        "tables; bench_paper after each run)",
    )
    return parser.parse_args(argv)


###################################################################################################
# What the corpus says
###################################################################################################


def spans_by_id(corpus_dir):
    """{track id: span record} of the corpus's test tracks (``lib.synth.render_works``)."""
    with open(os.path.join(corpus_dir, "audio", SPANS_FILE)) as handle:
        spans = json.load(handle)
    meta = [n for n in os.listdir(corpus_dir) if n.startswith("metadata-") and "all" not in n]
    if len(meta) != 1:
        raise SystemExit(f"error: {corpus_dir}: expected one split metadata file, found {meta}")
    info = load_metadata(os.path.join(corpus_dir, meta[0]))[0]
    return {entry["id"]: spans[key] for key, entry in info.items() if key in spans}


def shared_work_seconds(a, b):
    """Seconds of the work (in the work's own time) that the spans ``a`` and ``b`` both play."""
    return max(0.0, min(a["work_end"], b["work_end"]) - max(a["work_start"], b["work_start"]))


def window_overlaps(span, length, nwin):
    """(nwin,) seconds of the track's part of the work inside each back-to-back window of
    ``length`` seconds (window i covers [i * length, (i + 1) * length))."""
    starts = np.arange(nwin) * length
    inside = np.minimum(starts + length, span["end"]) - np.maximum(starts, span["start"])
    return np.clip(inside, 0, None)


###################################################################################################
# The cached embeddings of a checkpoint
###################################################################################################


def cached_entries(cache_dir, partition="test"):
    """{(checkpoint digest, window length, hop): folder} of every complete cache entry of the
    ``partition``'s tracks (bench_paper's tuning caches the validation works' beside them)."""
    out = {}
    for name in sorted(os.listdir(cache_dir)):
        folder = os.path.join(cache_dir, name)
        manifest = store.read_manifest(folder)
        if manifest is None or manifest["parts"]["partition"] != partition:
            continue
        settings = manifest["settings"]
        out[(manifest["parts"]["checkpoint"], settings["slen"], settings["shop"])] = folder
    return out


def embeddings(folder):
    """The Embeddings of the cache entry in ``folder``, read as test.py reads them."""
    cached = load_store(folder, store.read_manifest(folder)["key"])
    if cached is None:
        raise SystemExit(f"error: {folder}: an incomplete or outdated embedding cache")
    return cached


def one_window(queries, pick):
    """The queries with only window ``pick[i]`` of track i."""
    rows = torch.arange(len(queries))
    pick = torch.as_tensor(pick)
    z, mask = queries.z[rows, pick][:, None], queries.mask[rows, pick][:, None]
    return Embeddings(queries.cliques, queries.ids, z, mask)


###################################################################################################
# Measures
###################################################################################################


def distance_matrix(model, queries, candidates, redux=None):
    """(Q, C) track distances with ``redux`` (default: the model's own reduction)."""
    redux = tensor_ops.parse_redux(model.default_redux if redux is None else redux)
    return query_block_distances(model, queries, candidates, redux, "cpu", len(candidates))


def relevance(queries, candidates):
    ismatch = queries.cliques[:, None] == candidates.cliques[None, :]
    exclude = queries.ids[:, None] == candidates.ids[None, :]
    return ismatch & ~exclude, exclude


def mean_ap(dist, queries, candidates):
    relevant, exclude = relevance(queries, candidates)
    ap = metrics.query_metrics(dist, relevant, exclude)["AP"]
    return float(ap[~torch.isnan(ap)].mean())


def pair_ranks(dist, queries, candidates, spans):
    """{"shared": [...], "none": [...]}: for each relevant pair, the share of the query's
    irrelevant candidates farther from the query than the relevant one (ties count half)."""
    relevant, exclude = relevance(queries, candidates)
    irrelevant = ~relevant & ~exclude
    out = {"shared": [], "none": []}
    for i, j in relevant.nonzero().tolist():
        others = dist[i][irrelevant[i]]
        farther = (others > dist[i, j]).sum() + 0.5 * (others == dist[i, j]).sum()
        score = float(farther / len(others))
        qid, cid = int(queries.ids[i]), int(candidates.ids[j])
        shared = shared_work_seconds(spans[qid], spans[cid]) >= SHARED_SECONDS
        out["shared" if shared else "none"].append(score)
    return out


def picked_windows(queries, spans, length):
    """(window of each query track overlapping its part of the work most, window overlapping it
    least, seconds of the work in each window (list of (S,) arrays)) for back-to-back windows of
    ``length`` seconds; padding windows are never picked."""
    valid = [np.flatnonzero(~m) for m in queries.mask.numpy()]
    nwin = queries.z.size(1)
    overlaps = [window_overlaps(spans[i], length, nwin) for i in queries.ids.tolist()]
    inside = [int(v[np.argmax(o[v])]) for v, o in zip(valid, overlaps)]
    outside = [int(v[np.argmin(o[v])]) for v, o in zip(valid, overlaps)]
    return inside, outside, overlaps


def analyse_length(model, queries, candidates, spans, length):
    """MAP of the three query kinds, the pair rank scores of the whole-window protocol, the
    share of its part of the work (up to ``length``) the clip in the work holds, and the mean
    seconds of the work in the clip outside."""
    inside, outside, overlaps = picked_windows(queries, spans, length)
    kinds = {
        "all windows": queries,
        "clip in work": one_window(queries, inside),
        "clip outside": one_window(queries, outside),
    }
    result = {}
    for kind, picked in kinds.items():
        dist = distance_matrix(model, picked, candidates)
        result[kind] = mean_ap(dist, picked, candidates)
        if kind == "all windows":
            result["pairs"] = pair_ranks(dist, picked, candidates, spans)
            result["reductions"] = {  # the model's own reduction is ``dist`` already
                r: result[kind] if r == model.default_redux
                else mean_ap(distance_matrix(model, picked, candidates, r), picked, candidates)
                for r in REDUCTIONS
            }
    most = [min(length, spans[i]["end"] - spans[i]["start"]) for i in queries.ids.tolist()]
    held = [o[k] / m for o, k, m in zip(overlaps, inside, most)]
    result["coverage"] = float(np.mean(held))
    result["outside overlap"] = float(np.mean([o[k] for o, k in zip(overlaps, outside)]))
    return result


def analyse_checkpoint(checkpoint, entries, spans, lengths):
    """{length: ``analyse_length``} of one checkpoint, for the query lengths ``test.py`` cached."""
    digest = file_digest(checkpoint)
    model = load_trained_model(checkpoint)[0]
    candidates = embeddings(entries[(digest, float(CANDIDATE_LENGTH), float(CANDIDATE_HOP))])
    out = {}
    for length in lengths:
        folder = entries.get((digest, float(length), float(length)))
        if folder is not None:
            out[length] = analyse_length(model, embeddings(folder), candidates, spans, length)
    return out


###################################################################################################
# Report
###################################################################################################


def mean_sd(values):
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f}+-{sd:.3f}"


def runs_by_length(analysed, lengths):
    """(model, variant, length, [the seeds' results at that length]) in bench_paper's order,
    for the lengths some seed has."""
    for model, variant in sorted(analysed, key=lambda key: model_variant_rank(*key)):
        for length in lengths:
            runs = [seed[length] for seed in analysed[(model, variant)] if length in seed]
            if runs:
                yield model, variant, length, runs


def table(corpus_name, analysed, lengths):
    """Text: per model (trained runs, mean +- s.d. over seeds) and query length, MAP of the three
    query kinds and the rank score of relevant pairs with and without a shared passage.
    ``analysed``: {(model, variant): [one ``analyse_checkpoint`` result per seed]}."""
    lines = [
        f"== {corpus_name}: where the segment-level matches come from (MAP; pair rank score) ==",
        f"{'model':<28}{'query':>6}{'n':>3}" + "".join(f"{k:>15}" for k in QUERIES)
        + f"{'pair shared':>15}{'pair none':>15}{'coverage':>10}",
    ]
    for model, variant, length, runs in runs_by_length(analysed, lengths):
        cells = [mean_sd([r[k] for r in runs]) for k in QUERIES]
        cells += [mean_sd([float(np.mean(r["pairs"][k])) for r in runs if r["pairs"][k]])
                  for k in PAIRS]  # a tiny test set may have no pair of a kind
        coverage = statistics.mean(r["coverage"] for r in runs)
        lines.append(
            f"{label(model, variant):<28}{length:>5}s{len(runs):>3}"
            + "".join(f"{c:>15}" for c in cells)
            + f"{coverage:>10.2f}"
        )
    return "\n".join(lines)


def reduction_table(corpus_name, analysed, lengths):
    """Text: MAP of the whole-window protocol with each evaluation reduction of ``REDUCTIONS``."""
    lines = [
        f"== {corpus_name}: all query windows, MAP by the segment reduction at evaluation ==",
        f"{'model':<28}{'query':>6}{'n':>3}" + "".join(f"{r:>15}" for r in REDUCTIONS),
    ]
    for model, variant, length, runs in runs_by_length(analysed, lengths):
        cells = [mean_sd([r["reductions"][x] for r in runs]) for x in REDUCTIONS]
        lines.append(
            f"{label(model, variant):<28}{length:>5}s{len(runs):>3}"
            + "".join(f"{c:>15}" for c in cells)
        )
    return "\n".join(lines)


def plot(corpus_name, analysed, path):
    """MAP against query length per model (main runs and variants), all windows and one clip in
    the work side by side, mean +- s.d. over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=120, sharey=True)
    for ax, kind in zip(axes, ("all windows", "clip in work")):
        for key in sorted(analysed, key=lambda key: model_variant_rank(*key)):
            lengths = sorted(set.intersection(*(set(seed) for seed in analysed[key])))
            values = np.array([[seed[n][kind] for n in lengths] for seed in analysed[key]])
            sd = values.std(0, ddof=1) if len(values) > 1 else np.zeros(len(lengths))
            style = "-" if key[1] is None else ":"
            ax.errorbar(lengths, values.mean(0), yerr=sd, marker="o", capsize=3, ls=style,
                        label=label(*key))
        ax.set_title(f"{corpus_name}: {kind}")
        ax.set_xlabel("query length (s)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("MAP")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def pair_counts(analysed):
    """(shared, none) relevant pairs of the test set (the same in every run)."""
    for runs in analysed.values():
        for length, result in runs[0].items():
            return tuple(len(result["pairs"][k]) for k in PAIRS)
    return (0, 0)


###################################################################################################
# Analyses kept across sessions
###################################################################################################


def rounded_pairs(result):
    """``result`` with its pair rank scores to 4 decimals (they are only averaged)."""
    return {
        length: {**r, "pairs": {k: [round(v, 4) for v in r["pairs"][k]] for k in PAIRS}}
        for length, r in result.items()
    }


class CorpusRuns:
    """A corpus's spans and embedding caches under bench_paper's ``--out``, read when a run's
    checkpoint is first analysed (a machine without ``--out`` reads only kept analyses)."""

    def __init__(self, out, corpus_name):
        self.out, self.name = out, corpus_name
        self.dir = os.path.join(out, corpus_name)
        self._spans = self._entries = None

    def checkpoint(self, row, untuned):
        return trained_checkpoint(self.out, self.name, row["run"], untuned)

    def analyse(self, checkpoint):
        if self._spans is None:
            if not os.path.isfile(spans_file(self.out, self.name)):
                raise SystemExit(f"error: {self.dir}: no audio/{SPANS_FILE} for {checkpoint}")
            self._spans = spans_by_id(self.dir)
            self._entries = cached_entries(os.path.join(self.dir, "cache", "embeddings"))
        return rounded_pairs(analyse_checkpoint(checkpoint, self._entries, self._spans, LENGTHS))


def all_rows(results):
    """[(row, set aside in untuned/)] of the rows in ``results`` and its ``UNTUNED`` folder."""
    main = [(row, False) for row in load_rows(results)[0]]
    return main + [(row, True) for row in load_rows(os.path.join(results, UNTUNED))[0]]


def collect(args, rows, kept):
    """Every row's analysis: kept, or made now from its checkpoint. Returns ({row key: entry to
    keep}, {corpus: {(model, variant): [results of the main rows]}}, [main runs with neither])."""
    dump = {k: v for k, v in kept.items() if v["corpus"] not in args.corpora}  # kept as they were
    analysed, missing = {}, []
    for corpus_name in args.corpora:
        runs = CorpusRuns(args.out, corpus_name)
        analysed[corpus_name] = {}
        for row, untuned in rows:
            if row["corpus"] != corpus_name:
                continue
            result = kept_result(kept, row)
            checkpoint = runs.checkpoint(row, untuned)
            if result is None and os.path.isfile(checkpoint):
                result = runs.analyse(checkpoint)
            if result is None:
                if not untuned:  # the tables are of the main rows only
                    missing.append(row["run"])
                continue
            dump[row_key(row, untuned)] = {
                "corpus": corpus_name, "row": fingerprint(row),
                "lengths": {str(n): r for n, r in result.items()},
            }
            if not untuned:
                analysed[corpus_name].setdefault((row["model"], row["variant"]), []).append(result)
    return dump, analysed, missing


def report(args, analysed):
    """Print and write ``analysis.txt`` and a plot per corpus of the main rows' analyses."""
    text = []
    for corpus_name, runs in analysed.items():
        if not runs:
            print(f"{corpus_name}: no run to analyse", file=sys.stderr)
            continue
        plot(corpus_name, runs, os.path.join(args.results, f"analysis-{corpus_name}.png"))
        shared, none = pair_counts(runs)
        text.append(
            table(corpus_name, runs, LENGTHS)
            + "\n\n" + reduction_table(corpus_name, runs, LENGTHS)
            + f"\nrelevant test pairs: {shared} share >= {SHARED_SECONDS:g} s of their work, "
            f"{none} share less"
        )
    text = "\n\n".join(text)
    print(text)
    with open(os.path.join(args.results, "analysis.txt"), "w") as handle:
        handle.write(text + "\n")


def main(argv=None):
    args = parse_args(argv)
    kept = read_analysis(args.results)
    dump, analysed, missing = collect(args, all_rows(args.results), kept)
    os.makedirs(args.results, exist_ok=True)
    with open(os.path.join(args.results, ANALYSIS_FILE), "w") as handle:
        json.dump(dump, handle)
    if args.record_only:
        print(f"{len(set(dump) - set(kept))} run(s) analysed, {len(dump)} kept in "
              f"{os.path.join(args.results, ANALYSIS_FILE)}")
        return 0
    report(args, analysed)
    if missing:
        print(f"error: {len(missing)} run(s) with neither a checkpoint under {args.out} nor a "
              f"kept analysis, left out of the analysis: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
