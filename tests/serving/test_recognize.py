"""`serving._recognize.ProgramRecognizer`, pure: naming programs from sessions and prompt chains."""

from __future__ import annotations

import hashlib

from serving._recognize import ProgramRecognizer

B = 4


def hashes(tokens: list[int]) -> list[bytes]:
    out, parent = [], b""
    for i in range(len(tokens) // B):
        parent = hashlib.sha256(parent + repr(tuple(tokens[i * B : (i + 1) * B])).encode()).digest()
        out.append(parent)
    return out


def recognizer() -> ProgramRecognizer:
    return ProgramRecognizer(horizon_s=60, window=64, min_samples=2)


def recognize(r: ProgramRecognizer, prompt: list[int], *, session: str | None = None, now_s: float = 0.0) -> object:
    return r.recognize(
        session=session, hashes=hashes(prompt), prompt=prompt, block_size=B, arrival_s=100.0, now_s=now_s, by_chain=True
    )


def test_session_keys_are_digests_and_bad_ids_are_none() -> None:
    key = ProgramRecognizer.session_key("user-42")
    assert key is not None and "user-42" not in key and key == ProgramRecognizer.session_key("user-42")
    assert all(ProgramRecognizer.session_key(bad) is None for bad in (None, "", "x" * 10_000, 7))


def test_a_plain_first_turn_is_named_when_continued_and_attributed_back() -> None:
    r = recognizer()
    prompt = list(range(8))
    assert recognize(r, prompt) is None  # nothing continues yet, and P(next turn) is low: plain
    r.attribute("first", None)
    r.finished(
        request_id="first", program=None, hashes=hashes(prompt + [50, 51]), prompt=prompt, output=[50, 51],
        block_size=B, arrival_s=100.0, now_s=1.0,
    )  # fmt: skip
    found = recognize(r, prompt + [50, 51, 9, 9], now_s=1.5)
    assert found is not None and found.turn == 1 and found.arrival_s == 100.0
    assert r.attributions["first"] == found.program_id  # its first turn, named once continued
    assert r.gaps.num_gaps == 1


def test_a_session_starts_a_program_at_once_and_chains_off_recognise_nothing_without_one() -> None:
    r = recognizer()
    found = recognize(r, list(range(8)), session="s")
    assert found is not None and found.turn == 0 and found.program_id.startswith("~session-s-")
    off = r.recognize(session=None, hashes=[], prompt=[1], block_size=B, arrival_s=0.0, now_s=0.0, by_chain=False)
    assert off is None
