#!/usr/bin/env bash
# Copies the DVI2 split files from a discogs-vi-2 checkout into data/ (relative to the current
# folder; run it from the repository root):
#   data/dvi2/          train/valid/test.json of DVI2            (<repo>/data/dvi2/dataset/)
#   data/dvi2fm/        train/valid/test.json of DVI2-FM         (<repo>/data/dvi2/dataset/matched/)
#   data/dvi2fm_light/  DVI2-FM train and test + the DVI2 valid
# Usage: bash make_datas.sh [PATH_TO_DISCOGS_VI_2]   (default: ../discogs-vi-2)
set -euo pipefail

repo="${1:-../discogs-vi-2}"
src="$repo/data/dvi2/dataset"

# Older snapshots call the validation split val.json; it is copied as valid.json.
split_file() {
    local folder="$1" split="$2"
    if [ -f "$folder/$split.json" ]; then
        echo "$folder/$split.json"
    elif [ "$split" = "valid" ] && [ -f "$folder/val.json" ]; then
        echo "$folder/val.json"
    else
        echo "error: missing $folder/$split.json (is the discogs-vi-2 repository at '$repo'," \
            "with its dataset files extracted under data/dvi2/dataset/?)" >&2
        return 1
    fi
}

# Check every source before copying anything, so a failed run leaves nothing half-done.
declare -A plain matched
for split in train valid test; do
    plain[$split]=$(split_file "$src" "$split")
    matched[$split]=$(split_file "$src/matched" "$split")
done

mkdir -p data/dvi2 data/dvi2fm data/dvi2fm_light
for split in train valid test; do
    cp "${plain[$split]}" "data/dvi2/$split.json"
    cp "${matched[$split]}" "data/dvi2fm/$split.json"
done
cp "${matched[train]}" data/dvi2fm_light/train.json
cp "${matched[test]}" data/dvi2fm_light/test.json
cp "${plain[valid]}" data/dvi2fm_light/valid.json
echo "Copied DVI2 split files from $src into data/dvi2, data/dvi2fm and data/dvi2fm_light"
