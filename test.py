"""Evaluate a checkpoint: every track of a partition queries all the others.

    python test.py checkpoint=logs/shs-clews/checkpoint_best.ckpt redux=bpwr-10
    python test.py checkpoint=... qslen=-1 cslen=-1                    # track level: one
                                                                       # embedding per track
    python test.py checkpoint=... qslen=20 qshop=5 cslen=20 cshop=5     # 20 s windows
    python test.py checkpoint=... qslen=[10,20,30] qshop=1000          # one window of 10, 20,
                                                                       # 30 s per query
    python test.py checkpoint=... qslen=[10,20] qshop=[10,20]          # windows back to back
    python test.py checkpoint=... qfilter="release_genres:Rock" cfilter="dvi:True"

Arguments are ``key=value`` (``python test.py --help`` lists them; ``lib.schema.TestArgs``). Window
lengths and hops are in seconds. As in the original, an unset length is the model's training shingle
(20 s for CLEWS) and an unset hop is 5 s, so the default evaluation of a 600 s track uses up to 117
windows; a length <= 0 means one embedding for the whole track (the hop is then ignored); hop=null
takes the training hop. Embeddings are cached under ``cache_dir`` keyed by the checkpoint's content
and the extraction settings, so evaluating again with another reduction or filter skips extraction.
Results go to ``<checkpoint folder>/results/<jobname>/<redux and windows>/<eval name>/`` (or
``out=``): results.json, per_query.csv and, with several query lengths, map_vs_query_length.png.
"""

import hashlib
import math
import os
import re
import sys
import time
import warnings

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from lib import cli, config, distributed, metrics, precision, report, retrieval, sweep, training
from lib.checkpoint import load_checkpoint, run_config, trained_model
from lib.config import ConfigError, check_accelerator, parse_arguments
from lib.dataset import Dataset
from lib.extract import (
    NON_MUSIC_FIELD,
    cache_parts,
    describe_windows,
    embeddings_for,
    non_music_mask,
    settings_for,
)
from lib.filters import DomainIndex, FilterError
from lib.schema import TestArgs

SHORTCUTS = {**config.SHORTCUTS, "accelerator": "fabric.accelerator"}


def parse_args(argv):
    args = parse_arguments(TestArgs, argv, SHORTCUTS)
    if not args.checkpoint:
        raise ConfigError("missing required argument checkpoint=PATH; usage: " + USAGE)
    check_accelerator(args.fabric.accelerator, "fabric.accelerator")
    args.precision = precision.check(args.precision, args.fabric.accelerator)
    if args.music_only and args.noise_segment_seconds is None:
        raise ConfigError(
            "music_only=true needs noise_segment_seconds=<seconds>: the length of the segments "
            "that noise_inds_sparse counts, which the DiVers release does not document"
        )
    return args


USAGE = (
    "python test.py checkpoint=PATH [conf=YAML] [redux=bpwr-10] [qslen=20 qshop=5] [key=value ...]"
)


def model_config(args, state):
    """The run's config: conf=, else configuration.yaml beside the checkpoint, else the one
    stored in the checkpoint; path_audio / path_meta override its paths."""
    conf, source = run_config(args.checkpoint, state, args.conf)
    if args.path_audio:
        conf.path.audio = args.path_audio
    if args.path_meta:
        conf.path.meta = args.path_meta
    for key in sorted(OmegaConf.missing_keys(conf.path)):
        raise ConfigError(f"{source}: no path.{key} (give path_{key}=...)")
    conf.data.path = conf.path
    return conf, source


def as_list(value):
    if value is None or not OmegaConf.is_list(value) and not isinstance(value, list):
        return [value]
    values = list(value)
    if not values:
        raise ConfigError("an empty list of window lengths")
    return values


def query_settings(qslen, qshop):
    """[(window length, hop)] of the query evaluations: one hop for every length, or a list of
    hops paired with the list of lengths."""
    lengths, hops = as_list(qslen), as_list(qshop)
    if len(hops) == 1:
        hops = hops * len(lengths)
    elif len(hops) != len(lengths):
        raise ConfigError(
            f"qshop: a list of hops needs one per query length ({len(hops)} hops for "
            f"{len(lengths)} lengths)"
        )
    return list(zip(lengths, hops))


def select_tracks(domains, name, expression):
    """The tracks an expression selects (None without one); errors name the argument."""
    if not expression:
        return None
    try:
        return domains.select(expression)
    except FilterError as err:
        raise FilterError(f"{name}: {err}") from None


def eval_name(qfilter, cfilter):
    if not qfilter and not cfilter:
        return "overall"
    name = f"{qfilter or 'all'}-to-{cfilter or 'all'}"
    safe = re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_")
    if len(safe) > 80 or safe != name:
        safe = f"{safe[:60]}-{short_hash(name)}"
    return safe


def short_hash(text):
    return hashlib.sha256(text.encode()).hexdigest()[:8]


###################################################################################################


def gather_results(fabric, index, per_query, nrel, ncand):
    """Every process's per-query rows on every process, in query order."""
    device = fabric.device
    index = distributed.gather_rows(fabric, index.to(device)).cpu()
    order = index.argsort()
    out = {}
    for key, values in per_query.items():
        out[key] = distributed.gather_rows(fabric, values.to(device)).cpu()[order]
    nrel = distributed.gather_rows(fabric, nrel.to(device)).cpu()[order]
    ncand = distributed.gather_rows(fabric, ncand.to(device)).cpu()[order]
    return index[order], out, nrel, ncand


###################################################################################################


def main(argv):
    # Lightning's all_gather goes through a torch function that warns about its own deprecation
    warnings.filterwarnings("ignore", message=".*all_gather is deprecated.*")
    args = parse_args(argv)
    state = load_checkpoint(args.checkpoint)
    conf, conf_source = model_config(args, state)
    fabric = distributed.make_fabric(args.fabric, args.precision, timeout_minutes=60)
    printer = fabric.print
    printer("-" * 65 + "\n" + OmegaConf.to_yaml(args) + "-" * 65)

    torch.backends.cudnn.benchmark = False
    model = trained_model(state, conf, conf_source, args.checkpoint).to(fabric.device)
    if "epoch" in state:
        printer(
            f"  ({state['epoch']} epochs; best was {float(state.get('cost_best', math.nan)):.3f})"
        )
    printer(f"Model {conf.model.name} from {args.checkpoint}, config {conf_source}")

    redux = retrieval.default_redux(model) if args.redux is None else args.redux
    maxlen = args.maxlen
    try:
        candidate_windows = settings_for(model, args.cslen, args.cshop, maxlen)
        query_windows = [
            settings_for(model, s, h, maxlen) for s, h in query_settings(args.qslen, args.qshop)
        ]
    except ValueError as err:
        raise ConfigError(str(err)) from None
    folder_name = run_name(redux, query_windows, candidate_windows)
    base = args.out or os.path.join(
        os.path.dirname(os.path.abspath(args.checkpoint)),
        "results",
        args.jobname or "test",
        folder_name,
    )
    meta_files, cfilters, what = sweep_items(args)
    rows = []
    for meta in meta_files:
        if meta is not None:
            conf.path.meta = conf.data.path.meta = meta
        partition = Partition(args, conf, model, fabric)
        qsel = select_tracks(partition.domains, "qfilter", args.qfilter)
        for cfilter in cfilters:
            item = meta if what == "metadata file" else cfilter
            name = eval_name(args.qfilter, cfilter)
            try:
                csel = select_tracks(partition.domains, "cfilter", cfilter)
                runs = evaluate(
                    args,
                    model,
                    fabric,
                    partition,
                    (qsel, csel, cfilter),
                    redux,
                    query_windows,
                    candidate_windows,
                    name,
                )
            except FilterError as err:
                if what != "candidate filter":
                    raise
                # a tag that this collection lacks is an answer (no candidates), not a failure
                printer(f"{item}: not evaluated: {err}")
                rows.append(sweep.row(item, None, None, note=sweep.not_evaluated(err)))
                continue
            rows += [sweep.row(item, r["summary"], r["query"]["slen"] or None) for r in runs]
            if fabric.is_global_zero:
                folder = base if what is None and args.out else os.path.join(base, name)
                if meta is not None:
                    stem = os.path.splitext(os.path.basename(meta))[0]
                    folder = os.path.join(base, stem, name)
                settings = OmegaConf.to_container(args, resolve=True)
                settings.update(
                    {
                        "redux": redux,
                        "config": conf_source,
                        "metadata": conf.path.meta,
                        "eval_name": name,
                        "cfilter": cfilter,
                        "world_size": fabric.world_size,
                    }
                )
                report.write_outputs(folder, runs, settings)
                printer(f"Results in {folder}")
    if what is not None and fabric.is_global_zero:
        folder = os.path.join(base, "sweep")
        printer(f"Sweep over {len(meta_files) * len(cfilters)} {what}s:\n")
        printer(sweep.write_table(folder, rows, what))
        printer(f"Sweep table in {folder} (sweep.csv, sweep.md, sweep.png)")
    fabric.barrier()
    return 0


def sweep_items(args):
    """(metadata files, candidate filters, what is swept): [None] = the config's metadata file
    and [cfilter] = the one candidate filter when nothing is swept (``what`` is then None)."""
    if args.sweep_cfilters is not None and args.sweep_metas is not None:
        raise ConfigError("sweep_cfilters and sweep_metas: one sweep at a time")
    try:
        if args.sweep_cfilters is not None:
            if args.cfilter:
                raise ConfigError("cfilter and sweep_cfilters: the sweep gives the filters")
            return [None], sweep.candidate_filters(args.sweep_cfilters), "candidate filter"
        if args.sweep_metas is not None:
            if args.path_meta:
                raise ConfigError("path_meta and sweep_metas: the sweep gives the files")
            files = args.sweep_metas
            files = list(files) if OmegaConf.is_list(files) else files
            return sweep.metadata_files(files), [args.cfilter], "metadata file"
    except sweep.SweepError as err:
        raise ConfigError(str(err)) from None
    return [None], [args.cfilter], None


class Partition:
    """The tracks of ``args.partition`` of the config's metadata file, their filter labels, and
    their embeddings with given window settings (extracted once, then from the cache)."""

    def __init__(self, args, conf, model, fabric):
        self.args, self.model, self.fabric = args, model, fabric
        self.dataset = Dataset(
            # each file is decoded once here: a decoded-audio cache would only fill the disk
            OmegaConf.merge(conf.data, {"decoded_cache": False}),
            args.partition,
            fullsongs=True,
            checks=True,
            limit_cliques=args.limit_num,
            verbose=fabric.is_global_zero,
        )
        training.check_input_kind(model, self.dataset)
        self.keys = list(self.dataset.versions)
        self.domains = DomainIndex(self.dataset.info, self.keys, source=conf.path.meta)
        if args.music_only and not any(NON_MUSIC_FIELD in self.dataset.info[k] for k in self.keys):
            raise ConfigError(
                f"music_only: no track of {args.partition} in {conf.path.meta} has "
                f"{NON_MUSIC_FIELD} (DiVers's full files have it; data_preproc.py "
                "--dataset=DiVers keeps it)"
            )
        self.key_parts = cache_parts(
            args.checkpoint,
            OmegaConf.to_container(conf.model, resolve=True),
            args.partition,
            self.dataset,
            self.keys,
            args.precision,
        )
        self.nworkers = conf.data.nworkers if args.nworkers is None else args.nworkers
        self.loaded = {}
        self.non_music = {}  # windows -> (N, S) bool, for music_only

    def music_only(self, windows, embeddings, selected):
        """``embeddings`` with the windows that lie mostly in non-music segments masked, the
        tracks ``selected`` (bool (N,) or None: all) that keep a window, and what was left out
        among the selected: {"windows", "left_out", "tracks", "tracks_left_out"}."""
        if windows not in self.non_music:  # once per setting, not per filter of a sweep
            count, segment = embeddings.z.size(1), self.args.noise_segment_seconds
            self.non_music[windows] = non_music_mask(
                self.dataset.info, self.keys, windows, count, segment
            )
        present = ~embeddings.mask.cpu()
        left_out = self.non_music[windows] & present
        masked, kept = embeddings.without_windows(left_out)
        chosen = np.ones(len(self.keys), dtype=bool) if selected is None else selected
        stats = {
            "windows": int(present.numpy()[chosen].sum()),
            "left_out": int(left_out.numpy()[chosen].sum()),
            "tracks": int(chosen.sum()),
            "tracks_left_out": int((chosen & ~kept.numpy()).sum()),
        }
        return masked, chosen & kept.numpy(), stats

    def embeddings(self, windows):
        """The partition's embeddings with the ``extract.Windows`` ``windows``."""
        if windows not in self.loaded:
            with self.fabric.autocast():
                self.loaded[windows] = embeddings_for(
                    self.model,
                    self.dataset,
                    self.keys,
                    windows,
                    self.key_parts,
                    self.args.cache_dir,
                    self.fabric,
                    nworkers=self.nworkers,
                    printer=self.fabric.print,
                )
        return self.loaded[windows]


def evaluate(
    args, model, fabric, partition, selection, redux, query_windows, candidate_windows, name
):
    """One evaluation per query window setting of the selected queries against the selected
    candidates (``selection`` = (query bool array, candidate bool array, candidate filter text),
    None = all); printed, and returned as a list of runs."""
    qsel, csel, cfilter = selection
    candidates = partition.embeddings(candidate_windows)
    music = {}
    if args.music_only:
        candidates, csel, music["candidates"] = partition.music_only(
            candidate_windows, candidates, csel
        )
    if csel is not None:
        candidates = candidates.subset(torch.from_numpy(csel))
    runs = []
    for windows in query_windows:
        queries = partition.embeddings(windows)
        chosen = qsel
        if args.music_only:
            queries, chosen, music["queries"] = partition.music_only(windows, queries, qsel)
            fabric.print(music_only_line(music))
        if chosen is not None:
            queries = queries.subset(torch.from_numpy(chosen))
        if len(queries) == 0 or len(candidates) == 0:
            raise FilterError(
                f"no {'queries' if len(queries) == 0 else 'candidates'} "
                f"pass the filter (qfilter={args.qfilter!r}, cfilter={cfilter!r})"
            )
        start = time.time()
        index, per_query, nrel, ncand = retrieval.evaluate(
            model,
            queries,
            candidates,
            redux=redux,
            device=fabric.device,
            rank=fabric.global_rank,
            world=fabric.world_size,
            max_elements=args.max_elements,
            progress=lambda blocks: tqdm(
                blocks, desc="queries", unit="block", disable=not fabric.is_global_zero
            ),
        )
        index, per_query, nrel, ncand = gather_results(fabric, index, per_query, nrel, ncand)
        summary = metrics.aggregate(per_query)
        summary["n_candidates"] = len(candidates)
        what = (
            f"queries: {describe_windows(windows)}; "
            f"candidates: {describe_windows(candidate_windows)}"
        )
        title = f"Result {name} ({what}; redux {redux}; {time.time() - start:.1f} s)"
        fabric.print(report.result_block(title, summary))
        runs.append(
            {
                "query": windows.as_dict(),
                "candidate": candidate_windows.as_dict(),
                "redux": redux,
                "summary": summary,
                "per_query": per_query,
                "index": index,
                "nrel": nrel,
                "ncand": ncand,
                "song_ids": queries.ids[index],
                "cliques": queries.cliques[index],
                **({"music_only": dict(music)} if music else {}),
            }
        )
    return runs


ROLE_NAMES = {"queries": "query", "candidates": "candidate"}


def music_only_line(music):
    """'music_only: left out 12 of 80 query windows (1 of 10 tracks left with none), ...'."""
    parts = []
    for role in ("queries", "candidates"):
        stats = music[role]
        parts.append(
            f"{stats['left_out']} of {stats['windows']} {ROLE_NAMES[role]} windows "
            f"({stats['tracks_left_out']} of {stats['tracks']} tracks left with none)"
        )
    return "music_only: left out " + ", ".join(parts) + " (mostly in non-music segments)"


def run_name(redux, query_windows, candidate_windows):
    """Folder name of an evaluation's settings, e.g. 'bpwr-10_q20s5_c20s5' or 'min_qfull_cfull'."""

    def name(windows):
        return "full" if windows.slen <= 0 else f"{windows.slen:g}s{windows.shop:g}"

    queries = "+".join(name(w) for w in query_windows)
    return f"{redux}_q{queries}_c{name(candidate_windows)}"


if __name__ == "__main__":
    sys.exit(
        cli.run(main, help_text=lambda: cli.arguments_help(USAGE, __doc__.strip(), TestArgs))
    )
