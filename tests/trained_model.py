"""The trained demo model of the tests that need a model which has learned what a version is
(``tests/trained/demo-clews.pt``; how it was made: ``tests/trained/README.md``).

    python -m tests.trained_model runs/demo/runs/demo-clews/checkpoint_last.ckpt

writes it from a checkpoint of ``demo.py``: the weights in float16 (half the bytes; the
rankings of these tests do not depend on the last bits) with the run's config, without the
optimiser state."""

import argparse
import sys

from lib.checkpoint import load_checkpoint, model_state_dict, save_checkpoint
from tests.corpus import ROOT

PATH = ROOT / "tests" / "trained" / "demo-clews.pt"


def export(checkpoint, out=PATH):
    """Write the weights-only float16 copy of ``checkpoint`` to ``out``."""
    state = load_checkpoint(checkpoint)
    weights = {
        name: value.half() if value.is_floating_point() else value
        for name, value in model_state_dict(state).items()
    }
    save_checkpoint({"model": weights, "conf": state["conf"], "epoch": state["epoch"]}, out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint written by demo.py's training")
    parser.add_argument("--out", default=str(PATH))
    args = parser.parse_args(argv)
    export(args.checkpoint, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
