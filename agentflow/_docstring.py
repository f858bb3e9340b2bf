"""Split a docstring into a description and per-parameter descriptions.

Google (`Args:`), Sphinx (`:param x:`) and NumPy (`Parameters` + dashes) styles.
"""

from __future__ import annotations

import inspect
import re

_SECTION = re.compile(r"^(Args|Arguments|Parameters|Params|Returns?|Raises|Yields|Examples?|Notes?)\s*:?\s*$")
_GOOGLE_PARAM = re.compile(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_SPHINX_PARAM = re.compile(r"^:param\s+(?:[^:]*\s)?(\w+)\s*:\s*(.*)$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Return (description, {param: description})."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    params: dict[str, str] = {}
    description: list[str] = []
    section: str | None = None
    current: str | None = None
    indents: list[int] = []  # indent of Google-style parameter lines
    for i, raw in enumerate(lines):
        line = raw.strip()
        if _is_numpy_rule(lines, i):
            continue
        header = _SECTION.match(line)
        if header and (raw == raw.lstrip()):
            section, current = header.group(1).lower(), None
            continue
        sphinx = _SPHINX_PARAM.match(line)
        if sphinx:
            current = sphinx.group(1)
            params[current] = sphinx.group(2).strip()
            section = "sphinx"
            continue
        if line.startswith(":"):
            section, current = "sphinx-other", None
            continue
        if section in ("args", "arguments", "parameters", "params"):
            current = _param_line(raw, line, params, current, indents)
        elif section == "sphinx" and current and line:
            params[current] = f"{params[current]} {line}".strip()
        elif section is None:
            description.append(line)
    return " ".join(" ".join(description).split()), params


def _param_line(raw: str, line: str, params: dict[str, str], current: str | None, indents: list[int]) -> str | None:
    """One line of a parameter section; returns the parameter now being described."""
    if not line:
        return current
    indent = len(raw) - len(raw.lstrip())
    if indent == 0:  # NumPy: `name : type` flush left, description indented below
        name = line.split(":")[0].strip().lstrip("*")
        params[name] = ""
        indents[:] = [-1]  # NumPy: an indented line is description, even `Note: ...`, never a Google param
        return name
    google = _GOOGLE_PARAM.match(line)
    if google and (not indents or indent <= indents[0]):
        indents[:] = [indent]
        name = google.group(1).lstrip("*")
        params[name] = google.group(2).strip()
        return name
    if current is not None:
        params[current] = f"{params[current]} {line}".strip()
    return current


def _is_numpy_rule(lines: list[str], i: int) -> bool:
    line = lines[i].strip()
    return bool(line) and set(line) == {"-"} and i > 0 and bool(_SECTION.match(lines[i - 1].strip()))
