"""`SchemaTool`: a tool from a JSON-schema function description (BFCL's, OpenAI's), validated like `@tool`.

The implementation is the SDK's (`agentflow.schema_tools`), shared with MCP tools; BFCL's records
use its tolerant dialect, the default (see `agentflow.schema_tools.python_type`).
"""

from __future__ import annotations

from agentflow.schema_tools import SchemaTool, declared_type, openai_parameters, python_type

__all__ = ["SchemaTool", "declared_type", "openai_parameters", "python_type"]
