"""Which catalogue tracks contain a version of this clip, and where.

    # a catalogue from audio (embeddings kept in CAT/embeddings/, an interrupted run resumes)
    python match.py index --checkpoint=logs/dvi2-clews/checkpoint_best.ckpt --audio=music/ \
        --out=cat/
    # ... or from the outputs of inference.py
    python match.py index --embeddings=cache/extracted_embeddings/ --out=cat/
    # more audio into it, without rebuilding (queries meanwhile see the old or the new one)
    python match.py add --catalogue=cat/ new_music/   (or files)
    # the "no version" threshold for a 5% false-alarm rate, from labelled audio
    python match.py calibrate --catalogue=cat/ --meta=data/meta.pt --audio=data/audio
    # top 10 tracks for each clip, with the matched time ranges in the clip and in the track,
    # and whether the closest is a version (calibrated threshold, or --max_distance)
    python match.py query --catalogue=cat/ clip1.mp3 clip2.wav [--exact] [--max_distance=0.7]
    # a web page for the same (upload or record a clip), on http://127.0.0.1:8000/
    python match.py serve --catalogue=cat/ [--host=127.0.0.1 --port=8000]
    # are two recordings versions, and where do they meet? (the catalogue's model and
    # calibration, or --checkpoint with --threshold)
    python match.py compare a.mp3 b.wav --catalogue=cat/ [--threshold=0.7] [--json=out.json]
    # MIREX audio cover song identification: distance matrix of queries x collection
    python match.py mirex --checkpoint=... --collection=coll.txt --queries=q.txt --out=dist.txt

Exit status: 0 done, 1 some audio could not be read (the rest is done and said) or a bad
checkpoint / catalogue, 2 bad arguments, 130 interrupted.
"""

import argparse
import json
import os
import signal
import socket
import sys
import threading

from lib import cli, reductions, runtime
from lib.matching import api, calibration, catalogue
from lib.audio import AudioError
from lib.matching.catalogue import clock
from lib.errors import UsageError
from lib.files import atomic_write


def say_model(embedder):
    print(
        f"Model {embedder.name} from {embedder.checkpoint} on {embedder.device} "
        f"({embedder.backend}, {embedder.precision})"
    )
    return embedder


def load_embedder(checkpoint, args):
    return say_model(
        api.Embedder.load(
            checkpoint, args.conf, args.device, args.precision, backend=args.backend
        )
    )


def open_catalogue(args):
    """The catalogue of ``--catalogue`` with its model (``--checkpoint``, default its own)."""
    cat = api.Catalogue(
        args.catalogue, device=args.device, precision=args.precision, backend=args.backend
    )
    say_model(cat.load_embedder(args.checkpoint, args.conf))
    return cat


def report_failed(failed, log):
    if failed:
        print(f"{len(failed)} file(s) could not be read; see {log}", file=sys.stderr)


###################################################################################################
# index
###################################################################################################


def cmd_index(args):
    if (args.audio is None) == (args.embeddings is None):
        raise UsageError("give either --audio (with --checkpoint) or --embeddings")
    failed = []
    if args.audio is not None:
        if not args.checkpoint:
            raise UsageError("--audio needs --checkpoint")
        built, failed = api.Catalogue.build(
            args.out,
            load_embedder(args.checkpoint, args),
            args.audio,
            args.hop_size,
            args.win_len if args.win_len > 0 else None,
            args.index,
            args.nlist,
            args.nworkers,
            args.overwrite,
        )
        cat = built.data
    else:
        cat = api.Catalogue.from_embeddings(args.out, args.embeddings, args.index, args.nlist).data
    print(
        f"Catalogue {args.out}: {len(cat.tracks)} tracks, {cat.index.ntotal} windows, "
        f"{cat.info['kind']}"
    )
    log = api.torch_parts().inference.FAILURE_LOG
    report_failed(failed, os.path.join(args.out, "embeddings", log))
    return 1 if failed else 0


###################################################################################################
# add
###################################################################################################


def cmd_add(args):
    cat = open_catalogue(args)
    before = len(cat)
    audio = args.audio[0] if len(args.audio) == 1 and os.path.isdir(args.audio[0]) else args.audio
    done = cat.add(audio, nworkers=args.nworkers)
    if done["already"]:
        print(f"{len(done['already'])} file(s) already in the catalogue, left as they are")
    print(f"Catalogue {args.catalogue}: {before} + {len(done['added'])} = {len(cat)} tracks")
    log = os.path.join(args.catalogue, api.ADDED_DIR, api.torch_parts().inference.FAILURE_LOG)
    report_failed(done["failed"], log)
    return 1 if done["failed"] else 0


###################################################################################################
# calibrate
###################################################################################################


def cmd_calibrate(args):
    cat = open_catalogue(args)
    plot = args.plot or os.path.join(args.catalogue, "calibration.png")
    decision, failed = cat.calibrate(
        args.meta,
        args.audio,
        args.partition,
        plot,
        target=args.false_alarm,
        clip_len=args.clip_len,
        clips_per_track=args.clips_per_track,
        seed=args.seed,
        nworkers=args.nworkers,
    )
    print("\n".join(calibration.summary(cat.data.calibration, decision)))
    print(f"Stored in {os.path.join(args.catalogue, catalogue.META_FILE)}; plot in {plot}")
    if failed:
        print(f"{len(failed)} labelled file(s) unreadable, left out:", file=sys.stderr)
        for _, reason in failed[:10]:
            print(f"  {reason}", file=sys.stderr)
    return 1 if failed else 0


###################################################################################################
# query
###################################################################################################


def threshold_line(result, decision):
    if result.threshold_source == "max_distance":
        return f"{result.verdict} within distance {result.threshold:g} (--max_distance)"
    if result.threshold_source == "calibrated":
        return f"{result.verdict} ({decision.threshold_text()})"
    return result.verdict


def print_result(path, result, cat, hop, redux, exact):
    win_len = float(cat.settings["win_len"])
    print(
        f"\n{path} ({result.duration_s:.1f} s, {result.windows} window(s) of {win_len:g} s every "
        f"{hop:g} s; {redux}{', exact' if exact else ''})"
    )
    print(f"  {threshold_line(result, cat.decision)}")
    if not result.matches:
        return
    print(
        f"  {'rank':>4}  {'distance':>9}  {'version':>7}  {'p(false)':>8}  {'clip':>13}  "
        f"{'track':>13}  track id"
    )
    for m in result.matches:
        version = "-" if m.is_version is None else ("yes" if m.is_version else "no")
        chance = "-" if m.false_alarm is None else f"{m.false_alarm:.3f}"
        in_clip = f"{clock(m.clip_s[0])}-{clock(m.clip_s[1])}"
        in_track = f"{clock(m.track_s[0])}-{clock(m.track_s[1])}"
        print(
            f"  {m.rank:>4}  {m.distance:>9.4f}  {version:>7}  {chance:>8}  {in_clip:>13}  "
            f"{in_track:>13}  {m.id}"
        )


def cmd_query(args):
    cat = open_catalogue(args)
    hop = args.hop_size if args.hop_size else float(cat.settings["hop_size"])
    redux = args.redux or cat.settings["redux"]
    report, failed = [], []
    for path in args.clips:
        try:
            result = cat.query(
                path,
                topk=args.topk,
                hop=hop,
                redux=redux,
                exact=args.exact,
                neighbours=args.neighbours,
                shortlist=args.shortlist,
                nprobe=args.nprobe,
                max_distance=args.max_distance,
            )
        except AudioError as err:
            print(f"error: {err}", file=sys.stderr)
            failed.append(path)
            continue
        print_result(path, result, cat, hop, redux, args.exact)
        report.append({"clip": path, **result.as_dict()})
    if args.json:
        text = json.dumps(report, indent=1) + "\n"
        atomic_write(args.json, lambda h: h.write(text), text=True)
    return 1 if failed else 0


###################################################################################################
# compare
###################################################################################################


def cmd_compare(args):
    if args.catalogue is not None:
        result = open_catalogue(args).compare(
            args.a, args.b, redux=args.redux, threshold=args.threshold
        )
    elif args.checkpoint is not None:
        embedder = load_embedder(args.checkpoint, args)
        result = api.compare(
            embedder, args.a, args.b, None, args.win_len, args.hop_size, args.redux, args.threshold
        )
    else:
        raise UsageError("give --catalogue (its model and calibration) or --checkpoint")
    print(f"A {args.a} ({clock(result.durations[0])}), B {args.b} ({clock(result.durations[1])})")
    decided = "" if result.threshold is None else (
        f" ({result.threshold_source} threshold {result.threshold:.4f})"
    )
    print(f"distance {result.distance:.4f}: {result.verdict}{decided}")
    print(
        f"best alignment: A {clock(result.a_s[0])}-{clock(result.a_s[1])} ~ "
        f"B {clock(result.b_s[0])}-{clock(result.b_s[1])}"
    )
    for pair in result.pairs:
        a0, a1 = pair["a_s"]
        b0, b1 = pair["b_s"]
        print(f"  A {clock(a0)}-{clock(a1)}  B {clock(b0)}-{clock(b1)}  {pair['distance']:.4f}")
    if args.json:
        text = json.dumps({"a": args.a, "b": args.b, **result.as_dict()}, indent=1) + "\n"
        atomic_write(args.json, lambda h: h.write(text), text=True)
    if args.plot:
        names = tuple(os.path.basename(x) for x in (args.a, args.b))
        png = result.picture(names)
        atomic_write(args.plot, lambda h: h.write(png))
        print(f"picture: {args.plot}")
    return 0


###################################################################################################
# serve
###################################################################################################


def listening_socket(host, port):
    """A socket listening on ``host``:``port`` (0: any free port), so the real port is known,
    and connections are taken, before the server has started."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections wait in the backlog until the server takes them
    except OSError as err:
        sock.close()
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({err.strerror})")
    return sock


class Stopped(Exception):
    """SIGTERM (systemd, docker stop, kill): a stop that was asked for."""


def raise_stopped(signum, frame):
    raise Stopped()


def cmd_serve(args):
    import uvicorn  # only the server needs it

    from lib.matching import server

    cat = open_catalogue(args)
    service = server.Service(cat, args.topk, int(args.max_upload_mb * 1e6))
    sock = listening_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]
    print("\n".join(cat.describe()))
    print(server.serving_line(args.catalogue, host, port), flush=True)
    config = uvicorn.Config(server.make_app(service), log_level="warning", access_log=False)
    # uvicorn shuts down on SIGTERM, then raises the signal again under the handler it found:
    # Python's default would end the process there, before the uploads folder is removed
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, raise_stopped) if in_main else None
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except Stopped:
        print("stopped (SIGTERM)", flush=True)
    finally:
        service.close()
        sock.close()
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    return 0


###################################################################################################
# mirex
###################################################################################################


def cmd_mirex(args):
    done = api.mirex_distances(
        load_embedder(args.checkpoint, args),
        args.collection,
        args.queries,
        args.out,
        args.name,
        workdir=args.workdir,
        win_len=args.win_len,
        hop=args.hop_size,
        redux=args.redux,
        nworkers=args.nworkers,
        overwrite=args.overwrite,
    )
    if done["failed"]:
        for _, reason in done["failed"]:
            print(f"error: {reason}", file=sys.stderr)
        print("no distance matrix written: every collection file must be embedded", file=sys.stderr)
        return 1
    print(
        f"Distance matrix of {done['queries']} queries x {done['collection']} files "
        f"({done['redux']}) in {args.out}"
    )
    return 0


###################################################################################################


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p, hop=5.0):
        p.add_argument("--conf", default=None, help="config YAML (default: beside the checkpoint)")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
        p.add_argument(
            "--win_len",
            type=float,
            default=-1,
            help="window length in s; <= 0: the model's training length",
        )
        p.add_argument("--hop_size", type=float, default=hop, help="window hop in s")
        p.add_argument(
            "--nworkers", type=int, default=min(4, os.cpu_count() or 1), help="decoding processes"
        )
        p.add_argument("--overwrite", action="store_true", help="recompute existing embeddings")
        precision_arg(p)

    def precision_arg(p):
        p.add_argument(
            "--precision",
            default="32",
            help="32 (default); bf16: mixed precision on a GPU or a CPU with native bf16 (torch), "
            "OpenVINO's bf16 precision hint (openvino); 16: fp16 on a GPU (torch); int8: an "
            "export's int8 model (python -m lib.export --int8)",
        )
        p.add_argument(
            "--backend",
            default="torch",
            choices=runtime.BACKENDS,
            help="what runs the model: torch (default), or its ONNX export (python -m "
            "lib.export; made beside the checkpoint when missing) on onnxruntime or openvino",
        )

    p = sub.add_parser("index", help="build a catalogue")
    p.add_argument("--out", required=True, help="catalogue folder")
    p.add_argument("--audio", default=None, help="audio folder (recursive)")
    p.add_argument("--embeddings", default=None, help="output folder of inference.py")
    p.add_argument("--checkpoint", default=None, help="checkpoint (with --audio)")
    p.add_argument(
        "--index",
        default="auto",
        choices=("auto", "flat", "ivf"),
        help="FAISS index: flat = exact, ivf = inverted lists; auto: flat below "
        f"{catalogue.FLAT_BELOW} windows",
    )
    p.add_argument("--nlist", type=int, default=None, help="ivf cells (default sqrt(windows))")
    model_args(p)

    def catalogue_args(p):
        p.add_argument("--catalogue", required=True)
        p.add_argument(
            "--checkpoint",
            default=None,
            help="checkpoint (default: the one the catalogue was built with)",
        )
        p.add_argument("--conf", default=None)
        p.add_argument("--device", default="auto")
        precision_arg(p)

    p = sub.add_parser("query", help="find the versions of clips in a catalogue")
    p.add_argument("clips", nargs="+", help="audio clips")
    catalogue_args(p)
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--redux", default=None, help="track reduction (default: the model's)")
    p.add_argument(
        "--hop_size",
        type=float,
        default=None,
        help="hop of the clip windows in s (default: the catalogue's)",
    )
    p.add_argument("--exact", action="store_true", help="brute force over every track")
    p.add_argument("--shortlist", type=int, default=100, help="tracks scored exactly")
    p.add_argument("--neighbours", type=int, default=256, help="FAISS windows per clip window")
    p.add_argument("--nprobe", type=int, default=16, help="ivf cells visited")
    p.add_argument(
        "--max_distance",
        type=float,
        default=None,
        help="a match is a version when at most this far (default: the calibrated threshold)",
    )
    p.add_argument("--json", default=None, help="also write the matches to this JSON file")

    p = sub.add_parser("add", help="embed audio and append it to a catalogue (no rebuild)")
    p.add_argument("audio", nargs="+", help="audio files, or one folder (recursive)")
    catalogue_args(p)
    p.add_argument(
        "--nworkers", type=int, default=min(4, os.cpu_count() or 1), help="decoding processes"
    )

    p = sub.add_parser("calibrate", help="set the 'no version' threshold on labelled audio")
    catalogue_args(p)
    p.add_argument("--meta", required=True, help="metadata file of data_preproc.py")
    p.add_argument("--audio", required=True, help="its audio root (path.audio)")
    p.add_argument("--partition", default="valid", help="labelled partition (default valid)")
    p.add_argument(
        "--false_alarm", type=float, default=0.05, help="target false-alarm rate (default 0.05)"
    )
    p.add_argument("--clip_len", type=float, default=20.0, help="clip length in s (default 20)")
    p.add_argument("--clips_per_track", type=int, default=2, help="clips drawn per track")
    p.add_argument("--seed", type=int, default=0, help="seed of the clip positions")
    p.add_argument("--plot", default=None, help="PNG (default: CATALOGUE/calibration.png)")
    p.add_argument(
        "--nworkers", type=int, default=min(4, os.cpu_count() or 1), help="decoding processes"
    )

    p = sub.add_parser("serve", help="a web page to search the catalogue with clips")
    catalogue_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: local)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free one)")
    p.add_argument("--topk", type=int, default=10, help="tracks shown per clip")
    p.add_argument(
        "--max_upload_mb", type=float, default=20.0, help="largest upload in MB (default 20)"
    )

    p = sub.add_parser("compare", help="are two recordings versions, and where do they meet?")
    p.add_argument("a", help="audio file A")
    p.add_argument("b", help="audio file B")
    p.add_argument("--catalogue", default=None, help="its model, windows and calibration")
    p.add_argument("--checkpoint", default=None, help="a model (without --catalogue)")
    p.add_argument("--conf", default=None, help="config YAML (default: beside the checkpoint)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--win_len", type=float, default=-1,
                   help="window length in s without --catalogue; <= 0: the model's")
    p.add_argument("--hop_size", type=float, default=5.0,
                   help="window hop in s without --catalogue")
    precision_arg(p)
    p.add_argument("--redux", default=None, help="track reduction (default: the model's)")
    p.add_argument("--threshold", type=float, default=None,
                   help="versions when at most this far (default: the catalogue's calibration)")
    p.add_argument("--json", default=None, help="also write the comparison to this JSON file")
    p.add_argument(
        "--plot",
        default=None,
        help="PNG of the window-distance matrix with where A and B meet marked",
    )

    p = sub.add_parser("mirex", help="MIREX cover song distance matrix")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--collection", required=True, help="list file: one audio path per line")
    p.add_argument("--queries", required=True, help="list file of queries (in the collection)")
    p.add_argument("--out", required=True, help="distance matrix file")
    p.add_argument("--redux", default=None, help="track reduction (default: the model's)")
    p.add_argument("--name", default="CLEWS", help="first line of the file")
    p.add_argument("--workdir", default=None, help="embeddings folder (default: OUT.embeddings)")
    model_args(p)

    args = parser.parse_args(argv)
    positive = ("hop_size", "topk", "shortlist", "neighbours", "nprobe", "max_upload_mb")
    for name in (*positive, "clip_len", "clips_per_track"):
        value = getattr(args, name, None)
        if value is not None and not value > 0:
            parser.error(f"--{name} must be > 0, got {value}")
    if getattr(args, "redux", None):
        try:
            reductions.parse_redux(args.redux)
        except ValueError as err:
            parser.error(f"--redux: {err}")
    return args


def command(argv):
    args = parse_args(argv)
    commands = {
        "index": cmd_index,
        "add": cmd_add,
        "calibrate": cmd_calibrate,
        "query": cmd_query,
        "serve": cmd_serve,
        "mirex": cmd_mirex,
        "compare": cmd_compare,
    }
    return commands[args.command](args)


def main(argv=None):
    """The exit status (errors as one ``error:`` line, see ``lib.cli``)."""
    return cli.run(command, argv)


if __name__ == "__main__":
    sys.exit(main())
