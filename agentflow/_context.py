"""The program a piece of code is running inside, carried by a context variable."""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentflow.program import Program

_current: contextvars.ContextVar[Program | None] = contextvars.ContextVar("agentflow_program", default=None)


def current_program() -> Program | None:
    """The `Program` whose `async with` block is active in this context, if any."""
    return _current.get()


def enter(program: Program) -> contextvars.Token[Program | None]:
    return _current.set(program)


def leave(token: contextvars.Token[Program | None]) -> None:
    _current.reset(token)


def detach() -> None:
    """Run the rest of this context (a callee's task) outside any program.

    A tool that calls another tool then calls its function, whenever it runs: scheduling into the
    program would depend on whether its block has exited, and from a worker thread it is not
    thread-safe at all.
    """
    _current.set(None)
