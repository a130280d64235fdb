"""The picture of where two recordings meet (``match.py compare --plot``, the web page): the
distance between every window of A (rows, A's time downwards) and every window of B (columns,
B's time rightwards), dark where close; the best alignment of A on B drawn as a diagonal over
the matched ranges, and the closest window pairs circled. Two versions that share a passage
show a dark diagonal there; unrelated recordings show no line."""

import io

import numpy as np


def comparison_png(result, names=("A", "B"), dpi=100):
    """PNG bytes of a ``lib.matching.api.Comparison`` (its ``segments`` (Sa, Sb), ``win_len``
    and ``hop`` in seconds, matched ranges and closest pairs); ``names``: A's and B's labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seg = np.asarray(result.segments, dtype=np.float64)
    hop, win = float(result.hop), float(result.win_len)
    rows, cols = seg.shape
    # cell (i, j) spans the hop that starts window i of A / window j of B
    extent = (0.0, cols * hop, rows * hop, 0.0)
    width = min(9.0, 3.5 + 0.08 * cols)
    height = min(7.0, 2.5 + 0.08 * rows)
    fig, ax = plt.subplots(figsize=(max(width, 4.5), max(height, 3.2)))
    shown = ax.imshow(seg, cmap="magma", aspect="auto", extent=extent, interpolation="nearest")
    fig.colorbar(shown, ax=ax, label="window distance (dark: close)")
    (a0, a1), (b0, b1) = result.a_s, result.b_s
    if a1 > a0:
        ax.plot([b0, b1], [a0, a1], color="#3ddc84", lw=2, label="best alignment")
        ax.add_patch(
            plt.Rectangle((b0, a0), b1 - b0, a1 - a0, fill=False, ls="--", color="#3ddc84")
        )
    for k, pair in enumerate(result.pairs):
        centre_b = pair["b_s"][0] + min(win, hop) / 2
        centre_a = pair["a_s"][0] + min(win, hop) / 2
        ax.plot(
            [centre_b], [centre_a], "o", mfc="none", mec="#4fc3f7", ms=9, mew=1.5,
            label="closest window pairs" if k == 0 else None,
        )
    ax.set_xlim(0, cols * hop)
    ax.set_ylim(rows * hop, 0)
    ax.set_xlabel(f"{names[1]}: window start (s)")
    ax.set_ylabel(f"{names[0]}: window start (s)")
    verdict = "" if result.threshold is None else f": {result.verdict}"
    ax.set_title(f"distance {result.distance:.4f}{verdict}", fontsize=10)
    ax.legend(loc="lower right", fontsize=7, framealpha=0.8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()
