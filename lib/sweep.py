"""Evaluation sweeps of one checkpoint: a list of candidate filters (the DVI2 fork's tag-wise
evaluation) or a list of metadata files (its stratified evaluation), summed up in one table.

The fork ran its ``test_tagwise.sh`` / ``test_stratified.sh`` as one ``test.py`` call per item;
``test.py sweep_cfilters=...`` / ``sweep_metas=...`` does the same in one process, extracting the
embeddings of a partition once for all its filters (and reading them from the cache next time).
"""

import csv
import glob
import math
import os

from lib.errors import UsageError
from lib.files import atomic_write

# The fork's tag expressions, matched against the words of the YouTube title (test_tagwise.sh)
FORK_TAGS = (
    "acoustic",
    "instrumental|karaoke",
    "live",
    "orchestra",
    "firsttimehearing|firsttimereaction|reaction|reactsto|reactto",
    "cover",
    "cover&bass",
    "cover&drum",
    "cover&guitar",
    "cover&piano",
    "solo",
    "solo&bass",
    "solo&drum",
    "solo&guitar",
    "solo&piano",
    "howtoplay|howtosing|lesson|tutorial",
    "(howtoplay|lesson|tutorial)&bass",
    "(howtoplay|lesson|tutorial)&drum",
    "(howtoplay|lesson|tutorial)&guitar",
    "(howtoplay|lesson|tutorial)&piano",
)
FORK_TAG_DOMAIN = "tags_yt_title"
COLUMNS = ("item", "qslen", "queries", "candidates", "MAP", "MAP_ci", "MR1", "MR1_ci", "ARP")
COLUMNS += ("ARP_ci", "note")


class SweepError(UsageError, ValueError):
    """A sweep argument names no usable filter list or metadata files."""


def candidate_filters(spec):
    """The candidate filters of ``sweep_cfilters``: "fork_tags" (the fork's 20 tag expressions on
    the YouTube title) or a text file with one filter per line (blank lines and lines starting
    with # are ignored)."""
    if str(spec) == "fork_tags":
        return [f"{FORK_TAG_DOMAIN}:{tag}" for tag in FORK_TAGS]
    path = str(spec)
    if not os.path.isfile(path):
        raise SweepError(f"sweep_cfilters={path!r}: neither 'fork_tags' nor a file of filters")
    with open(path, encoding="utf-8") as handle:
        lines = [line.strip() for line in handle]
    filters = [line for line in lines if line and not line.startswith("#")]
    if not filters:
        raise SweepError(f"{path}: no filter in it (one per line)")
    return filters


def metadata_files(spec):
    """The metadata files of ``sweep_metas``: a glob pattern (``cache/dvi2_strata/*.pt``) or a
    list of paths, sorted as given (a pattern's matches by name)."""
    if isinstance(spec, str):
        files = sorted(glob.glob(spec))
        if not files:
            raise SweepError(f"sweep_metas={spec!r}: no file matches")
        return files
    files = [str(path) for path in spec]
    missing = [path for path in files if not os.path.isfile(path)]
    if not files or missing:
        raise SweepError(f"sweep_metas: {', '.join(missing) or 'empty list'}: not found")
    return files


def not_evaluated(err):
    """The table's short note for a filter that could not be evaluated: "not evaluated: unknown
    label 'karaoke'" rather than the error's list of every label there is."""
    reason = str(err).removeprefix("cfilter: ").split(" in domain")[0].split(" (")[0]
    return f"not evaluated: {reason}"


def row(item, summary, query_len, note=""):
    """A table row of one evaluation (``summary`` as lib.eval.aggregate returns it, or None
    when the item could not be evaluated, with ``note`` saying why)."""
    out = {"item": item, "qslen": query_len, "note": note}
    if summary is None:
        return {**out, "queries": 0, "candidates": 0}
    out.update(queries=summary["n_queries"], candidates=summary["n_candidates"])
    if not summary["n_queries"] and not note:
        out["note"] = "no query has another version among the candidates"
    for metric in ("MAP", "MR1", "ARP"):
        out[metric], out[f"{metric}_ci"] = summary[metric]
    return out


def write_table(folder, rows, what):
    """sweep.csv, sweep.md and sweep.png (MAP with its 95% c.i. per item) in ``folder``;
    ``what`` names the item column ("candidate filter" or "metadata file")."""
    os.makedirs(folder, exist_ok=True)

    def write_csv(handle):
        writer = csv.writer(handle)
        writer.writerow([what if c == "item" else c for c in COLUMNS])
        for r in rows:
            writer.writerow([_cell(r.get(c)) for c in COLUMNS])

    atomic_write(os.path.join(folder, "sweep.csv"), write_csv, text=True)
    text = markdown(rows, what)
    atomic_write(os.path.join(folder, "sweep.md"), lambda h: h.write(text), text=True)
    plot(os.path.join(folder, "sweep.png"), rows, what)
    return text


def markdown(rows, what):
    head = f"| {what} | query length | queries | candidates | MAP | MR1 | ARP |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("MAP") is None:
            cells = ["-", "-", "-"]
        else:
            cells = [
                f"{r['MAP']:.3f} ± {r['MAP_ci']:.3f}",
                f"{r['MR1']:.1f} ± {r['MR1_ci']:.1f}",
                f"{r['ARP']:.2f} ± {r['ARP_ci']:.2f}",
            ]
        item = r["item"].replace("|", "\\|")
        if r.get("note"):
            item += f" ({r['note']})"
        length = "whole track" if r["qslen"] is None else f"{r['qslen']:g} s"
        if r.get("MAP") is None:
            length = "-"
        counts = f"{r['queries']} | {r['candidates']}"
        lines.append(f"| `{item}` | {length} | {counts} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(path, rows, what):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    shown = [r for r in rows if r.get("MAP") is not None]
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(shown) + 2), 4), dpi=120)
    ax.bar(
        range(len(shown)),
        [r["MAP"] for r in shown],
        yerr=[r["MAP_ci"] for r in shown],
        capsize=3,
        color="tab:blue",
    )
    ax.set_xticks(range(len(shown)))
    ax.set_xticklabels([_short(r["item"]) for r in shown], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("MAP (95% c.i.)")
    ax.set_ylim(0, 1)
    ax.set_title(f"MAP per {what}", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, format="png"))
    plt.close(fig)


def _short(text, width=32):
    text = text.split(":", 1)[-1] if text.startswith(FORK_TAG_DOMAIN + ":") else text
    text = os.path.basename(text) if os.sep in text else text
    return text if len(text) <= width else text[: width - 1] + "…"


def _cell(value):
    if isinstance(value, float) and math.isnan(value):
        return ""
    return "" if value is None else value
