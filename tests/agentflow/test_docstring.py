"""Docstring parsing: description and per-parameter text in Google, Sphinx and NumPy styles."""

from __future__ import annotations

from agentflow._docstring import parse_docstring


def test_empty_docstrings() -> None:
    assert parse_docstring(None) == ("", {})
    assert parse_docstring("") == ("", {})


def test_description_only_joins_lines() -> None:
    assert parse_docstring("First line.\n\n    Second   paragraph\n    continues.") == (
        "First line. Second paragraph continues.",
        {},
    )


def test_google_with_types_continuations_and_other_sections() -> None:
    doc = """Book a table.

    Args:
        restaurant (str): Where to eat.
        guests: How many people.
            Note: at most 8.
        **options: Extra wishes.

    Returns:
        booking: the confirmation.

    Raises:
        ValueError: when full.
    """
    description, params = parse_docstring(doc)
    assert description == "Book a table."
    assert params == {
        "restaurant": "Where to eat.",
        "guests": "How many people. Note: at most 8.",
        "options": "Extra wishes.",
    }


def test_numpy_description_lines_with_colons_stay_descriptions() -> None:
    doc = """Forecast.

    Parameters
    ----------
    city : str
        The city. Note: case matters.
    days : int, optional
        Days: at most 7.

    Returns
    -------
    str
        text: the forecast.
    """
    assert parse_docstring(doc) == (
        "Forecast.",
        {"city": "The city. Note: case matters.", "days": "Days: at most 7."},
    )


def test_sphinx_with_types_and_fields() -> None:
    doc = """Search.

    :param query: What to look for,
        in plain words.
    :type query: str
    :param int limit: At most this many.
    :raises KeyError: never.
    :returns: hits.
    """
    assert parse_docstring(doc) == (
        "Search.",
        {"query": "What to look for, in plain words.", "limit": "At most this many."},
    )


def test_a_parameter_without_description() -> None:
    _, params = parse_docstring("Do it.\n\nArgs:\n    x:\n    y: Why.\n")
    assert params == {"x": "", "y": "Why."}


def test_google_keyword_arguments_and_an_args_star() -> None:
    doc = """Send a message.

    Args:
        *to: Who gets it.

    Keyword Args:
        urgent: Ring a bell.
    """
    assert parse_docstring(doc) == ("Send a message.", {"to": "Who gets it.", "urgent": "Ring a bell."})


def test_a_multi_paragraph_description_before_the_parameters() -> None:
    doc = """Summarize.

    Reads the whole text first.

    Args:
        text: The text.
    """
    assert parse_docstring(doc) == ("Summarize. Reads the whole text first.", {"text": "The text."})
