"""Single-turn throughput of agentflow's scheduler against vLLM's stock one, on one engine.

The serving bench's `throughput_cost_pct` compares the two schedulers on plain requests (no
metadata). Two engine processes measured side by side are not equal machines: in A/A runs of
two stock engines the one started first ran 4-7% faster for its whole life, more than the 2%
bound. So the probe uses one process, one engine, one model: the engine runs agentflow's
scheduler, vLLM's stock scheduler is built beside it (`EmbeddedEngine.build_stock_scheduler`),
and bursts alternate between the two, A B B A ... (`swap_scheduler` between bursts, the incoming
scheduler's prefix cache reset). Each burst enters the engine as one batch, with prompts of its
own. The scheduler object is all that differs between the two halves of a round.

`run_probe` runs inside the probe worker (`python -m workloads.replay._worker --probe SPEC OUT`);
`probe_figures` turns its raw walls into the report's figures (pure).
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

from agentflow.exceptions import UserError
from workloads.replay._run import program_tokens, timed_burst

__all__ = ["OURS", "STOCK", "SchedulerTimer", "median_ci95", "probe_figures", "run_probe"]

STOCK, OURS = "vllm", "agentflow"  # the policies the two schedulers stand for


class SchedulerTimer:
    """Time a scheduler's own work (`schedule` + `update_from_output`) and each engine step it schedules.

    The scheduler's own seconds are the part of a step a scheduler class can make slower, apart
    from the model's forward pass. Each step is also recorded as (seconds from its `schedule`
    call to the next one, requests scheduled, tokens scheduled): two schedulers that schedule
    the same work step by step can then be compared step against step.
    """

    def __init__(self) -> None:
        self.scheduler_s = 0.0
        self._starts: list[float] = []  # perf_counter at each schedule() call
        self._shapes: list[tuple[int, int]] = []  # (requests, tokens) each schedule() returned

    def install(self, scheduler: Any) -> None:
        schedule, update = scheduler.schedule, scheduler.update_from_output

        def timed_schedule(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            self._starts.append(started)
            try:
                output = schedule(*args, **kwargs)
            finally:
                self.scheduler_s += time.perf_counter() - started
            self._shapes.append((len(output.num_scheduled_tokens), int(output.total_num_scheduled_tokens)))
            return output

        def timed_update(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return update(*args, **kwargs)
            finally:
                self.scheduler_s += time.perf_counter() - started

        scheduler.schedule, scheduler.update_from_output = timed_schedule, timed_update

    def take(self) -> dict[str, Any]:
        """Since the last take: scheduler seconds, steps, and [seconds, requests, tokens] per step.

        The last step's length is unknown (no next `schedule` call): it is left out of `steps`.
        """
        starts, shapes = self._starts, self._shapes
        steps = [[b - a, *shape] for a, b, shape in zip(starts, starts[1:], shapes, strict=False)]
        taken = {"scheduler_s": self.scheduler_s, "num_steps": len(starts), "steps": steps}
        self.scheduler_s, self._starts, self._shapes = 0.0, [], []
        return taken


async def run_probe(
    engine: Any, *, num_requests: int, prompt_tokens: int, output_tokens: int, rounds: int, seed: int = 0
) -> dict[str, Any]:
    """Alternate bursts between the engine's own scheduler (agentflow's) and a stock one; the raw walls.

    One warm-up burst each first (allocator, caches), not counted. Returns
    `{"walls_s": {name: [...]}, "bursts": {name: [SchedulerTimer.take(), ...]}, "order": [...]}`.
    """
    if rounds < 1:
        raise UserError(f"the probe needs at least one round, got {rounds}")
    ours = engine.scheduler
    schedulers = {STOCK: await engine.build_stock_scheduler(), OURS: ours}
    timers = {name: SchedulerTimer() for name in schedulers}
    for name, scheduler in schedulers.items():
        await engine.call_in_engine(lambda s=scheduler, t=timers[name]: t.install(s))
    walls: dict[str, list[float]] = {name: [] for name in schedulers}
    bursts: dict[str, list[dict[str, Any]]] = {name: [] for name in schedulers}
    order: list[str] = []

    async def burst(name: str, key: str) -> float:
        await engine.swap_scheduler(schedulers[name])
        prompts = [program_tokens(prompt_tokens, seed=seed, key=f"probe:{key}:{i}") for i in range(num_requests)]
        timers[name].take()
        return await timed_burst(engine, prompts, output_tokens)

    try:
        for name in schedulers:
            await burst(name, f"warmup:{name}")
        for round_index in range(rounds):
            sequence = [STOCK, OURS] if round_index % 2 == 0 else [OURS, STOCK]
            for name in sequence:
                walls[name].append(await burst(name, f"{round_index}:{name}"))
                bursts[name].append(timers[name].take())
                order.append(name)
    finally:
        await engine.swap_scheduler(ours)
    return {"walls_s": walls, "bursts": bursts, "order": order}


def probe_figures(probe: dict[str, Any], raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per policy: its walls and best burst; for agentflow also its cost against stock (pure).

    The two bursts of a round run back to back on the same engine. Costs, (agentflow / stock - 1) x 100:
    - `cost_step_median_pct`: the median over the rounds' engine steps, step k of agentflow's
      burst against step k of stock's where both scheduled the same requests and tokens (the
      same work for the model): the machine's slow spells, a second long, hit a few steps of one
      burst and leave this figure alone;
    - `paired_cost_pct` per round, whole bursts; `cost_median_pct`, their median, with
      `cost_median_ci95_pct` (a bootstrap interval); `cost_best_of_pct`, the best bursts.
    `scheduler_overhead_pct`: the scheduler's own time per step that agentflow adds, as a share
    of the stock step.
    """
    walls: dict[str, list[float]] = raw["walls_s"]
    bursts: dict[str, list[dict[str, Any]]] = raw["bursts"]
    figures: dict[str, dict[str, Any]] = {}
    for name, series in walls.items():
        best = min(series)
        figures[name] = {
            **probe,
            "walls_s": series,
            "best_wall_s": best,
            "median_wall_s": statistics.median(series),
            "requests_per_s": probe["num_requests"] / best,
            "output_tokens_per_s": probe["num_requests"] * probe["output_tokens"] / best,
            "measured": "one engine, its scheduler swapped between bursts (A B B A ...)",
            "order": raw["order"],
            **_scheduler_figures(bursts.get(name, []), series),
        }
    stock, ours = figures[STOCK], figures[OURS]
    paired = [(b / a - 1) * 100 for a, b in zip(walls[STOCK], walls[OURS], strict=True)]
    step_ratios, unmatched = _paired_steps(bursts.get(STOCK, []), bursts.get(OURS, []))
    ours.update(
        cost_step_median_pct=(statistics.median(step_ratios) - 1) * 100 if step_ratios else None,
        paired_steps=len(step_ratios),
        unmatched_steps=unmatched,
        paired_cost_pct=paired,
        cost_median_pct=statistics.median(paired),
        cost_median_ci95_pct=median_ci95(paired),
        cost_best_of_pct=(ours["best_wall_s"] / stock["best_wall_s"] - 1) * 100,
        paired_cost_stdev_pct=statistics.stdev(paired) if len(paired) > 1 else None,
    )
    if "scheduler_s_per_step" in stock and "scheduler_s_per_step" in ours:
        overhead = (ours["scheduler_s_per_step"] - stock["scheduler_s_per_step"]) / stock["step_s"] * 100
        ours["scheduler_overhead_pct"] = overhead
    return figures


def median_ci95(values: list[float], *, resamples: int = 2000, seed: int = 0) -> tuple[float, float] | None:
    """A 95% bootstrap interval of the median (percentile method, seeded: the same figures give the same interval)."""
    if len(values) < 2:
        return None
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def _paired_steps(stock: list[dict[str, Any]], ours: list[dict[str, Any]]) -> tuple[list[float], int]:
    """Ratios ours/stock of the rounds' steps k that scheduled the same (requests, tokens); and how many did not."""
    ratios: list[float] = []
    unmatched = 0
    for a, b in zip(stock, ours, strict=True):
        steps_a, steps_b = a.get("steps", []), b.get("steps", [])
        unmatched += abs(len(steps_a) - len(steps_b))
        for (seconds_a, *shape_a), (seconds_b, *shape_b) in zip(steps_a, steps_b, strict=False):
            if shape_a == shape_b and seconds_a > 0:
                ratios.append(seconds_b / seconds_a)
            else:
                unmatched += 1
    return ratios, unmatched


def _scheduler_figures(bursts: list[dict[str, Any]], walls: list[float]) -> dict[str, Any]:
    """The scheduler's own seconds per engine step, and the step's seconds, over all bursts."""
    steps = sum(burst["num_steps"] for burst in bursts)
    if not steps:
        return {}
    scheduler_s = sum(burst["scheduler_s"] for burst in bursts)
    return {"scheduler_s_per_step": scheduler_s / steps, "step_s": sum(walls) / steps}
