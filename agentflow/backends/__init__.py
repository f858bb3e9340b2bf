"""LLM backends behind one protocol, chosen by one model string.

| model string                    | backend                                              |
|---------------------------------|------------------------------------------------------|
| `embedded` (default)            | in-process vLLM on Qwen2.5-Coder-0.5B-Instruct       |
| `embedded:NAME`                 | in-process vLLM on a catalog model (prepared once)   |
| `embedded:/path/to/model`       | in-process vLLM on a local Hugging Face model dir    |
| `vllm:MODEL@http://host:8000/v1`| a vLLM server (grammar + program metadata forwarded) |
| `openai:MODEL[@BASE_URL]`       | any OpenAI-compatible server (`OPENAI_BASE_URL`)     |
| `litellm:PROVIDER/MODEL`        | any provider litellm supports                        |

`AGENTFLOW_MODEL` sets the default string. The catalog of `NAME`s (e.g. `qwen2.5-coder-1.5b`) is
`serving.models.CATALOG` (`agentflow prepare-model --list`); an unknown name is a
`BackendConfigError` that lists it.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from agentflow.exceptions import BackendConfigError
from agentflow.metadata import ProgramMetadata

from ._protocol import Completion, LLMBackend, LLMRequest, ProgramAwareBackend, ToolCall

__all__ = [
    "EMBEDDED_BACKEND",
    "MODEL_ENV",
    "Completion",
    "LLMBackend",
    "LLMRequest",
    "ProgramAwareBackend",
    "ProgramMetadata",
    "ToolCall",
    "resolve_backend",
]

MODEL_ENV = "AGENTFLOW_MODEL"
# The embedded engine lives in the serving package, above the SDK: it is loaded by name, on
# first use, so importing agentflow never imports serving (or vLLM).
EMBEDDED_BACKEND = "serving.embedded:EmbeddedBackend"
_FORMS = "embedded, embedded:NAME, embedded:/model/dir, vllm:MODEL@URL, openai:MODEL[@URL], litellm:PROVIDER/MODEL"


def resolve_backend(model: str | LLMBackend | None = None) -> LLMBackend:
    """The backend a model string names (see the module docstring); backends pass through."""
    if model is not None and not isinstance(model, str):
        if not isinstance(model, LLMBackend):
            raise BackendConfigError(f"{model!r} is neither a model string nor an LLMBackend")
        return model
    spec = (model or os.environ.get(MODEL_ENV) or "embedded").strip()
    scheme, _, rest = spec.partition(":")
    if scheme == "embedded":
        backend: LLMBackend = _load(EMBEDDED_BACKEND)(rest or None)
        return backend
    if scheme in ("openai", "vllm"):
        name, _, base_url = rest.partition("@")
        if not name:
            raise BackendConfigError(f"{spec!r}: missing model name (forms: {_FORMS})")
        from .openai_compat import OpenAICompatBackend

        return OpenAICompatBackend(name, base_url=base_url or None, vllm=scheme == "vllm")
    if scheme == "litellm":
        if not rest:
            raise BackendConfigError(f"{spec!r}: missing provider/model (forms: {_FORMS})")
        from .litellm_backend import LiteLLMBackend

        return LiteLLMBackend(rest)
    raise BackendConfigError(f"unknown model string {spec!r} (forms: {_FORMS})")


def _load(reference: str) -> Any:
    """The object a `"module:attr"` reference names."""
    module_name, _, attr = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise BackendConfigError(f"{reference} cannot be imported ({exc}); is agentflow fully installed?") from exc
    return getattr(module, attr)
