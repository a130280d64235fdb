"""Which catalogue tracks contain a version of this clip, and where.

    # a catalogue from audio (embeddings kept in CAT/embeddings/, an interrupted run resumes)
    python match.py index --checkpoint=logs/dvi2-clews/checkpoint_best.ckpt --audio=music/ \
        --out=cat/
    # ... or from the outputs of inference.py
    python match.py index --embeddings=cache/extracted_embeddings/ --out=cat/
    # top 10 tracks for each clip, with the matched time ranges in the clip and in the track
    python match.py query --catalogue=cat/ clip1.mp3 clip2.wav [--exact] [--max_distance=0.7]
    # MIREX audio cover song identification: distance matrix of queries x collection
    python match.py mirex --checkpoint=... --collection=coll.txt --queries=q.txt --out=dist.txt

Exit status: 0 done, 1 some audio could not be read (the rest is done and said) or a bad
checkpoint / catalogue, 2 bad arguments, 130 interrupted.
"""

import argparse
import json
import os
import sys

import torch

from lib import catalogue as C
from lib import cli
from lib import inference as I
from lib import precision
from lib import retrieval as R
from lib import store
from lib import tensor_ops
from lib.audio import AudioError, load_audio
from lib.checkpoint import load_trained_model
from lib.errors import UsageError
from lib.extract import file_digest, window_embeddings
from lib.files import atomic_write


def load_model(checkpoint, conf, device):
    model, conf, source = load_trained_model(checkpoint, conf, device)
    print(f"Model {conf.model.name} from {checkpoint} (config {source}) on {device}")
    return model


def clock(seconds):
    seconds = max(0.0, float(seconds))
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


###################################################################################################
# index
###################################################################################################


def embed_audio_folder(args, folder):
    """inference.py's folder mode into ``folder``: returns (its embedding store, failed)."""
    jobs, other = I.plan_folder(args.audio, folder)
    device = I.pick_device(args.device)
    mixed = precision.check(args.precision, device, "--precision")
    model = load_model(args.checkpoint, args.conf, device)
    win_len = I.window_length(model, args.win_len)
    if other:
        print(f"  {len(other)} file(s) without an audio extension left out, e.g. {other[0]}")
    summary = I.embed_into_folder(
        folder,
        model,
        args.checkpoint,
        jobs,
        win_len,
        args.hop_size,
        device,
        args.nworkers,
        args.overwrite,
        extra_settings={"path_in": os.path.abspath(args.audio)},
        precision=mixed,
    )
    if not summary["tracks"]:
        raise C.CatalogueError("no track could be embedded; nothing to index")
    return store.read(os.path.join(folder, I.STORE_DIR)), summary["failed"]


def embeddings_folder_store(folder):
    """The embedding store of an inference.py output folder (``<folder>/store``, or the folder
    itself); one is collected from its ``.pt`` files when an earlier version wrote none."""
    for candidate in (os.path.join(folder, I.STORE_DIR), folder):
        found = store.read(candidate)
        if found is not None:
            return found
    settings = I.read_manifest(folder)
    if settings is None:
        raise UsageError(f"{folder}: no {I.MANIFEST} (embeddings must come from inference.py)")
    files = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(folder)
        for name in names
        if name.endswith(".pt")
    )
    if not files:
        raise UsageError(f"{folder}: no .pt embedding files")
    tracks = [I.output_track(folder, f, f) for f in files]
    print(f"Collect {len(files)} embedding files of {folder} into {folder}/{I.STORE_DIR}")
    return store.read(I.collect_store(folder, tracks, settings))


CATALOGUE_SETTINGS = (
    "checkpoint",
    "checkpoint_sha256",
    "model",
    "samplerate",
    "win_len",
    "hop_size",
    "metric",
    "redux",
)


def cmd_index(args):
    if (args.audio is None) == (args.embeddings is None):
        raise UsageError("give either --audio (with --checkpoint) or --embeddings")
    failed = []
    if args.audio is not None:
        if not args.checkpoint:
            raise UsageError("--audio needs --checkpoint")
        embeddings, failed = embed_audio_folder(args, os.path.join(args.out, "embeddings"))
    else:
        embeddings = embeddings_folder_store(args.embeddings)
    tracks = embeddings.manifest["tracks"]
    settings = {k: embeddings.manifest["settings"][k] for k in CATALOGUE_SETTINGS}
    print(f"Index {len(tracks)} tracks, {int((~embeddings.mask).sum())} windows...")
    C.build(args.out, tracks, embeddings, settings, kind=args.index, nlist=args.nlist)
    cat = C.load(args.out)
    print(
        f"Catalogue {args.out}: {len(cat.tracks)} tracks, {cat.index.ntotal} windows, "
        f"{cat.info['kind']}"
    )
    if failed:
        print(
            f"{len(failed)} file(s) could not be read and are not in the catalogue; see "
            f"{os.path.join(args.out, 'embeddings', I.FAILURE_LOG)}",
            file=sys.stderr,
        )
        return 1
    return 0


###################################################################################################
# query
###################################################################################################


def clip_windows(model, path, win_len, hop, mixed="32-true"):
    """(window embeddings (S, D), duration in s) of a clip, under the Fabric precision
    ``mixed``."""
    audio = torch.from_numpy(load_audio(path, model.sr, refuse_silence=True))
    device = next(model.parameters()).device
    with precision.autocast(mixed, device):
        z = window_embeddings(model, audio, win_len, hop, device)
    return z.numpy(), audio.numel() / model.sr


def aligned_ranges(match, duration):
    """(clip range, track range) in seconds of the clip placed at the match's offset."""
    clip0 = max(0.0, -match.offset)
    track0 = max(0.0, match.offset)
    length = duration - clip0
    return (clip0, duration), (track0, track0 + length)


def cmd_query(args):
    cat = C.load(args.catalogue)
    checkpoint = args.checkpoint or cat.settings["checkpoint"]
    if not os.path.isfile(checkpoint):
        raise UsageError(f"{checkpoint}: checkpoint of the catalogue not found (give --checkpoint)")
    if file_digest(checkpoint) != cat.settings["checkpoint_sha256"]:
        raise UsageError(f"{checkpoint}: not the checkpoint the catalogue was built with")
    device = I.pick_device(args.device)
    mixed = precision.check(args.precision, device, "--precision")
    model = load_model(checkpoint, args.conf, device)
    hop = args.hop_size if args.hop_size else float(cat.settings["hop_size"])
    win_len = float(cat.settings["win_len"])
    redux = args.redux or cat.settings["redux"]
    report, failed = [], []
    for path in args.clips:
        try:
            query, duration = clip_windows(model, path, win_len, hop, mixed)
        except AudioError as err:
            print(f"error: {err}", file=sys.stderr)
            failed.append(path)
            continue
        matches = C.search(
            cat, query, args.topk, redux, args.exact, args.neighbours, args.shortlist, args.nprobe
        )
        if args.max_distance is not None:
            matches = [m for m in matches if m.distance <= args.max_distance]
        print(
            f"\n{path} ({duration:.1f} s, {len(query)} window(s) of {win_len:g} s every "
            f"{hop:g} s; {redux}{', exact' if args.exact else ''})"
        )
        if not matches:
            print(
                "  no version in the catalogue"
                + (
                    f" within distance {args.max_distance:g}"
                    if args.max_distance is not None
                    else ""
                )
            )
        else:
            print(f"  {'rank':>4}  {'distance':>9}  {'clip':>13}  {'track':>13}  track id")
        entries = []
        for rank, m in enumerate(matches, 1):
            track = cat.tracks[m.row]
            (c0, c1), (t0, t1) = aligned_ranges(m, duration)
            in_clip, in_track = f"{clock(c0)}-{clock(c1)}", f"{clock(t0)}-{clock(t1)}"
            print(f"  {rank:>4}  {m.distance:>9.4f}  {in_clip:>13}  {in_track:>13}  {track['id']}")
            entries.append(
                {
                    "rank": rank,
                    "id": track["id"],
                    "source": track.get("source"),
                    "distance": m.distance,
                    "clip_s": [c0, c1],
                    "track_s": [t0, t1],
                    "pairs": [
                        {
                            "clip_s": [i * hop, min(i * hop + win_len, duration)],
                            "track_s": list(cat.window_seconds(j)),
                            "distance": d,
                        }
                        for i, j, d in m.pairs
                    ],
                }
            )
        report.append({"clip": path, "duration_s": duration, "matches": entries})
    if args.json:
        text = json.dumps(report, indent=1) + "\n"
        atomic_write(args.json, lambda h: h.write(text), text=True)
    return 1 if failed else 0


###################################################################################################
# mirex
###################################################################################################


def cmd_mirex(args):
    collection = C.read_file_list(args.collection)
    queries = C.read_file_list(args.queries)
    try:
        rows = C.collection_rows(collection, queries)
    except C.CatalogueError as err:
        raise UsageError(f"{args.queries}: {err}") from err
    device = I.pick_device(args.device)
    mixed = precision.check(args.precision, device, "--precision")
    model = load_model(args.checkpoint, args.conf, device)
    win_len = I.window_length(model, args.win_len)
    work = args.workdir or args.out + ".embeddings"
    jobs = [(path, os.path.join(work, f"{i + 1:06d}.pt")) for i, path in enumerate(collection)]
    summary = I.embed_into_folder(
        work,
        model,
        args.checkpoint,
        jobs,
        win_len,
        args.hop_size,
        device,
        args.nworkers,
        args.overwrite,
        precision=mixed,
    )
    if summary["failed"]:
        for _, reason in summary["failed"]:
            print(f"error: {reason}", file=sys.stderr)
        print("no distance matrix written: every collection file must be embedded", file=sys.stderr)
        return 1
    embedded = store.read(os.path.join(work, I.STORE_DIR))  # the collection, in its order
    ids = torch.arange(len(collection))
    z, mask = torch.from_numpy(embedded.z), torch.from_numpy(embedded.mask)
    tracks = R.Embeddings(ids, ids, z, mask).trimmed()
    redux = tensor_ops.parse_redux(args.redux or model.default_redux)  # once for every block
    bq, bc = R.block_sizes(tracks.z.size(1), tracks.z.size(1), len(rows), len(collection))
    dist = torch.cat(
        [
            R.query_block_distances(
                model, tracks.subset(rows[i : i + bq]), tracks, redux, device, bc
            )
            for i in range(0, len(rows), bq)
        ]
    )
    text = C.mirex_text(args.name, collection, rows, dist.numpy())
    atomic_write(args.out, lambda h: h.write(text), text=True)
    print(
        f"Distance matrix of {len(queries)} queries x {len(collection)} files ({redux}) in "
        f"{args.out}"
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
            help="32 (default); bf16: mixed precision on a GPU or a CPU with native bf16; 16: "
            "fp16 on a GPU",
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
        f"{C.FLAT_BELOW} windows",
    )
    p.add_argument("--nlist", type=int, default=None, help="ivf cells (default sqrt(windows))")
    model_args(p)

    p = sub.add_parser("query", help="find the versions of clips in a catalogue")
    p.add_argument("clips", nargs="+", help="audio clips")
    p.add_argument("--catalogue", required=True)
    p.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint (default: the one the catalogue was built with)",
    )
    p.add_argument("--conf", default=None)
    p.add_argument("--device", default="auto")
    precision_arg(p)
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
        help="report only matches at most this far (see README: thresholds)",
    )
    p.add_argument("--json", default=None, help="also write the matches to this JSON file")

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
    for name in ("hop_size", "topk", "shortlist", "neighbours", "nprobe"):
        value = getattr(args, name, None)
        if value is not None and not value > 0:
            parser.error(f"--{name} must be > 0, got {value}")
    if getattr(args, "redux", None):
        try:
            tensor_ops.parse_redux(args.redux)
        except ValueError as err:
            parser.error(f"--redux: {err}")
    return args


def command(argv):
    args = parse_args(argv)
    return {"index": cmd_index, "query": cmd_query, "mirex": cmd_mirex}[args.command](args)


def main(argv=None):
    """The exit status (errors as one ``error:`` line, see ``lib.cli``)."""
    return cli.run(command, argv)


if __name__ == "__main__":
    sys.exit(main())
