"""agentflow: an agent-workflow runtime.

Tools and semantic functions build a DAG of calls (the one IR); the executor runs every call
whose inputs are ready, in parallel; the planner compiles tasks into that DAG; the serving layer
schedules LLM calls program-aware inside an embedded vLLM engine.
"""

from agentflow.backends import Completion, LLMBackend, LLMRequest, ProgramAwareBackend, resolve_backend
from agentflow.exceptions import (
    AgentflowError,
    ArgumentValidationError,
    CallFailedError,
    EngineError,
    PlanError,
    ToolError,
    ToolTimeoutError,
    UserError,
)
from agentflow.ir import CallGraph, CallKind, CallNode, NodeState, Ref
from agentflow.metadata import ProgramMetadata
from agentflow.otel import instrument
from agentflow.program import Program
from agentflow.semantic import SemanticFunction, SemanticVariable, semantic_function
from agentflow.tools import Tool, ToolRegistry, tool

__version__ = "0.1.0"

__all__ = [
    "AgentflowError",
    "ArgumentValidationError",
    "CallFailedError",
    "CallGraph",
    "CallKind",
    "CallNode",
    "Completion",
    "EngineError",
    "LLMBackend",
    "LLMRequest",
    "NodeState",
    "PlanError",
    "Program",
    "ProgramAwareBackend",
    "ProgramMetadata",
    "Ref",
    "SemanticFunction",
    "SemanticVariable",
    "Tool",
    "ToolError",
    "ToolRegistry",
    "ToolTimeoutError",
    "UserError",
    "__version__",
    "instrument",
    "resolve_backend",
    "semantic_function",
    "tool",
]
