"""Split a docstring into a description and per-parameter descriptions, with griffe.

Google (`Args:`), Sphinx (`:param x:`) and NumPy (`Parameters` + dashes) styles, detected per
docstring by griffe's own heuristics (what pydantic-ai and openai-agents use too).
"""

from __future__ import annotations

import logging

import griffe

__all__ = ["parse_docstring"]

# griffe warns about docstrings that document a type nowhere, or a parameter the function does
# not have; a tool's docstring owes it neither (the signature carries the types).
logging.getLogger("griffe").setLevel(logging.ERROR)


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Return (description, {param: description}); `**kwargs` and `*args` lose their stars."""
    if not doc or not doc.strip():
        return "", {}
    sections = griffe.parse_auto(griffe.Docstring(doc), default="google")
    description: list[str] = []
    params: dict[str, str] = {}
    for section in sections:
        if section.kind is griffe.DocstringSectionKind.text and not params:
            description.append(str(section.value))
        elif section.kind in (
            griffe.DocstringSectionKind.parameters,
            griffe.DocstringSectionKind.other_parameters,
        ):
            for parameter in section.value:
                params[parameter.name.lstrip("*")] = _one_line(parameter.description)
    return _one_line(" ".join(description)), params


def _one_line(text: str) -> str:
    return " ".join(text.split())
