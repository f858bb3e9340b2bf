"""The streaming GGUF -> bf16 converter gives what transformers' own GGUF loader gives, on tiny real GGUFs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _tiny_gguf import CHAT_TEMPLATE, architecture, write_tiny_gguf
from safetensors import safe_open

from serving.models import convert_gguf
from serving.models._catalog import ModelSpec, Part


def _spec(model_type: str, tied: bool) -> ModelSpec:
    return ModelSpec(
        name=f"tiny-{model_type}",
        title="tiny",
        license="Apache-2.0",
        parts=(Part(package="tiny", version="1", member="tiny/x.bin"),),
        size=1,
        sha256="0" * 64,
        architecture=architecture(model_type, tied=tied),
        tool_calling=True,
    )


def _converted(out: Path) -> dict[str, torch.Tensor]:
    files = sorted(out.glob("*.safetensors"))
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(file, "pt") as shard:
            assert shard.metadata() == {"format": "pt"}
            tensors.update({name: shard.get_tensor(name) for name in shard.keys()})  # noqa: SIM118
    return tensors


@pytest.mark.parametrize(("model_type", "tied"), [("qwen2", True), ("qwen2", False), ("llama", True)])
def test_conversion_equals_transformers_gguf_loading(tmp_path: Path, model_type: str, tied: bool) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = write_tiny_gguf(tmp_path / "tiny.gguf", architecture(model_type, tied=tied))
    out = tmp_path / "out"
    out.mkdir()
    # A small shard limit, so the index and several shards are exercised.
    done = convert_gguf(gguf, out, spec=_spec(model_type, tied), shard_bytes=64 * 1024)

    reference = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf.name, dtype=torch.bfloat16)
    expected = {k: v for k, v in reference.state_dict().items() if not (tied and k == "lm_head.weight")}
    converted = _converted(out)
    assert converted.keys() == expected.keys()
    for name, tensor in expected.items():
        assert converted[name].dtype == torch.bfloat16
        assert torch.equal(converted[name], tensor), name
    assert done.num_tensors == len(expected) and done.weight_bytes == sum(t.nbytes for t in expected.values())

    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(expected) and len(set(index["weight_map"].values())) > 1
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is tied and config["model_type"] == model_type
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"

    # The converted directory loads on its own and equals the GGUF-loaded model.
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.items())
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], tools=tools, tokenize=False)
    assert "<tool_call>" in prompt and "hello" in prompt
    assert done.kv_bytes_per_token == architecture(model_type).kv_bytes_per_token == 2 * 2 * 2 * 16 * 2
