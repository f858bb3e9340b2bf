"""The trace format, its scaling, the replayed prompts (identical prefixes) and the seeded arrivals."""

from __future__ import annotations

import gzip
import json
import statistics
from pathlib import Path

import pytest

from agentflow.exceptions import UserError
from workloads.replay._run import (
    DEFAULT_VOCAB_RANGE,
    first_prompt,
    next_prompt,
    poisson_arrivals,
    program_tokens,
    tool_output_tokens,
)
from workloads.replay._trace import (
    DEFAULT_TRACE_PATH,
    ScaledProgram,
    TraceProgram,
    TraceScaling,
    TraceTurn,
    dump_trace,
    load_trace,
    scale_trace,
)


def _program(program_id: str = "p", cached0: int = 320) -> TraceProgram:
    # inputs grow by the previous output plus a tool output of 200, 40 and -50 (history trimmed).
    turns = (
        TraceTurn(input_tokens=1600, cached_tokens=cached0, output_tokens=80, tool="find", tool_s=0.2),
        TraceTurn(input_tokens=1880, cached_tokens=1600, output_tokens=160, llm_s=2.0, tool="cat", tool_s=0.4),
        TraceTurn(input_tokens=2080, cached_tokens=1856, output_tokens=8, llm_s=1.0, tool="pip", tool_s=60.0),
        TraceTurn(input_tokens=2038, cached_tokens=0, output_tokens=40, llm_s=1.0, tool="echo", tool_s=None),
    )
    return TraceProgram(program_id=program_id, turns=turns, source="test")


# -- the format --------------------------------------------------------------------------------------


def test_shipped_trace_loads_whole() -> None:
    programs = load_trace(DEFAULT_TRACE_PATH)
    assert len(programs) == 99
    assert sum(len(p.turns) for p in programs) == 7924
    assert all(p.turns[-1].tool_s is None for p in programs)


def test_shipped_trace_matches_the_shared_copy() -> None:
    shared = Path(__file__).resolve().parents[4] / "shared" / "data" / "swebench_lite_msa_traces.jsonl"
    if not shared.is_file():
        pytest.skip("no shared data directory next to this checkout")
    assert load_trace(shared) == load_trace(DEFAULT_TRACE_PATH)


@pytest.mark.parametrize("name", ["t.jsonl", "t.jsonl.gz"])
def test_dump_and_load_round_trip(tmp_path: Path, name: str) -> None:
    programs = [_program("a"), _program("b")]
    path = dump_trace(programs, tmp_path / name)
    assert load_trace(path) == programs
    if name.endswith(".gz"):
        assert gzip.decompress(path.read_bytes()).count(b"\n") == 2


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text("\n" + json.dumps(_program().to_json()) + "\n\n")
    assert [p.program_id for p in load_trace(path)] == ["p"]


@pytest.mark.parametrize(
    "line",
    [
        "not json",
        json.dumps({"program_id": "x"}),
        json.dumps({"program_id": "x", "turns": []}),
        json.dumps({"program_id": "x", "turns": [{"input_tokens": 10}]}),
        json.dumps({"program_id": "x", "turns": [{"input_tokens": 10, "output_tokens": 1, "tool_s": -1}]}),
        json.dumps({"program_id": "x", "turns": [{"input_tokens": 0, "output_tokens": 1}]}),
    ],
)
def test_a_malformed_line_is_named(tmp_path: Path, line: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(_program().to_json()) + "\n" + line + "\n")
    with pytest.raises(UserError, match=r"t\.jsonl:2"):
        load_trace(path)


def test_missing_or_empty_trace_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_trace(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match="no programs"):
        load_trace(tmp_path / "empty.jsonl")


# -- scaling ----------------------------------------------------------------------------------------


def test_scaling_divides_tokens_and_grows_prompts_as_recorded() -> None:
    (scaled,) = scale_trace([_program()], TraceScaling(token_divisor=8))
    assert scaled.shared_prefix_tokens == 40  # 320 / 8
    assert [t.new_prompt_tokens for t in scaled.turns] == [160, 25, 5, 1]  # 1600/8 - 40, 200/8, 40/8, clamped
    assert [t.output_tokens for t in scaled.turns] == [10, 20, 1, 5]  # 8/8 = 1, never 0
    assert scaled.num_clamped_turns == 1
    # The prompt of turn i is turn i-1's prompt + its output + the new tokens.
    assert [scaled.prompt_tokens(i) for i in range(4)] == [200, 235, 260, 262]
    assert scaled.context_tokens == 262 + 5


def test_scaling_keeps_tools_and_ends_with_no_tool() -> None:
    (scaled,) = scale_trace([_program()], TraceScaling(token_divisor=8, tool_time_scale=0.5))
    assert [(t.tool, t.tool_s) for t in scaled.turns] == [("find", 0.1), ("cat", 0.2), ("pip", 30.0), (None, 0.0)]
    (cut,) = scale_trace([_program()], TraceScaling(token_divisor=8, max_turns=2))
    assert [(t.tool, t.tool_s) for t in cut.turns] == [("find", 0.2), (None, 0.0)]  # the 2nd call is now the last


def test_first_m_programs_and_context_limit() -> None:
    programs = [_program(f"p{i}") for i in range(5)]
    scaled = scale_trace(programs, TraceScaling(token_divisor=8, max_programs=3, max_context_tokens=240))
    assert [p.program_id for p in scaled] == ["p0", "p1", "p2"]
    # Turn 1 would take the context to 200 + 10 + 25 + 20 = 255 > 240: the program ends after turn 0.
    assert all(len(p.turns) == 1 and p.cut_by_context for p in scaled)
    with pytest.raises(UserError, match="raise token_divisor"):
        scale_trace(programs, TraceScaling(token_divisor=8, max_context_tokens=100))


def test_shared_prefix_is_the_median_first_hit() -> None:
    programs = [_program("a", 320), _program("b", 320), _program("c", 0)]
    assert {p.shared_prefix_tokens for p in scale_trace(programs, TraceScaling(token_divisor=8))} == {40}
    unshared = scale_trace(programs, TraceScaling(token_divisor=8, shared_prefix=False))
    assert unshared[0].shared_prefix_tokens == 0 and unshared[0].turns[0].new_prompt_tokens == 200


def test_scaling_the_shipped_trace_fits_the_model() -> None:
    programs = scale_trace(
        load_trace(DEFAULT_TRACE_PATH),
        TraceScaling(token_divisor=8, max_turns=12, max_programs=24, max_context_tokens=4096),
    )
    assert len(programs) == 24 and all(len(p.turns) == 12 for p in programs)
    assert max(p.context_tokens for p in programs) <= 4096
    assert ScaledProgram.from_json(json.loads(json.dumps(programs[0].to_json()))) == programs[0]


@pytest.mark.parametrize("bad", [{"token_divisor": 0}, {"max_turns": 0}, {"tool_time_scale": -1}])
def test_bad_scaling_is_a_user_error(bad: dict[str, float]) -> None:
    with pytest.raises(UserError):
        TraceScaling(**bad)  # type: ignore[arg-type]


def test_describe_names_every_rule() -> None:
    text = TraceScaling(token_divisor=8, max_turns=12, max_programs=24, max_context_tokens=4096).describe()
    assert "/ 8" in text and "first 12 turns" in text and "first 24 programs" in text and "4096" in text


# -- prompts ------------------------------------------------------------------------------------------


def test_each_prompt_extends_the_previous_one_exactly() -> None:
    (scaled,) = scale_trace([_program()], TraceScaling(token_divisor=8))
    prompt = first_prompt(scaled, seed=3)
    assert len(prompt) == scaled.prompt_tokens(0)
    for turn in range(1, len(scaled.turns)):
        output = program_tokens(scaled.turns[turn - 1].output_tokens, seed=99, key=f"out{turn}")
        following = next_prompt(prompt, output, tool_output_tokens(scaled, turn, seed=3))
        assert following[: len(prompt)] == prompt  # identical prefix: cacheable
        assert following[len(prompt) : len(prompt) + len(output)] == output
        assert len(following) == scaled.prompt_tokens(turn)
        prompt = following


def test_programs_share_only_the_system_prefix() -> None:
    a, b = scale_trace([_program("a"), _program("b")], TraceScaling(token_divisor=8))
    pa, pb = first_prompt(a, seed=0), first_prompt(b, seed=0)
    assert pa[:40] == pb[:40]
    assert pa[40:] != pb[40:]


def test_synthetic_tokens_are_seeded_and_in_range() -> None:
    assert program_tokens(50, seed=1, key="k") == program_tokens(50, seed=1, key="k")
    assert program_tokens(50, seed=1, key="k") != program_tokens(50, seed=2, key="k")
    low, high = DEFAULT_VOCAB_RANGE
    assert all(low <= t < high for t in program_tokens(500, seed=0, key="x"))


# -- arrivals ------------------------------------------------------------------------------------------


def test_poisson_arrivals_are_seeded() -> None:
    first = poisson_arrivals(20, rate_per_s=0.5, seed=7)
    assert first == poisson_arrivals(20, rate_per_s=0.5, seed=7)
    assert first != poisson_arrivals(20, rate_per_s=0.5, seed=8)
    assert first[0] == 0.0 and first == sorted(first)


def test_poisson_gaps_have_the_rate() -> None:
    arrivals = poisson_arrivals(4001, rate_per_s=2.0, seed=0)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert statistics.mean(gaps) == pytest.approx(0.5, rel=0.05)
    assert statistics.stdev(gaps) == pytest.approx(0.5, rel=0.08)  # exponential: sd == mean


def test_bad_rate_is_a_user_error() -> None:
    with pytest.raises(UserError):
        poisson_arrivals(3, rate_per_s=0, seed=0)


def test_the_default_replay_fits_its_engine_and_is_under_pressure() -> None:
    from workloads.replay._runner import DEFAULTS

    programs = scale_trace(load_trace(DEFAULTS.trace_path), DEFAULTS.scaling)
    kv_tokens = DEFAULTS.engine.kv_cache_bytes // 23_040  # SmolLM2-135M: bytes of KV per token in bf16
    assert max(p.context_tokens for p in programs) <= DEFAULTS.engine.max_model_len <= kv_tokens
    # Pressure: the cache holds a few programs' final contexts (~5 of 16), not all of them.
    assert 4 * 840 < kv_tokens < sum(p.context_tokens for p in programs) / 3
