"""The demo's grounding check, pure: an answer names the top-scored city and cites what the tools computed."""

from __future__ import annotations

from agentflow.demo import grounding

WEATHER = {"high_c": 22.3, "low_c": 13.7, "precip_mm": 52.0}


def test_a_grounded_answer() -> None:
    check = grounding("Go to Lisbon: comfort 8.29/10, highs of 22.3°C.", "Lisbon", 8.29, WEATHER)
    assert check.grounded and check.names_best and check.cited == ("8.29", "22.3")


def test_figures_match_to_a_tenth() -> None:
    assert grounding("Lisbon scores 8.3 and gets 52 mm of rain.", "Lisbon", 8.29, WEATHER).cited == ("8.3", "52")


def test_the_wrong_city_or_no_figure_is_not_grounded() -> None:
    assert not grounding("Rome (8.02/10) is best.", "Lisbon", 8.29, WEATHER).grounded
    assert not grounding("Lisbon is lovely in May.", "Lisbon", 8.29, WEATHER).grounded
    assert not grounding("Lisbon gets 99 mm of rain.", "Lisbon", 8.29, WEATHER).grounded  # a figure, not the tools'
