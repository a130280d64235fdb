"""The demo's result over several seeds (issue 20): ``demo.py --seed S`` for each seed (corpus,
split and training all follow the seed), then untrained and trained MAP per seed and their mean
and range. What the README quotes for ``make demo``.

    .venv/bin/python -m benchmarks.bench_demo_seeds --seeds 0 1 2 3 4 [--out benchmarks/out/demo]

Each seed's demo folder is kept (OUT/seed-S), so a second run only prints the table again.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

LEVELS = ("track", "20 s windows")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", default="benchmarks/out/demo")
    parser.add_argument("demo_args", nargs="*", help="more demo.py options, after --")
    return parser.parse_args(argv)


def run_demo(seed, out, extra):
    """demo.py for one seed; its demo_results.json. A demo whose gain is below --min_gain exits
    with 1 and still reports: that is a result, not a failure."""
    folder = os.path.join(out, f"seed-{seed}")
    cmd = [sys.executable, "demo.py", f"--seed={seed}", f"--out={folder}", *extra]
    print("$ " + " ".join(cmd), flush=True)
    with open(os.path.join(out, f"seed-{seed}.log"), "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    results = os.path.join(folder, "demo_results.json")
    if rc not in (0, 1) or not os.path.isfile(results):
        sys.exit(f"error: demo.py --seed={seed} failed (exit status {rc}); see {log.name}")
    with open(results) as handle:
        return json.load(handle)


def table(summaries):
    """Rows of MAP per seed, then mean and [min, max] over seeds."""
    head = f"{'seed':<8}" + "".join(f"{m + ' ' + lv:>26}" for m in ("untrained", "trained")
                                     for lv in LEVELS) + f"{'train s':>9}"
    lines = [head]
    columns = {}
    for seed, summary in summaries.items():
        cells = []
        for model in ("untrained", "trained"):
            for level in LEVELS:
                value = summary["results"][model][level]["MAP"]["mean"]
                columns.setdefault((model, level), []).append(value)
                cells.append(f"{value:>26.3f}")
        lines.append(f"{seed:<8}" + "".join(cells) + f"{summary['seconds']['training']:>9.0f}")
    cells = [
        f"{statistics.mean(v):.3f} [{min(v):.3f}, {max(v):.3f}]" for v in columns.values()
    ]
    lines.append(f"{'mean':<8}" + "".join(f"{c:>26}" for c in cells))
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    summaries = {seed: run_demo(seed, args.out, args.demo_args) for seed in args.seeds}
    print(table(summaries))


if __name__ == "__main__":
    main()
