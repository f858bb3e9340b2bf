"""Every error agentflow raises, in one tree.

```
AgentflowError
 +-- UserError                  misuse of the SDK: bad definitions, bad arguments
 |    +-- ToolDefinitionError   a function that cannot become a tool (bad hints, bad options)
 |    +-- ArgumentValidationError  call arguments that fail a tool's schema
 |    +-- MetadataError         malformed program metadata sent to the serving layer
 |    +-- GraphError            a DAG that cannot run
 |         +-- CycleError
 |         +-- UnknownNodeError  a reference to a node that does not exist
 |         +-- UnknownToolError  a call to a tool or function nobody registered
 +-- CallFailedError           awaiting the variable of a failed, skipped or cancelled call
 +-- PlanError                  plan text that does not parse or validate (line number and text)
 +-- ToolError                  a tool failed while running
 |    +-- ToolTimeoutError
 +-- EngineError                the LLM backend or the embedded engine failed
      +-- EngineUnavailableError  vLLM is missing or cannot start
      |    +-- ClusterUnavailableError  Ray Serve is missing or its cluster cannot be reached
      +-- ModelPreparationError   the default model cannot be found or converted
      +-- BackendConfigError      a model string that names no usable backend
```

Control signals (cancellation) are not errors: they use `asyncio.CancelledError`.
"""

from __future__ import annotations

__all__ = [
    "AgentflowError",
    "ArgumentValidationError",
    "BackendConfigError",
    "CallFailedError",
    "ClusterUnavailableError",
    "CycleError",
    "EngineError",
    "EngineUnavailableError",
    "GraphError",
    "MetadataError",
    "ModelPreparationError",
    "PlanError",
    "ToolDefinitionError",
    "ToolError",
    "ToolTimeoutError",
    "UnknownNodeError",
    "UnknownToolError",
    "UserError",
]


class AgentflowError(Exception):
    """Base of every error agentflow raises."""


class UserError(AgentflowError):
    """The SDK was used in a way it does not support."""


class ToolDefinitionError(UserError):
    """A function cannot be turned into a tool."""


class ArgumentValidationError(UserError):
    """Arguments of a call do not match the callee's schema."""

    def __init__(self, tool: str, message: str) -> None:
        super().__init__(f"invalid arguments for {tool!r}: {message}")
        self.tool = tool
        self.detail = message


class MetadataError(UserError):
    """Program metadata for the serving layer with wrong types, negative durations or unknown fields."""


class GraphError(UserError):
    """A function-call graph that cannot run."""


class CycleError(GraphError):
    """The graph has a cycle."""

    def __init__(self, cycle: list[str]) -> None:
        super().__init__("cycle in call graph: " + " -> ".join(cycle))
        self.cycle = cycle


class UnknownNodeError(GraphError):
    """A reference names a node that is not in the graph."""

    def __init__(self, node_id: str, referenced_by: str) -> None:
        super().__init__(f"node {referenced_by!r} references unknown node {node_id!r}")
        self.node_id = node_id
        self.referenced_by = referenced_by


class UnknownToolError(GraphError):
    """A call names a tool or semantic function nobody registered."""

    def __init__(self, name: str, known: list[str]) -> None:
        hint = ", ".join(sorted(known)[:20]) or "none registered"
        super().__init__(f"unknown tool {name!r} (known: {hint})")
        self.name = name


class PlanError(AgentflowError):
    """Plan text that does not parse or validate."""

    def __init__(self, message: str, *, line_no: int | None = None, line: str | None = None) -> None:
        where = f" at line {line_no}: {line!r}" if line_no is not None else ""
        super().__init__(f"{message}{where}")
        self.message = message
        self.line_no = line_no
        self.line = line


class ToolError(AgentflowError):
    """A tool raised while running."""


class ToolTimeoutError(ToolError):
    """A tool did not finish within its timeout."""

    def __init__(self, tool: str, timeout_s: float) -> None:
        super().__init__(f"tool {tool!r} timed out after {timeout_s:g} s")
        self.tool = tool
        self.timeout_s = timeout_s


class EngineError(AgentflowError):
    """The LLM backend failed."""


class EngineUnavailableError(EngineError):
    """The embedded engine cannot be imported or started."""


class ClusterUnavailableError(EngineUnavailableError):
    """Engine replicas need Ray Serve (`pip install 'agentflow[scale]'`) and a reachable cluster."""


class ModelPreparationError(EngineError):
    """The default model cannot be found or converted."""


class BackendConfigError(EngineError):
    """A model string that names no usable backend."""


class CallFailedError(AgentflowError):
    """Awaiting the variable of a call that failed, was skipped or was cancelled."""

    def __init__(self, node_id: str, state: str, reason: str) -> None:
        super().__init__(f"call {node_id!r} {state}: {reason}")
        self.node_id = node_id
        self.state = state
        self.reason = reason
