"""A tiny real GGUF (qwen2- or llama-shaped, 2 layers, random Q8_0/F16/F32 tensors, a byte-level BPE tokenizer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, TokenType
from gguf.quants import quantize

from serving.models import Architecture

CHAT_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n<tools>{{ tools | tojson }}</tools> Call one as "
    '<tool_call>{"name": ..., "arguments": ...}</tool_call><|im_end|>\n{% endif %}'
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def architecture(model_type: str = "qwen2", *, tied: bool = True) -> Architecture:
    return Architecture(
        model_type=model_type,
        num_layers=2,
        hidden_size=64,
        intermediate_size=128,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        vocab_size=256 + 2 + len(SPECIALS),
        tie_word_embeddings=tied,
        qkv_bias=model_type == "qwen2",
        context_length=256,
    )


def _byte_tokens() -> list[str]:
    # GPT-2's byte -> printable character table.
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = list(visible)
    extra = 0
    for b in range(256):
        if b not in visible:
            visible.append(b)
            codes.append(256 + extra)
            extra += 1
    table = dict(zip(visible, codes, strict=True))
    return [chr(table[b]) for b in range(256)]


def write_tiny_gguf(path: Path, arch: Architecture, *, seed: int = 0) -> Path:
    """Write a GGUF of `arch` (2-D weights Q8_0, attn_v F16, 1-D F32) and return its path."""
    rng = np.random.default_rng(seed)
    name = arch.model_type
    writer = GGUFWriter(path, name)
    writer.add_name(f"tiny-{name}")
    writer.add_context_length(arch.context_length)
    writer.add_block_count(arch.num_layers)
    writer.add_feed_forward_length(arch.intermediate_size)
    writer.add_embedding_length(arch.hidden_size)
    writer.add_rope_dimension_count(arch.head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_head_count(arch.num_heads)
    writer.add_head_count_kv(arch.num_kv_heads)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(arch.vocab_size)

    tokens = [*_byte_tokens(), "he", "ll", *SPECIALS]
    assert len(tokens) == arch.vocab_size
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2" if name == "qwen2" else "smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([TokenType.NORMAL] * (len(tokens) - len(SPECIALS)) + [TokenType.CONTROL] * len(SPECIALS))
    writer.add_token_merges(["h e", "l l"])
    writer.add_bos_token_id(tokens.index("<|im_start|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_pad_token_id(tokens.index("<|endoftext|>"))
    writer.add_chat_template(CHAT_TEMPLATE)

    h, q, kv, inter = (
        arch.hidden_size,
        arch.num_heads * arch.head_dim,
        arch.num_kv_heads * arch.head_dim,
        arch.intermediate_size,
    )

    def add(tensor_name: str, *shape: int, qtype: GGMLQuantizationType = GGMLQuantizationType.Q8_0) -> None:
        values = rng.standard_normal(shape).astype(np.float32) * 0.1
        if len(shape) == 1 or qtype == GGMLQuantizationType.F32:
            writer.add_tensor(tensor_name, values)
        elif qtype == GGMLQuantizationType.F16:
            writer.add_tensor(tensor_name, values.astype(np.float16))
        else:
            writer.add_tensor(tensor_name, quantize(values, qtype), raw_dtype=qtype)

    add("token_embd.weight", arch.vocab_size, h)
    for layer in range(arch.num_layers):
        blk = f"blk.{layer}"
        add(f"{blk}.attn_norm.weight", h)
        add(f"{blk}.attn_q.weight", q, h)
        add(f"{blk}.attn_k.weight", kv, h)
        add(f"{blk}.attn_v.weight", kv, h, qtype=GGMLQuantizationType.F16)
        if arch.qkv_bias:
            add(f"{blk}.attn_q.bias", q)
            add(f"{blk}.attn_k.bias", kv)
            add(f"{blk}.attn_v.bias", kv)
        add(f"{blk}.attn_output.weight", h, q)
        add(f"{blk}.ffn_norm.weight", h)
        add(f"{blk}.ffn_gate.weight", inter, h)
        add(f"{blk}.ffn_up.weight", inter, h)
        add(f"{blk}.ffn_down.weight", h, inter)
    add("output_norm.weight", h)
    if not arch.tie_word_embeddings:
        add("output.weight", arch.vocab_size, h)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
