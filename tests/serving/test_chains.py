"""Prompt chains and turn gaps (`serving._chains`), pure: which finished request a new prompt continues."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest

from serving._chains import OUTPUT_TOKENS_CHECKED, ChainIndex, GapModel

B = 4  # tokens per block


def hashes(tokens: Sequence[int]) -> list[bytes]:
    """Chained block hashes, as vLLM computes them: block i's hash covers every token up to its end."""
    out: list[bytes] = []
    parent = b""
    for i in range(len(tokens) // B):
        parent = hashlib.sha256(parent + repr(tuple(tokens[i * B : (i + 1) * B])).encode()).digest()
        out.append(parent)
    return out


def finish(index: ChainIndex, prompt: list[int], output: list[int], *, now_s: float = 0.0, **kw: object) -> object:
    fields = {"request_id": "r", "program_id": None, "session": None, "turn": 0, "program_arrival_s": 1.0, **kw}
    return index.add(hashes=hashes(prompt + output), prompt=prompt, output=output, block_size=B, now_s=now_s, **fields)


def find(index: ChainIndex, prompt: list[int], session: str | None = None) -> object:
    return index.find(hashes(prompt), prompt, block_size=B, session=session)


def test_a_next_turn_continues_its_previous_turn() -> None:
    index = ChainIndex(horizon_s=60)
    prompt, output, tool = list(range(10)), [100, 101, 102, 103, 104, 105], [200, 201, 202]
    link = finish(index, prompt, output)
    match = find(index, prompt + output + tool)
    assert match is not None and match.link is link
    assert match.depth == len(prompt + output) // B  # every full block it shares


def test_the_same_prompt_again_continues_nothing() -> None:
    index = ChainIndex(horizon_s=60)
    prompt = list(range(10))
    finish(index, prompt, [100, 101, 102])
    assert find(index, prompt) is None  # a second program with the same system prompt and first message


def test_another_turn_after_the_same_prefix_is_not_a_continuation() -> None:
    index = ChainIndex(horizon_s=60)
    system = list(range(8))  # two full blocks: the link's boundary sits inside the shared system prompt
    finish(index, system + [50, 51], [100, 101, 102])
    assert find(index, system + [60, 61, 62, 63, 64, 65, 66, 67, 68, 69]) is None  # long, but a different task
    assert find(index, system + [50, 51, 300, 301, 302, 303]) is None  # its prompt, but not its output


def test_a_short_output_that_fills_no_block_still_chains() -> None:
    index = ChainIndex(horizon_s=60)
    prompt = list(range(9))  # 2 full blocks + 1 token
    link = finish(index, prompt, [100])  # 10 tokens: no full block past the prompt's
    match = find(index, prompt + [100, 7, 7, 7])
    assert match is not None and match.link is link


def test_only_the_first_output_tokens_must_repeat() -> None:
    index = ChainIndex(horizon_s=60)
    prompt = list(range(8))
    output = list(range(100, 100 + OUTPUT_TOKENS_CHECKED + 6))
    link = finish(index, prompt, output)
    retokenized = output[:OUTPUT_TOKENS_CHECKED] + [999, 998]  # a chat template re-tokenized the rest
    match = find(index, prompt + retokenized + [200, 201])
    assert match is not None and match.link is link


def test_sessions_partition_the_links() -> None:
    index = ChainIndex(horizon_s=60)
    prompt, output = list(range(8)), [100, 101]
    finish(index, prompt, output, session="s1")
    assert find(index, prompt + output + [5], session="s2") is None
    assert find(index, prompt + output + [5], session=None) is None
    assert find(index, prompt + output + [5], session="s1") is not None


def test_identical_programs_take_one_link_each_then_part_when_they_differ() -> None:
    index = ChainIndex(horizon_s=60)
    prompt, output = list(range(8)), [100, 101, 102, 103]
    a = finish(index, prompt, output, program_id="A", now_s=1.0)
    b = finish(index, prompt, output, program_id="B", now_s=2.0)
    first = find(index, prompt + output + [7, 7, 7, 7])
    assert first is not None and first.link is a  # the oldest unclaimed
    assert index.claim(first.link)
    second = find(index, prompt + output + [8, 8, 8, 8])
    assert second is not None and second.link is b  # the one no continuation claimed yet
    assert index.claim(second.link)
    # Once their prompts differ, each continuation matches its own program's link deepest.
    a2_prompt = prompt + output + [7, 7, 7, 7] + [110, 111, 112, 113]
    finish(index, prompt + output + [7, 7, 7, 7], [110, 111, 112, 113], program_id="A", turn=1, now_s=3.0)
    finish(index, prompt + output + [8, 8, 8, 8], [120, 121, 122, 123], program_id="B", turn=1, now_s=3.0)
    third = find(index, a2_prompt + [9, 9])
    assert third is not None and third.link.program_id == "A" and third.link.turn == 1


def test_a_claimed_link_still_matches_a_retry_or_a_branch() -> None:
    index = ChainIndex(horizon_s=60)
    prompt, output = list(range(8)), [100, 101]
    link = finish(index, prompt, output)
    assert index.claim(link) is True
    match = find(index, prompt + output + [3])
    assert match is not None and match.link is link
    assert index.claim(link) is False  # only the first claim counts as a gap sample


def test_prompts_shorter_than_a_block_are_not_indexed() -> None:
    index = ChainIndex(horizon_s=60)
    assert finish(index, [1, 2, 3], [4, 5]) is None
    assert len(index) == 0


def test_links_expire_after_the_horizon_and_unclaimed_ones_are_reported() -> None:
    index = ChainIndex(horizon_s=10)
    kept = finish(index, list(range(8)), [1], now_s=0.0)
    lost = finish(index, list(range(20, 28)), [1], now_s=1.0)
    index.claim(kept)
    assert index.expire(5.0) == []
    assert index.expire(11.5) == [lost]
    assert len(index) == 0
    assert find(index, list(range(8)) + [1, 2]) is None


def test_the_index_is_bounded() -> None:
    index = ChainIndex(horizon_s=60, max_links=3)
    for i in range(5):
        finish(index, [i] * 8, [1])
    assert len(index) == 3
    assert find(index, [0] * 8 + [1, 5]) is None  # the oldest went first
    assert find(index, [4] * 8 + [1, 5]) is not None


def test_forgetting_a_program_drops_its_links() -> None:
    index = ChainIndex(horizon_s=60)
    finish(index, list(range(8)), [1], program_id="P")
    index.forget_program("P")
    assert find(index, list(range(8)) + [1, 2]) is None


# -- gaps ---------------------------------------------------------------------------------------------


def test_p_next_starts_pessimistic_and_learns_both_ways() -> None:
    gaps = GapModel(min_samples=3)
    assert gaps.p_next(None) == pytest.approx(0.25)
    for _ in range(12):
        gaps.observe_gap(None, 0.5)
    assert gaps.p_next(None) > 0.75
    single = GapModel(min_samples=3)
    for _ in range(12):
        single.observe_no_next(None)
    assert single.p_next(None) < 0.1


def test_no_gap_distribution_until_enough_samples() -> None:
    gaps = GapModel(min_samples=3)
    gaps.observe_gap(None, 1.0)
    gaps.observe_gap(None, 1.0)
    assert gaps.distribution(None) is None
    gaps.observe_gap(None, 1.0)
    dist = gaps.distribution(None)
    assert dist is not None and dist.quantile(0.5) == pytest.approx(1.0, rel=0.05)


def test_a_session_with_its_own_samples_uses_them() -> None:
    gaps = GapModel(min_samples=3)
    for _ in range(5):
        gaps.observe_gap(None, 0.2)
        gaps.observe_gap("slow", 20.0)
        gaps.observe_no_next("never")
    slow, shared = gaps.distribution("slow"), gaps.distribution("new-session")
    assert slow is not None and shared is not None
    assert slow.quantile(0.5) == pytest.approx(20.0, rel=0.05)
    assert shared.quantile(0.5) < slow.quantile(0.5)  # a session with no samples of its own: every gap
    assert gaps.p_next("slow") > gaps.p_next("never")


def test_non_finite_or_negative_gaps_are_ignored() -> None:
    gaps = GapModel(min_samples=1)
    gaps.observe_gap(None, float("nan"))
    gaps.observe_gap(None, -1.0)
    assert gaps.num_gaps == 0 and gaps.distribution(None) is None


# -- re-asks: the reply thrown away, a new message instead ------------------------------------------------

GENERATION_PROMPT = [7001, 7002, 7003]  # what a chat template appends to ask for the assistant's turn


def test_a_reask_without_the_reply_continues_the_link() -> None:
    index = ChainIndex(horizon_s=60)
    history = list(range(100, 124))  # 24 tokens: 6 blocks
    link = finish(index, history + GENERATION_PROMPT, [500, 501, 502], program_id="P")
    reask = history + [7004, 7005, 7006, 7007, 7008]  # the same messages, then "format error" as a user turn
    match = find(index, reask)
    assert match is not None and match.link is link and match.reask
    plain = ChainIndex(horizon_s=60)
    finish(plain, history + GENERATION_PROMPT, [500, 501, 502])  # not known to be a program's turn
    assert find(plain, reask) is None


def test_a_continuation_ranks_above_a_reask() -> None:
    index = ChainIndex(horizon_s=60)
    history = list(range(100, 124))
    first = finish(index, history + GENERATION_PROMPT, [500, 501, 502], now_s=1.0, program_id="P")
    continued = history + GENERATION_PROMPT + [500, 501, 502] + [9, 9, 9, 9]
    second = finish(
        index, continued, [600, 601], now_s=2.0, program_id="P", turn=1
    )  # its next turn, which a re-ask of it would also fit
    match = find(index, continued + [600, 601, 8, 8])
    assert match is not None and match.link is second and not match.reask
    assert find(index, history + [7004, 7005, 7006, 7007]).link is first  # the re-ask of the first


def test_the_same_prompt_again_is_no_reask() -> None:
    index = ChainIndex(horizon_s=60)
    history = list(range(100, 124))
    finish(index, history + GENERATION_PROMPT, [500], program_id="P")
    assert find(index, history + GENERATION_PROMPT) is None  # a new program's identical first turn
    assert find(index, history[:12] + list(range(1, 17))) is None  # diverges well before its last tokens
