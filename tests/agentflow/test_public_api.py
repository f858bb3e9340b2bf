"""The public API is pinned: adding or removing a public name is a deliberate change to this file."""

from __future__ import annotations

import importlib
import inspect

import pytest

import agentflow
from agentflow import exceptions

EXPORTS: dict[str, set[str]] = {
    "agentflow": {
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
    },
    "agentflow.backends": {
        "EMBEDDED_BACKEND",
        "Completion",
        "LLMBackend",
        "LLMRequest",
        "MODEL_ENV",
        "ProgramAwareBackend",
        "ProgramMetadata",
        "ToolCall",
        "resolve_backend",
    },
    "agentflow.metadata": {
        "MAX_NAME_CHARS",
        "PROGRAM_KEYS",
        "VLLM_RESERVED_KEYS",
        "ProgramMetadata",
        "describe_validation",
    },
    "agentflow.cli": {"add_bench", "build_parser", "main"},
    "agentflow.otel": {"instrument", "is_instrumented", "uninstrument"},
    "agentflow.ir": {
        "TERMINAL_STATES",
        "CallGraph",
        "CallKind",
        "CallNode",
        "Concat",
        "NodeState",
        "ProgramFacts",
        "Ref",
        "iter_refs",
        "resolve_value",
    },
    "agentflow.tools": {"Tool", "ToolRegistry", "build_arguments_model", "load_tools_module", "tool"},
    "agentflow.schema_tools": {"SchemaTool", "declared_type", "json_schema_type", "openai_parameters", "python_type"},
    "agentflow.mcp": {"McpTool", "McpToolset", "mcp_server", "mcp_tools", "serve_mcp"},
    "agentflow.semantic": {"SemanticFunction", "SemanticVariable", "semantic_function"},
    "agentflow.exceptions": {
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
    },
    "agentflow.program": {"Program"},
    "agentflow.calls": {"CallContext", "Callee"},
    "agentflow.testing": {"ScriptedLLM"},
    "executor": {
        "DurationEstimates",
        "Executor",
        "ExecutorObserver",
        "Failure",
        "MetadataIssuer",
        "NodeRecord",
        "NodeRun",
        "RunResult",
        "RunState",
        "Trace",
        "shared_estimates",
    },
    "serving": {
        "PROGRAM_AWARE_SCHEDULER",
        "EmbeddedBackend",
        "EmbeddedEngine",
        "EngineConfig",
        "GenerationChunk",
        "GenerationResult",
        "QueueSnapshot",
        "SchedulerControl",
        "ServeOptions",
        "vllm_server_args",
    },
    "serving.scaleout": {
        "AffinityKnobs",
        "RouterKind",
        "ScaleOutOptions",
        "SimProgram",
        "SimReplica",
        "SimResult",
        "SimTurn",
        "calibrated_replica",
        "fitted_replica",
        "simulate",
        "start",
        "start_replica_set",
    },
}


@pytest.mark.parametrize("module_name", sorted(EXPORTS))
def test_exported_members(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert set(module.__all__) == EXPORTS[module_name]
    assert len(module.__all__) == len(set(module.__all__)), "duplicates in __all__"
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{module_name}.{name}"


@pytest.mark.parametrize("module_name", sorted(EXPORTS))
def test_star_import_gives_exactly_all(module_name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from {module_name} import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == EXPORTS[module_name]


def test_program_is_the_class() -> None:
    from agentflow.program import Program

    assert agentflow.Program is Program
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        agentflow.Nope  # noqa: B018


def test_reexports_are_the_same_objects() -> None:
    for name in agentflow.__all__:
        value = getattr(agentflow, name)
        for module_name in ("agentflow.exceptions", "agentflow.ir", "agentflow.tools", "agentflow.backends"):
            module = importlib.import_module(module_name)
            if name in module.__all__:
                assert getattr(module, name) is value, f"agentflow.{name} differs from {module_name}.{name}"


def test_error_tree() -> None:
    """Every error descends from AgentflowError, as the module docstring draws it."""
    expected_parent = {
        "UserError": "AgentflowError",
        "ToolDefinitionError": "UserError",
        "ArgumentValidationError": "UserError",
        "GraphError": "UserError",
        "MetadataError": "UserError",
        "CycleError": "GraphError",
        "UnknownNodeError": "GraphError",
        "UnknownToolError": "GraphError",
        "CallFailedError": "AgentflowError",
        "PlanError": "AgentflowError",
        "ToolError": "AgentflowError",
        "ToolTimeoutError": "ToolError",
        "EngineError": "AgentflowError",
        "EngineUnavailableError": "EngineError",
        "ClusterUnavailableError": "EngineUnavailableError",
        "ModelPreparationError": "EngineError",
        "BackendConfigError": "EngineError",
    }
    assert set(expected_parent) | {"AgentflowError"} == set(exceptions.__all__)
    for name, parent in expected_parent.items():
        cls = getattr(exceptions, name)
        assert cls.__bases__ == (getattr(exceptions, parent),), name
        assert name in (exceptions.__doc__ or ""), f"{name} missing from the tree in the docstring"
    assert issubclass(exceptions.AgentflowError, Exception)


def test_errors_carry_their_facts() -> None:
    cycle = exceptions.CycleError(["a", "b", "a"])
    assert cycle.cycle == ["a", "b", "a"] and "a -> b -> a" in str(cycle)
    unknown = exceptions.UnknownNodeError("9", "3")
    assert (unknown.node_id, unknown.referenced_by) == ("9", "3")
    tool_err = exceptions.UnknownToolError("nope", ["b", "a"])
    assert tool_err.name == "nope" and "known: a, b" in str(tool_err)
    assert "none registered" in str(exceptions.UnknownToolError("nope", []))
    plan = exceptions.PlanError("bad call", line_no=3, line="3. x(")
    assert (plan.message, plan.line_no, plan.line) == ("bad call", 3, "3. x(")
    assert "at line 3" in str(plan)
    timeout = exceptions.ToolTimeoutError("slow", 0.5)
    assert (timeout.tool, timeout.timeout_s) == ("slow", 0.5) and "0.5 s" in str(timeout)
    failed = exceptions.CallFailedError("4", "skipped", "dependency '1' failed")
    assert (failed.node_id, failed.state, failed.reason) == ("4", "skipped", "dependency '1' failed")
    arg = exceptions.ArgumentValidationError("t", "x: bad")
    assert (arg.tool, arg.detail) == ("t", "x: bad")


def test_public_modules_define_all() -> None:
    for module_name in EXPORTS:
        module = importlib.import_module(module_name)
        assert inspect.getdoc(module), f"{module_name} has no docstring"
