"""The picture of where two recordings meet (``match.py compare --plot``, the web page): the
distance between every window of A (rows, A's time downwards) and every window of B (columns,
B's time rightwards), dark where close; the best alignment of A on B drawn as a diagonal through
the window pairs it lines up, and the closest window pairs circled. Two versions that share a
passage show a dark diagonal there; unrelated recordings show no line."""

import io

import numpy as np


def comparison_png(result, names=("A", "B"), dpi=100):
    """PNG bytes of a ``lib.matching.api.Comparison`` (its ``segments`` (Sa, Sb), ``win_len``
    and ``hop`` in seconds, matched ranges and closest pairs); ``names``: A's and B's labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seg = np.asarray(result.segments, dtype=np.float64)
    hop = float(result.hop)
    names = [name if len(name) <= 32 else name[:29] + "..." for name in names]
    rows, cols = seg.shape
    # cell (i, j) spans the hop that starts window i of A / window j of B
    extent = (0.0, cols * hop, rows * hop, 0.0)
    width = min(9.0, 3.5 + 0.08 * cols)
    height = min(7.0, 2.5 + 0.08 * rows)
    fig, ax = plt.subplots(figsize=(max(width, 4.5), max(height, 3.2)))
    shown = ax.imshow(seg, cmap="magma", aspect="auto", extent=extent, interpolation="nearest")
    fig.colorbar(shown, ax=ax, label="window distance (dark: close)")
    # the best alignment: window i of A on window i + shift of B (A's time + offset = B's)
    shift = int(round((result.b_s[0] - result.a_s[0]) / hop))
    aligned = [(i, i + shift) for i in range(rows) if 0 <= i + shift < cols]
    if aligned and result.a_s[1] > result.a_s[0]:
        ax.plot(
            [(j + 0.5) * hop for _, j in aligned],
            [(i + 0.5) * hop for i, _ in aligned],
            "-s", color="#3ddc84", lw=2, ms=4, label="best alignment",
        )
    for k, pair in enumerate(result.pairs):
        centre_b, centre_a = pair["b_s"][0] + hop / 2, pair["a_s"][0] + hop / 2
        ax.plot(
            [centre_b], [centre_a], "o", mfc="none", mec="#4fc3f7", ms=9, mew=1.5,
            label="closest window pairs" if k == 0 else None,
        )
    ax.set_xlim(0, cols * hop)
    ax.set_ylim(rows * hop, 0)
    ax.set_xlabel(f"{names[1]}: window start (s)")
    ax.set_ylabel(f"{names[0]}: window start (s)")
    verdict = "" if result.threshold is None else f": {result.verdict}"
    ax.set_title(
        f"distance {result.distance:.4f}{verdict}; windows of {result.win_len:g} s", fontsize=10
    )
    ax.legend(loc="best", fontsize=7, framealpha=0.8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()
