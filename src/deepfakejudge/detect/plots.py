"""One PNG per scored file: confusion matrix, accuracy per source, reliability diagram.

matplotlib is an optional extra (`pip install 'deepfakejudge[plots]'`), imported only here.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import MissingExtra
from .scoring import DetectionScore


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise MissingExtra(
            "--png needs matplotlib; install it with: pip install 'deepfakejudge[plots]'"
        ) from exc
    matplotlib.use("Agg")  # files only: never open a window, works without a display
    import matplotlib.pyplot as plt

    return plt


def save_png(score: DetectionScore, path: str | Path) -> Path:
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    m = score.metrics
    prob = m.probability
    panels = 3 if prob is not None else 2
    ratios = [1.0, 1.7, 1.0][:panels]  # the source names need the room
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * sum(ratios), 4.6), gridspec_kw={"width_ratios": ratios})
    try:
        _confusion(axes[0], m.confusion)
        _sources(axes[1], score)
        if prob is not None:
            _reliability(axes[2], prob)
        fig.suptitle(f"{score.name}: accuracy {100 * m.accuracy:.1f}%, n = {m.n}")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


def _confusion(ax, confusion) -> None:
    import numpy as np

    cells = np.array(confusion, dtype=float)
    ax.imshow(cells, cmap="Blues")
    ax.set_xticks(range(3), ["real", "fake", "unparsable"])
    ax.set_yticks(range(2), ["real", "fake"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold (edited counts as fake)")
    for (i, j), v in np.ndenumerate(cells):
        ax.text(j, i, str(int(v)), ha="center", va="center",
                color="white" if v > cells.max() / 2 else "black")
    ax.set_title("confusion matrix")


def _sources(ax, score: DetectionScore) -> None:
    names = list(score.by_source)
    acc = [100 * score.by_source[k].accuracy for k in names]
    ax.barh(range(len(names)), acc, color="tab:blue")
    for i, k in enumerate(names):
        ax.text(1, i, f"n={score.by_source[k].n}", va="center", fontsize=7, color="black")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("accuracy (%)")
    ax.set_title("per source")


def _reliability(ax, prob) -> None:
    bins = [b for b in prob.reliability if b.count]
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.bar([(b.lower + b.upper) / 2 for b in bins], [b.fraction_fake for b in bins],
           width=[b.upper - b.lower for b in bins], alpha=0.6, edgecolor="black", label="fraction fake")
    ax.plot([b.mean_p_fake for b in bins], [b.fraction_fake for b in bins], "o", color="tab:red", label="mean p_fake")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("p_fake")
    ax.set_ylabel("fraction fake")
    ece = "–" if prob.ece is None else f"{prob.ece:.3f}"
    ax.set_title(f"reliability (ECE {ece}, n = {prob.n})")
    ax.legend(loc="upper left", fontsize=8)
