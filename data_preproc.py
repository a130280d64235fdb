"""Build a dataset's metadata file after checking every audio file.

    python data_preproc.py --dataset=DVI2 --path_meta=data/dvi2/ --path_audio=data/dvi2/audio/mp4/ \
        --ext_in=mp4 --fn_out=cache/metadata-dvi2.pt --njobs=16

DiVers (the published DVI2) is read from one of its JSON files, keeping every field:

    python data_preproc.py --dataset=DiVers --path_meta=data/divers/large/divers.json \
        --path_audio=data/divers/audio/ --ext_in=mp4 --fn_out=cache/divers.pt

Every version left out (missing file, undecodable, too short, no metadata, clique left with one
version) is listed with its reason in <fn_out without .pt>.rejected.tsv.

The feature-only datasets take their pitch-class files where the others take audio:

    python data_preproc.py --dataset=DaTACOS --path_meta=data/da-tacos_metadata/ \
        --path_audio=data/da-tacos_benchmark_subset_crema/ --fn_out=cache/metadata-datacos.pt
    python data_preproc.py --dataset=Cover1000 --path_meta=data/cover1000/ \
        --path_audio=data/cover1000/ --fn_out=cache/metadata-cover1000.pt
"""

import argparse
import os
import sys

from lib import cli, metadata, preproc

DATASETS = list(preproc.DATASETS) + ["folder", "Cover1000"]
FEATURE_DATASETS = ("DaTACOS", "Cover1000")  # pitch-class files: no audio extension


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=DATASETS, help="required unless --convert")
    parser.add_argument(
        "--path_meta",
        default=None,
        help="folder with the split/metadata files (not used by 'folder'); DiVers: one of its "
        "JSON files, e.g. large/divers.json",
    )
    parser.add_argument(
        "--path_audio", help="audio root; stored file names are relative to it (not --convert)"
    )
    parser.add_argument(
        "--ext_in",
        default=None,
        help="audio extension, e.g. mp3, mp4, m4a ('folder' also takes a list 'mp3,m4a' or "
        "'any'); not used by the feature datasets (DaTACOS, Cover1000)",
    )
    parser.add_argument(
        "--fn_out", required=True, help="output metadata file, e.g. cache/metadata-dvi2.pt"
    )
    parser.add_argument(
        "--njobs", type=int, default=-1, help="parallel workers (-1 = all cores, 1 = sequential)"
    )
    parser.add_argument(
        "--check",
        choices=preproc.CHECK_MODES,
        default="quick",
        help="quick: header plus short probes at the start, middle and near the end (the whole "
        "file if all three are silent); full: decode all",
    )
    parser.add_argument(
        "--min_duration", type=float, default=1.0, help="seconds; shorter files are rejected"
    )
    parser.add_argument(
        "--split",
        default="0.8,0.1,0.1",
        help="'folder' and 'Cover1000': train,valid,test fractions of the works, or 'test' for "
        "all in test",
    )
    parser.add_argument(
        "--seed", type=int, default=43, help="'folder' and 'Cover1000': seed of the split"
    )
    parser.add_argument(
        "--convert",
        metavar="METADATA_FILE",
        help="instead of building: write --fn_out, a plain copy of a metadata file made by another "
        "pipeline (e.g. the DiVers authors' divers.pt) whose numpy arrays or scalars the loader "
        "refuses",
    )
    parser.add_argument(
        "--trust_pickle",
        action="store_true",
        help="with --convert: read the file with full pickle, which can run code; only for a "
        "file whose maker you trust, when the safe reading refuses it",
    )
    args = parser.parse_args(argv)
    if args.trust_pickle and not args.convert:
        parser.error("--trust_pickle goes with --convert")
    if args.convert:
        return args
    for name in ("dataset", "path_audio"):
        if getattr(args, name) is None:
            parser.error(f"--{name} is required (unless --convert)")
    if args.ext_in is None and args.dataset not in FEATURE_DATASETS:
        parser.error(f"--ext_in is required for --dataset={args.dataset}")
    try:
        if args.dataset == "folder":
            args.ext_in = preproc.folder_extensions(args.ext_in)
        elif args.dataset not in FEATURE_DATASETS:
            args.ext_in = preproc.clean_extension(args.ext_in)
    except ValueError as err:
        parser.error(str(err))
    if args.dataset != "folder" and not args.path_meta:
        parser.error(f"--path_meta is required for --dataset={args.dataset}")
    if args.njobs == 0 or args.njobs < -1:
        parser.error("--njobs must be -1 (all cores) or >= 1")
    args.fractions = _fractions(parser, args.split)
    return args


def _fractions(parser, text):
    if text.strip() == "test":
        return (0.0, 0.0, 1.0)
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0 or sum(values) <= 0:
        parser.error(
            f"--split needs three non-negative fractions like 0.8,0.1,0.1, or 'test'; got {text!r}"
        )
    return values


def _percent(new, old):
    return {s: round(100 * new[s] / old[s], 1) if old[s] else None for s in preproc.SPLITS}


def convert(args):
    count = metadata.convert_metadata(args.convert, args.fn_out, trust=args.trust_pickle)
    print(f"Wrote {args.fn_out}: {count} songs of {args.convert} as plain values")
    return 0


def preprocess(argv):
    args = parse_args(argv)
    if args.convert:
        return convert(args)
    print("=" * 100)
    print(args)
    print("=" * 100)

    print(f"Load {args.dataset}")
    if args.dataset == "folder":
        parsed = preproc.parse_folder(args.path_audio, args.ext_in, args.fractions, args.seed)
    elif args.dataset == "Cover1000":
        parsed = preproc.parse_cover1000(args.path_meta, args.path_audio, args.fractions, args.seed)
    else:
        parsed = preproc.DATASETS[args.dataset](args.path_meta, args.path_audio, args.ext_in)
    before = preproc.split_counts(parsed.splits)
    ncliques = sum(len(c) for c in parsed.splits.values())
    print(f"  Found {sum(before.values())} versions in {ncliques} cliques")
    print(f"  Contains: {before}")
    if parsed.rejected:
        print(f"  ({len(parsed.rejected)} split entries without metadata)")

    good, bad = preproc.check_all(
        parsed, args.path_audio, args.check, args.njobs, args.min_duration
    )
    checked = len(good) + len(bad)
    what = "features" if args.dataset in FEATURE_DATASETS else "audio"
    print(
        f"  Usable {what}: {len(good)} of {checked} files "
        f"({100 * len(good) / max(checked, 1):.1f}%)"
    )

    print("Filter split")
    info, splits, rejected = preproc.filter_splits(parsed, good, bad, parsed.keep_single)
    after = preproc.split_counts(splits)
    print(f"  Contains: {after}")
    print(f"  Percent: {_percent(after, before)}")
    print(f"  Cliques: { {s: len(splits[s]) for s in preproc.SPLITS} }")

    report = preproc.report_path(args.fn_out)
    os.makedirs(os.path.dirname(os.path.abspath(report)), exist_ok=True)
    preproc.write_report(report, rejected)
    print(f"  {len(rejected)} versions left out, with reasons, in {report}")
    if not info:
        print(f"error: no usable versions: nothing written to {args.fn_out}", file=sys.stderr)
        return 1

    print(f"Save {args.fn_out}")
    about = {
        k: getattr(args, k)
        for k in ("dataset", "path_meta", "path_audio", "ext_in", "check", "min_duration")
    }
    preproc.save_metadata(args.fn_out, info, splits, about)
    print("Done!")
    return 0


def main(argv=None):
    """The exit status (errors as one ``error:`` line, see ``lib.cli``)."""
    return cli.run(preprocess, argv)


if __name__ == "__main__":
    sys.exit(main())
