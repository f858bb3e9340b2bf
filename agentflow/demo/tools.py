"""The demo's tools: real computations over data shipped in `agentflow/demo/data/`."""

from __future__ import annotations

import csv
import functools
import json
import math
from importlib import resources
from typing import Any

from agentflow.tools import tool

__all__ = ["climate", "daylight_hours", "plan_day", "top_attractions", "trip_score"]

_IDEAL_HIGH_C = 23.0  # the afternoon temperature most travellers call pleasant


@functools.cache
def _climate_table() -> dict[tuple[str, int], dict[str, float]]:
    text = resources.files("agentflow.demo").joinpath("data/climate.csv").read_text()
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return {
        (row["city"], int(row["month"])): {k: float(v) for k, v in row.items() if k not in ("city", "month")}
        for row in rows
    }


@functools.cache
def _cities() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(resources.files("agentflow.demo").joinpath("data/cities.json").read_text())
    return data


def _city(name: str) -> dict[str, Any]:
    try:
        return dict(_cities()[name])
    except KeyError:
        raise ValueError(f"no data for city {name!r}; known: {', '.join(sorted(_cities()))}") from None


@tool
def climate(city: str, month: int) -> dict[str, float]:
    """Monthly climate normals of a city.

    Args:
        city: City name, e.g. "Lisbon".
        month: Month number, 1-12.
    """
    if not 1 <= month <= 12:
        raise ValueError(f"month must be 1-12, got {month}")
    _city(city)
    return _climate_table()[(city, month)]


@tool
def daylight_hours(city: str, month: int) -> float:
    """Hours of daylight on the 15th of a month at the city's latitude (solar declination model).

    Args:
        city: City name.
        month: Month number, 1-12.
    """
    lat_rad = math.radians(_city(city)["lat"])
    day_of_year = 30.4 * (month - 1) + 15
    declination = math.radians(23.44) * math.sin(2 * math.pi * (284 + day_of_year) / 365)
    cos_hour_angle = -math.tan(lat_rad) * math.tan(declination)
    hour_angle = math.acos(max(-1.0, min(1.0, cos_hour_angle)))
    return round(24 * hour_angle / math.pi, 2)


@tool
def trip_score(weather: dict[str, float], daylight_h: float) -> float:
    """A 0-10 comfort score for sightseeing from climate normals and daylight.

    Args:
        weather: Output of `climate`.
        daylight_h: Output of `daylight_hours`.
    """
    warmth = max(0.0, 1 - abs(weather["high_c"] - _IDEAL_HIGH_C) / 15)
    dryness = max(0.0, 1 - weather["rain_days"] / 15)
    sun = min(1.0, weather["sun_hours"] / 300)
    light = min(1.0, max(0.0, (daylight_h - 8) / 8))
    return round(10 * (0.4 * warmth + 0.3 * dryness + 0.2 * sun + 0.1 * light), 2)


@tool
def top_attractions(city: str, limit: int = 4, max_price_eur: float | None = None) -> list[dict[str, Any]]:
    """The best-rated attractions of a city.

    Args:
        city: City name.
        limit: How many to return.
        max_price_eur: Skip attractions whose ticket costs more than this.
    """
    sights = [a for a in _city(city)["attractions"] if max_price_eur is None or a["price_eur"] <= max_price_eur]
    return sorted(sights, key=lambda a: (-a["rating"], a["visit_h"]))[:limit]


@tool
def plan_day(attractions: list[dict[str, Any]], hours: float = 8.0) -> dict[str, Any]:
    """Pick the attractions that fit in a day, maximizing total rating (0/1 knapsack on visit hours).

    Args:
        attractions: Candidates, each with `name`, `rating` and `visit_h`.
        hours: Time available for visits.
    """
    slots = int(hours * 4)  # quarter-hour resolution
    best: list[tuple[float, list[int]]] = [(0.0, []) for _ in range(slots + 1)]
    for i, sight in enumerate(attractions):
        cost = max(1, round(sight["visit_h"] * 4))
        for s in range(slots, cost - 1, -1):
            value = best[s - cost][0] + sight["rating"]
            if value > best[s][0]:
                best[s] = (value, [*best[s - cost][1], i])
    chosen = [attractions[i] for i in max(best, key=lambda b: b[0])[1]]
    return {
        "visits": [c["name"] for c in chosen],
        "hours": sum(c["visit_h"] for c in chosen),
        "tickets_eur": sum(c.get("price_eur", 0) for c in chosen),
    }
