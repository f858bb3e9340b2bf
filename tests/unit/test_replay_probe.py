"""The side-by-side throughput probe: its protocol parsing and figures (the engines run in the bench)."""

from __future__ import annotations

import pytest

from agentflow.exceptions import UserError
from workloads._probe import _figures, paired_throughput_probe, parse_probe_command


def test_protocol_lines_parse_to_rounds_or_the_end() -> None:
    assert parse_probe_command("burst 3\n") == 3
    assert parse_probe_command("burst -1") == -1  # the warm-up round
    assert parse_probe_command("quit\n") is None
    assert parse_probe_command("") is None  # the parent closed the pipe


@pytest.mark.parametrize("line", ["burst", "burst x", "go 1", "burst 1 2"])
def test_unknown_protocol_lines_are_user_errors(line: str) -> None:
    with pytest.raises(UserError, match="probe protocol"):
        parse_probe_command(line)


def test_figures_take_the_best_burst_and_pair_rounds_against_the_reference() -> None:
    probe = {"num_requests": 32, "prompt_tokens": 256, "output_tokens": 32, "repeats": 3}
    specs = {"vllm": {"probe": probe}, "agentflow": {"probe": probe}}
    walls = {"vllm": [10.0, 9.0, 11.0], "agentflow": [10.5, 9.0, 10.0]}
    order = ["vllm", "agentflow", "agentflow", "vllm", "vllm", "agentflow"]
    figures = _figures(specs, walls, order)
    assert figures["vllm"]["best_wall_s"] == 9.0
    assert figures["agentflow"]["output_tokens_per_s"] == pytest.approx(32 * 32 / 9.0)
    assert figures["paired_cost_pct"]["agentflow"] == pytest.approx([5.0, 0.0, 10 / 11 * 100 - 100])
    assert figures["order"] == order


def test_the_probe_needs_two_engines_and_a_round() -> None:
    with pytest.raises(UserError, match="at least two"):
        paired_throughput_probe({"vllm": {}}, repeats=3, timeout_s=1)
    with pytest.raises(UserError, match="repeats"):
        paired_throughput_probe({"a": {}, "b": {}}, repeats=0, timeout_s=1)
    with pytest.raises(UserError, match="pairs"):
        paired_throughput_probe({"a": {}, "b": {}}, repeats=1, pairs=0, timeout_s=1)


def test_scheduler_overhead_is_the_added_scheduler_time_per_step_over_the_step() -> None:
    probe = {"num_requests": 16, "prompt_tokens": 256, "output_tokens": 32, "repeats": 2}
    specs = {"vllm": {"probe": probe}, "agentflow": {"probe": probe}}
    walls = {"vllm": [4.0, 4.0], "agentflow": [4.0, 4.0]}
    scheduler = {"vllm": [(0.010, 50), (0.010, 50)], "agentflow": [(0.015, 50), (0.015, 50)]}
    figures = _figures(specs, walls, ["vllm", "agentflow"] * 2, scheduler)
    assert figures["vllm"]["scheduler_s_per_step"] == pytest.approx(0.0002)
    assert figures["vllm"]["step_s"] == pytest.approx(0.08)
    # (0.3 ms - 0.2 ms) per step of 80 ms
    assert figures["scheduler_overhead_pct"]["agentflow"] == pytest.approx(0.125)
