"""mini-swe-agent trajectories -> traces, and the `replay` / `convert-trace` / `bench serving` command lines."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from agentflow.exceptions import UserError
from workloads.replay._swebench import convert_paths, convert_trajectory, find_trajectories
from workloads.replay._trace import load_trace

T0 = 1_718_000_000.0


def _v2_trajectory() -> dict[str, Any]:
    """mini-swe-agent 2.x: usage and timestamps in each message's `extra`."""

    def assistant(command: str, prompt: int, completion: int, cached: int, ts: float) -> dict[str, Any]:
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }
        return {
            "role": "assistant",
            "content": f"THOUGHT: look.\n\n```mswea_bash_command\n{command}\n```",
            "extra": {"actions": [{"command": command}], "response": {"usage": usage}, "timestamp": ts},
        }

    def observation(ts: float) -> dict[str, Any]:
        return {"role": "user", "content": "<returncode>0</returncode>", "extra": {"returncode": 0, "timestamp": ts}}

    return {
        "info": {"exit_status": "Submitted", "config": {"model": {"model_name": "deepseek/deepseek-chat"}}},
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Fix the bug.", "extra": {"timestamp": T0}},
            assistant("find . -name '*.py' | head", 1714, 84, 320, T0 + 2.5),
            observation(T0 + 2.616),
            assistant("cat setup.py", 1849, 67, 320, T0 + 5.266),
            observation(T0 + 5.358),
            assistant("echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT", 1990, 20, 1856, T0 + 7.0),
        ],
        "trajectory_format": "mini-swe-agent-1.1",
    }


def _v1_trajectory() -> dict[str, Any]:
    """mini-swe-agent 1.x: plain role/content messages, bash blocks, no usage, no times."""
    return {
        "info": {"exit_status": "Submitted", "submission": "diff"},
        "messages": [
            {"role": "system", "content": "x" * 400},
            {"role": "user", "content": "y" * 800},
            {"role": "assistant", "content": "THOUGHT\n```bash\ngrep -rn foo src\n```"},
            {"role": "user", "content": "z" * 120},
            {"role": "assistant", "content": "no command here"},  # a format error: no tool ran
            {"role": "user", "content": "Please always provide EXACTLY ONE action"},
            {"role": "assistant", "content": "```bash\necho MINI_SWE_AGENT_FINAL_OUTPUT\n```"},
        ],
        "trajectory_format": "mini-swe-agent-1",
    }


def test_v2_usage_and_timestamps_are_taken_as_recorded() -> None:
    program, estimated = convert_trajectory(_v2_trajectory(), program_id="astropy-1")
    assert estimated == 0
    assert program.source == "mini-swe-agent/deepseek/deepseek-chat"
    assert [(t.input_tokens, t.output_tokens, t.cached_tokens) for t in program.turns] == [
        (1714, 84, 320),
        (1849, 67, 320),
        (1990, 20, 1856),
    ]
    assert [t.tool for t in program.turns] == ["find", "cat", "echo"]
    assert [t.llm_s for t in program.turns] == [2.5, 2.65, 1.642]
    assert [t.tool_s for t in program.turns] == [0.116, 0.092, None]


def test_v1_counts_are_estimated_from_text() -> None:
    program, estimated = convert_trajectory(_v1_trajectory(), program_id="django-1", chars_per_token=4.0)
    assert estimated == 3
    first, second, third = program.turns
    assert first.input_tokens == (400 // 4 + 4) + (800 // 4 + 4)  # both messages before it + overhead
    assert first.output_tokens == -(-len("THOUGHT\n```bash\ngrep -rn foo src\n```") // 4)
    assert second.input_tokens > first.input_tokens + first.output_tokens
    assert [t.tool for t in program.turns] == ["grep", None, "echo"]
    assert all(t.llm_s is None and t.tool_s is None for t in program.turns)
    assert all(t.cached_tokens == 0 for t in program.turns)


def test_tool_calls_list_content_and_anthropic_usage_are_tolerated() -> None:
    data = [
        {"role": "user", "content": [{"type": "text", "text": "fix it"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"function": {"name": "bash", "arguments": json.dumps({"command": "ls -la"})}}],
            "extra": {"response": {"usage": {"input_tokens": 50, "output_tokens": 9, "cache_read_input_tokens": 32}}},
        },
        {"role": "tool", "content": "a b c"},
    ]
    program, estimated = convert_trajectory(data, program_id="p")
    (turn,) = program.turns
    assert (turn.input_tokens, turn.output_tokens, turn.cached_tokens, turn.tool) == (50, 9, 32, "ls")
    assert estimated == 0 and program.source == "mini-swe-agent"


@pytest.mark.parametrize("data", [{}, {"messages": []}, {"messages": [{"role": "user", "content": "hi"}]}])
def test_a_trajectory_without_calls_is_rejected(data: Any) -> None:
    with pytest.raises(ValueError):
        convert_trajectory(data, program_id="p")


def _write_run_dir(root: Path) -> Path:
    # The layout `mini-extra swebench` writes: <out>/<instance>/<instance>.traj.json
    for name, data in (("astropy-1", _v2_trajectory()), ("django-1", _v1_trajectory())):
        (root / name).mkdir(parents=True)
        (root / name / f"{name}.traj.json").write_text(json.dumps(data))
    (root / "broken").mkdir()
    (root / "broken" / "broken.traj.json").write_text("{not json")
    return root


def test_a_run_directory_converts_to_a_loadable_trace(tmp_path: Path) -> None:
    run_dir = _write_run_dir(tmp_path / "run")
    assert [p.name for p in find_trajectories([run_dir])] == [
        "astropy-1.traj.json",
        "broken.traj.json",
        "django-1.traj.json",
    ]
    report = convert_paths([run_dir], tmp_path / "trace.jsonl.gz", source="mine")
    assert report.num_programs == 2 and report.num_calls == 6 and report.num_estimated_calls == 3
    assert [Path(path).name for path, _ in report.skipped] == ["broken.traj.json"]
    programs = load_trace(report.out_path)
    assert [p.program_id for p in programs] == ["astropy-1", "django-1"]
    assert {p.source for p in programs} == {"mine"}


def test_nothing_convertible_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "a.traj.json").write_text("[]")
    with pytest.raises(UserError, match="no trajectory could be converted"):
        convert_paths([tmp_path], tmp_path / "out.jsonl")
    with pytest.raises(UserError, match="neither a file nor a directory"):
        find_trajectories([tmp_path / "missing"])


# -- command lines -----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from agentflow.cli import build_parser

    return build_parser()


def test_convert_trace_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = _write_run_dir(tmp_path / "run")
    args = _parser().parse_args(["convert-trace", str(run_dir), "--out", str(tmp_path / "t.jsonl")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "2 programs, 6 calls" in out and "skipped" in out
    assert len(load_trace(tmp_path / "t.jsonl")) == 2


def test_replay_and_bench_options_build_the_same_run() -> None:
    from workloads.replay._cli import options_from_args
    from workloads.replay._runner import DEFAULTS

    parser = _parser()
    replay = options_from_args(parser.parse_args(["replay", "--policy", "vllm", "--turns", "4", "--concurrency", "3"]))
    assert replay.policies == ("vllm",) and replay.scaling.max_turns == 4
    assert replay.concurrency == 3 and replay.rate_per_s is None
    bench = options_from_args(parser.parse_args(["bench", "serving", "--json", "x.json"]))
    assert bench.policies == DEFAULTS.policies and bench.rate_per_s == DEFAULTS.rate_per_s
    assert bench.scaling == DEFAULTS.scaling and bench.engine == DEFAULTS.engine
    with pytest.raises(SystemExit):
        parser.parse_args(["replay", "--rate", "1", "--concurrency", "2"])
