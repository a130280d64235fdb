"""Window embeddings of audio files with a trained checkpoint (the original's CLI).

    python inference.py --checkpoint=logs/model/checkpoint_best.ckpt --path_in=data/audio_files/ \
        --path_out=cache/extracted_embeddings/
    python inference.py --checkpoint=logs/model/checkpoint_best.ckpt \
        --fn_in=data/audio_files/filename.mp3 --fn_out=cache/extracted_embeddings/filename.pt

Folder mode walks ``--path_in`` recursively (wav, flac, ogg, mp3, mp4/m4a, webm/opus, aac) and
writes ``--path_out/<relative path>.pt``, each a float32 tensor (windows, dim) (the original's
format), then all of them as one embedding store in ``--path_out/store/`` (``lib/store.py``).
Existing outputs are kept and skipped (an interrupted run continues) unless ``--overwrite``; nothing
is deleted. Unreadable files are listed in ``--path_out/inference_failures.log``.

Exit status: 0 every file embedded or already there, 1 some file failed or the checkpoint could
not be used, 2 bad arguments, 130 interrupted (finished files are kept; run again to continue).
"""

import argparse
import os
import sys

from lib import cli, runtime
from lib.matching.api import Embedder
from lib.matching.inference import (
    FAILURE_LOG,
    STORE_DIR,
    InferenceError,
    embed_files,
    is_audio,
    plan_folder,
)

DEVICES = ("auto", "cpu", "cuda", "mps")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Window embeddings of audio files (one .pt tensor (windows, dim) per file)."
    )
    parser.add_argument(
        "--checkpoint", required=True, help="checkpoint file (.ckpt), or an export folder"
    )
    parser.add_argument(
        "--conf",
        default=None,
        help="config YAML (default: configuration.yaml "
        "beside the checkpoint, else the config stored in it)",
    )
    parser.add_argument("--path_in", default=None, help="input folder (recursive)")
    parser.add_argument("--path_out", default=None, help="output folder")
    parser.add_argument("--fn_in", default=None, help="input audio file")
    parser.add_argument("--fn_out", default=None, help="output .pt file")
    parser.add_argument(
        "--device", default="auto", help="auto (GPU when there is one), cpu, cuda, cuda:N or mps"
    )
    parser.add_argument("--hop_size", type=float, default=5.0, help="window hop in seconds")
    parser.add_argument(
        "--precision",
        default="32",
        help="32 (default, the original's numbers); bf16: mixed precision on a GPU or a CPU with "
        "native bf16 (torch), OpenVINO's bf16 precision hint (openvino); 16: fp16 mixed "
        "precision on a GPU (torch); int8: an export's int8 model (lib.export --int8)",
    )
    parser.add_argument(
        "--backend",
        default="torch",
        choices=runtime.BACKENDS,
        help="what runs the model: torch (default), or its ONNX export on onnxruntime or "
        "openvino (--checkpoint: an export folder of python -m lib.export, or a checkpoint, "
        "exported beside it when not yet done)",
    )
    parser.add_argument(
        "--win_len",
        type=float,
        default=-1,
        help="window length in seconds; <= 0: the model's training length",
    )
    parser.add_argument(
        "--nworkers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="decoding processes (0: decode in the main process)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="recompute outputs that already exist"
    )
    args = parser.parse_args(argv)
    folder = args.path_in is not None or args.path_out is not None
    single = args.fn_in is not None or args.fn_out is not None
    if folder == single:
        parser.error("give either --path_in and --path_out (folder) or --fn_in and --fn_out (file)")
    if folder and (args.path_in is None or args.path_out is None):
        parser.error("folder mode needs both --path_in and --path_out")
    if single and (args.fn_in is None or args.fn_out is None):
        parser.error("single-file mode needs both --fn_in and --fn_out")
    if not args.hop_size > 0:
        parser.error(f"--hop_size must be > 0 seconds, got {args.hop_size}")
    if args.nworkers < 0:
        parser.error("--nworkers must be >= 0")
    base = args.device.split(":")[0]
    if base not in DEVICES:
        parser.error(f"--device {args.device!r}: one of {', '.join(DEVICES)} (or cuda:N)")
    return args


def plan(args):
    """(jobs, non-audio files, output folder) of the run."""
    if args.path_in is not None:
        jobs, other = plan_folder(args.path_in, args.path_out)
        return jobs, other, args.path_out
    if os.path.isdir(args.fn_in):
        raise InferenceError(f"{args.fn_in}: is a directory, not an audio file (use --path_in)")
    if not os.path.isfile(args.fn_in):
        raise InferenceError(f"{args.fn_in}: input file not found")
    if not is_audio(args.fn_in):
        raise InferenceError(f"{args.fn_in}: not an audio file extension")
    return [(args.fn_in, args.fn_out)], [], None


def run(args):
    jobs, other, out_folder = plan(args)
    print("=" * 80 + "\n" + "\n".join(f"{k}: {v}" for k, v in vars(args).items()) + "\n" + "=" * 80)
    print("Load model...")
    embedder = Embedder.load(
        args.checkpoint, args.conf, args.device, args.precision, backend=args.backend
    )
    win_len = embedder.window_length(args.win_len)
    print(
        f"  {embedder.name} from {args.checkpoint} on {embedder.device} ({embedder.backend}); "
        f"windows of {win_len:g} s every {args.hop_size:g} s, precision {embedder.precision}"
    )
    if other:
        print(f"  {len(other)} file(s) without an audio extension not embedded, e.g. {other[0]}")
    print(f"{len(jobs)} audio file(s)")
    if out_folder is None:
        summary = embed_files(
            embedder.engine, jobs, win_len, args.hop_size, args.nworkers, args.overwrite
        )
    else:
        summary = embedder.embed_folder_into(
            out_folder, jobs, win_len, args.hop_size, args.nworkers, overwrite=args.overwrite
        )
    rate = summary.get("audio_seconds", 0) / max(summary.get("wall_seconds", 0), 1e-9)
    print(
        f"Done: {len(summary['done'])} embedded ({rate:.1f} s of audio per second), "
        f"{len(summary['skipped'])} already there (skipped), {len(summary['failed'])} failed"
    )
    if out_folder is not None and summary["tracks"]:
        print(f"All {len(summary['tracks'])} files' windows as one store: {out_folder}/{STORE_DIR}")
    if summary["failed"]:
        where = os.path.join(out_folder, FAILURE_LOG) if out_folder else "above"
        print(f"Failed files are listed in {where}", file=sys.stderr)
        return 1
    return 0


def command(argv):
    return run(parse_args(argv))


def main(argv=None):
    """The exit status (errors as one ``error:`` line, see ``lib.cli``)."""
    return cli.run(command, argv)


if __name__ == "__main__":
    sys.exit(main())
