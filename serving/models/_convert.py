"""GGUF -> bf16 safetensors, one tensor (or a slice of rows) at a time.

The tensors are read with `gguf.GGUFReader` (offsets and types only; the bytes are read with
`pread`, so the file's pages do not pile up in this process) and de-quantized with
`gguf.quants.dequantize`, exactly as transformers' own GGUF loader does; names map to Hugging
Face names with transformers' own map (`get_gguf_hf_weights_map`) and its per-architecture
processors (llama's q/k un-permutation). Shards are written as the tensors come: peak memory
is one slice of rows, not the model. Config, generation config and tokenizer (with the GGUF's
chat template) come from the GGUF metadata through transformers.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from agentflow.exceptions import ModelPreparationError
from serving.models._catalog import ModelSpec

__all__ = ["Conversion", "convert_gguf"]

_GiB = 1024**3
SHARD_BYTES = 1 * _GiB  # safetensors shards at most this big (a bigger tensor gets its own)
_SLICE_ELEMENTS = 16 * 1024 * 1024  # rows de-quantized at once: ~64 MiB of float32
_BF16_BYTES = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class Conversion:
    """What a conversion wrote."""

    num_tensors: int
    num_params: int
    weight_bytes: int
    files: tuple[str, ...]
    kv_bytes_per_token: int  # bf16, from the converted config


@dataclass(frozen=True, slots=True)
class _Entry:
    hf_name: str
    tensor: Any  # gguf ReaderTensor
    shape: tuple[int, ...]  # Hugging Face (numpy) order

    @property
    def nbytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count * _BF16_BYTES


def convert_gguf(
    gguf_path: Path,
    out_dir: Path,
    *,
    spec: ModelSpec | None = None,
    shard_bytes: int = SHARD_BYTES,
    report: Callable[[str], None] | None = None,
) -> Conversion:
    """Write a bf16 Hugging Face checkpoint of `gguf_path` into the existing `out_dir`.

    `spec`, if given, is checked against the GGUF's config (shapes) and supplies the chat
    template fallback and the tool-calling check.
    """
    # Both must be set before transformers/huggingface_hub are imported: they read them once.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    from gguf import GGUFReader
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
        load_gguf_checkpoint,
    )

    say = report or (lambda _message: None)
    src_dir, filename = gguf_path.parent, gguf_path.name
    # The metadata is parsed once here (151k-token vocabularies make that seconds); the config is
    # built from it as `AutoConfig.from_pretrained(dir, gguf_file=...)` builds it.
    parsed = load_gguf_checkpoint(str(gguf_path), return_tensors=False)
    config = AutoConfig.for_model(**parsed["config"])
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the output is plain bf16
    if spec is not None:
        _check_architecture(spec, config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    config.architectures = [type(model).__name__]
    config.dtype = torch.bfloat16

    reader = GGUFReader(gguf_path)
    architecture = parsed["config"].get("model_type") or config.model_type
    gguf_arch = _gguf_architecture(reader)
    processor_class = TENSOR_PROCESSORS.get(gguf_arch, TensorProcessor)
    processor = processor_class(config=parsed["config"])
    expected = _expected_names(model)
    # transformers' map recurses into every submodule, which takes seconds; the top level maps
    # llama- and qwen2-shaped models completely. Anything it leaves out: the full walk.
    name_map = get_gguf_hf_weights_map(_TopLevel(model), processor)
    if not expected <= set(name_map.values()):
        name_map = get_gguf_hf_weights_map(model, processor)
    entries = _plan(reader, name_map, expected, architecture)
    say(f"converting {len(entries)} tensors to bf16 safetensors")
    files = _write_checkpoint(
        out_dir, entries, shard_bytes, lambda entry, sink: _stream_tensor(gguf_path, entry, processor, sink)
    )
    del model

    config.save_pretrained(out_dir)
    GenerationConfig.from_model_config(config).save_pretrained(out_dir)
    _save_tokenizer(src_dir, filename, out_dir, spec)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return Conversion(
        num_tensors=len(entries),
        num_params=sum(e.nbytes for e in entries) // _BF16_BYTES,
        weight_bytes=sum(e.nbytes for e in entries),
        files=tuple(files),
        kv_bytes_per_token=2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * _BF16_BYTES,
    )


class _TopLevel:
    """What `get_gguf_hf_weights_map` reads of a model, without its submodules."""

    def __init__(self, model: Any) -> None:
        self.config = model.config
        self._state_dict = model.state_dict()

    def state_dict(self) -> dict[str, Any]:
        return self._state_dict

    def named_children(self) -> list[tuple[str, Any]]:
        return []


def _gguf_architecture(reader: Any) -> str:
    field = reader.fields["general.architecture"]
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def _check_architecture(spec: ModelSpec, config: Any) -> None:
    arch = spec.architecture
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    found = {
        "model_type": config.model_type,
        "num_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_heads": config.num_attention_heads,
        "num_kv_heads": config.num_key_value_heads,
        "head_dim": head_dim,
        "vocab_size": config.vocab_size,
        "tie_word_embeddings": config.tie_word_embeddings,
    }
    wrong = {key: value for key, value in found.items() if getattr(arch, key) != value}
    if wrong:
        raise ModelPreparationError(
            f"{spec.name}: the GGUF's config disagrees with the catalog on {wrong}: fix the catalog entry"
        )


def _expected_names(model: Any) -> set[str]:
    # Every tensor of the state dict, less the second name of a tied pair (lm_head of tied embeddings).
    seen: set[int] = set()
    tied: set[str] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            tied.add(name)
        seen.add(id(param))
    return set(model.state_dict()) - tied


def _plan(reader: Any, name_map: dict[str, str], expected: set[str], architecture: str) -> list[_Entry]:
    entries = []
    for tensor in reader.tensors:
        hf_name = name_map.get(tensor.name)
        if hf_name is None or hf_name not in expected:
            continue  # as transformers does (e.g. rope_freqs, or lm_head when tied)
        entries.append(_Entry(hf_name, tensor, tuple(int(d) for d in reversed(tensor.shape.tolist()))))
    missing = expected - {e.hf_name for e in entries}
    if missing:
        raise ModelPreparationError(
            f"the GGUF has no tensor for {sorted(missing)[:5]} ({len(missing)} in all) of the {architecture} "
            "model: it is not a checkpoint this converter knows"
        )
    return entries


def _write_checkpoint(
    out_dir: Path, entries: Sequence[_Entry], shard_bytes: int, fill: Callable[[_Entry, BinaryIO], None]
) -> list[str]:
    shards = _shard(entries, shard_bytes)
    if len(shards) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    for name, shard in zip(names, shards, strict=True):
        _write_safetensors(out_dir / name, shard, fill)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(e.nbytes for e in entries)},
            "weight_map": {e.hf_name: name for name, shard in zip(names, shards, strict=True) for e in shard},
        }
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return [*names, "model.safetensors.index.json"]
    return names


def _shard(entries: Sequence[_Entry], shard_bytes: int) -> list[list[_Entry]]:
    shards: list[list[_Entry]] = [[]]
    size = 0
    for entry in entries:
        if shards[-1] and size + entry.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += entry.nbytes
    return shards


def _write_safetensors(path: Path, entries: Sequence[_Entry], fill: Callable[[_Entry, BinaryIO], None]) -> None:
    # The format: 8-byte little-endian header length, a JSON header (name -> dtype, shape,
    # [begin, end) offsets into the data), padded with spaces to 8 bytes, then the data.
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for entry in entries:
        header[entry.hf_name] = {
            "dtype": "BF16",
            "shape": list(entry.shape),
            "data_offsets": [offset, offset + entry.nbytes],
        }
        offset += entry.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    with path.open("wb") as sink:
        sink.write(struct.pack("<Q", len(encoded)))
        sink.write(encoded)
        start = sink.tell()
        for entry in entries:
            fill(entry, sink)
            begin, end = header[entry.hf_name]["data_offsets"]
            assert sink.tell() - start == end, f"{entry.hf_name}: wrote {sink.tell() - start - begin} of {end - begin}"


def _stream_tensor(gguf_path: Path, entry: _Entry, processor: Any, sink: BinaryIO) -> None:
    import numpy as np
    import torch
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor

    # Row slices are exact only when the processor leaves the tensor as it is (qwen2 and most);
    # llama's q/k un-permutation needs whole tensors (small ones).
    whole = type(processor) is not TensorProcessor
    for weights in _dequantized(gguf_path, entry.tensor, whole=whole):
        result = processor.process(weights=weights, name=entry.tensor.name, tensor_key_mapping={}, parsed_parameters={})
        array = result.weights if result.weights.flags.writeable else result.weights.copy()
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(torch.bfloat16)
        sink.write(tensor.view(torch.int16).numpy().data)


def _dequantized(gguf_path: Path, tensor: Any, *, whole: bool) -> Iterator[Any]:
    import numpy as np
    from gguf.quants import dequantize

    raw_shape = tuple(tensor.data.shape)  # numpy order; the last axis in bytes for block types
    rows = raw_shape[0] if len(raw_shape) > 1 else 1
    row_bytes = tensor.n_bytes // rows
    elements_per_row = max(1, tensor.n_elements // rows)
    step = rows if whole else max(1, _SLICE_ELEMENTS // elements_per_row)
    fd = os.open(gguf_path, os.O_RDONLY)
    try:
        for first in range(0, rows, step):
            count = min(step, rows - first)
            raw = _pread_exact(fd, count * row_bytes, tensor.data_offset + first * row_bytes)
            data = np.frombuffer(raw, dtype=tensor.data.dtype)
            data = data.reshape((count, *raw_shape[1:])) if len(raw_shape) > 1 else data.reshape(raw_shape)
            yield dequantize(data, tensor.tensor_type)
    finally:
        os.close(fd)


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    chunks = []
    while size:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            raise ModelPreparationError(f"the GGUF ends before its tensor data at byte {offset:,}")
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _save_tokenizer(src_dir: Path, filename: str, out_dir: Path, spec: ModelSpec | None) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=filename)
    if not getattr(tokenizer, "chat_template", None) and spec is not None and spec.fallback_chat_template:
        tokenizer.chat_template = spec.fallback_chat_template
    if spec is not None and spec.tool_calling and "<tool_call>" not in str(tokenizer.chat_template or ""):
        raise ModelPreparationError(
            f"{spec.name}: the GGUF's chat template has no tool-calling section (<tool_call>): "
            "the catalog marks it tool-calling; fix the catalog entry"
        )
    tokenizer.save_pretrained(out_dir)
