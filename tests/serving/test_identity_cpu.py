"""Programs of clients that send no metadata, on the CPU harness: sessions and prompt chains.

A client here sends what a plain OpenAI client sends: a prompt that is the previous turn's prompt,
its output and a tool's output, and at most a session id. The scheduler must tell its programs
apart, pin their KV by the gaps it learned, and never pin traffic that is not continued.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from scheduler_harness import BLOCK, Harness, build_scheduler, program_metadata, tiny_model_dir, token_prompt

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

GAP_S = 0.5  # the client's tool time between turns


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("model"))


def harness(model_dir: Path, **options: Any) -> Harness:
    return Harness(build_scheduler(model_dir, **options))


def turn(prompt: list[int], output: list[int], key: str, num_tool_tokens: int = 2 * BLOCK) -> list[int]:
    return [*prompt, *output, *token_prompt(num_tool_tokens, key)]


def run_chain(h: Harness, name: str, turns: int, *, session: str | None = None, prompt_blocks: int = 3) -> list[str]:
    """A plain client's program, one turn after another with a tool pause between; its request ids."""
    prompt = token_prompt(prompt_blocks * BLOCK, f"{name}:task")
    ids = []
    for i in range(turns):
        request_id = f"{name}-{i}"
        h.add(request_id, prompt, max_tokens=BLOCK, session_id=session)
        h.finish(request_id)
        ids.append(request_id)
        h.clock.advance(GAP_S)
        prompt = turn(prompt, h.outputs[request_id], f"{name}:tool{i}")
    return ids


def warm_up(h: Harness, programs: int = 6, turns: int = 3) -> None:
    """Enough continued turns that the scheduler has learned the gaps and that turns are continued."""
    for p in range(programs):
        run_chain(h, f"warm{p}", turns)


def test_a_client_that_sends_nothing_is_recognised_and_pinned(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=128)
    warm_up(h)
    requests = h.metrics()["requests"]
    assert requests["with_metadata"] == 0 and requests["by_session"] == 0
    assert requests["by_chain"] >= 6 * 2  # every later turn at least
    gaps = h.metrics()["turn_gaps"]
    assert gaps["gaps_observed"] >= 12 and gaps["p_next"] > 0.5
    assert gaps["gap_p50_s"] == pytest.approx(GAP_S, rel=0.2)
    pins = h.metrics()["pins"]
    assert pins["created"] > 0 and pins["hit"] > 0  # once learned, the KV waits out the tool
    run_chain(h, "late", 3)
    programs = {a["program_id"] for a in h.metrics()["admissions"] if a["program_id"]}
    late = [a for a in h.metrics()["admissions"] if a["program_id"] and a["turn"] == 2][-1]
    assert late["cached_tokens"] >= late["prompt_tokens"] - 3 * BLOCK  # all but its newest blocks came from the pin
    assert len(programs) >= 6  # each program its own


def test_single_turn_traffic_is_never_tracked_or_pinned(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=128, knobs={"chain_horizon_s": 5.0})
    for i in range(40):
        h.add(f"q{i}", token_prompt(3 * BLOCK, f"single{i}"), max_tokens=BLOCK)
        h.finish(f"q{i}")
        h.clock.advance(1.0)
    h.run()
    metrics = h.metrics()
    assert metrics["requests"]["by_chain"] == 0 and metrics["requests"]["without_metadata"] == 40
    assert metrics["pins"]["created"] == 0
    assert metrics["turn_gaps"]["p_next"] < 0.25  # it learned that nothing continues


def test_programs_identical_so_far_each_find_their_prefix_and_part_when_they_differ(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=128)
    warm_up(h)
    h.clock.advance(3600)
    h.program_aware.tick()  # the warm-up's last pins expire
    free_start = h.scheduler.num_free_blocks()
    prompt = token_prompt(4 * BLOCK, "same-task")
    # The same request id twice: the harness's model samples the same output for both.
    h.add("same", prompt, max_tokens=BLOCK)
    out_a = list(h.finish("same"))
    h.finished.remove("same")
    h.add("same", prompt, max_tokens=BLOCK)
    out_b = list(h.finish("same"))
    assert out_a == out_b
    assert h.metrics()["pins"]["active"] == 2  # one pin each, on the same blocks
    h.clock.advance(GAP_S / 4)  # well within the TTL the learned gaps give
    a1, b1 = turn(prompt, out_a, "tool-a"), turn(prompt, out_b, "tool-b")
    hits = h.metrics()["pins"]["hit"]
    h.add("a1", a1, max_tokens=BLOCK)
    h.finish("a1")  # a1 took one program's pin: its hand-off released that pin only
    assert h.metrics()["pins"]["hit"] == hits + 1
    assert h.metrics()["pins"]["active"] == 2  # the other program's pin, and a1's own
    h.add("b1", b1, max_tokens=BLOCK)
    h.finish("b1")
    # Both found their prefix cached, each from its own program's pin.
    assert h.cached_tokens["a1"] >= 4 * BLOCK and h.cached_tokens["b1"] >= 4 * BLOCK
    assert h.metrics()["pins"]["hit"] == hits + 2
    turn1 = [a for a in h.metrics()["admissions"] if a["turn"] == 1][-2:]
    assert turn1[0]["program_id"] != turn1[1]["program_id"]  # two programs
    h.clock.advance(GAP_S)
    h.add("a2", turn(a1, h.outputs["a1"], "tool-a2"), max_tokens=BLOCK)
    h.finish("a2")
    assert h.metrics()["admissions"][-1]["program_id"] == turn1[0]["program_id"]  # told apart now
    h.clock.advance(3600)
    h.program_aware.tick()
    assert h.metrics()["pins"]["active"] == 0 and h.scheduler.num_free_blocks() == free_start


def test_a_reused_session_id_yields_separate_chains_and_no_stale_pin(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=128)
    first = run_chain(h, "conv1", 3, session="user-42")
    second = run_chain(h, "conv2", 2, session="user-42")  # the same id, an unrelated conversation
    admissions = {a["program_id"] for a in h.metrics()["admissions"]}
    assert len(admissions) == 2  # two programs under one session id
    assert h.cached_tokens[second[0]] == 0  # nothing of conv1's pinned KV is served to conv2
    assert h.metrics()["requests"]["by_session"] == len(first) + len(second)


def test_sessions_are_pinned_by_their_own_gaps(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=128)
    for p in range(3):
        run_chain(h, f"s{p}", 4, session=f"session-{p}")
    assert h.metrics()["pins"]["created"] > 0
    assert h.metrics()["requests"]["by_chain"] == 0  # a session's requests are the session's


def test_a_client_that_disconnects_leaves_no_blocks_behind(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=128)
    warm_up(h)
    h.clock.advance(3600)
    h.program_aware.tick()
    free_start = h.scheduler.num_free_blocks()
    prompt = token_prompt(3 * BLOCK, "gone")
    h.add("gone-0", prompt, max_tokens=BLOCK)
    h.finish("gone-0")
    h.clock.advance(GAP_S)
    h.add("gone-1", turn(prompt, h.outputs["gone-0"], "gone-tool"), max_tokens=4 * BLOCK)
    h.run(until=lambda: len(h.outputs["gone-1"]) >= 3)  # mid-stream
    h.abort("gone-1")
    h.step()
    h.clock.advance(3600)  # past any TTL
    h.program_aware.tick()
    assert h.metrics()["pins"]["active"] == 0 and h.scheduler.num_free_blocks() == free_start


@pytest.mark.parametrize(
    ("knobs", "session", "expect"),
    [
        ({"identify_by_chain": False}, None, "without_metadata"),
        ({"identify_by_session": False}, "s", "by_chain"),
        ({"identify_by_session": False, "identify_by_chain": False}, "s", "without_metadata"),
        ({}, "s", "by_session"),
    ],
)
def test_each_way_can_be_switched_off(model_dir: Path, knobs: dict[str, Any], session: str | None, expect: str) -> None:
    h = harness(model_dir, num_blocks=128, knobs=knobs)
    run_chain(h, "c", 4, session=session)
    requests = h.metrics()["requests"]
    assert requests[expect] >= 3
    others = {"with_metadata", "by_session", "by_chain", "without_metadata"} - {expect}
    if expect != "without_metadata":
        others -= {"without_metadata"}  # first turns of a chain are plain until learned
    assert all(requests[key] == 0 for key in others)


def test_program_fields_switched_off_are_ignored(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=128, knobs={"identify_by_fields": False, "identify_by_chain": False})
    h.add("f0", token_prompt(3 * BLOCK, "fields"), extra_args=program_metadata("P", 0))
    h.run()
    assert h.metrics()["requests"]["with_metadata"] == 0 and h.metrics()["pins"]["created"] == 0


def test_every_turn_is_attributed_to_its_program_the_first_one_once_continued(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=128)
    first = run_chain(h, "one", 3)  # a fresh scheduler: the first turn is plain when it arrives
    second = run_chain(h, "two", 3)
    attributions = h.metrics()["attributions"]
    programs = [{attributions[request_id] for request_id in ids} for ids in (first, second)]
    assert all(len(p) == 1 and None not in p for p in programs), attributions
    assert programs[0] != programs[1]


def test_an_agent_that_throws_its_reply_away_and_asks_again_stays_one_program(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=128)
    warm_up(h)  # turns are continued here: a new request starts a program of its own at once
    generation_prompt = token_prompt(3, "assistant-header")
    history = token_prompt(4 * BLOCK, "reask:task")
    ids = []
    for i in range(3):  # each reply unusable: the same messages again, plus the error as a new message
        request_id = f"reask-{i}"
        h.add(request_id, history + generation_prompt, max_tokens=BLOCK)
        h.finish(request_id)
        ids.append(request_id)
        h.clock.advance(GAP_S)
        history = history + token_prompt(BLOCK, f"reask:error{i}")
    attributions = h.metrics()["attributions"]
    assert len({attributions[request_id] for request_id in ids}) == 1 and attributions[ids[0]] is not None
