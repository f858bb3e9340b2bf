"""A planner task set with checkable answers, over data tools shipped with the project.

```python
from planner.taskset import TASKS, make_registry, check_answer
registry = make_registry(latency_s=(0.2, 1.0), seed=0)    # lookups wait 0.2-1 s, seeded
result = await compile_and_run(TASKS[0].text, tools=registry, model=...)
check_answer(TASKS[0], result.answer)                      # True when the answer is right
```

The data (`planner/data/world.json`): 20 cities (country, population, area, elevation) and 16
countries (capital, population, area, national day in 2027). The tools look it up, convert units,
do arithmetic and date math. Each task needs 2-8 independent lookups and a combine (some a
second round of lookups on the first round's results); its expected answer is computed from the
data when this module loads, so it is exact by construction. `check_answer` reads a free-text
answer: a name must appear in it, a number must appear in it (commas and rounding to the task's
precision allowed), so "Tokyo, with 14,094,034 people" passes for "Tokyo".
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from agentflow.tools import Tool, ToolRegistry, tool

__all__ = ["PLANNER_EXAMPLES", "TASKS", "WORLD", "PlannerTask", "check_answer", "make_registry", "spread_tasks"]

WORLD: dict[str, Any] = json.loads((Path(__file__).parent / "data" / "world.json").read_text())
_CITIES: dict[str, dict[str, Any]] = WORLD["cities"]
_COUNTRIES: dict[str, dict[str, Any]] = WORLD["countries"]
_KM2_PER_MI2 = 2.589988110336
_FEET_PER_M = 3.280839895013123


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannerTask:
    """One task: its text, its exact answer, and how many lookups it needs."""

    task_id: str
    text: str
    answer: str | float | int
    kind: Literal["name", "number"]
    lookups: int  # independent lookups the answer needs (before the combine)
    decimals: int | None = None  # numbers: the precision an answer may be rounded to


# -- the tools ------------------------------------------------------------------------------------


def _entry(table: dict[str, dict[str, Any]], key: str, what: str) -> dict[str, Any]:
    for name, row in table.items():
        if name.casefold() == str(key).strip().casefold():
            return row
    raise KeyError(f"no {what} named {key!r}; known: {', '.join(table)}")


def make_registry(*, latency_s: tuple[float, float] = (0.0, 0.0), seed: int = 0) -> ToolRegistry:
    """The task set's tools. Lookups wait a seeded time in `latency_s` (a data service's latency)."""

    async def wait(name: str, key: str) -> None:
        low, high = latency_s
        if high > 0:
            await asyncio.sleep(random.Random(f"{seed}:{name}:{key}").uniform(low, high))

    def city_lookup(name: str, field: str, returns: type, doc: str) -> Tool[Any, Any]:
        async def lookup(city: str) -> Any:
            await wait(name, city)
            return _entry(_CITIES, city, "city")[field]

        lookup.__doc__ = f'{doc}\n\nArgs:\n    city: the city\'s name, e.g. "Paris"\n'
        lookup.__annotations__["return"] = returns
        return tool(name=name, timeout_s=30)(lookup)

    def country_lookup(name: str, field: str, returns: type, doc: str) -> Tool[Any, Any]:
        async def lookup(country: str) -> Any:
            await wait(name, country)
            return _entry(_COUNTRIES, country, "country")[field]

        lookup.__doc__ = f'{doc}\n\nArgs:\n    country: the country\'s name, e.g. "France"\n'
        lookup.__annotations__["return"] = returns
        return tool(name=name, timeout_s=30)(lookup)

    return ToolRegistry(
        [
            city_lookup("city_population", "population", int, "Number of people living in a city."),
            city_lookup("city_area_km2", "area_km2", float, "Area of a city in square kilometres."),
            city_lookup("city_country", "country", str, "The country a city is in."),
            city_lookup("city_elevation_m", "elevation_m", int, "Elevation of a city in metres."),
            country_lookup("country_population", "population", int, "Number of people living in a country."),
            country_lookup("country_area_km2", "area_km2", float, "Area of a country in square kilometres."),
            country_lookup("capital", "capital", str, "The capital city of a country."),
            country_lookup("national_day", "national_day", str, "A country's national day in 2027 (ISO date)."),
            *_COMBINERS,
        ]
    )


@tool
def add(a: float, b: float) -> float:
    """A + b."""
    return a + b


@tool
def subtract(a: float, b: float) -> float:
    """A - b."""
    return a - b


@tool
def multiply(a: float, b: float) -> float:
    """A * b."""
    return a * b


@tool
def divide(a: float, b: float) -> float:
    """A / b."""
    return a / b


@tool
def total(values: list[float]) -> float:
    """The sum of some numbers."""
    return float(sum(values))


@tool
def average(values: list[float]) -> float:
    """The mean of some numbers."""
    if not values:
        raise ValueError("average of no values")
    return float(sum(values)) / len(values)


@tool
def largest(names: list[str], values: list[float]) -> str:
    """The name whose value is largest (names and values in the same order)."""
    if len(names) != len(values) or not names:
        raise ValueError(f"need as many names as values, got {len(names)} and {len(values)}")
    return max(zip(values, names, strict=True))[1]


@tool
def smallest(names: list[str], values: list[float]) -> str:
    """The name whose value is smallest (names and values in the same order)."""
    if len(names) != len(values) or not names:
        raise ValueError(f"need as many names as values, got {len(names)} and {len(values)}")
    return min(zip(values, names, strict=True))[1]


@tool
def km2_to_mi2(km2: float) -> float:
    """Square kilometres to square miles."""
    return km2 / _KM2_PER_MI2


@tool
def metres_to_feet(metres: float) -> float:
    """Metres to feet."""
    return metres * _FEET_PER_M


@tool
def days_between(start: str, end: str) -> int:
    """Days from one ISO date (YYYY-MM-DD) to another (negative when `end` comes first)."""
    return (dt.date.fromisoformat(end) - dt.date.fromisoformat(start)).days


_COMBINERS = (
    add,
    subtract,
    multiply,
    divide,
    total,
    average,
    largest,
    smallest,
    km2_to_mi2,
    metres_to_feet,
    days_between,
)


# -- the tasks --------------------------------------------------------------------------------------


def _city(name: str, field: str) -> Any:
    return _CITIES[name][field]


def _country(name: str, field: str) -> Any:
    return _COUNTRIES[name][field]


def _listing(names: Sequence[str]) -> str:
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]


def _most(names: Sequence[str], value: Callable[[str], float], *, smallest: bool = False) -> str:
    pairs = [(value(n), n) for n in names]
    return (min(pairs) if smallest else max(pairs))[1]


def _iso(date: str) -> dt.date:
    return dt.date.fromisoformat(date)


def _city_tasks() -> list[tuple[str, str | float | int, int, int | None]]:
    """(text, answer, lookups, decimals) of the tasks over cities."""
    out: list[tuple[str, str | float | int, int, int | None]] = []

    def population(name: str) -> int:
        return int(_city(name, "population"))

    for names in (
        ("Paris", "Rome"),
        ("Tokyo", "Mumbai", "Istanbul"),
        ("Lima", "Cairo", "Seoul", "Lagos"),
        ("Oslo", "Lisbon", "Vienna", "Quito", "Nairobi"),
        ("Berlin", "Madrid", "Rome", "Toronto", "Sydney", "Bogota"),
        ("Tokyo", "Mumbai", "Seoul", "Istanbul", "Lagos", "Lima", "Cairo", "Bogota"),
    ):
        out.append((f"Which city has the most people: {_listing(names)}?", _most(names, population), len(names), None))
    for names in (("Paris", "Lisbon"), ("Sydney", "Istanbul", "Cairo"), ("Mumbai", "Seoul", "Madrid", "Toronto")):
        smallest_city = _most(names, lambda n: _city(n, "area_km2"), smallest=True)
        out.append((f"Which city has the smallest area: {_listing(names)}?", smallest_city, len(names), None))
    for names in (
        ("Tokyo", "Seoul"),
        ("Paris", "Berlin", "Madrid"),
        ("Lagos", "Nairobi", "Cairo", "Lima"),
        ("Oslo", "Vienna", "Lisbon", "Rome", "Paris"),
        ("Tokyo", "Mumbai", "Seoul", "Istanbul", "Lagos", "Lima", "Cairo", "Bogota"),
    ):
        summed = sum(population(n) for n in names)
        out.append((f"What is the total population of {_listing(names)}?", summed, len(names), None))
    for names in (("Quito", "Bogota", "Mexico City"), ("Nairobi", "Madrid"), ("Paris", "Rome", "Berlin", "Oslo")):
        mean = sum(_city(n, "elevation_m") for n in names) / len(names)
        out.append((f"What is the average elevation, in metres, of {_listing(names)}?", round(mean, 2), len(names), 2))
    for a, b in (("Tokyo", "Paris"), ("Istanbul", "Mumbai"), ("Lima", "Bogota")):
        out.append((f"How many more people live in {a} than in {b}?", population(a) - population(b), 2, None))
    for city in ("Paris", "Mumbai", "Sydney"):
        density = population(city) / _city(city, "area_km2")
        text = f"What is the population density of {city}, in people per square kilometre?"
        out.append((text, round(density, 2), 2, 2))
    for names in (("Sydney", "Lima"), ("Tokyo", "Istanbul", "Cairo")):
        miles = sum(_city(n, "area_km2") for n in names) / _KM2_PER_MI2
        out.append((f"What is the total area of {_listing(names)} in square miles?", round(miles, 2), len(names), 2))
    for high, low in (("Quito", "Lima"), ("Mexico City", "Madrid")):
        feet = (_city(high, "elevation_m") - _city(low, "elevation_m")) * _FEET_PER_M
        out.append((f"How much higher is {high} than {low}, in feet?", round(feet, 2), 2, 2))
    return out


def _country_tasks() -> list[tuple[str, str | float | int, int, int | None]]:
    """(text, answer, lookups, decimals) of the tasks over countries (some through their cities)."""
    out: list[tuple[str, str | float | int, int, int | None]] = []
    for first, second in (("France", "Germany"), ("Japan", "Italy"), ("Australia", "Kenya"), ("Norway", "Colombia")):
        days = (_iso(_country(second, "national_day")) - _iso(_country(first, "national_day"))).days
        out.append((f"How many days after {first}'s national day in 2027 is {second}'s?", days, 2, None))
    for names in (("France", "Spain", "Italy"), ("Canada", "Australia", "India", "Mexico"), ("Norway", "Portugal")):
        answer = _most(names, lambda n: _country(n, "area_km2"))
        out.append((f"Which of these countries has the largest area: {_listing(names)}?", answer, len(names), None))
    for city, country in (("Oslo", "Norway"), ("Lisbon", "Portugal"), ("Vienna", "Austria")):
        share = _city(city, "population") / _country(country, "population") * 100
        out.append((f"What percentage of {country}'s population lives in {city}?", round(share, 2), 2, 2))
    for names in (("France", "Peru", "Egypt"), ("Germany", "Spain", "Kenya", "Norway")):
        capitals = [_country(n, "capital") for n in names]
        answer = _most(capitals, lambda n: _city(n, "population"))
        text = f"Which of these countries' capitals has the most people: {_listing(names)}?"
        out.append((text, answer, 2 * len(names), None))
    for names in (("Japan", "Italy"), ("Portugal", "Austria", "Colombia")):
        answer = sum(_city(_country(n, "capital"), "population") for n in names)
        out.append(
            (f"What is the total population of the capitals of {_listing(names)}?", answer, 2 * len(names), None)
        )
    for names in (("Rome", "Madrid"), ("Lima", "Nairobi", "Cairo")):
        area = sum(_country(_city(n, "country"), "area_km2") for n in names)
        text = f"What is the total area, in square kilometres, of the countries {_listing(names)} are in?"
        out.append((text, area, 2 * len(names), None))
    return out


def _build_tasks() -> list[PlannerTask]:
    return [
        PlannerTask(
            task_id=f"t{i:02d}",
            text=text,
            answer=answer,
            kind="name" if isinstance(answer, str) else "number",
            lookups=lookups,
            decimals=decimals,
        )
        for i, (text, answer, lookups, decimals) in enumerate([*_city_tasks(), *_country_tasks()], start=1)
    ]


TASKS: tuple[PlannerTask, ...] = tuple(_build_tasks())


def spread_tasks(num_tasks: int | None) -> tuple[PlannerTask, ...]:
    """`num_tasks` tasks spread evenly over `TASKS` (every kind of task, 2 to 8 lookups); None: all.

    The set is ordered by kind, so its first N would all be one kind.
    """
    if num_tasks is None or num_tasks >= len(TASKS):
        return TASKS
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
    step = len(TASKS) / num_tasks
    return tuple(TASKS[int(i * step)] for i in range(num_tasks))


# Few-shot plans for these tools (LLMCompiler prompts with in-context examples). Their tasks are
# not in TASKS: each shows a pattern (lookups in parallel, then a combine; a second round of
# lookups on the first round's results), never a task's answer.
PLANNER_EXAMPLES: tuple[tuple[str, str], ...] = (
    (
        "Which city is higher: Vienna or Toronto?",
        '1. city_elevation_m("Vienna")\n2. city_elevation_m("Toronto")\n'
        '3. largest(["Vienna", "Toronto"], [$1, $2])\n4. join()',
    ),
    (
        "What is the combined population of the capitals of Peru and Egypt?",
        '1. capital("Peru")\n2. capital("Egypt")\n3. city_population($1)\n4. city_population($2)\n'
        "5. add($3, $4)\n6. join()",
    ),
)

_SEEN_EXAMPLES = {task for task, _ in PLANNER_EXAMPLES}
assert not _SEEN_EXAMPLES & {t.text for t in TASKS}, "a few-shot example must not be a task"


# -- checking ---------------------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def check_answer(task: PlannerTask, answer: str | None) -> bool:
    """Whether a free-text answer gives the task's answer (see the module docstring)."""
    if not answer:
        return False
    if task.kind == "name":
        return re.search(rf"(?<![\w-]){re.escape(str(task.answer))}(?![\w-])", answer, re.IGNORECASE) is not None
    expected = float(task.answer)
    for text in _NUMBER.findall(answer):
        try:
            value = float(text.replace(",", ""))
        except ValueError:
            continue
        if _matches(value, expected, task.decimals):
            return True
    return False


def _matches(value: float, expected: float, decimals: int | None) -> bool:
    if decimals is None:
        return value == expected
    # Rounded to fewer decimals than the task's is right too, as long as it rounds the true value.
    return any(round(expected, d) == value for d in range(0, decimals + 1)) or abs(value - expected) < 10**-decimals
