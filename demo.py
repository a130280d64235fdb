"""The whole pipeline on the built-in synthetic corpus, on a CPU, in one command:

    make demo                       # = bash install_requirements.sh; .venv/bin/python demo.py
    python demo.py --out runs/demo  # the same, in an existing environment

Each step runs the command a user would type (printed with a leading "$"), its output shown
and kept in OUT/logs/<step>.log:

  1. python -m lib.synth          render the corpus (works x versions, formats rotated)
  2. data_preproc.py              --dataset=folder: metadata file, train/valid/test by work
  3. train.py                     config/demo-clews.yaml (its training.save_freq makes train.py
                                  keep checkpoint_epoch0.ckpt: the untrained model)
  4. test.py                      untrained and trained model (after the config's epochs, not
                                  picked on the small validation split), whole tracks and 20 s
                                  windows
  5. inference.py                 embeddings of every file of the corpus folder
  6. match.py index / query       catalogue of those embeddings; a 20 s clip of an unseen
                                  version of a test work looks for the versions of its work
  7. match.py serve               the web page on a free local port: the same clip uploaded
                                  gets the same answer; then the server stops

It ends with the untrained and trained MAP side by side (OUT/demo_results.json). Everything goes
under OUT. Running the same command again reuses what is finished (corpus, trained epochs,
embedding caches); --fresh starts over.

Exit status: 0 done and the trained model beats the untrained one by at least --min_gain MAP at
both levels; 1 a step failed or the gain is smaller; 2 bad arguments; 130 interrupted.
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

from lib import cli, synth
from lib.audio import write_audio
from lib.errors import RunError
from lib.metadata import load_metadata
from lib.matching.server import post_upload, wait_for_url

ROOT = os.path.dirname(os.path.abspath(__file__))
MARKER = "demo.json"  # written in OUT first: --fresh only ever deletes a folder holding it
LEVELS = {
    "track": ["qslen=-1", "cslen=-1"],
    "20 s windows": ["qslen=20", "qshop=5", "cslen=20", "cshop=5"],
}
# the trained model is the one after the config's fixed number of epochs: the demo's validation
# split (6 works) is too small to pick a checkpoint by (its MAP saturates while test MAP does not)
MODELS = {"untrained": "checkpoint_epoch0.ckpt", "trained": "checkpoint_last.ckpt"}


class StepError(RunError):
    """A step of the demo failed; its log says why."""


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/demo", help="folder of everything the demo writes")
    parser.add_argument("--works", type=int, default=60)
    parser.add_argument("--versions", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0, help="approximate version length")
    parser.add_argument("--split", default="0.6,0.1,0.3", help="train,valid,test work fractions")
    parser.add_argument("--epochs", type=int, default=None, help="default: the config's")
    parser.add_argument("--conf", default="config/demo-clews.yaml")
    parser.add_argument("--accelerator", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--njobs", type=int, default=-1, help="processes for rendering/checks")
    parser.add_argument(
        "--min_gain", type=float, default=0.1, help="MAP the training must add at both levels"
    )
    parser.add_argument("--fresh", action="store_true", help="delete OUT (a demo folder) first")
    parser.add_argument("--seed", type=int, default=0, help="of the corpus, split and training")
    parser.add_argument(
        "--variation",
        choices=synth.VARIATIONS,
        default="cover",
        help="corpus: cover (the demo's) or arrangement (every version re-arranged; harder)",
    )
    args = parser.parse_args(argv)
    # the steps run from the repository root: paths given relative to where the demo was started
    args.out, args.conf = from_root(args.out), from_root(args.conf)
    if args.works < 3 or args.versions < 2 or args.seconds < 20:
        parser.error("need --works >= 3, --versions >= 2 and --seconds >= 20 (the clip is 20 s)")
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be >= 1")
    return args


def from_root(path):
    """``path`` as the steps (run from the repository root) must see it: relative to the root
    when inside it, else absolute."""
    path = os.path.abspath(path)
    relative = os.path.relpath(path, ROOT)
    return path if relative.startswith("..") else relative


###################################################################################################
# running steps
###################################################################################################


def serve_and_ask(catalogue, clip, logs):
    """Start ``match.py serve`` on the catalogue (a free local port), upload the clip as the web
    page does, stop the server; returns its JSON answer. Its output is in logs/8-serve.log."""
    cmd = [sys.executable, "match.py", "serve", f"--catalogue={catalogue}", "--port=0"]
    cmd += ["--topk=5"]
    print(f"\n$ {shlex.join(['python', *cmd[1:]])}   (then the clip, uploaded)", flush=True)
    log_path = os.path.join(logs, "8-serve.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            url = wait_for_url(proc.stdout, log.write)
            if url is None:
                raise StepError(f"the web server did not start; its output is in {log_path}")
            with open(clip, "rb") as handle:
                status, text = post_upload(url, os.path.basename(clip), handle.read(), "json")
            log.write(f"POST {url}query -> {status}\n{text}\n")
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    if status != 200:
        raise StepError(f"the web page answered {status}; see {log_path}")
    return json.loads(text)


def run_step(name, cmd, logs):
    """Run ``cmd`` (a list) from the repository root, showing its output as it comes and keeping
    it in logs/<name>.log. Raises StepError naming the step and its log on a non-zero exit."""
    shown = shlex.join(["python" if cmd[0] == sys.executable else cmd[0], *cmd[1:]])
    print(f"\n$ {shown}", flush=True)
    log_path = os.path.join(logs, f"{name}.log")
    start = time.time()
    with open(log_path, "wb") as log:
        log.write(f"$ {shown}\n".encode())
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            bufsize=0,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),  # its lines in order with tqdm's
        )
        try:
            while chunk := proc.stdout.read(4096):
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                log.write(chunk)
        finally:
            rc = proc.wait()
    if rc != 0:
        raise StepError(f"step '{name}' failed (exit status {rc}); its output is in {log_path}")
    return time.time() - start


def prepare_out(args):
    """Create OUT with its marker; refuse a non-empty folder that is not a demo folder."""
    marker = os.path.join(args.out, MARKER)
    if os.path.isdir(args.out) and os.listdir(args.out) and not os.path.isfile(marker):
        raise StepError(
            f"{args.out} exists and is not a demo folder (no {MARKER}): choose another --out"
        )
    if args.fresh and os.path.isfile(marker):
        shutil.rmtree(args.out)
    os.makedirs(os.path.join(args.out, "logs"), exist_ok=True)
    keys = ("works", "versions", "seconds", "split", "seed", "variation")
    settings = {k: getattr(args, k) for k in keys}
    if os.path.isfile(marker):
        with open(marker) as handle:
            before = json.load(handle)
        before.setdefault("variation", "cover")  # demo folders from before the option
        if before != settings:
            raise StepError(
                f"{args.out} holds a demo made with {before}; add --fresh to start over with "
                f"{settings}, or choose another --out"
            )
    else:
        with open(marker, "w") as handle:
            json.dump(settings, handle)
    return settings


###################################################################################################
# the pipeline
###################################################################################################


def render_corpus(args, audio, logs):
    done = os.path.join(audio, ".complete")
    if os.path.isfile(done):
        print(f"\nCorpus already rendered in {audio}")
        return 0.0
    cmd = [sys.executable, "-m", "lib.synth", f"--out={audio}", f"--works={args.works}"]
    cmd += [f"--versions={args.versions}", f"--seconds={args.seconds:g}", f"--seed={args.seed}"]
    cmd += [f"--variation={args.variation}"]
    seconds = run_step("1-corpus", cmd + [f"--njobs={args.njobs}"], logs)
    open(done, "w").close()
    return seconds


def write_query_clip(args, meta, clips):
    """20 s of a version of a test work that is not in the corpus, starting 5 s in. Returns the
    clip's path and its work."""
    work = sorted(load_metadata(meta)[1]["test"])[0]
    number = int(work.removeprefix("work"))
    sr = 16000
    version = synth.unseen_version(number, args.seed, args.seconds, sr, variation=args.variation)
    audio = version[5 * sr : 25 * sr]
    path = os.path.join(clips, f"{work}-unseen-version.wav")
    write_audio(path, audio, sr)
    return path, work


def evaluate(run_dir, results, logs, cache):
    """test.py for both models at both levels; returns {model: {level: results.json run}}."""
    table, seconds = {}, 0.0
    for model, checkpoint in MODELS.items():
        for level, windows in LEVELS.items():
            slug = f"{model}-{level.split()[0]}"
            out = os.path.join(results, slug)
            cmd = [sys.executable, "test.py", f"checkpoint={os.path.join(run_dir, checkpoint)}"]
            cmd += windows + [f"cache_dir={cache}", f"out={out}"]
            seconds += run_step(f"4-test-{slug}", cmd, logs)
            with open(os.path.join(out, "results.json")) as handle:
                table.setdefault(model, {})[level] = json.load(handle)["runs"][0]
    return table, seconds


def verdict(table, min_gain):
    """(ok, lines): ok when the trained MAP exceeds the untrained one by ``min_gain`` at every
    level."""
    ok, lines = True, []
    for level in LEVELS:
        gain = table["trained"][level]["MAP"]["mean"] - table["untrained"][level]["MAP"]["mean"]
        good = gain >= min_gain
        ok &= good
        lines.append(
            f"{level}: training adds {gain:+.3f} MAP "
            f"({'>=' if good else '<'} the required {min_gain:+.3f})"
        )
    return ok, lines


def results_table(table):
    rows = [
        f"{'':<16}{'untrained':>24}{'trained':>24}",
        f"{'':<16}{'MAP (+-95% c.i.)':>24}{'MAP (+-95% c.i.)':>24}",
    ]
    for level in LEVELS:
        cells = []
        for model in MODELS:
            m = table[model][level]["MAP"]
            cells.append(f"{m['mean']:.3f} +-{m['ci95']:.3f}")
        rows.append(f"{level + ' MAP':<16}{cells[0]:>24}{cells[1]:>24}")
    for level in LEVELS:
        cells = [f"{table[model][level]['MR1']['mean']:.2f}" for model in MODELS]
        rows.append(f"{level + ' MR1':<16}{cells[0]:>24}{cells[1]:>24}")
    return rows


def demo(argv):
    args = parse_args(argv)
    started = time.time()
    out = args.out
    settings = prepare_out(args)
    paths = {
        name: os.path.join(out, name)
        for name in (
            "audio",
            "logs",
            "runs",
            "results",
            "cache",
            "embeddings",
            "catalogue",
            "clips",
        )
    }
    meta = os.path.join(out, "metadata-demo.pt")
    run_dir = os.path.join(paths["runs"], "demo-clews")
    timings = {}
    print(f"Demo in {out}: {settings}")

    timings["corpus"] = render_corpus(args, paths["audio"], paths["logs"])

    cmd = [sys.executable, "data_preproc.py", "--dataset=folder", f"--path_audio={paths['audio']}"]
    cmd += ["--ext_in=any", f"--split={args.split}", f"--seed={args.seed}"]
    cmd += [f"--njobs={args.njobs}", f"--fn_out={meta}"]
    timings["preprocessing"] = run_step("2-preproc", cmd, paths["logs"])

    cmd = [sys.executable, "train.py", "jobname=demo-clews", f"conf={args.conf}"]
    cmd += [f"seed={args.seed}"]
    cmd += [f"path.audio={paths['audio']}", f"path.meta={meta}", f"path.logs={paths['runs']}"]
    cmd += [f"path.cache={paths['cache']}", f"fabric.accelerator={args.accelerator}"]
    if args.epochs is not None:
        cmd.append(f"training.numepochs={args.epochs}")
    timings["training"] = run_step("3-train", cmd, paths["logs"])

    cache = os.path.join(paths["cache"], "embeddings")
    table, timings["evaluation"] = evaluate(run_dir, paths["results"], paths["logs"], cache)

    trained = os.path.join(run_dir, MODELS["trained"])
    cmd = [sys.executable, "inference.py", f"--checkpoint={trained}"]
    cmd += [f"--path_in={paths['audio']}", f"--path_out={paths['embeddings']}"]
    timings["inference"] = run_step("5-inference", cmd, paths["logs"])

    clip, work = write_query_clip(args, meta, paths["clips"])
    cmd = [sys.executable, "match.py", "index", f"--embeddings={paths['embeddings']}"]
    cmd += [f"--out={paths['catalogue']}"]
    timings["catalogue"] = run_step("6-index", cmd, paths["logs"])
    matches_json = os.path.join(out, "matches.json")
    cmd = [sys.executable, "match.py", "query", clip, f"--catalogue={paths['catalogue']}"]
    cmd += ["--topk=5", f"--json={matches_json}"]
    timings["query"] = run_step("7-query", cmd, paths["logs"])
    with open(matches_json) as handle:
        matches = json.load(handle)[0]["matches"]
    started_serve = time.time()
    served = serve_and_ask(paths["catalogue"], clip, paths["logs"])
    timings["web page"] = time.time() - started_serve
    if [m["id"] for m in served["matches"]] != [m["id"] for m in matches]:
        raise StepError("the web page's answer differs from match.py query's; see 8-serve.log")
    print(f"  the web page answers the same {len(matches)} tracks, first {matches[0]['id']}")

    ok, lines = verdict(table, args.min_gain)
    hits = [m["rank"] for m in matches if m["id"].split("/")[0] == work]
    total = time.time() - started
    summary = {
        "settings": settings,
        "results": {
            model: {
                level: {k: run[k] for k in ("MAP", "MR1", "ARP", "n_queries")}
                for level, run in levels.items()
            }
            for model, levels in table.items()
        },
        "query": {"clip": clip, "work": work, "ranks_of_its_versions": hits},
        "seconds": {**timings, "total": total},
        "ok": ok,
    }
    with open(os.path.join(out, "demo_results.json"), "w") as handle:
        json.dump(summary, handle, indent=1)

    n = table["trained"]["track"]["n_queries"]
    print("\n" + "=" * 64)
    print(f"Demo results on the {n} test tracks (works never seen in training):")
    print("\n".join(results_table(table)))
    print(
        f"Clip of an unseen version of {work}: its versions at rank(s) "
        f"{', '.join(map(str, hits)) or 'none'} of the top {len(matches)} in the catalogue"
    )
    print("\n".join(lines))
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    print(f"Wall time {total:.0f} s ({steps}); everything is in {out}")
    print(
        "Search the demo catalogue with your own clips in a web page (http://127.0.0.1:8000/):\n"
        f"  python match.py serve --catalogue={paths['catalogue']}"
    )
    if not ok:
        print("error: the trained model does not beat the untrained one clearly", file=sys.stderr)
    return 0 if ok else 1


def main(argv=None):
    """The exit status (errors as one ``error:`` line, see ``lib.cli``)."""
    return cli.run(demo, argv)


if __name__ == "__main__":
    sys.exit(main())
