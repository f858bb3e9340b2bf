"""Example tools for `agentflow run`: facts about world cities from a table shipped in this module.

```
agentflow run "Which is larger by population, Lima or Cairo?" --tools planner.examples
```

The lookups are async and wait `AGENTFLOW_EXAMPLE_LATENCY_S` seconds (default 0.3) first, the
way a call to a remote data service would, so the timeline shows which calls overlapped.
`PLANNER_EXAMPLES` are few-shot plans for these tools; `agentflow run` puts them in the prompt.
"""

from __future__ import annotations

import asyncio
import os

from agentflow.semantic import semantic_function
from agentflow.tools import tool

__all__ = [
    "CITIES",
    "PLANNER_EXAMPLES",
    "area_km2",
    "country",
    "divide",
    "largest",
    "population",
    "summarize",
    "total",
]

# city -> (country, population of the city proper, area in km^2); rounded public census figures.
CITIES: dict[str, tuple[str, int, float]] = {
    "Paris": ("France", 2_102_650, 105.4),
    "Tokyo": ("Japan", 14_094_034, 2_194.1),
    "Lima": ("Peru", 10_092_000, 2_672.3),
    "Cairo": ("Egypt", 10_025_657, 3_085.1),
    "Berlin": ("Germany", 3_755_251, 891.1),
    "Madrid": ("Spain", 3_332_035, 604.3),
    "Rome": ("Italy", 2_746_984, 1_287.4),
    "Nairobi": ("Kenya", 4_397_073, 696.0),
    "Toronto": ("Canada", 2_794_356, 630.2),
    "Sydney": ("Australia", 5_450_496, 12_368.2),
    "Mumbai": ("India", 12_478_447, 603.4),
    "Seoul": ("South Korea", 9_386_034, 605.2),
    "Mexico City": ("Mexico", 9_209_944, 1_485.0),
    "Istanbul": ("Turkey", 15_655_924, 5_343.0),
    "Lagos": ("Nigeria", 8_048_430, 1_171.3),
    "Oslo": ("Norway", 717_710, 454.0),
}

PLANNER_EXAMPLES: tuple[tuple[str, str], ...] = (
    (
        "What is the population density of Paris?",
        '1. population("Paris")\n2. area_km2("Paris")\n3. divide($1, $2)\n4. join()',
    ),
    (
        "Which city has more people, Oslo or Rome?",
        '1. population("Oslo")\n2. population("Rome")\n3. largest(["Oslo", "Rome"], [$1, $2])\n4. join()',
    ),
)


def _latency_s() -> float:
    return float(os.environ.get("AGENTFLOW_EXAMPLE_LATENCY_S", "0.3"))


def _row(city: str) -> tuple[str, int, float]:
    for name, row in CITIES.items():
        if name.casefold() == city.strip().casefold():
            return row
    raise KeyError(f"no data for city {city!r}; known: {', '.join(CITIES)}")


@tool(timeout_s=10)
async def population(city: str) -> int:
    """Number of people living in a city.

    Args:
        city: city name, e.g. "Paris"
    """
    await asyncio.sleep(_latency_s())
    return _row(city)[1]


@tool(timeout_s=10)
async def area_km2(city: str) -> float:
    """Area of a city in square kilometres.

    Args:
        city: city name, e.g. "Paris"
    """
    await asyncio.sleep(_latency_s())
    return _row(city)[2]


@tool(timeout_s=10)
async def country(city: str) -> str:
    """The country a city is in.

    Args:
        city: city name, e.g. "Paris"
    """
    await asyncio.sleep(_latency_s())
    return _row(city)[0]


@tool
def divide(a: float, b: float) -> float:
    """Divide a by b."""
    return a / b


@tool
def total(values: list[float]) -> float:
    """Sum of numbers."""
    return float(sum(values))


@tool
def largest(names: list[str], values: list[float]) -> str:
    """The name whose value is largest (names and values in the same order)."""
    if len(names) != len(values) or not names:
        raise ValueError(f"need as many names as values, got {len(names)} and {len(values)}")
    return max(zip(values, names, strict=True))[1]


# The body never runs (the template is the prompt): hence `type: ignore[empty-body]`.
@semantic_function(max_tokens=64, template="State these facts in one short sentence: {facts}")
def summarize(facts: str) -> str:  # type: ignore[empty-body]
    """One-sentence summary of some facts (an LLM call)."""
