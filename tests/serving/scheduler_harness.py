"""A CPU harness for schedulers, the way vLLM tests its own (its `tests/v1/core/utils.py`).

No model, no engine, no threads: a scheduler is built from a hand-made `VllmConfig` (a tiny local
model config, no weights, no tokenizer) and `KVCacheConfig`, and driven by hand through
`schedule()` and `update_from_output()`. Each step's "model" samples one deterministic token for
every scheduled request whose prompt is fully computed. The program-aware scheduler's invariants
are checked after every step, and its clocks are a fake one the test moves.

This is the one test module that imports vLLM directly (the product code reaches it only
through `serving._vllm`).
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")

import torch
from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
from vllm.sampling_params import SamplingParams
from vllm.utils.hashing import sha256
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.core.single_type_kv_cache_manager import register_all_kvcache_specs
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.request import Request, RequestStatus
from vllm.v1.structured_output import StructuredOutputManager

from agentflow.metadata import ProgramMetadata
from serving._scheduler import Clock, ProgramAwareScheduler

__all__ = [
    "FakeClock",
    "Harness",
    "build_scheduler",
    "output_signature",
    "program_metadata",
    "tiny_model_dir",
]

EOS_TOKEN_ID = 2
BLOCK = 16  # tokens per KV block in the harness (vLLM's own tests use 16)

# A Llama-shaped config small enough to mean nothing: the scheduler reads lengths, never weights.
_TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "num_hidden_layers": 1,
    "vocab_size": 50_000,
    "max_position_embeddings": 8192,
    "bos_token_id": 1,
    "eos_token_id": EOS_TOKEN_ID,
    "torch_dtype": "float16",
}


def tiny_model_dir(root: Path) -> Path:
    """A directory holding only a `config.json`: enough for vLLM's `ModelConfig` with no tokenizer."""
    model_dir = root / "tiny-llama"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(_TINY_LLAMA))
    return model_dir


class FakeClock(Clock):
    """A clock that moves only when told to (`advance`), or when the scheduler naps."""

    def __init__(self, start_unix_s: float = 1_800_000_000.0) -> None:
        self.now_s = 0.0
        self._start_unix_s = start_unix_s
        super().__init__(monotonic=self._now, unix=self._unix, perf=self._now, sleep=self.advance)

    def _now(self) -> float:
        return self.now_s

    def _unix(self) -> float:
        return self._start_unix_s + self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


def build_scheduler(
    model_dir: Path,
    scheduler_cls: type[Scheduler] = ProgramAwareScheduler,
    *,
    num_blocks: int = 64,
    block_size: int = BLOCK,
    max_num_seqs: int = 16,
    max_num_batched_tokens: int = 4096,
    max_model_len: int = 600,  # tokens: a 40-block limit still holds one whole request (the knob floor)
    policy: str = "fcfs",
    enable_prefix_caching: bool = True,
    async_scheduling: bool = False,
    knobs: Mapping[str, Any] | None = None,
) -> Scheduler:
    """A scheduler over `num_blocks` KV blocks (less vLLM's null block), built as `EngineCore` builds one."""
    model_config = ModelConfig(
        model=str(model_dir),
        dtype="float16",
        seed=0,
        skip_tokenizer_init=True,
        max_model_len=max_model_len,
    )
    scheduler_config = SchedulerConfig(
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        max_model_len=max_model_len,
        enable_chunked_prefill=True,
        is_encoder_decoder=False,
        watermark=0.0,  # admission and preemption exactly at the pool's edge
        policy=policy,  # type: ignore[arg-type]
        async_scheduling=async_scheduling,
    )
    cache_config = CacheConfig(
        block_size=block_size,
        gpu_memory_utilization=0.9,
        cache_dtype="auto",
        enable_prefix_caching=enable_prefix_caching,
    )
    vllm_config = VllmConfig(
        scheduler_config=scheduler_config,
        model_config=model_config,
        cache_config=cache_config,
        additional_config={"agentflow_scheduler_knobs": dict(knobs)} if knobs else {},
    )
    # vLLM's CPU platform turns async scheduling off; the scheduler class choice is what is tested here.
    vllm_config.scheduler_config.async_scheduling = async_scheduling
    kv_cache_config = KVCacheConfig(
        num_blocks=num_blocks,
        kv_cache_tensors=[],
        kv_cache_groups=[
            KVCacheGroupSpec(
                ["layer"], FullAttentionSpec(block_size=block_size, num_kv_heads=1, head_size=1, dtype=torch.float32)
            )
        ],
    )
    cache_config.num_gpu_blocks = num_blocks
    register_all_kvcache_specs(vllm_config)
    return scheduler_cls(
        vllm_config=vllm_config,
        kv_cache_config=kv_cache_config,
        block_size=block_size,
        log_stats=True,
        structured_output_manager=StructuredOutputManager(vllm_config),
    )


def program_metadata(program_id: str, turn: int, **fields: Any) -> dict[str, Any]:
    """The `extra_args` of one call of a program (`ProgramMetadata` fields; a tool follows unless last)."""
    fields.setdefault("next_tool", None if fields.get("is_last_turn") else "bash")
    return ProgramMetadata(program_id=program_id, turn=turn, **fields).to_extra_args()


def token_prompt(num_tokens: int, key: str) -> list[int]:
    """The same token ids for the same key on every run (none of them EOS)."""
    seed = zlib.crc32(key.encode())
    return [1000 + (seed + 7919 * i) % 40_000 for i in range(num_tokens)]


def _sampled_token(request_id: str, position: int) -> int:
    return 1000 + (zlib.crc32(request_id.encode()) + 104_729 * position) % 40_000


@dataclass(slots=True)
class Harness:
    """Drives one scheduler step by step and records what happened to each request."""

    scheduler: Scheduler
    clock: FakeClock = field(default_factory=FakeClock)
    check: bool = True  # run `check_invariants` after every step (program-aware schedulers)
    outputs: dict[str, list[int]] = field(default_factory=dict)  # request id -> tokens sampled so far
    cached_tokens: dict[str, int] = field(default_factory=dict)  # request id -> prefix-cache hits when admitted
    admitted: list[str] = field(default_factory=list)  # request ids in the order they were first scheduled
    finished: list[str] = field(default_factory=list)  # request ids in the order they finished
    preempted: list[str] = field(default_factory=list)
    steps: int = 0
    _hasher: Callable[[Request], list[Any]] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.scheduler, ProgramAwareScheduler):
            self.scheduler.clock = self.clock
        init_none_hash(sha256)
        self._hasher = get_request_block_hasher(self.scheduler.block_size, sha256)

    @property
    def program_aware(self) -> ProgramAwareScheduler:
        assert isinstance(self.scheduler, ProgramAwareScheduler)
        return self.scheduler

    def add(
        self,
        request_id: str,
        prompt: list[int],
        *,
        max_tokens: int = 4,
        extra_args: Mapping[str, Any] | None = None,
        priority: int = 0,
        arrival_s: float | None = None,
        session_id: str | None = None,
    ) -> Request:
        params = SamplingParams(ignore_eos=True, max_tokens=max_tokens, extra_args=dict(extra_args or {}) or None)
        params.update_from_generation_config({}, EOS_TOKEN_ID)
        request = Request(
            request_id=request_id,
            prompt_token_ids=list(prompt),
            sampling_params=params,
            pooling_params=None,
            block_hasher=self._hasher,
            priority=priority,
            arrival_time=self.clock.unix() if arrival_s is None else arrival_s,
            session_id=session_id,
        )
        self.outputs[request_id] = []
        self.scheduler.add_request(request)
        return request

    def step(self) -> SchedulerOutput:
        """One `schedule()` and one `update_from_output()`, the model's part played by a token sampler."""
        scheduler = self.scheduler
        output = scheduler.schedule()
        for new in output.scheduled_new_reqs:
            if new.req_id not in self.cached_tokens:
                self.cached_tokens[new.req_id] = new.num_computed_tokens
                self.admitted.append(new.req_id)
        self.preempted.extend(sorted(output.preempted_req_ids or ()))
        model_output = self._model_output(output)
        scheduler.update_from_output(output, model_output)
        for request_id in model_output.req_ids:
            if request_id not in scheduler.requests:  # it finished this step (the scheduler let it go)
                self.finished.append(request_id)
        self.steps += 1
        if self.check and isinstance(scheduler, ProgramAwareScheduler):
            scheduler.check_invariants()
        return output

    def run(self, *, until: Callable[[], bool] | None = None, max_steps: int = 2000, tick_s: float = 0.0) -> int:
        """Step until `until()` holds (default: nothing left to run); the steps taken."""
        done = until or (lambda: not self.scheduler.has_unfinished_requests())
        taken = 0
        while not done():
            assert taken < max_steps, f"not done after {max_steps} steps"
            self.step()
            self.clock.advance(tick_s)
            taken += 1
        self.step()  # one more: finished requests are reported to the model runner, nothing else runs
        return taken

    def finish(self, request_id: str) -> list[int]:
        """Run until `request_id` has finished; its output tokens."""
        self.run(until=lambda: request_id in self.finished)
        return self.outputs[request_id]

    def abort(self, request_id: str) -> None:
        self.scheduler.finish_requests([request_id], RequestStatus.FINISHED_ABORTED)

    def metrics(self) -> dict[str, Any]:
        return self.program_aware.agentflow_metrics()

    def _model_output(self, output: SchedulerOutput) -> ModelRunnerOutput:
        request_ids = [new.req_id for new in output.scheduled_new_reqs] + list(output.scheduled_cached_reqs.req_ids)
        sampled: list[list[int]] = []
        for request_id in request_ids:
            request = self.scheduler.requests[request_id]
            if request.num_computed_tokens >= request.num_tokens:  # the prompt (and outputs) are in: a token
                token = _sampled_token(request_id, len(self.outputs[request_id]))
                self.outputs[request_id].append(token)
                sampled.append([token])
            else:
                sampled.append([])  # a prefill chunk
        return ModelRunnerOutput(
            req_ids=request_ids,
            req_id_to_index={request_id: i for i, request_id in enumerate(request_ids)},
            sampled_token_ids=sampled,
            logprobs=None,
            prompt_logprobs_dict={},
            pooler_output=[],
        )


def output_signature(output: SchedulerOutput) -> dict[str, Any]:
    """What two schedulers must agree on step by step: who runs, how many tokens, which blocks, who is preempted."""
    cached = output.scheduled_cached_reqs
    return {
        "new": [
            (r.req_id, r.num_computed_tokens, [list(ids) for ids in r.block_ids]) for r in output.scheduled_new_reqs
        ],
        "cached": list(
            zip(
                cached.req_ids,
                cached.num_computed_tokens,
                [None if b is None else [list(ids) for ids in b] for b in cached.new_block_ids],
                strict=True,
            )
        ),
        "num_scheduled_tokens": dict(output.num_scheduled_tokens),
        "total": output.total_num_scheduled_tokens,
        "preempted": sorted(output.preempted_req_ids or ()),
        "finished": sorted(output.finished_req_ids),
    }
