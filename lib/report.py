"""The report of one evaluation (``test.py``): the printed result block (the original's first
lines, plus MRR, P@k and counts), ``results.json`` (every metric's mean and 95% c.i. per query
window setting, with the settings), ``per_query.csv`` and, with several query lengths,
``map_vs_query_length.png``."""

import csv
import json
import math
import os

from lib.files import atomic_write

METRIC_FORMATS = {"ARP": "5.2f", "MAP": "5.3f", "MR1": "7.1f", "MRR": "5.3f"}


def result_block(title, summary):
    names = ["ARP", "MAP", "MR1", "MRR", "P@1", "P@10"]
    fmt = {n: METRIC_FORMATS.get(n, "5.3f") for n in names}
    avg = ",  ".join(f"{n} = {summary[n][0]:{fmt[n]}}" for n in names)
    ci = ",  ".join(f"{n} = {summary[n][1]:{fmt[n]}}" for n in names)
    stats = (
        f"  Stats: {summary['n_queries']:,} queries, {summary['n_candidates']:,} candidates, "
        f"{summary['n_no_relevant']:,} queries without a relevant candidate (left out)"
    )
    line = "=" * 100
    return f"{line}\n{title}\n  Avg --> {avg}\n  c.i. -> {ci}\n{stats}\n{line}"


def write_outputs(folder, runs, settings):
    os.makedirs(folder, exist_ok=True)
    results = {"settings": settings, "runs": []}
    for run in runs:
        summary = run["summary"]
        entry = {"query": run["query"], "candidate": run["candidate"], "redux": run["redux"]}
        if "music_only" in run:
            entry["music_only"] = run["music_only"]
        for key, value in summary.items():
            if isinstance(value, tuple):
                entry[key] = {"mean": _num(value[0]), "ci95": _num(value[1])}
            else:
                entry[key] = value
        results["runs"].append(entry)
    text = json.dumps(results, indent=1)
    atomic_write(os.path.join(folder, "results.json"), lambda h: h.write(text), text=True)
    rows = []
    header = [
        "qslen",
        "qshop",
        "query",
        "song_id",
        "clique",
        "AP",
        "R1",
        "ARP",
        "RR",
        "P@1",
        "P@10",
        "n_candidates",
        "n_relevant",
    ]
    for run in runs:
        pq = run["per_query"]
        for i in range(len(run["song_ids"])):
            rows.append(
                [
                    run["query"]["slen"],
                    run["query"]["shop"],
                    int(run["index"][i]),
                    int(run["song_ids"][i]),
                    int(run["cliques"][i]),
                ]
                + [_num(pq[k][i].item()) for k in ("AP", "R1", "ARP", "RR", "P@1", "P@10")]
                + [int(run["ncand"][i]), int(run["nrel"][i])]
            )

    def write_csv(handle):
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)

    atomic_write(os.path.join(folder, "per_query.csv"), write_csv, text=True)
    if len(runs) > 1:
        plot_map_vs_length(os.path.join(folder, "map_vs_query_length.png"), runs)


def _num(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def plot_map_vs_length(path, runs):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    lengths = [r["query"]["slen"] if r["query"]["slen"] > 0 else r["query"]["maxlen"] for r in runs]
    maps = [r["summary"]["MAP"][0] for r in runs]
    cis = [r["summary"]["MAP"][1] for r in runs]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.errorbar(lengths, maps, yerr=cis, marker="o", capsize=3)
    ax.set_xlabel("query length (s)")
    ax.set_ylabel("MAP")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, format="png"))
    plt.close(fig)
