"""Test doubles users can use too: a scripted LLM backend.

```python
llm = ScriptedLLM(["first answer", "second answer"])
llm = ScriptedLLM(lambda request: "yes" if "?" in request.messages[-1]["content"] else "no")
async with Program(model=llm) as p: ...
assert llm.requests[0].metadata.program_id == p.program_id
```
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

from agentflow.backends._protocol import Completion, LLMRequest

__all__ = ["ScriptedLLM"]

_TOKEN = re.compile(r"\S+\s*|\s+")


@dataclass(slots=True)
class ScriptedLLM:
    """Answers from a script: a list of replies in order, or a function of the request.

    `tokens_per_s` streams replies at a realistic token rate (words stand in for tokens);
    `latency_s` is added before the first token. `supports_grammar` is False: requests with a
    grammar are answered from the script like any other, which is what a prompt-only backend does.
    """

    script: Iterable[str] | Callable[[LLMRequest], str]
    tokens_per_s: float | None = None
    latency_s: float = 0.0
    name: str = "scripted"
    supports_grammar: bool = False
    requests: list[LLMRequest] = field(default_factory=list)
    _replies: list[str] | None = None
    _lock: asyncio.Lock | None = None

    def __post_init__(self) -> None:
        if not callable(self.script):
            self._replies = list(self.script)

    def _next_reply(self, request: LLMRequest) -> str:
        self.requests.append(request)
        if self._replies is None:
            return self.script(request)  # type: ignore[operator]
        if not self._replies:
            raise AssertionError(f"ScriptedLLM ran out of replies after {len(self.requests) - 1} calls")
        return self._replies.pop(0)

    async def start(self) -> None:
        return None

    async def complete(self, request: LLMRequest) -> Completion:
        parts = [piece async for piece in self.stream(request)]
        text = "".join(parts)
        return Completion(text=text, finish_reason="stop", completion_tokens=len(parts))

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        reply = self._next_reply(request)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        pieces = _TOKEN.findall(reply) or [reply]
        for piece in pieces:
            if self.tokens_per_s:
                await asyncio.sleep(1.0 / self.tokens_per_s)
            yield piece

    async def aclose(self) -> None:
        return None
