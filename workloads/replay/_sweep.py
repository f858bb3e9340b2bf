"""`agentflow bench serving --sweep`: the same trace at several arrival rates, with the machine's noise beside it.

At each rate the policies `SWEEP_POLICIES` replay the same programs, seed and arrivals, one engine
process each (`workloads.replay._runner.run_replay`). `vllm` runs twice (`vllm` and `vllm:aa`, two
processes): their ratio is the A/A spread, what the machine alone makes of one policy run twice.
A policy is "no slower than stock vLLM" at a rate when its mean-JCT ratio vs vllm is at least
1 - that spread. Figures per rate and a PNG of mean JCT against the rate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from workloads.replay._metrics import ratio

__all__ = ["SWEEP_POLICIES", "SWEEP_RATES", "run_sweep", "sweep_figures"]

SWEEP_RATES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)  # programs/s
SWEEP_POLICIES: tuple[str, ...] = ("vllm", "vllm:aa", "continuum", "agentflow", "agentflow:none")
_CHECKED = ("agentflow", "agentflow:none")  # must be no slower than stock vLLM at any rate


def run_sweep(options: Any, rates: Sequence[float] = SWEEP_RATES) -> dict[str, Any]:
    """Replay at each rate (`options`: a `ReplayOptions`; its rate, policies and probe are replaced)."""
    from workloads.replay._runner import run_replay

    out_dir: Path = options.out_dir or Path("agentflow-runs") / "sweep"
    per_rate: dict[str, dict[str, Any]] = {}
    for rate in rates:
        run = dataclasses.replace(
            options,
            rate_per_s=rate,
            concurrency=None,
            policies=SWEEP_POLICIES,
            probe=None,
            out_dir=out_dir / f"rate-{rate:g}",
        )
        per_rate[f"{rate:g}"] = run_replay(run).report["policies"]
    figures = sweep_figures(per_rate)
    figures["plot"] = str(plot_sweep(per_rate, out_dir / "jct_vs_rate.png"))
    figures["results_dir"] = str(out_dir)
    return figures


def sweep_figures(per_rate: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per rate: each policy's mean/p95 JCT and queueing delay, ratios vs vllm, the A/A spread; the checks (pure)."""
    rows: dict[str, Any] = {}
    no_slower: dict[str, bool] = {}
    for rate, policies in per_rate.items():
        vllm, aa = _ok(policies, "vllm"), _ok(policies, "vllm:aa")
        aa_ratio = ratio(vllm.get("jct_mean_s"), aa.get("jct_mean_s"))
        spread = abs(aa_ratio - 1.0) if aa_ratio is not None else None
        row: dict[str, Any] = {"aa_ratio": aa_ratio, "aa_spread": spread, "policies": {}}
        for name, figures in policies.items():
            fig = _ok(policies, name)
            row["policies"][name] = {
                "status": figures.get("status"),
                "jct_mean_s": fig.get("jct_mean_s"),
                "jct_p95_s": fig.get("jct_p95_s"),
                "queueing_delay_mean_s": fig.get("queueing_delay_mean_s"),
                "cached_token_fraction": fig.get("cached_token_fraction"),
                "mean_jct_ratio_vs_vllm": ratio(vllm.get("jct_mean_s"), fig.get("jct_mean_s")),
            }
        for name in _CHECKED:
            r = row["policies"].get(name, {}).get("mean_jct_ratio_vs_vllm")
            no_slower[f"{name}@{rate}"] = r is not None and spread is not None and r >= 1.0 - spread
        rows[rate] = row
    lowest = min(per_rate, key=float) if per_rate else None
    queue_check = None
    if lowest is not None:
        low = rows[lowest]["policies"]
        q_vllm = low.get("vllm", {}).get("queueing_delay_mean_s")
        q_aa = low.get("vllm:aa", {}).get("queueing_delay_mean_s")
        noise = abs(q_vllm - q_aa) if q_vllm is not None and q_aa is not None else 0.0
        ours = {name: low.get(name, {}).get("queueing_delay_mean_s") for name in _CHECKED}
        queue_check = {
            "rate": lowest,
            "vllm_s": q_vllm,
            "vllm_aa_s": q_aa,
            **{f"{name.replace(':', '_')}_s": q for name, q in ours.items()},
            "pass": q_vllm is not None and all(q is not None and q <= q_vllm + noise for q in ours.values()),
        }
    return {
        "rates": rows,
        "no_slower_than_vllm": no_slower,
        "queueing_at_lowest_rate": queue_check,
        "all_pass": all(no_slower.values()) and bool(queue_check and queue_check["pass"]),
    }


def render_sweep(figures: Mapping[str, Any]) -> str:
    """A text table: rate, A/A spread, then each policy's mean JCT (ratio vs vllm)."""
    names = list(SWEEP_POLICIES)
    header = ["rate/s", "A/A", *names, "queued af/vllm"]
    lines = [header]
    for rate, row in figures["rates"].items():
        cells = [rate, _pct(row["aa_spread"])]
        for name in names:
            fig = row["policies"].get(name, {})
            mean, r = fig.get("jct_mean_s"), fig.get("mean_jct_ratio_vs_vllm")
            cells.append("-" if mean is None else f"{mean:.1f}s ({r:.2f}x)" if r is not None else f"{mean:.1f}s")
        af, vl = (row["policies"].get(n, {}).get("queueing_delay_mean_s") for n in ("agentflow", "vllm"))
        cells.append("-" if af is None or vl is None else f"{af:.2f}/{vl:.2f}s")
        lines.append(cells)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(c).rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines)


def plot_sweep(per_rate: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """Mean JCT against the arrival rate, one line per policy (PNG, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = sorted(per_rate, key=float)
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        for name in SWEEP_POLICIES:
            points = [(float(r), _ok(per_rate[r], name).get("jct_mean_s")) for r in rates]
            xs = [x for x, y in points if y is not None]
            ys = [y for _, y in points if y is not None]
            if xs:
                axes.plot(xs, ys, marker="o", label=name, linestyle="--" if name == "vllm:aa" else "-")
        axes.set_xscale("log", base=2)
        axes.set_xlabel("arrival rate (programs/s)")
        axes.set_ylabel("mean job completion time (s)")
        axes.grid(alpha=0.3)
        axes.legend()
        axes.set_title("Mean JCT vs load (vllm:aa: stock vLLM run twice, the machine's noise)", fontsize=9)
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
    finally:
        plt.close(figure)
    return path


def _ok(policies: Mapping[str, Any], name: str) -> dict[str, Any]:
    figures = policies.get(name) or {}
    return dict(figures) if figures.get("status") == "ok" else {}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
