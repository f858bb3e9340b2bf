"""mini-swe-agent's own YAML config, pointed at a server: the only thing the bench sets for it.

A user points `mini` at a local vLLM server by copying its default config (`mini.yaml`) and
setting the `model` section (mini-swe-agent's "local models" guide: `model_name:
hosted_vllm/<served name>`, `model_kwargs.api_base`). `render_config` does the same: the agent's
own built-in `mini.yaml` (read from its install), with the model section, the run's limits and the
working directory merged in. Nothing else of the agent changes; its requests are plain OpenAI chat
completions (no agentflow fields, no session id).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["AgentSettings", "agent_overrides", "deep_merge", "mini_command", "render_config"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSettings:
    """What one agent run is configured with (besides the server it is pointed at)."""

    step_limit: int = 8  # model calls per agent
    max_tokens: int = 192  # per reply: bounds a turn's decode time on a CPU
    # Greedy: the same replies from either server, without per-request seeds (stock vLLM 0.32 on CPU
    # dies on a seeded request whose sampled token it rewinds: "CPU Generator does not use offset").
    temperature: float = 0.0
    seed: int | None = None  # sent with each request when set
    command_timeout_s: int = 20  # one shell command of the agent's


def agent_overrides(
    settings: AgentSettings, *, base_url: str, api_key: str, model_name: str, cwd: Path
) -> dict[str, Any]:
    """The keys of mini-swe-agent's config the bench sets (both v1 and v2 read these)."""
    sampling: dict[str, Any] = {"max_tokens": settings.max_tokens, "temperature": settings.temperature}
    if settings.seed is not None:
        sampling["seed"] = settings.seed
    return {
        "agent": {"step_limit": settings.step_limit, "cost_limit": 0, "mode": "yolo", "confirm_exit": False},
        "environment": {"cwd": str(cwd), "timeout": settings.command_timeout_s},
        "model": {
            "model_name": f"hosted_vllm/{model_name}",
            "cost_tracking": "ignore_errors",  # a local model has no price in litellm's table
            "model_kwargs": {
                "api_base": base_url,
                "api_key": api_key,
                **sampling,
            },
        },
    }


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra` merged in, dicts recursively (neither is modified)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def render_config(builtin_yaml: str, overrides: dict[str, Any]) -> str:
    """The agent's built-in config text with `overrides` merged in, as a config file's text.

    Written as JSON, which is YAML too (mini-swe-agent reads it with `yaml.safe_load`).
    """
    import yaml  # type: ignore[import-untyped]  # transformers' dependency (agentflow depends on transformers)

    base = yaml.safe_load(builtin_yaml) or {}
    if not isinstance(base, dict):
        raise ValueError("the agent's built-in config is not a mapping")
    return json.dumps(deep_merge(base, overrides), indent=2) + "\n"


def mini_command(mini: Path, *, config: Path, task: str, trajectory: Path) -> list[str]:
    """`mini` as a user runs it unattended: yolo mode, no exit confirmation, one config file."""
    return [
        str(mini), "--yolo", "--exit-immediately",
        "--config", str(config), "--task", task, "--output", str(trajectory),
    ]  # fmt: skip
