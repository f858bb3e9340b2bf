"""The BFCL table of the model-catalog issue: every (model, category, mode) run, one table.

Runs `agentflow bfcl` once per model and mode over the categories (each run resumable: its results
directory is `<out>/<model>/<mode>`, so a second invocation continues where the first stopped),
then prints a Markdown table of accuracy, invalid outputs and latency per record, and writes it
with every run's summary to `<out>/table.json`.

    .venv/bin/python scripts/bfcl_table.py --models qwen2.5-coder-1.5b --limit 100 --out agentflow-runs/bfcl-table

Categories whose records are long (multi_turn_base) take `--multi-turn-limit` records instead.
A run whose summary is already there with the same limit is not run again (`--rerun` redoes it):
copy a finished table's summaries (`results/bfcl-table/`) into `--out` and only what is
missing runs.
Run it alone: latency per record is only comparable between runs that had the machine to themselves.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

CATEGORIES = (
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "irrelevance",
    "live_simple",
    "multi_turn_base",
)
MODES = ("native", "fc", "compiled")
MULTI_TURN = {"multi_turn_base"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="qwen2.5-coder-1.5b", help="catalog names, comma-separated")
    parser.add_argument("--categories", default=",".join(CATEGORIES))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--limit", type=int, default=100, help="first N records per category")
    parser.add_argument("--multi-turn-limit", type=int, default=20, help="first N records of multi-turn categories")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("agentflow-runs") / "bfcl-table")
    parser.add_argument(
        "--table-only", action="store_true", help="print the table from every summary under --out (no runs)"
    )
    parser.add_argument("--rerun", action="store_true", help="run again even where a summary with this limit exists")
    args = parser.parse_args(argv)
    categories = [c for c in args.categories.split(",") if c]
    models = [m for m in args.models.split(",") if m]
    modes = [m for m in args.modes.split(",") if m]
    if not args.table_only:
        for model in models:
            for mode in modes:
                for group, limit in _groups(categories, args.limit, args.multi_turn_limit):
                    summary_path = args.out / model / mode / f"{'+'.join(group)}.json"
                    if args.rerun or not _done(summary_path, limit):
                        _run(model, mode, group, limit, args.concurrency, args.out / model / mode, summary_path)
    runs = [json.loads(path.read_text()) for path in _summaries(args.out, models, modes)]
    table = render(runs)
    print(table)
    (args.out / "table.json").parent.mkdir(parents=True, exist_ok=True)
    (args.out / "table.json").write_text(json.dumps({"table": table, "runs": runs}, indent=2))
    return 0


def _groups(categories: list[str], limit: int, multi_turn_limit: int) -> list[tuple[list[str], int]]:
    single = [c for c in categories if c not in MULTI_TURN]
    multi = [c for c in categories if c in MULTI_TURN]
    return [(group, n) for group, n in ((single, limit), (multi, multi_turn_limit)) if group]


def _summaries(out: Path, models: list[str], modes: list[str]) -> list[Path]:
    """Every run's summary under `out` for these models and modes (whatever categories each ran)."""
    return [path for model in models for mode in modes for path in sorted((out / model / mode).glob("*.json"))]


def _done(summary: Path, limit: int) -> bool:
    """A summary of a finished run with this limit exists (a run writes it when it ends)."""
    if not summary.exists():
        return False
    settings = json.loads(summary.read_text()).get("settings", {})
    return bool(settings.get("limit") == limit)


def _run(model: str, mode: str, group: list[str], limit: int, concurrency: int, out: Path, summary: Path) -> None:
    summary.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "agentflow", "bfcl",
        "--model", f"embedded:{model}", "--mode", mode, "--category", ",".join(group),
        "--limit", str(limit), "--concurrency", str(concurrency),
        "--out", str(out / "+".join(group)), "--json", str(summary), "--no-progress",
    ]  # fmt: skip
    if (out / "+".join(group) / "results.jsonl").exists():
        command.append("--resume")
    print("$", " ".join(command), file=sys.stderr, flush=True)
    subprocess.run(command, check=True)


def render(runs: list[dict[str, Any]]) -> str:
    """Markdown: one row per (model, category), accuracy / invalid / mean latency per mode."""
    cells: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    modes: list[str] = []
    for run in runs:
        mode = run["mode"]
        if mode not in modes:
            modes.append(mode)
        for row in run["categories"]:
            cells.setdefault((run["model"], row["category"]), {})[mode] = row
    header = "| model | category | n | " + " | ".join(f"{m} acc | {m} invalid | {m} s/rec" for m in modes) + " |"
    lines = [header, "|" + "---|" * (3 + 3 * len(modes))]
    for (model, category), by_mode in cells.items():
        n = max((row["n"] for row in by_mode.values()), default=0)
        parts = []
        for mode in modes:
            row = by_mode.get(mode)
            if row is None or not row["n"]:
                parts += ["-", "-", "-"]
                continue
            latency = row["latency_mean_s"]
            parts += [f"{row['accuracy']:.0%}", str(row["invalid"]), f"{latency:.1f}" if latency is not None else "-"]
        lines.append(f"| {model.removeprefix('embedded:')} | {category} | {n} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
