"""The counters `agentflow_metrics()` reports (pins, requests, prefix cache per turn, queueing)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ServingMetrics", "TurnStats"]


@dataclass(slots=True)
class TurnStats:
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0


@dataclass(slots=True)
class ServingMetrics:
    """Counters since the scheduler started (or since `reset`)."""

    pins_created: int = 0
    pins_hit: int = 0  # the program's next request reused the pinned blocks
    # pins ended, by why (`serving._pinning.Release`: hit, expired, reclaimed, ended, other)
    released: dict[str, int] = field(default_factory=dict)
    # why reclaimed: a running request's growth, the head's admission, or a stall (nothing runs, the head waits)
    reclaimed_for: dict[str, int] = field(default_factory=lambda: {"growth": 0, "admission": 0, "stall": 0})
    pins_skipped: int = 0  # a tool followed but the cost model chose no pin
    pinned_blocks_peak: int = 0
    pinned_block_s: float = 0.0  # integral of blocks held over time
    hit_tokens: int = 0  # cached prompt tokens of requests that used a pin
    ttl_sum_s: float = 0.0
    requests_with_metadata: int = 0  # known by agentflow's program fields
    requests_by_session: int = 0  # known by a session id
    requests_by_chain: int = 0  # known by their prompt extending a finished request's
    requests_without_metadata: int = 0  # plain: scheduled as vLLM would
    metadata_rejected: int = 0
    requests_held: int = 0  # program requests admission control kept waiting at least one step
    queue_delay_sum_s: float = 0.0
    queue_delay_max_s: float = 0.0
    queued_requests: int = 0
    by_turn: dict[int, TurnStats] = field(default_factory=dict)
    admissions: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=512))
    recent_pins: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=256))  # TTL decisions

    def count_identity(self, identity: str) -> None:
        """A program request, by how its program was known (`serving._scheduler.Identity`)."""
        if identity == "fields":
            self.requests_with_metadata += 1
        elif identity == "session":
            self.requests_by_session += 1
        else:
            self.requests_by_chain += 1

    def count_release(self, why: str) -> None:
        self.released[why] = self.released.get(why, 0) + 1

    def record_pin(
        self, *, program_id: str, turn: int, next_tool: str | None, num_blocks: int, ttl_s: float, p_done: float
    ) -> None:
        self.pins_created += 1
        self.ttl_sum_s += ttl_s
        self.recent_pins.append(
            {
                "program_id": program_id,
                "turn": turn,
                "next_tool": next_tool,
                "num_blocks": num_blocks,
                "ttl_s": round(ttl_s, 4),
                "p_tool_done": round(p_done, 4),
            }
        )

    def record_admission(
        self, *, program_id: str | None, turn: int | None, prompt_tokens: int, cached_tokens: int, delay_s: float
    ) -> None:
        self.queued_requests += 1
        self.queue_delay_sum_s += delay_s
        self.queue_delay_max_s = max(self.queue_delay_max_s, delay_s)
        if turn is not None:
            stats = self.by_turn.setdefault(min(turn, 1000), TurnStats())
            stats.requests += 1
            stats.prompt_tokens += prompt_tokens
            stats.cached_tokens += cached_tokens
        self.admissions.append(
            {
                "program_id": program_id,
                "turn": turn,
                "prompt_tokens": prompt_tokens,
                "cached_tokens": cached_tokens,
                "queue_delay_s": round(delay_s, 6),
            }
        )

    def snapshot(self, *, active_pins: int, pinned_blocks: int) -> dict[str, Any]:
        created = self.pins_created
        return {
            "pins": {
                "created": created,
                "hit": self.pins_hit,
                "expired": self.released.get("expired", 0),
                "reclaimed": self.released.get("reclaimed", 0),
                "reclaimed_for": dict(self.reclaimed_for),
                "released_on_end": self.released.get("ended", 0),
                "released_other": self.released.get("other", 0),
                "skipped_by_cost_model": self.pins_skipped,
                "active": active_pins,
                "blocks_pinned": pinned_blocks,
                "blocks_pinned_peak": self.pinned_blocks_peak,
                "pinned_block_s": round(self.pinned_block_s, 3),
                "hit_tokens": self.hit_tokens,
                "hit_rate": round(self.pins_hit / created, 4) if created else None,
                "mean_ttl_s": round(self.ttl_sum_s / created, 4) if created else None,
            },
            "requests": {
                "with_metadata": self.requests_with_metadata,
                "by_session": self.requests_by_session,
                "by_chain": self.requests_by_chain,
                "without_metadata": self.requests_without_metadata,
                "metadata_rejected": self.metadata_rejected,
                "held_by_admission_control": self.requests_held,
            },
            "prefix_cache_by_turn": {
                str(turn): {
                    "requests": s.requests,
                    "prompt_tokens": s.prompt_tokens,
                    "cached_tokens": s.cached_tokens,
                    "hit_rate": round(s.cached_tokens / s.prompt_tokens, 4) if s.prompt_tokens else None,
                }
                for turn, s in sorted(self.by_turn.items())
            },
            "queueing": {
                "requests": self.queued_requests,
                "mean_delay_s": round(self.queue_delay_sum_s / self.queued_requests, 6)
                if self.queued_requests
                else None,
                "max_delay_s": round(self.queue_delay_max_s, 6),
            },
            "admissions": list(self.admissions),
            "recent_pins": list(self.recent_pins),
        }
