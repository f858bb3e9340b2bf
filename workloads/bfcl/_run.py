"""The BFCL batch runner: records -> agentflow programs -> BFCL's checkers -> JSONL, table, plot.

```python
report = run_bfcl(BfclOptions(categories=("simple_python",), limit=20, concurrency=8))
print(report.table)
```

Results go to `<out>/results.jsonl` (one line per record, durable as each completes),
`<out>/summary.json`, and `<out>/accuracy.png`; `run.json` pins the settings a `--resume`
must match.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agentflow.backends import LLMBackend, resolve_backend
from agentflow.exceptions import BackendConfigError, EngineError, UserError
from serving import EmbeddedBackend
from workloads._batch import (
    BatchItem,
    BatchStats,
    ResultsFile,
    plot_accuracy,
    render_table,
    run_batch,
    select,
    summarize,
)
from workloads.bfcl._data import BfclRecord, MalformedRecord, load_category
from workloads.bfcl._native import Inference, run_native
from workloads.bfcl._scripted import ground_truth_model, parse_scripted

__all__ = [
    "DEFAULT_ENGINE_OPTIONS",
    "BfclOptions",
    "BfclReport",
    "default_out_dir",
    "engine_options_for",
    "run_bfcl",
    "run_bfcl_async",
]

Mode = Literal["native", "fc", "compiled"]
MODES: tuple[str, ...] = ("native", "fc", "compiled")
RUNS_DIR = Path("agentflow-runs") / "bfcl"
_PINNED = ("workload", "model", "mode", "max_tokens")  # settings a resumed run must share
DEFAULT_ENGINE_OPTIONS: dict[str, Any] = {
    # BFCL's multi-turn prompts (function docs of 2-3 backends) take 4.4k-8k tokens of SmolLM2,
    # and grow with every step's results: a model that can take more gets more (`engine_options_for`).
    "max_model_len": 8192,
    "kv_cache_bytes": 2 * 1024**3,
}
_MAX_CONTEXT = 32768  # multi-turn records measured 8k+ tokens on Qwen2.5 by their third turn
_LONG_CONTEXT_KV_BYTES = 4 * 1024**3  # room for the concurrent records' longer contexts


def engine_options_for(model: str | None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The embedded engine's options for `embedded:MODEL`: the model's own context (up to 32k), then `overrides`.

    A fixed 8192 cut Qwen2.5's multi-turn records off mid-run (`maximum context length`), though
    the model takes 32k.
    """
    from serving.embedded import model_path
    from serving.models import default_model_dir, spec_for_dir

    path = model_path(model) or default_model_dir()
    spec = spec_for_dir(path)
    context = spec.architecture.context_length if spec is not None else _config_context(path)
    options = dict(DEFAULT_ENGINE_OPTIONS)
    if context > options["max_model_len"]:
        options.update(max_model_len=min(context, _MAX_CONTEXT), kv_cache_bytes=_LONG_CONTEXT_KV_BYTES)
    return {**options, **(overrides or {})}


def _config_context(path: Path) -> int:
    """A local model directory's `max_position_embeddings`; the default's when it cannot be read."""
    try:
        config = json.loads((path / "config.json").read_text())
        return int(config["max_position_embeddings"])
    except (OSError, ValueError, KeyError, TypeError):
        return int(DEFAULT_ENGINE_OPTIONS["max_model_len"])


@dataclass(frozen=True, slots=True, kw_only=True)
class BfclOptions:
    """One `agentflow bfcl` invocation."""

    categories: tuple[str, ...]
    limit: int | None = None  # first N records per category (after sampling)
    sample: int | None = None  # N records per category drawn at random with `seed`
    seed: int = 0
    mode: Mode = "native"
    model: str = "embedded"  # a model string; `scripted:ground_truth[@S]` is the test double
    concurrency: int = 1
    out_dir: Path | None = None  # None: a new dir under agentflow-runs/bfcl (latest one with resume)
    json_path: Path | None = None
    resume: bool = False
    max_tokens: int = 192
    data_dir: Path | None = None  # a directory laid out like bfcl_eval/data (tests, custom data)
    engine_options: Mapping[str, Any] = field(default_factory=dict)  # EngineConfig fields for `embedded`
    progress: bool | None = None  # None: a bar when stderr is a terminal

    def __post_init__(self) -> None:
        for name in ("limit", "sample"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name} must be >= 1, got {value}")
        if self.concurrency < 1:
            raise UserError(f"--concurrency must be >= 1, got {self.concurrency}")
        if self.max_tokens < 1:
            raise UserError(f"--max-tokens must be >= 1, got {self.max_tokens}")
        if self.mode not in MODES:
            raise UserError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class BfclReport:
    """What a run wrote and measured."""

    out_dir: Path
    results_path: Path
    plot_path: Path | None
    summary: dict[str, Any]
    table: str
    stats: BatchStats


# -- entry points -------------------------------------------------------------------------------------


def run_bfcl(options: BfclOptions) -> BfclReport:
    """Run the batch (blocking)."""
    return asyncio.run(run_bfcl_async(options))


async def run_bfcl_async(options: BfclOptions) -> BfclReport:
    """Run the batch: load and select records, run the unfinished ones, summarize everything selected."""
    models = _Models(options)  # a bad model string or mode fails before anything is written
    runner = _runner(options)
    selected = _select_records(options)
    out_dir = _out_dir(options)
    _pin_settings(out_dir, options)
    results = ResultsFile(out_dir / "results.jsonl")
    done = results.load() if options.resume else {}
    if not options.resume and results.path.exists() and results.path.stat().st_size:
        raise UserError(f"{results.path} already has results: pass --resume to continue, or another --out")
    items = [_batch_item(item, models, runner, options) for item in selected]
    engine_start_s = await models.start(any(isinstance(i, BfclRecord) for i in selected if i.key not in done))
    try:
        stats = await run_batch(
            items,
            results,
            done=done,
            concurrency=options.concurrency,
            progress=options.progress,
            description=f"bfcl {options.mode}",
            is_fatal=models.is_fatal,
        )
    finally:
        results.close()
    return _report(out_dir, results, selected, options, stats, engine_start_s, dropped=results.dropped_lines)


# -- selection ----------------------------------------------------------------------------------------------


def _select_records(options: BfclOptions) -> list[BfclRecord | MalformedRecord]:
    chosen: list[BfclRecord | MalformedRecord] = []
    for category in options.categories:
        items = load_category(category, data_dir=options.data_dir)
        chosen.extend(select(items, limit=options.limit, sample=options.sample, seed=options.seed))
    return chosen


def _batch_item(
    item: BfclRecord | MalformedRecord, models: _Models, runner: _Runner, options: BfclOptions
) -> BatchItem:
    if isinstance(item, MalformedRecord):
        return BatchItem(key=item.key, category=item.category, skip_reason=f"line {item.line_no}: {item.reason}")

    async def run() -> dict[str, Any]:
        t0 = time.perf_counter()
        inference = await runner(item, models.for_record(item), options.max_tokens)
        if inference.inference_error is not None:
            models.check_alive(inference.inference_error)  # a dead engine ends the run; resume redoes this record
        return _result_fields(item, inference, options, time.perf_counter() - t0)

    return BatchItem(key=item.key, category=item.category, run=run)


_Runner = Callable[[BfclRecord, LLMBackend, int], Any]


def _runner(options: BfclOptions) -> _Runner:
    if options.mode == "native":
        return lambda record, backend, max_tokens: run_native(record, backend, max_tokens=max_tokens)
    if options.mode == "fc":
        from workloads.bfcl._fc import run_fc

        return lambda record, backend, max_tokens: run_fc(record, backend, max_tokens=max_tokens)
    from workloads.bfcl._compiled import compiled_runner

    return compiled_runner()


def _result_fields(record: BfclRecord, inference: Inference, options: BfclOptions, latency_s: float) -> dict[str, Any]:
    score = inference.score
    assert score is not None, "a runner scores what it ran"
    return {
        "status": "scored",
        "mode": options.mode,
        "valid": score.valid,
        "undecodable": score.undecodable,
        "error": score.error,
        "error_type": score.error_type,
        "latency_s": latency_s,
        "llm_calls": inference.llm_calls,
        "llm_s": inference.llm_s,
        "prompt_tokens": inference.prompt_tokens,
        "completion_tokens": inference.completion_tokens,
        "force_quit": inference.force_quit,
        "model_output": inference.model_output,
        "decoded": score.decoded,
        "calls": inference.calls,
    }


# -- models ---------------------------------------------------------------------------------------------------


class _Models:
    """The backend each record runs on: one shared backend, or a scripted one per record (test double)."""

    def __init__(self, options: BfclOptions) -> None:
        self.model = options.model
        self._mode = options.mode
        self._scripted_latency_s = parse_scripted(options.model)
        self._backend: LLMBackend | None = None
        if self._scripted_latency_s is None:
            self._backend = _shared_backend(options.model, options.engine_options)

    def for_record(self, record: BfclRecord) -> LLMBackend:
        if self._backend is not None:
            return self._backend
        return ground_truth_model(record, latency_s=self._scripted_latency_s or 0.0, mode=self._mode)

    async def start(self, needed: bool) -> float | None:
        """Warm the backend up before the clock runs (the embedded engine's start is no record's latency)."""
        if not needed or self._backend is None:
            return None
        t0 = time.perf_counter()
        await self._backend.start()
        return time.perf_counter() - t0

    def check_alive(self, reason: str) -> None:
        """Raise `EngineError` when the embedded engine died (not this record's fault)."""
        if self._engine_dead():
            raise EngineError(f"the embedded engine died: {reason}")

    def is_fatal(self, exc: BaseException) -> bool:
        """Errors that end the run (resume continues it) rather than fail one record."""
        if isinstance(exc, EngineError) and not isinstance(exc, BackendConfigError):
            return True  # engine missing, model not prepared, engine dead
        return self._engine_dead()

    def _engine_dead(self) -> bool:
        return isinstance(self._backend, EmbeddedBackend) and self._backend.engine.dead


def _shared_backend(model: str, engine_options: Mapping[str, Any]) -> LLMBackend:
    scheme, _, rest = model.partition(":")
    if scheme != "embedded":
        return resolve_backend(model)
    return embedded_backend(rest or None, engine_options)


def embedded_backend(model_dir: str | None = None, engine_options: Mapping[str, Any] | None = None) -> EmbeddedBackend:
    """The embedded backend the runner uses: its engine options, shared with every runner in the process."""
    return EmbeddedBackend(model_dir=model_dir, **engine_options_for(model_dir, engine_options))


# -- output directory and pinned settings ---------------------------------------------------------------------


def default_out_dir(*, resume: bool) -> Path:
    """A new timestamped dir, or with `resume` the newest existing one."""
    if resume:
        existing = sorted(p for p in RUNS_DIR.glob("*") if (p / "run.json").is_file())
        if not existing:
            raise UserError(f"--resume found no earlier run under {RUNS_DIR}/: pass --out DIR")
        return existing[-1]
    return RUNS_DIR / time.strftime("%Y%m%d-%H%M%S")


def _out_dir(options: BfclOptions) -> Path:
    return options.out_dir if options.out_dir is not None else default_out_dir(resume=options.resume)


def _pin_settings(out_dir: Path, options: BfclOptions) -> None:
    settings = {"workload": "bfcl", "model": options.model, "mode": options.mode, "max_tokens": options.max_tokens}
    path = out_dir / "run.json"
    if path.is_file():
        earlier = json.loads(path.read_text())
        clash = {k: (earlier.get(k), settings[k]) for k in _PINNED if earlier.get(k) != settings[k]}
        if clash:
            detail = ", ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in clash.items())
            raise UserError(f"{out_dir} holds a run with other settings ({detail}); use another --out")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")


# -- report ------------------------------------------------------------------------------------------------------


def _report(
    out_dir: Path,
    results: ResultsFile,
    selected: list[BfclRecord | MalformedRecord],
    options: BfclOptions,
    stats: BatchStats,
    engine_start_s: float | None,
    *,
    dropped: int,
) -> BfclReport:
    keys = {item.key for item in selected}
    records = [r for r in results.load().values() if r["key"] in keys]
    rows = summarize(records, options.categories)
    table = render_table(rows)
    title = f"BFCL accuracy, {options.mode} mode, model {options.model}"
    plot_path = plot_accuracy(rows, out_dir / "accuracy.png", title=title) if records else None
    summary = {
        "workload": "bfcl",
        "model": options.model,
        "mode": options.mode,
        "categories": [r.to_dict() for r in rows[:-1]],
        "overall": rows[-1].to_dict(),
        "settings": {
            "limit": options.limit,
            "sample": options.sample,
            "seed": options.seed,
            "concurrency": options.concurrency,
            "max_tokens": options.max_tokens,
        },
        "run": {
            "selected": stats.num_selected,
            "resumed": stats.num_resumed,
            "run_now": stats.num_run,
            "dropped_partial_lines": dropped,
            "wall_s": stats.wall_s,
            "records_per_s": stats.records_per_s,
            "engine_start_s": engine_start_s,
        },
        "results": str(results.path),
        "plot": None if plot_path is None else str(plot_path),
    }
    text = json.dumps(summary, indent=2) + "\n"
    (out_dir / "summary.json").write_text(text)
    if options.json_path is not None:
        options.json_path.parent.mkdir(parents=True, exist_ok=True)
        options.json_path.write_text(text)
    return BfclReport(
        out_dir=out_dir, results_path=results.path, plot_path=plot_path, summary=summary, table=table, stats=stats
    )
