"""`agentflow demo`: a real agent program on the embedded model.

Plan a May city break: for each city, tools read shipped climate normals, compute daylight
and a comfort score, rank attractions and solve a one-day itinerary; the embedded model writes
one brief per city (these LLM calls run in parallel), then one call combines the briefs into a
recommendation. The program prints its DAG, a timeline of what ran in parallel, and the answer.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentflow.backends import resolve_backend
from agentflow.demo.tools import climate, daylight_hours, plan_day, top_attractions, trip_score
from agentflow.program import Program
from agentflow.semantic import semantic_function

__all__ = ["CITIES", "Grounding", "city_break", "grounding", "run_demo"]

CITIES = ("Lisbon", "Rome", "Berlin", "Oslo")


_SYSTEM = "You are a concise travel assistant."


# The semantic functions' bodies never run: the template is the prompt, hence `type: ignore[empty-body]`.
@semantic_function(
    max_tokens=60,
    system=_SYSTEM,
    template="Write one sentence about visiting {city} in {month_name}.\n"
    "Facts: comfort score {score}/10; weather {weather}; a day of sightseeing: {day}.",
)
def city_brief(city: str, month_name: str, score: float, weather: dict[str, float], day: dict[str, Any]) -> str:  # type: ignore[empty-body]
    """One sentence on a city, from the facts the tools computed."""


@semantic_function(
    max_tokens=90,
    system=_SYSTEM,
    template="Recommend {best} for a trip in {month_name}: the tools scored it best. "
    "Comfort scores (out of 10): {ranking}.\nCity notes: {briefs}\n"
    "In two sentences, recommend {best} and say why, citing its comfort score and its weather figures.",
)
def recommend(month_name: str, best: str, ranking: list[str], briefs: list[str]) -> str:  # type: ignore[empty-body]
    """The final answer: the top-scored city, argued from the figures the tools computed."""


async def city_break(month: int = 5, cities: tuple[str, ...] = CITIES, *, model: Any = None) -> dict[str, Any]:
    """Build and run the program; returns the answer, per-city facts, the DAG and the trace."""
    month_name = calendar.month_name[month]
    backend = resolve_backend(model)
    started = time.perf_counter()
    await backend.start()  # load the model before the clock of the program starts
    print(f"backend {backend.name} ready in {time.perf_counter() - started:.1f} s\n")
    async with Program(model=backend) as program:
        facts, briefs, weathers = {}, [], {}
        for city in cities:
            weather = weathers[city] = climate(city, month)
            score = trip_score(weather, daylight_hours(city, month))
            day = plan_day(top_attractions(city, limit=5))
            briefs.append(city_brief(city, month_name, score, weather, day))
            facts[city] = (score, day)
        scores = {city: await score for city, (score, _) in facts.items()}
        ranked = sorted(scores.items(), key=lambda kv: -kv[1])
        ranking = [f"{c} ({s})" for c, s in ranked]
        answer = recommend(month_name, ranked[0][0], ranking, briefs)
        answer_text = await answer
    result = program.result
    return {
        "answer": answer_text,
        "best": ranked[0][0],
        "scores": scores,
        "weather": {city: result.outputs.get(w.node_id) for city, w in weathers.items()},
        "ranking": ranking,
        "briefs": {city: result.outputs.get(b.node_id) for city, b in zip(cities, briefs, strict=True)},
        "days": {city: result.outputs.get(day.node_id) for city, (_, day) in facts.items()},
        "dag": program.graph.render(),
        "trace": result.trace,
        "failures": result.failures,
    }


@dataclass(frozen=True, slots=True)
class Grounding:
    """Whether an answer stands on what the tools computed."""

    names_best: bool  # it names the top-scored city
    cited: tuple[str, ...]  # figures in it that the tools computed for that city (score, weather)

    @property
    def grounded(self) -> bool:
        return self.names_best and bool(self.cited)


_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")


def grounding(answer: str, best: str, score: float, weather: dict[str, Any] | None) -> Grounding:
    """Whether `answer` names `best` and cites a figure of it (its score or a weather value, to 0.1)."""
    figures = [float(score), *(float(v) for v in (weather or {}).values() if isinstance(v, int | float))]
    cited = tuple(number for number in _NUMBER.findall(answer) if any(abs(float(number) - f) < 0.051 for f in figures))
    return Grounding(names_best=best.lower() in answer.lower(), cited=cited)


def run_demo(*, model: Any = None, json_path: Path | None = None, out_dir: Path | None = None) -> int:
    """Run the demo and print the DAG, the timeline and the answer; with `out_dir`, write the timeline there too."""
    print("agentflow demo: planning a May city break (tools on shipped data + the embedded model)\n")
    run = asyncio.run(city_break(model=model))
    trace = run["trace"]
    print("== DAG (node, kind, call, inputs) ==")
    print(run["dag"])
    print("\n== Timeline (# ran, * critical path) ==")
    print(trace.render_timeline())
    print("\n== Ranking by comfort score ==")
    print(", ".join(run["ranking"]))
    print("\n== City briefs (parallel LLM calls) ==")
    for city, brief in run["briefs"].items():
        print(f"- {city}: {brief}")
    print("\n== Answer ==")
    print(run["answer"])
    best = run["best"]
    check = grounding(run["answer"], best, run["scores"][best], run["weather"].get(best))
    print(
        f"\ngrounded: {'yes' if check.grounded else 'NO'} (names the top-scored city {best}: "
        f"{'yes' if check.names_best else 'no'}; figures the tools computed: {', '.join(check.cited) or 'none'})"
    )
    for failure in run["failures"]:
        print(f"failed: [{failure.node_id}] {failure.target}: {failure.reason}")
    if out_dir is not None:
        trace_path = trace.write_chrome_trace(out_dir / "trace.json")
        png_path = trace.write_timeline_png(out_dir / "timeline.png")
        print(f"\ntimeline written: {trace_path} (open in https://ui.perfetto.dev or chrome://tracing), {png_path}")
    if json_path is not None:
        payload = {k: v for k, v in run.items() if k not in ("trace", "failures")}
        payload["trace"] = trace.to_dict()
        payload["failures"] = [f.reason for f in run["failures"]]
        json_path.write_text(json.dumps(payload, indent=2, default=str))
    return 0 if not run["failures"] else 1
