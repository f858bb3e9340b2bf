"""Single-turn throughput of two engines measured side by side: both alive, bursts alternating.

The serving bench's `throughput_cost_pct` compares agentflow's scheduler with stock vLLM on
plain requests (no metadata). Measured one engine after the other, the machine's drift between
the two runs (other processes, thermal state: 10-17% between policies on the shared 2-core
boxes) swamps a 2% bound. Here both engines run in their own processes at once and serve the
same bursts in the order A B B A A B ..., so drift hits both alike; an idle engine sleeps on
its command queue and takes no CPU from the busy one.

Protocol with `python -m workloads._replay_worker --probe SPEC.json` (one per policy): the
worker prints `PROBE-READY`, then answers each `burst R` line on stdin with
`PROBE-BURST {"round": R, "wall_s": ...}`, and exits on `quit`. Lines without the prefix (vLLM's
logs) are passed on to stderr.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from agentflow.exceptions import UserError

__all__ = ["BURST_PREFIX", "READY_PREFIX", "paired_throughput_probe", "parse_probe_command"]

READY_PREFIX = "PROBE-READY"
BURST_PREFIX = "PROBE-BURST "
_WARMUP_ROUND = -1


@dataclass(slots=True)
class _Worker:
    name: str
    process: subprocess.Popen[str]
    lines: list[str]  # protocol lines read so far (the reader thread appends)
    ready: threading.Event
    cond: threading.Condition


def paired_throughput_probe(
    specs: dict[str, dict[str, Any]],
    *,
    repeats: int,
    timeout_s: float,
    pairs: int = 1,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run each spec's engine at once; `repeats` bursts each, alternating; per-engine figures.

    `pairs` times over, each time with fresh engine processes: where a process lands (cores,
    memory) shifts its speed by a few percent for its whole life (an A/A run of two stock
    engines differed by up to 3%), so the best burst is taken over several processes.
    `specs` maps a policy name to its worker spec (engine kwargs, policy, probe settings).
    Returns {policy: {walls_s, best_wall_s, output_tokens_per_s, ...}, "order": [...],
    "paired_cost_pct": {...}}: per round, (second / first wall - 1) x 100, the first policy
    being the reference.
    """
    if len(specs) < 2:
        raise UserError("the paired probe compares at least two engines")
    if repeats < 1 or pairs < 1:
        raise UserError(f"repeats and pairs must be >= 1, got {repeats} and {pairs}")
    deadline = time.monotonic() + timeout_s
    walls: dict[str, list[float]] = {name: [] for name in specs}
    scheduler: dict[str, list[tuple[float, int]]] = {name: [] for name in specs}  # per burst: (seconds, steps)
    order: list[str] = []
    for _ in range(pairs):
        _one_pair(specs, repeats, deadline, env, walls, scheduler, order)
    return _figures(specs, walls, order, scheduler)


def _one_pair(
    specs: dict[str, dict[str, Any]],
    repeats: int,
    deadline: float,
    env: dict[str, str] | None,
    walls: dict[str, list[float]],
    scheduler: dict[str, list[tuple[float, int]]],
    order: list[str],
) -> None:
    workers = [_start(name, spec, env) for name, spec in specs.items()]
    try:
        for worker in workers:
            _wait_ready(worker, deadline)
        for worker in workers:  # a first burst each, not counted: allocator and cache warm-up
            _burst(worker, _WARMUP_ROUND, deadline)
        for round_index in range(repeats):
            sequence = workers if round_index % 2 == 0 else list(reversed(workers))
            for worker in sequence:
                answer = _burst(worker, len(walls[worker.name]), deadline)
                walls[worker.name].append(float(answer["wall_s"]))
                scheduler[worker.name].append((float(answer.get("scheduler_s", 0.0)), int(answer.get("steps", 0))))
                order.append(worker.name)
    finally:
        for worker in workers:
            _stop(worker)


def _figures(
    specs: dict[str, dict[str, Any]],
    walls: dict[str, list[float]],
    order: list[str],
    scheduler: dict[str, list[tuple[float, int]]] | None = None,
) -> dict[str, Any]:
    result: dict[str, Any] = {"order": order}
    for name, spec in specs.items():
        probe = spec["probe"]
        best = min(walls[name])
        result[name] = {
            **probe,
            "walls_s": walls[name],
            "best_wall_s": best,
            "median_wall_s": statistics.median(walls[name]),
            "requests_per_s": probe["num_requests"] / best,
            "output_tokens_per_s": probe["num_requests"] * probe["output_tokens"] / best,
            "measured": "side by side with " + ", ".join(n for n in specs if n != name) + ", bursts alternating",
            "processes": "fresh engine processes per pair; rounds of all pairs pooled",
            **_scheduler_figures((scheduler or {}).get(name, []), walls[name]),
        }
    reference, *others = list(specs)
    base = result[reference]
    if "scheduler_s_per_step" in base:
        # What the scheduler class adds to each step, as a share of the reference's step time.
        result["scheduler_overhead_pct"] = {
            other: (result[other]["scheduler_s_per_step"] - base["scheduler_s_per_step"]) / base["step_s"] * 100
            for other in others
            if "scheduler_s_per_step" in result[other]
        }
    result["paired_cost_pct"] = {
        other: [(b / a - 1) * 100 for a, b in zip(walls[reference], walls[other], strict=True)] for other in others
    }
    return result


def _scheduler_figures(bursts: list[tuple[float, int]], walls: list[float]) -> dict[str, Any]:
    """The scheduler's own seconds per engine step, and its share of the step, over all bursts."""
    steps = sum(n for _, n in bursts)
    if not steps:
        return {}
    return {
        "scheduler_s_per_step": sum(s for s, _ in bursts) / steps,
        "step_s": sum(walls) / steps,
    }


def _start(name: str, spec: dict[str, Any], env: dict[str, str] | None) -> _Worker:
    import tempfile

    fd, spec_name = tempfile.mkstemp(prefix=f"agentflow-probe-{name}-", suffix=".json")
    with os.fdopen(fd, "w") as spec_file:
        json.dump(spec, spec_file)
    command = [sys.executable, "-m", "workloads._replay_worker", "--probe", spec_name]
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=None,  # the worker's logs go to our stderr
        text=True,
        bufsize=1,
        env={**os.environ, **(env or {})},
    )
    worker = _Worker(name=name, process=process, lines=[], ready=threading.Event(), cond=threading.Condition())
    threading.Thread(target=_read, args=(worker, process.stdout, Path(spec_name)), daemon=True).start()
    return worker


def _read(worker: _Worker, stream: IO[str] | None, spec_path: Path) -> None:
    assert stream is not None
    for line in stream:
        if line.startswith(READY_PREFIX):
            spec_path.unlink(missing_ok=True)
            worker.ready.set()
        elif line.startswith(BURST_PREFIX):
            with worker.cond:
                worker.lines.append(line[len(BURST_PREFIX) :])
                worker.cond.notify_all()
        else:
            sys.stderr.write(line)
    spec_path.unlink(missing_ok=True)
    with worker.cond:  # the process ended: wake a waiter so it sees that
        worker.cond.notify_all()
    worker.ready.set()


def _wait_ready(worker: _Worker, deadline: float) -> None:
    if not worker.ready.wait(timeout=max(0.0, deadline - time.monotonic())) or worker.process.poll() is not None:
        raise UserError(f"probe engine {worker.name!r} did not start (exit {worker.process.poll()}; see stderr)")


def _burst(worker: _Worker, round_index: int, deadline: float) -> dict[str, Any]:
    assert worker.process.stdin is not None
    seen = len(worker.lines)
    try:
        worker.process.stdin.write(f"burst {round_index}\n")
        worker.process.stdin.flush()
    except BrokenPipeError as exc:
        raise UserError(f"probe engine {worker.name!r} exited (see stderr)") from exc
    with worker.cond:
        while len(worker.lines) == seen:
            left = deadline - time.monotonic()
            if left <= 0 or worker.process.poll() is not None:
                raise UserError(f"probe engine {worker.name!r} gave no result for burst {round_index}")
            worker.cond.wait(timeout=min(left, 1.0))
        answer = json.loads(worker.lines[seen])
    if answer.get("round") != round_index or "wall_s" not in answer:
        raise UserError(f"probe engine {worker.name!r} answered {answer!r} to burst {round_index}")
    return answer


def _stop(worker: _Worker) -> None:
    process = worker.process
    try:
        if process.poll() is None and process.stdin is not None:
            process.stdin.write("quit\n")
            process.stdin.flush()
            process.stdin.close()
        process.wait(timeout=60)
    except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
        process.kill()
        process.wait()


def parse_probe_command(line: str) -> int | None:
    """A protocol line: `burst R` -> R; `quit` (or end of input, "") -> None. Raises UserError."""
    text = line.strip()
    if text in ("quit", ""):
        return None
    command, _, argument = text.partition(" ")
    if command != "burst" or not argument.lstrip("-").isdigit():
        raise UserError(f"probe protocol: unexpected line {text!r}")
    return int(argument)
