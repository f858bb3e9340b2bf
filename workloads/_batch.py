"""Resumable batch runs: K records at once, each result appended to JSON Lines as it completes.

The results file is the run's only state. Every finished record is one line, written with a
single `write`, flushed and fsynced before the next record is counted done, so a run killed at
any instant (SIGKILL included) leaves complete lines plus at most one partial last line.
`--resume` reads the file back, drops a partial (or otherwise unreadable) line, and runs only
the records whose keys are not in it: nothing is lost and nothing is run twice.

A line is a JSON object with at least `key`, `category` and `status` (`"scored"` or
`"malformed"`); scored lines carry `valid`, `undecodable` and `latency_s` for the summary.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agentflow.exceptions import UserError

__all__ = [
    "BatchItem",
    "BatchStats",
    "CategorySummary",
    "ResultsFile",
    "plot_accuracy",
    "render_table",
    "run_batch",
    "select",
    "summarize",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchItem:
    """One unit of work. `run` returns the result line's fields; `skip_reason` marks a malformed item."""

    key: str
    category: str
    run: Callable[[], Awaitable[dict[str, Any]]] | None = None
    skip_reason: str | None = None

    def __post_init__(self) -> None:
        assert (self.run is None) != (self.skip_reason is None), "an item either runs or is skipped"


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchStats:
    """What this invocation did (resumed records are not counted as run)."""

    num_selected: int
    num_resumed: int  # already in the results file
    num_run: int  # run now (malformed ones included)
    wall_s: float  # from the first record started to the last written

    @property
    def records_per_s(self) -> float:
        return self.num_run / self.wall_s if self.wall_s > 0 else 0.0


# -- the results file -------------------------------------------------------------------------------


class ResultsFile:
    """Append-only JSON Lines of finished records, repaired on load."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self.dropped_lines = 0  # partial or unreadable lines removed by the last load

    def load(self) -> dict[str, dict[str, Any]]:
        """Finished records by key; rewrites the file without a partial or unreadable line."""
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        complete, _, tail = data.rpartition(b"\n")
        kept: list[bytes] = []
        records: dict[str, dict[str, Any]] = {}
        dropped = 1 if tail.strip() else 0  # a kill mid-write leaves a last line with no newline
        for raw in complete.split(b"\n") if complete else []:
            record = _parse_line(raw)
            if record is None or record["key"] in records:
                dropped += 1 if raw.strip() else 0
                continue
            records[record["key"]] = record
            kept.append(raw)
        if dropped or tail:
            self._rewrite(kept)
        self.dropped_lines = dropped
        return records

    def _rewrite(self, lines: list[bytes]) -> None:
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with tmp.open("wb") as f:
            f.write(b"".join(line + b"\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def append(self, record: dict[str, Any]) -> None:
        """Write one line durably: one write, then fsync."""
        line = (json.dumps(record, ensure_ascii=False, default=repr) + "\n").encode()
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        view = memoryview(line)
        while view:  # a regular file takes it in one write; loop for the rare short write
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _parse_line(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("key"), str):
        return None
    return record


# -- selection -----------------------------------------------------------------------------------------


def select(items: Sequence[Any], *, limit: int | None, sample: int | None, seed: int) -> list[Any]:
    """`sample` items drawn at random (seeded, kept in file order), then the first `limit`."""
    import random

    chosen = list(items)
    if sample is not None and sample < len(chosen):
        picked = sorted(random.Random(seed).sample(range(len(chosen)), sample))
        chosen = [chosen[i] for i in picked]
    if limit is not None:
        chosen = chosen[:limit]
    return chosen


# -- running ---------------------------------------------------------------------------------------------


async def run_batch(
    items: Sequence[BatchItem],
    results: ResultsFile,
    *,
    done: Iterable[str] = (),
    concurrency: int = 1,
    progress: bool | None = None,
    description: str = "records",
    is_fatal: Callable[[BaseException], bool] = lambda exc: True,
) -> BatchStats:
    """Run every item whose key is not in `done`, `concurrency` at a time, appending each result.

    An exception from an item is recorded on its line as a failed record unless `is_fatal`
    says it ends the run (the engine died): then the other items are cancelled, what finished
    stays written, and the exception propagates, so `--resume` picks up from there.
    """
    if concurrency < 1:
        raise UserError(f"concurrency must be >= 1, got {concurrency}")
    finished = set(done)
    todo = [item for item in items if item.key not in finished]
    bar = _progress_bar(len(todo), description, progress)
    queue: asyncio.Queue[BatchItem] = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)
    tally = _Tally()
    t0 = time.perf_counter()
    workers = [
        asyncio.create_task(_worker(queue, results, bar, tally, is_fatal))
        for _ in range(min(concurrency, len(todo)) or 1)
    ]
    try:
        await asyncio.gather(*workers)
    finally:
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        if bar is not None:
            bar.close()
    return BatchStats(
        num_selected=len(items),
        num_resumed=len(items) - len(todo),
        num_run=tally.count,
        wall_s=time.perf_counter() - t0,
    )


@dataclass(slots=True)
class _Tally:
    count: int = 0
    correct: int = 0
    scored: int = 0


async def _worker(
    queue: asyncio.Queue[BatchItem],
    results: ResultsFile,
    bar: Any,
    tally: _Tally,
    is_fatal: Callable[[BaseException], bool],
) -> None:
    while not queue.empty():
        item = queue.get_nowait()
        record = await _run_one(item, is_fatal)
        results.append(record)
        tally.count += 1
        if record.get("status") == "scored":
            tally.scored += 1
            tally.correct += bool(record.get("valid"))
        if bar is not None:
            bar.set_postfix_str(f"acc {tally.correct}/{tally.scored}", refresh=False)
            bar.update(1)


async def _run_one(item: BatchItem, is_fatal: Callable[[BaseException], bool]) -> dict[str, Any]:
    head = {"key": item.key, "category": item.category}
    if item.run is None:
        return {**head, "status": "malformed", "reason": item.skip_reason}
    t0 = time.perf_counter()
    try:
        fields = await item.run()
    except Exception as exc:
        if is_fatal(exc):
            raise
        fields = {
            "status": "scored",
            "valid": False,
            "undecodable": True,
            "error": f"{type(exc).__name__}: {exc}",
            "error_type": "runner_error",
        }
    fields.setdefault("latency_s", time.perf_counter() - t0)
    return {**head, **fields}


def _progress_bar(total: int, description: str, enabled: bool | None) -> Any:
    if enabled is False or total == 0:
        return None
    from tqdm import tqdm

    # disable=None: only on a terminal, so logs and pipes stay clean.
    return tqdm(
        total=total,
        desc=description,
        unit="rec",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=None if enabled is None else False,
    )


# -- summary, table, plot --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CategorySummary:
    """Per-category results. `invalid`: scored wrong because the output did not decode (or the run failed)."""

    category: str
    n: int  # records scored
    correct: int
    accuracy: float | None
    invalid: int
    malformed: int  # skipped: the record itself could not run
    latency_mean_s: float | None
    latency_p50_s: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(records: Iterable[dict[str, Any]], categories: Sequence[str]) -> list[CategorySummary]:
    """One summary per category (in the given order), then `overall`."""
    by_category: dict[str, list[dict[str, Any]]] = {c: [] for c in categories}
    for record in records:
        by_category.setdefault(record["category"], []).append(record)
    rows = [_summary(c, rs) for c, rs in by_category.items()]
    every = [r for rs in by_category.values() for r in rs]
    return [*rows, _summary("overall", every)]


def _summary(category: str, records: list[dict[str, Any]]) -> CategorySummary:
    scored = [r for r in records if r.get("status") == "scored"]
    correct = sum(bool(r.get("valid")) for r in scored)
    latencies = [float(r["latency_s"]) for r in scored if isinstance(r.get("latency_s"), int | float)]
    return CategorySummary(
        category=category,
        n=len(scored),
        correct=correct,
        accuracy=correct / len(scored) if scored else None,
        invalid=sum(1 for r in scored if not r.get("valid") and r.get("undecodable")),
        malformed=sum(1 for r in records if r.get("status") == "malformed"),
        latency_mean_s=statistics.fmean(latencies) if latencies else None,
        latency_p50_s=statistics.median(latencies) if latencies else None,
    )


def render_table(rows: Sequence[CategorySummary]) -> str:
    """A fixed-width text table of the summaries."""
    header = ("category", "n", "accuracy", "invalid", "malformed", "lat mean s", "lat p50 s")
    body = [
        (
            r.category,
            str(r.n),
            "-" if r.accuracy is None else f"{r.accuracy:.1%} ({r.correct})",
            str(r.invalid),
            str(r.malformed),
            _num(r.latency_mean_s),
            _num(r.latency_p50_s),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]
    lines = [_row(header, widths), _row(tuple("-" * w for w in widths), widths)]
    lines += [_row(row, widths) for row in body]
    return "\n".join(lines)


def _row(cells: tuple[str, ...], widths: list[int]) -> str:
    first = cells[0].ljust(widths[0])
    rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
    return "  ".join([first, *rest])


def _num(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def plot_accuracy(rows: Sequence[CategorySummary], path: Path, *, title: str) -> Path:
    """A bar chart of accuracy per category (n on each bar), written as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r.accuracy is not None]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(shown) + 2), 4.0))
    bars = ax.bar([r.category for r in shown], [100 * (r.accuracy or 0.0) for r in shown], color="#4C72B0")
    for bar, row in zip(bars, shown, strict=True):
        ax.annotate(
            f"{100 * (row.accuracy or 0):.0f}%\nn={row.n}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylim(0, 115)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
