"""Property-based requests against a real `agentflow serve` on 127.0.0.1: no body, header or knob crashes it.

Hypothesis draws requests for every `/agentflow/...` route and for the generation routes, with
random program fields (in `vllm_xargs` or at the top level, valid or not), random knob values,
random junk fields, random credentials and content types, and raw bytes. For every case: the
answer is not a 5xx and comes within the timeout, and the server still answers `/health`; every
50 cases a normal completion must still work. At the end, with pins released and the knobs put
back, the free KV blocks are what they were at the start. Bounded: a fixed number of cases, a
fixed seed (derandomized), so it runs the same way in CI every time.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import httpx
import pytest
from conftest import API_KEY, Served
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentflow.metadata import PROGRAM_KEYS
from serving._knobs import SchedulerKnobs

pytestmark = pytest.mark.engine

NUM_CASES = int(os.environ.get("AGENTFLOW_FUZZ_CASES", "3000"))
CASE_TIMEOUT_S = 60.0
_stats: dict[str, Any] = {"cases": 0, "by_status": {}, "started_s": None}

# Values of every JSON type and then some: edge numbers, huge and non-finite floats, long and odd strings.
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**63, 1e308, -1e308, 1e-300, 0.5]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.text(alphabet="xé🙂\x00\n", min_size=500, max_size=700),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
_valid_program_values: dict[str, st.SearchStrategy[Any]] = {
    "program_id": st.text(alphabet="abcdefgh-0123", min_size=1, max_size=12).map(lambda s: f"fuzz-{s}"),
    "program_arrival_s": st.floats(min_value=0, max_value=2e9),
    "turn": st.integers(min_value=0, max_value=50),
    "is_last_turn": st.booleans(),
    "next_tool": st.sampled_from(["bash", "grep", "cat"]),
    "next_tool_duration_s": st.floats(min_value=0, max_value=100),
    "deadline_at_s": st.floats(min_value=1, max_value=4e9),
    "critical_path_s": st.floats(min_value=0, max_value=1e6),
}


@st.composite
def program_fields(draw: st.DrawFn) -> dict[str, Any]:
    keys = draw(st.lists(st.sampled_from(sorted(PROGRAM_KEYS)), unique=True, max_size=len(PROGRAM_KEYS)))
    fields: dict[str, Any] = {}
    for key in keys:
        valid = draw(st.booleans())
        fields[key] = draw(_valid_program_values[key]) if valid else draw(_values)
    if draw(st.booleans()):
        fields["program_id"] = draw(_valid_program_values["program_id"])
    if draw(st.integers(0, 9)) == 0:
        fields[draw(st.sampled_from(["turnn", "session_id", "kv_transfer_params", "x"]))] = draw(_values)
    return fields


_BASES: dict[str, dict[str, Any]] = {
    "/v1/completions": {"model": "default", "prompt": "Hi", "max_tokens": 1},
    "/v1/chat/completions": {"model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
    "/v1/responses": {"model": "default", "input": "Hi", "max_output_tokens": 1},
    "/v1/messages": {"model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
}


@st.composite
def generation_request(draw: st.DrawFn) -> tuple[str, str, bytes, dict[str, str]]:
    path = draw(st.sampled_from(sorted(_BASES)))
    body = dict(_BASES[path])
    fields = draw(program_fields())
    if draw(st.booleans()):
        body["vllm_xargs"] = fields if draw(st.integers(0, 9)) else draw(_values)
    else:
        body.update(fields)
    if draw(st.integers(0, 4)) == 0:
        body[draw(st.sampled_from(["junk", "n", "temperature", "stream"]))] = draw(_values)
    return "POST", path, json.dumps(body).encode(), {"content-type": "application/json"}


@st.composite
def control_request(draw: st.DrawFn) -> tuple[str, str, bytes, dict[str, str]]:
    route = draw(st.sampled_from(["metrics", "end_program", "tool_duration", "configure", "nope"]))
    if route == "metrics":
        return "GET", "/agentflow/metrics", b"", {}
    if route == "end_program":
        body: Any = {"program_id": draw(st.one_of(_valid_program_values["program_id"], _values))}
    elif route == "tool_duration":
        body = {"tool": draw(st.one_of(st.sampled_from(["bash", "cat"]), _values)), "duration_s": draw(_values)}
    elif route == "configure":
        names = sorted(SchedulerKnobs.model_fields) + ["bogus"]
        body = draw(st.dictionaries(st.sampled_from(names), _values, max_size=3))
    else:
        body = draw(_values)
    content_type = draw(st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain"]))
    return "POST", f"/agentflow/{route}", json.dumps(body).encode(), {"content-type": content_type}


@st.composite
def raw_request(draw: st.DrawFn) -> tuple[str, str, bytes, dict[str, str]]:
    path = draw(st.sampled_from([*sorted(_BASES), "/agentflow/configure", "/agentflow/end_program", "/invocations"]))
    content = draw(
        st.one_of(
            st.binary(max_size=200),
            st.integers(1, 3000).map(lambda n: b"[" * n),
            st.integers(1, 3000).map(lambda n: b'{"a":' * n),
            st.just(b'{"model": "default", "prompt": "Hi", "max_tokens": 1, "program_id": "p", "turn": 1e999}'),
        )
    )
    return "POST", path, content, {"content-type": "application/json"}


_requests = st.one_of(generation_request(), generation_request(), control_request(), raw_request())
_credentials = st.sampled_from(["key", "key", "key", "none", "wrong"])


def _headers(credentials: str, headers: dict[str, str]) -> dict[str, str]:
    token = {"key": API_KEY, "wrong": "nope", "none": None}[credentials]
    return {**headers, **({"authorization": f"Bearer {token}"} if token else {})}


def _settle(client: httpx.Client, knobs: dict[str, Any]) -> dict[str, Any]:
    """Release every pin (pinning off), put `knobs` back, wait until nothing runs; the metrics then."""
    assert client.post("/agentflow/configure", json={"pinning": False}).status_code == 200
    restored = client.post("/agentflow/configure", json=knobs)
    assert restored.status_code == 200, restored.text
    deadline = time.monotonic() + 60
    previous = None
    while time.monotonic() < deadline:  # requests the fuzz left streaming finish on their own
        metrics = client.get("/agentflow/metrics").json()
        if metrics["kv"]["num_free_blocks"] == previous:
            return metrics
        previous = metrics["kv"]["num_free_blocks"]
        time.sleep(0.5)
    return metrics


@pytest.fixture(scope="module")
def baseline(served: Served) -> dict[str, Any]:
    knobs = served.client.get("/agentflow/metrics").json()["knobs"]
    return {"knobs": knobs, "free": _settle(served.client, knobs)["kv"]["num_free_blocks"]}


@settings(
    max_examples=NUM_CASES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
@given(request=_requests, credentials=_credentials)
def test_no_request_crashes_or_hangs_the_server(
    served: Served, baseline: dict[str, Any], request: tuple[str, str, bytes, dict[str, str]], credentials: str
) -> None:
    method, path, content, headers = request
    if _stats["started_s"] is None:
        _stats["started_s"] = time.monotonic()
    client = served.anonymous
    response = client.request(method, path, content=content, headers=_headers(credentials, headers),
                              timeout=CASE_TIMEOUT_S)  # fmt: skip
    _stats["cases"] += 1
    _stats["by_status"][response.status_code] = _stats["by_status"].get(response.status_code, 0) + 1
    assert response.status_code < 500, f"{method} {path} {content[:300]!r} -> {response.status_code} {response.text}"
    if response.headers.get("content-type", "").startswith("application/json") and response.status_code >= 400:
        error = response.json().get("error")
        if isinstance(error, dict) and isinstance(error.get("code"), int):
            assert error["code"] == response.status_code, response.text
    assert served.process.poll() is None, "the server exited"
    assert client.get("/health").status_code == 200
    if _stats["cases"] % 50 == 0:
        normal = served.client.post("/v1/completions", json={"model": "default", "prompt": "Hello", "max_tokens": 2})
        assert normal.status_code == 200, normal.text


def test_after_the_fuzz_the_knobs_go_back_and_no_block_leaked(served: Served, baseline: dict[str, Any]) -> None:
    client = served.client
    assert _stats["cases"] == NUM_CASES, "run the fuzz case above first (same module)"
    wall_s = time.monotonic() - _stats["started_s"]
    print(f"\nfuzz: {_stats['cases']} cases in {wall_s:.0f} s, statuses {dict(sorted(_stats['by_status'].items()))}")
    metrics = _settle(client, baseline["knobs"])  # pins of fuzzed programs released, knobs put back
    assert metrics["knobs"] == baseline["knobs"]
    assert metrics["pins"]["active"] == 0
    assert metrics["kv"]["num_free_blocks"] == baseline["free"]
    assert httpx.get(f"http://127.0.0.1:{served.port}/health").status_code == 200
