"""Test doubles users can use too: a scripted LLM backend, with an optional latency model.

```python
llm = ScriptedLLM(["first answer", "second answer"])
llm = ScriptedLLM(lambda request: "yes" if "?" in request.messages[-1]["content"] else "no")
slow = ScriptedLLM(replies, latency_s=0.3, prefill_tokens_per_s=5000, tokens_per_s=50, chars_per_token=4)
async with Program(model=llm) as p: ...
assert llm.requests[0].metadata.program_id == p.program_id
```
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from agentflow.backends import Completion, LLMRequest
from agentflow.backends.tool_calls import parse_tool_calls

__all__ = ["ScriptedLLM"]

_TOKEN = re.compile(r"\S+\s*|\s+")


@dataclass(slots=True)
class ScriptedLLM:
    """Answers from a script: a list of replies in order, or a function of the request.

    Timing, all optional: the first token comes `latency_s` plus the prompt's tokens over
    `prefill_tokens_per_s` after the call; then one token every 1 / `tokens_per_s` seconds, each
    due at an absolute time so timer overhead does not accumulate. A token is `chars_per_token`
    characters, or a word when that is None. `supports_grammar` is False: requests with a grammar
    are answered from the script like any other, which is what a prompt-only backend does.
    """

    script: Iterable[str] | Callable[[LLMRequest], str]
    tokens_per_s: float | None = None
    latency_s: float = 0.0
    prefill_tokens_per_s: float | None = None
    chars_per_token: int | None = None
    name: str = "scripted"
    supports_grammar: bool = False
    # Read replies to requests that offer tools into `Completion.tool_calls`, as a backend with
    # native tool calling reads its model's reply (`<tool_call>` blocks, bare JSON).
    native_tool_calls: bool = False
    requests: list[LLMRequest] = field(default_factory=list)
    _replies: list[str] | None = None

    def __post_init__(self) -> None:
        if not callable(self.script):
            self._replies = list(self.script)
        if self.chars_per_token is not None and self.chars_per_token < 1:
            raise ValueError(f"chars_per_token must be >= 1, got {self.chars_per_token}")

    def latency_model(self) -> dict[str, Any]:
        """The timing settings, for reports that say what the scripted backend modelled."""
        return {
            "latency_s": self.latency_s,
            "prefill_tokens_per_s": self.prefill_tokens_per_s,
            "tokens_per_s": self.tokens_per_s,
            "chars_per_token": self.chars_per_token,
        }

    def _next_reply(self, request: LLMRequest) -> str:
        self.requests.append(request)
        if self._replies is None:
            assert callable(self.script)
            return self.script(request)
        if not self._replies:
            raise AssertionError(f"ScriptedLLM ran out of replies after {len(self.requests) - 1} calls")
        return self._replies.pop(0)

    async def start(self) -> None:
        return None

    async def complete(self, request: LLMRequest) -> Completion:
        parts = [piece async for piece in self.stream(request)]
        text = "".join(parts)
        if self.native_tool_calls and request.tools and request.tool_choice != "none":
            parsed = parse_tool_calls(text, bare_json=True)
            return Completion(
                text=parsed.content,
                tool_calls=parsed.calls,
                tool_call_error=parsed.error,
                finish_reason="tool_calls" if parsed.calls else "stop",
                completion_tokens=len(parts),
            )
        return Completion(text=text, finish_reason="stop", completion_tokens=len(parts))

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        reply = self._next_reply(request)
        started = time.perf_counter()
        first_token_s = self.latency_s + self._prefill_s(request)
        pieces = self._pieces(reply)
        if first_token_s > 0 and not self.tokens_per_s:
            await asyncio.sleep(first_token_s)
        for i, piece in enumerate(pieces):
            if self.tokens_per_s:
                due = started + first_token_s + (i + 1) / self.tokens_per_s
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            yield piece

    async def aclose(self) -> None:
        return None

    def _prefill_s(self, request: LLMRequest) -> float:
        if not self.prefill_tokens_per_s:
            return 0.0
        chars = len(request.prompt or "") + sum(len(m["content"]) for m in request.messages or ())
        return chars / (self.chars_per_token or 4) / self.prefill_tokens_per_s

    def _pieces(self, reply: str) -> list[str]:
        if self.chars_per_token is None:
            return _TOKEN.findall(reply) or [reply]
        step = self.chars_per_token
        return [reply[i : i + step] for i in range(0, len(reply), step)] or [reply]
