"""The JCT CDF plot of a replay: one curve per serving policy (PNG, headless)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["plot_jct_cdf"]


def plot_jct_cdf(jcts_s: Mapping[str, Sequence[float]], path: Path, *, title: str) -> Path:
    """Write the empirical CDF of each policy's program JCTs to `path`."""
    import matplotlib

    matplotlib.use("Agg")  # no display here, and none needed
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        for name, values in jcts_s.items():
            if not values:
                continue
            xs, ys = _cdf(values)
            mean_s = sum(values) / len(values)
            axes.step(xs, ys, where="post", label=f"{name} (mean {mean_s:.1f} s)")
        axes.set_xlabel("job completion time (s)")
        axes.set_ylabel("fraction of programs")
        axes.set_ylim(0, 1.02)
        axes.set_xlim(left=0)
        axes.grid(alpha=0.3)
        axes.legend(loc="lower right")
        axes.set_title("\n".join(textwrap.fill(line, 100) for line in title.splitlines()), fontsize=8)
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
    finally:
        plt.close(figure)
    return path


def _cdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    ordered = sorted(values)
    n = len(ordered)
    # Start at (0, 0) so each curve rises from the axis.
    return [0.0, *ordered], [0.0, *((i + 1) / n for i in range(n))]
