#!/usr/bin/env bash
# Creates .venv (if missing) and installs the pinned requirements into it.
# Running it again is harmless: pip only installs what is missing or at another version.
set -euo pipefail
cd "$(dirname "$0")"
# --browser: Debian's Chromium and ChromeDriver, for the web page's browser test;
# --scores: Debian's FluidSynth and its General MIDI soundfont, for the corpus of real
# compositions (python -m lib.score_corpus). Only these system packages are installed then.
if [ "$#" -gt 0 ]; then
    packages=()
    for option in "$@"; do
        case "$option" in
            --browser)
                [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] \
                    || packages+=(chromium chromium-driver) ;;
            --scores)
                command -v fluidsynth > /dev/null \
                    && [ -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ] \
                    || packages+=(fluidsynth fluid-soundfont-gm) ;;
            *)
                echo "error: unknown option $option (valid: --browser, --scores)" >&2
                exit 2 ;;
        esac
    done
    if [ "${#packages[@]}" = 0 ]; then
        echo "System packages already installed"
        exit 0
    fi
    if ! command -v apt-get > /dev/null; then
        echo "error: need Debian's ${packages[*]}; no apt-get here to install them" >&2
        exit 1
    fi
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "${packages[@]}" > /dev/null
    echo "Installed ${packages[*]}"
    exit 0
fi
PYTHON="${PYTHON:-python3}"
# numpy 2.4, scipy 1.17, matplotlib 3.11 and av 18 publish wheels for Python >= 3.11 only
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    found=$("$PYTHON" --version 2>&1 | head -1)
    echo "error: Python >= 3.11 is required ($found found; set PYTHON=python3.11 or newer)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "Creating virtual environment in .venv"
    "$PYTHON" -m venv .venv
fi
# The stamp records the requirements that were installed, so a second run skips pip entirely.
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "Requirements already installed in .venv"
    exit 0
fi
.venv/bin/python -m pip install --disable-pip-version-check -q -r requirements.txt
echo "$want" > "$stamp"
echo "Installed requirements into .venv"
