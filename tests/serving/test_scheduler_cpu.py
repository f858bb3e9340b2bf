"""The program-aware scheduler on the CPU harness: pins, hand-off, expiry, reclaim, admission, order.

No model and no engine (`scheduler_harness`): each test builds a scheduler over a small KV pool,
drives `schedule()`/`update_from_output()` by hand, and the invariants are checked after every
step. Times are a fake clock's, so TTLs and expiry are exact. Block size 16.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from scheduler_harness import BLOCK, Harness, build_scheduler, program_metadata, tiny_model_dir, token_prompt

from agentflow.exceptions import UserError
from serving._control import SchedulerControl
from serving._scheduler import ProgramAwareAsyncScheduler, ProgramAwareScheduler

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("model"))


def harness(model_dir: Path, **options: Any) -> Harness:
    return Harness(build_scheduler(model_dir, **options))


def md(program: str, turn: int, h: Harness, **fields: Any) -> dict[str, Any]:
    """Program metadata as the runtime sends it: the program's arrival is its first request's, by default.

    (The scheduler ranks a program by when it first saw it: a claimed earlier arrival does not count.)
    """
    fields.setdefault("program_arrival_s", h.clock.unix())
    return program_metadata(program, turn, **fields)


def next_prompt(prompt: list[int], output: list[int], key: str, num_tool_tokens: int = 20) -> list[int]:
    return [*prompt, *output, *token_prompt(num_tool_tokens, key)]


# -- the scheduler is a control plane -------------------------------------------------------------------


def test_the_scheduler_is_a_scheduler_control(model_dir: Path) -> None:
    h = harness(model_dir)
    assert isinstance(h.scheduler, SchedulerControl)
    assert h.metrics()["kv"]["num_blocks"] == 63  # less vLLM's null block


# -- pinning ------------------------------------------------------------------------------------------


def test_a_pinned_turn_two_hits_under_pressure_where_stock_gets_nothing(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=41, knobs={"fixed_ttl_s": 600})
    prompt, plain_prompt = token_prompt(10 * BLOCK, "pinned"), token_prompt(10 * BLOCK, "plain")
    h.add("p-0", prompt, extra_args=md("p", 0, h))
    h.add("plain-0", plain_prompt)  # the same program without metadata: stock vLLM
    h.run()
    assert h.metrics()["pins"]["blocks_pinned"] == 10
    for i in range(3):  # other work that needs most of the pool: the LRU evicts everything unpinned
        h.add(f"filler-{i}", token_prompt(28 * BLOCK, f"filler{i}"))
        h.run()
    h.add("p-1", next_prompt(prompt, h.outputs["p-0"], "tool"), extra_args=md("p", 1, h, is_last_turn=True))
    h.add("plain-1", next_prompt(plain_prompt, h.outputs["plain-0"], "tool"))
    h.run()
    assert h.cached_tokens["p-1"] == 10 * BLOCK
    assert h.cached_tokens["plain-1"] == 0
    pins = h.metrics()["pins"]
    assert pins["hit"] == 1 and pins["active"] == 0 and pins["hit_tokens"] == 10 * BLOCK


def test_only_full_blocks_are_pinned_and_the_hand_off_releases_the_pin(model_dir: Path) -> None:
    h = harness(model_dir, knobs={"fixed_ttl_s": 600})
    free_start = h.scheduler.num_free_blocks()
    prompt = token_prompt(8 * BLOCK + 5, "handoff")
    h.add("t0", prompt, extra_args=md("p", 0, h, next_tool="grep"))
    h.run()
    pins = h.metrics()["pins"]
    assert pins["active"] == 1 and pins["blocks_pinned"] == 8  # the partial tail was freed at once
    assert h.scheduler.num_free_blocks() == free_start - 8
    h.add("t1", next_prompt(prompt, h.outputs["t0"], "tool"), extra_args=md("p", 1, h))
    h.step()  # admitted: it references the pinned blocks itself, so the pin lets go
    assert h.cached_tokens["t1"] == 8 * BLOCK
    assert h.metrics()["pins"]["hit"] == 1
    h.run()
    pins = h.metrics()["pins"]
    assert pins["active"] == 1 and pins["created"] == 2  # turn 1 pinned too: a tool follows it
    summary = h.program_aware.end_program("p")
    assert summary["pins_created"] == 2 and summary["pins_hit"] == 1 and summary["known"]
    assert h.metrics()["pins"]["active"] == 0
    h.step()
    assert h.scheduler.num_free_blocks() == free_start


def test_a_pin_expires_at_its_ttl_when_its_program_sends_nothing(model_dir: Path) -> None:
    h = harness(model_dir, knobs={"fixed_ttl_s": 1.0})
    free_start = h.scheduler.num_free_blocks()
    h.add("t0", token_prompt(6 * BLOCK, "expiry"), extra_args=md("p", 0, h))
    h.run()
    assert h.metrics()["pins"]["active"] == 1
    assert h.program_aware.next_wakeup_s() == pytest.approx(1.0)
    h.clock.advance(0.9)
    h.program_aware.tick()
    assert h.metrics()["pins"]["active"] == 1  # not yet
    h.clock.advance(0.2)
    h.program_aware.tick()
    pins = h.metrics()["pins"]
    assert pins["expired"] == 1 and pins["active"] == 0
    assert pins["pinned_block_s"] == pytest.approx(6 * 1.1)
    assert h.scheduler.num_free_blocks() == free_start


def test_a_waiting_turn_keeps_its_pin_past_the_ttl(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=24, knobs={"fixed_ttl_s": 1.0})
    prompt = token_prompt(6 * BLOCK, "pending")
    h.add("t0", prompt, extra_args=md("p", 0, h))
    h.run()
    h.add("blocker", token_prompt(16 * BLOCK, "blocker"), max_tokens=40)  # holds the pool a while
    h.step()
    h.add("t1", next_prompt(prompt, h.outputs["t0"], "tool"), extra_args=md("p", 1, h, is_last_turn=True))
    h.clock.advance(5.0)
    h.run()
    assert h.metrics()["pins"]["expired"] == 0  # its next turn was waiting for it: a pending hand-off
    assert h.cached_tokens["t1"] == 6 * BLOCK


def test_the_cost_model_pins_for_about_a_tool_pause_when_memory_is_free(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=256)
    h.add("t0", token_prompt(4 * BLOCK, "ttl"), extra_args=md("p", 0, h, next_tool="never-seen"))
    h.run()
    [pin] = h.metrics()["recent_pins"]
    # An unseen tool: the prior (real mini-swe-agent pauses, p90 0.45 s, p99 3.4 s) decides.
    assert 0.4 < pin["ttl_s"] <= 30 + 0.05
    assert pin["p_tool_done"] >= 0.9 and pin["num_blocks"] == 4 and pin["next_tool"] == "never-seen"


def test_a_learned_tool_duration_sets_the_ttl(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=256)
    for _ in range(10):
        h.program_aware.observe_tool_duration("slow", 8.0)
    h.add("t0", token_prompt(4 * BLOCK, "slow"), extra_args=md("p", 0, h, next_tool="slow"))
    h.run()
    [pin] = h.metrics()["recent_pins"]
    assert 8.0 <= pin["ttl_s"] <= 8.0 + 0.1


def test_pins_are_reclaimed_for_an_older_program_instead_of_stalling(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=41, knobs={"fixed_ttl_s": 600})
    h.add("old-0", token_prompt(2 * BLOCK, "old"), extra_args=md("old", 0, h, next_tool=None))  # seen first
    h.run()
    h.clock.advance(1.0)
    h.add("young-0", token_prompt(10 * BLOCK, "young"), extra_args=md("young", 0, h))
    h.run()
    # 35 blocks do not fit beside the 10-block pin (30 free). The older program outranks the pin's:
    # the pin goes, long before its TTL, and the request runs.
    h.clock.advance(1.0)
    h.add("old-1", token_prompt(35 * BLOCK, "big"), extra_args=md("old", 1, h, is_last_turn=True))
    h.finish("old-1")
    pins = h.metrics()["pins"]
    assert pins["reclaimed"] == 1 and pins["active"] == 0
    assert pins["reclaimed_for"]["admission"] == 1


def test_a_younger_request_waits_for_an_older_programs_pin_to_expire(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=41, knobs={"fixed_ttl_s": 1.5})
    h.add("elder-0", token_prompt(10 * BLOCK, "elder"), extra_args=md("elder", 0, h))
    h.run()
    h.clock.advance(0.1)
    h.add("younger", token_prompt(35 * BLOCK, "younger"))  # plain, arriving now: younger than the program
    h.finish("younger")  # the scheduler naps on the fake clock while it waits
    pins = h.metrics()["pins"]
    assert pins["expired"] == 1 and pins["reclaimed"] == 0
    assert h.clock.now_s >= 1.5  # it waited for the pin's TTL (pinned at 0 s for 1.5 s), then ran


def test_reset_prefix_cache_releases_pins_and_keeps_the_block_limit(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=128, knobs={"fixed_ttl_s": 600, "kv_block_limit": 100})
    prompt = token_prompt(5 * BLOCK, "reset")
    h.add("t0", prompt, extra_args=md("p", 0, h))
    h.run()
    assert h.metrics()["pins"]["active"] == 1
    assert h.scheduler.reset_prefix_cache() is True
    metrics = h.metrics()
    assert metrics["pins"]["active"] == 0 and metrics["kv"]["held_back_blocks"] == 27
    h.add("again", next_prompt(prompt, h.outputs["t0"], "tool"))
    h.run()
    assert h.cached_tokens["again"] == 0  # the cache really was reset


def test_parallel_branches_of_one_program_keep_their_own_pins(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=128, knobs={"fixed_ttl_s": 600})
    free_start = h.scheduler.num_free_blocks()
    shared = token_prompt(4 * BLOCK, "shared")
    prompts = [shared + token_prompt(3 * BLOCK, f"branch{i}") for i in range(3)]
    for i, prompt in enumerate(prompts):
        h.add(f"b{i}", prompt, extra_args=md("p", i, h, next_tool=f"tool{i}"))
    h.run()
    assert h.metrics()["pins"]["active"] == 3  # the shared prefix is referenced by all three
    for i, prompt in enumerate(prompts):
        h.add(f"c{i}", next_prompt(prompt, h.outputs[f"b{i}"], f"t{i}"), extra_args=md("p", 3 + i, h))
    h.run()
    assert all(h.cached_tokens[f"c{i}"] == 7 * BLOCK for i in range(3))
    assert h.metrics()["pins"]["hit"] == 3
    h.program_aware.end_program("p")
    h.step()
    assert h.metrics()["pins"]["active"] == 0 and h.scheduler.num_free_blocks() == free_start


def test_two_programs_with_one_system_prompt_keep_each_others_blocks(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=128, knobs={"fixed_ttl_s": 600})
    system = token_prompt(4 * BLOCK, "system")
    a, b = system + token_prompt(2 * BLOCK, "task-a"), system + token_prompt(2 * BLOCK, "task-b")
    h.add("a0", a, extra_args=md("A", 0, h))
    h.add("b0", b, extra_args=md("B", 0, h))
    h.run()
    h.add("a1", next_prompt(a, h.outputs["a0"], "ta"), extra_args=md("A", 1, h, is_last_turn=True))
    h.run()  # A's hand-off releases A's pin only: B's pin still holds the shared system prompt
    h.add("b1", next_prompt(b, h.outputs["b0"], "tb"), extra_args=md("B", 1, h, is_last_turn=True))
    h.run()
    assert h.cached_tokens["a1"] >= 6 * BLOCK and h.cached_tokens["b1"] >= 6 * BLOCK


# -- admission control -----------------------------------------------------------------------------------


def test_a_cold_younger_program_waits_for_room_beside_an_older_resident_one(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=41, knobs={"fixed_ttl_s": 600})
    h.add("older-0", token_prompt(10 * BLOCK, "resident"), extra_args=md("older", 0, h))
    h.run()
    # 26 blocks fit beside the 10-block pin (30 free), so vLLM alone would admit it; not beside the
    # older program's growth reserve (8 turns x 2 blocks + 1) plus its own: admission control holds it.
    h.clock.advance(1.0)
    h.add("busy", token_prompt(BLOCK // 2, "busy"), max_tokens=60)  # the engine has work: holding idles nothing
    h.step()
    cold = md("cold", 0, h, is_last_turn=True)
    h.add("cold-0", token_prompt(25 * BLOCK, "cold"), extra_args=cold)
    for _ in range(5):
        h.step()
    assert "cold-0" not in h.admitted
    assert h.metrics()["requests"]["held_by_admission_control"] == 1
    assert h.metrics()["pins"]["active"] == 1  # the older pin stays
    h.program_aware.end_program("older")  # room again: the held request runs
    h.finish("cold-0")
    assert h.metrics()["pins"]["reclaimed"] == 0


def test_nothing_is_held_while_nothing_runs_and_the_older_pin_stays(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=41, knobs={"fixed_ttl_s": 600})
    h.add("older-0", token_prompt(10 * BLOCK, "resident"), extra_args=md("older", 0, h))
    h.run()
    h.clock.advance(1.0)
    # The same cold request as above, but the older program is away at its tool and nothing runs:
    # holding it would leave the engine idle. vLLM's own rule admits it beside the pin.
    h.add("cold-0", token_prompt(25 * BLOCK, "cold"), extra_args=md("cold", 0, h, is_last_turn=True))
    h.step()
    assert "cold-0" in h.admitted
    assert h.metrics()["requests"]["held_by_admission_control"] == 0
    h.finish("cold-0")
    assert h.metrics()["pins"]["active"] == 1 and h.metrics()["pins"]["reclaimed"] == 0


def test_with_reserve_turns_zero_vllms_rule_admits_what_fits(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=41, knobs={"fixed_ttl_s": 600, "reserve_turns": 0})
    h.add("older-0", token_prompt(10 * BLOCK, "resident"), extra_args=md("older", 0, h))
    h.run()
    h.clock.advance(1.0)
    h.add("cold-0", token_prompt(25 * BLOCK, "cold"), extra_args=md("cold", 0, h))
    h.step()
    assert "cold-0" in h.admitted


# -- order ------------------------------------------------------------------------------------------


def _admission_order(h: Harness, programs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Queue `programs` behind a running request that leaves room for one at a time; their admission order."""
    h.add("blocker", token_prompt(19 * BLOCK, "blocker"), max_tokens=24)
    h.step()
    for name, extra in programs:
        h.add(name, token_prompt(19 * BLOCK, name), extra_args=extra)
        h.clock.advance(0.001)  # submitted one after another
    h.run()
    names = {name for name, _ in programs}
    return [r for r in h.admitted if r in names]


def test_program_fcfs_admits_by_program_arrival(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=41)
    for name in ("B", "C", "A"):  # the programs begin B, C, A: their first turns
        h.add(f"{name}-0", token_prompt(BLOCK, f"{name}-0"), max_tokens=1, extra_args=md(name, 0, h, next_tool=None))
        h.run()
        h.clock.advance(1.0)
    programs = [(name, md(name, 1, h, is_last_turn=True)) for name in ("A", "B", "C")]  # next turns: A, B, C
    assert _admission_order(h, programs) == ["B", "C", "A"]


def test_a_claimed_early_arrival_does_not_jump_the_queue(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=41)
    honest = md("honest", 0, h, is_last_turn=True)
    h.clock.advance(1.0)
    liar = md("liar", 0, h, program_arrival_s=0.0, is_last_turn=True)  # "began in 1970"
    assert _admission_order(h, [("honest", honest), ("liar", liar)]) == ["honest", "liar"]


def test_a_deadline_in_the_past_ranks_no_higher_than_the_most_urgent_honest_one(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=41)
    h.add("old-0", token_prompt(BLOCK, "old-0"), max_tokens=1, extra_args=md("old", 0, h, next_tool=None))
    h.run()
    h.clock.advance(600.0)  # the old program began 10 minutes ago: longer than any request here takes
    old = md("old", 1, h, is_last_turn=True)
    past = md("past", 0, h, is_last_turn=True, deadline_at_s=1.0)  # "due in 1970"
    # Clamped to now, the deadline makes "past" as urgent as an honest request can be (latest start:
    # now less its run time), which is not ahead of a program that has waited longer than that.
    assert _admission_order(h, [("old", old), ("past", past)]) == ["old", "past"]


def test_urgency_admits_the_least_slack_first(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=41)
    now = h.clock.unix()
    programs = [  # submitted and begun far, mid, near, path: FCFS would keep that order
        (name, md(name, 0, h, program_arrival_s=now - 50 + i, is_last_turn=True, deadline_at_s=now + d, **path))
        for i, (name, d, path) in enumerate(
            (
                ("far", 1000.0, {}),
                ("mid", 200.0, {}),
                ("near", 20.0, {}),
                ("path", 200.0, {"critical_path_s": 150.0}),
            )
        )
    ]
    # "path" has 200 s left but a 150 s critical path ahead: its own share of the slack is the smallest.
    assert _admission_order(h, programs) == ["path", "near", "mid", "far"]


def test_with_urgency_off_deadlines_do_not_reorder(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=41, knobs={"urgency": False})
    now = h.clock.unix()
    programs = [
        (name, md(name, 0, h, program_arrival_s=now - 50 + i, is_last_turn=True, deadline_at_s=now + d))
        for i, (name, d) in enumerate((("far", 1000.0), ("near", 20.0)))
    ]
    assert _admission_order(h, programs) == ["far", "near"]


def test_preemption_takes_the_youngest_program(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=33, max_num_batched_tokens=512)
    h.add("old-0", token_prompt(BLOCK, "old-0"), max_tokens=1, extra_args=md("old", 0, h, next_tool=None))
    h.run()  # the old program begins
    h.clock.advance(1.0)
    # The young program's first turn reaches the engine and runs; the old program's next turn joins
    # it. Both fit at first (30 of 32 blocks), then outgrow the pool: one is preempted. Stock FCFS
    # would preempt the one admitted last (the old program's); program FCFS preempts the young one.
    h.add("young", token_prompt(15 * BLOCK, "young"), max_tokens=48, extra_args=md("young", 0, h, is_last_turn=True))
    h.step()
    h.add("old", token_prompt(15 * BLOCK, "old"), max_tokens=48, extra_args=md("old", 1, h, is_last_turn=True))
    h.run()
    assert h.preempted and set(h.preempted) == {"young"}
    assert h.finished[-2:] == ["old", "young"]


# -- bad input, faults, knobs ---------------------------------------------------------------------------


def test_malformed_metadata_that_reaches_the_scheduler_is_scheduled_as_plain(model_dir: Path) -> None:
    h = harness(model_dir)
    h.add("raw", token_prompt(40, "raw"), extra_args={"program_id": "p", "turn": -3})
    h.run()
    metrics = h.metrics()
    assert metrics["requests"]["metadata_rejected"] == 1 and metrics["requests"]["without_metadata"] == 1
    assert h.finished == ["raw"]


def test_a_rejected_knob_change_leaves_every_knob_as_it_was(model_dir: Path) -> None:
    h = harness(model_dir, knobs={"fixed_ttl_s": 3.0})
    before = h.metrics()["knobs"]
    with pytest.raises(UserError, match="bogus"):
        h.program_aware.configure(fixed_ttl_s=5.0, bogus=True)
    assert h.metrics()["knobs"] == before


def test_turning_pinning_off_releases_every_pin(model_dir: Path) -> None:
    h = harness(model_dir, knobs={"fixed_ttl_s": 600})
    h.add("t0", token_prompt(4 * BLOCK, "off"), extra_args=md("p", 0, h))
    h.run()
    assert h.metrics()["pins"]["active"] == 1
    h.program_aware.configure(pinning=False)
    assert h.metrics()["pins"]["active"] == 0 and h.metrics()["pins"]["released_other"] == 1


def test_a_lower_block_limit_keeps_pins_under_the_smaller_cap(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=128, knobs={"fixed_ttl_s": 600})
    for i in range(4):
        h.add(f"t{i}", token_prompt(10 * BLOCK, f"cap{i}"), extra_args=md(f"p{i}", 0, h))
    h.run()
    assert h.metrics()["pins"]["blocks_pinned"] == 40
    h.program_aware.configure(kv_block_limit=40)  # cap 0.9 x 40 = 36 blocks
    h.step()  # the invariants (checked every step) include the cap
    assert h.metrics()["pins"]["blocks_pinned"] <= 36


def test_no_blocks_leak_after_aborts_and_ends(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=64, knobs={"fixed_ttl_s": 600})
    free_start = h.scheduler.num_free_blocks()
    for i in range(6):
        h.add(f"r{i}", token_prompt(5 * BLOCK + i, f"leak{i}"), max_tokens=30, extra_args=md(f"p{i}", 0, h))
    h.step()
    h.step()
    h.abort("r1")
    h.abort("r4")
    h.run()
    for i in range(6):
        h.program_aware.end_program(f"p{i}")
    h.step()
    assert h.scheduler.num_free_blocks() == free_start
    assert h.metrics()["pins"]["active"] == 0


def test_soak_200_programs_under_pressure_with_random_aborts(model_dir: Path) -> None:
    h = harness(model_dir, num_blocks=49, knobs={"fixed_ttl_s": 0.05})
    free_start = h.scheduler.num_free_blocks()
    rng = random.Random(7)
    live: dict[str, tuple[int, int, list[int], str]] = {}  # program -> (turn, turns, prompt, request id)
    started = 0
    aborted = 0
    while started < 200 or live:
        while started < 200 and len(live) < 24:
            program = f"s{started}"
            prompt = token_prompt(64 + rng.randrange(32), program)
            turns = 2 + started % 2
            request_id = f"{program}-0"
            h.add(request_id, prompt, extra_args=md(program, 0, h, is_last_turn=turns == 1))
            live[program] = (0, turns, prompt, request_id)
            started += 1
        h.step()
        h.clock.advance(rng.random() * 0.02)
        for program, (turn, turns, prompt, request_id) in list(live.items()):
            if request_id not in h.finished:
                if rng.random() < 0.004:
                    h.abort(request_id)
                    h.program_aware.end_program(program)
                    aborted += 1
                    del live[program]
                continue
            if turn + 1 == turns:
                h.program_aware.end_program(program)
                del live[program]
                continue
            prompt = next_prompt(prompt, h.outputs[request_id], f"{request_id}-tool", 16)
            next_id = f"{program}-{turn + 1}"
            h.add(next_id, prompt, extra_args=md(program, turn + 1, h, is_last_turn=turn + 2 == turns))
            live[program] = (turn + 1, turns, prompt, next_id)
    h.clock.advance(1.0)
    h.program_aware.tick()
    h.step()
    assert aborted > 0
    assert not h.scheduler.has_unfinished_requests()
    assert h.scheduler.num_free_blocks() == free_start
    pins = h.metrics()["pins"]
    assert pins["active"] == 0 and pins["blocks_pinned"] == 0 and pins["hit"] > 0


def test_one_class_name_builds_the_async_scheduler_for_async_engines(model_dir: Path) -> None:
    scheduler = build_scheduler(model_dir, async_scheduling=True)
    assert type(scheduler) is ProgramAwareAsyncScheduler
    assert type(build_scheduler(model_dir)) is ProgramAwareScheduler
