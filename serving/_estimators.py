"""What the scheduler predicts from what it measures: tool durations and engine step times. Pure.

- `ToolDurationPredictor`: an online per-tool duration distribution learned from the real
  durations the runtime reports. Cold start: the tool's own samples once it has
  `min_samples`, else all tools' samples, else a prior (tool pauses of real mini-swe-agent
  runs on SWE-bench Lite: p50 0.27 s, p90 0.45 s, p99 3.4 s). A predicted duration sent by the
  runtime rescales the shape to that median while the tool has too few samples of its own.
- `StepTimeModel`: step time = a + b*P + c*P^2 + d*D (P prefill tokens, D decoding requests),
  least squares over the engine's real steps, anchored by the ENGINE_NOTES measurements: what
  a re-prefill costs and how long a call is expected to run.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ENGINE_NOTES_DECODE_S",
    "ENGINE_NOTES_PREFILL_S",
    "TRACE_PRIOR",
    "TRACE_PRIOR_QUANTILES",
    "DurationDistribution",
    "StepTimeModel",
    "ToolDurationPredictor",
]

# Tool pauses of 99 real mini-swe-agent runs on SWE-bench Lite (7,825 tool calls of
# ../shared/data/swebench_lite_msa_traces.jsonl): (cumulative probability, seconds).
TRACE_PRIOR_QUANTILES: tuple[tuple[float, float], ...] = (
    (0.0, 0.05),
    (0.01, 0.161),
    (0.05, 0.185),
    (0.10, 0.200),
    (0.25, 0.231),
    (0.50, 0.265),
    (0.75, 0.328),
    (0.90, 0.447),
    (0.95, 1.26),
    (0.99, 3.34),
    (0.999, 36.8),
    (1.0, 120.0),
)

# SmolLM2-135M bf16 eager on the 2-core CPU box (ENGINE_NOTES): (prefill tokens, step seconds)
# and (decoding requests, step seconds) from 33 / 185 / 294 tokens/s at batch 1 / 8 / 32.
ENGINE_NOTES_PREFILL_S: tuple[tuple[int, float], ...] = ((512, 0.76), (2048, 4.8), (4096, 13.3))
ENGINE_NOTES_DECODE_S: tuple[tuple[int, float], ...] = ((1, 0.030), (8, 0.043), (32, 0.109))


_MIN_DURATION_S = 1e-3


@dataclass(frozen=True, slots=True)
class DurationDistribution:
    """A CDF over durations: knots (seconds, cumulative probability), linear in log-seconds between them."""

    xs: tuple[float, ...]  # increasing
    ps: tuple[float, ...]  # non-decreasing, ps[0] == 0, ps[-1] == 1

    @classmethod
    def from_quantiles(cls, quantiles: Iterable[tuple[float, float]]) -> DurationDistribution:
        points = sorted((max(x, _MIN_DURATION_S), p) for p, x in quantiles)
        xs: list[float] = []
        ps: list[float] = []
        for x, p in points:
            if xs and x <= xs[-1]:
                ps[-1] = max(ps[-1], p)
                continue
            xs.append(x)
            ps.append(max(p, ps[-1]) if ps else p)
        ps[0], ps[-1] = 0.0, 1.0
        return cls(tuple(xs), tuple(ps))

    @classmethod
    def from_samples(cls, samples: Sequence[float]) -> DurationDistribution:
        ordered = sorted(max(s, _MIN_DURATION_S) for s in samples)
        n = len(ordered)
        # Just below the smallest sample the CDF starts from 0: a step at each sample, barely smoothed.
        quantiles = [(0.0, ordered[0] * 0.95)] + [((i + 1) / n, x) for i, x in enumerate(ordered)]
        return cls.from_quantiles(quantiles)

    def cdf(self, x: float) -> float:
        if x <= self.xs[0]:
            return 0.0
        if x >= self.xs[-1]:
            return 1.0
        i = bisect.bisect_right(self.xs, x)
        x0, x1, p0, p1 = self.xs[i - 1], self.xs[i], self.ps[i - 1], self.ps[i]
        return p0 + (p1 - p0) * math.log(x / x0) / math.log(x1 / x0)

    def quantile(self, p: float) -> float:
        i = bisect.bisect_left(self.ps, p)
        if i <= 0:
            return self.xs[0]
        if i >= len(self.ps):
            return self.xs[-1]
        x0, x1, p0, p1 = self.xs[i - 1], self.xs[i], self.ps[i - 1], self.ps[i]
        if p1 == p0:
            return x1
        return x0 * math.exp((p - p0) / (p1 - p0) * math.log(x1 / x0))

    def scaled(self, factor: float) -> DurationDistribution:
        return DurationDistribution(tuple(x * factor for x in self.xs), self.ps)

    def remaining(self, elapsed_s: float, tau_s: float) -> float:
        """P(done within `tau_s` more | still running after `elapsed_s`)."""
        done = self.cdf(elapsed_s)
        if done >= 1.0:
            return 1.0
        return max(0.0, (self.cdf(elapsed_s + tau_s) - done) / (1.0 - done))


TRACE_PRIOR = DurationDistribution.from_quantiles(TRACE_PRIOR_QUANTILES)


class ToolDurationPredictor:
    """Per-tool empirical duration distributions, learned online from reported durations."""

    def __init__(self, *, window: int = 256, min_samples: int = 5, prior: DurationDistribution = TRACE_PRIOR) -> None:
        self.window = window
        self.min_samples = min_samples
        self.prior = prior
        self._samples: dict[str, deque[float]] = {}  # tool -> recent durations
        self._global: deque[float] = deque(maxlen=window * 4)
        self._cache: dict[str, DurationDistribution] = {}  # tool ("" = global) -> distribution
        self.num_observed = 0

    def observe(self, tool: str, duration_s: float) -> None:
        if not math.isfinite(duration_s) or duration_s < 0:
            return
        samples = self._samples.get(tool)
        if samples is None:
            if len(self._samples) >= 4096:  # bound the table against unbounded tool names
                return
            samples = self._samples[tool] = deque(maxlen=self.window)
        samples.append(duration_s)
        self._global.append(duration_s)
        self._cache.pop(tool, None)
        self._cache.pop("", None)
        self.num_observed += 1

    def distribution(self, tool: str | None, hint_s: float | None = None) -> DurationDistribution:
        """The tool's own samples, else the hint-rescaled global/prior shape, else global, else prior."""
        own = self._samples.get(tool) if tool is not None else None
        if own is not None and len(own) >= self.min_samples:
            return self._cached(tool or "", own)
        shape = self._cached("", self._global) if len(self._global) >= self.min_samples else self.prior
        if hint_s is not None and hint_s > 0:
            return shape.scaled(hint_s / shape.quantile(0.5))
        return shape

    def _cached(self, key: str, samples: deque[float]) -> DurationDistribution:
        dist = self._cache.get(key)
        if dist is None:
            dist = self._cache[key] = DurationDistribution.from_samples(list(samples))
        return dist

    def snapshot(self) -> dict[str, Any]:
        tools = {
            name: {
                "samples": len(samples),
                "p50_s": round(self.distribution(name).quantile(0.5), 4),
                "p90_s": round(self.distribution(name).quantile(0.9), 4),
            }
            for name, samples in sorted(self._samples.items(), key=lambda kv: -len(kv[1]))[:32]
        }
        return {"observed": self.num_observed, "global_samples": len(self._global), "tools": tools}


def _solve(matrix: list[list[float]], rhs: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting; None if singular."""
    n = len(rhs)
    a = [row[:] + [rhs[i]] for i, row in enumerate(matrix)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) < 1e-12:
            return None
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(n):
            if r != col:
                f = a[r][col] / a[col][col]
                for c in range(col, n + 1):
                    a[r][c] -= f * a[col][c]
    return [a[i][n] / a[i][i] for i in range(n)]


class StepTimeModel:
    """Engine step time from its work: a + b*P + c*P^2 + d*D, P in kilotokens, D decoding requests.

    Least squares over observed steps (exponentially forgotten) plus the seed measurements,
    whose weight fades as real steps accumulate (`seed_weight` at first, a quarter of it after
    8 steps, ~1% after 70): the engine's own timings win, and the seeds still shape what the
    run never measured (the quadratic term, when only short prompts were seen).
    """

    _DIM = 4

    def __init__(
        self,
        *,
        seed_prefill: Sequence[tuple[int, float]] = ENGINE_NOTES_PREFILL_S,
        seed_decode: Sequence[tuple[int, float]] = ENGINE_NOTES_DECODE_S,
        seed_weight: float = 4.0,
        forgetting: float = 0.998,
    ) -> None:
        self._forgetting = forgetting
        self._seed_weight = seed_weight
        self._prior_xtx, self._prior_xty = self._zeros()
        for tokens, step_s in seed_prefill:
            self._accumulate(self._prior_xtx, self._prior_xty, self._features(tokens, 0), step_s, 1.0)
        for num_decode, step_s in seed_decode:
            self._accumulate(self._prior_xtx, self._prior_xty, self._features(0, num_decode), step_s, 1.0)
        self._xtx, self._xty = self._zeros()
        self.num_steps = 0
        self._coef = self._fit()

    @staticmethod
    def _zeros() -> tuple[list[list[float]], list[float]]:
        return [[0.0] * StepTimeModel._DIM for _ in range(StepTimeModel._DIM)], [0.0] * StepTimeModel._DIM

    @staticmethod
    def _features(num_prefill_tokens: int, num_decode: int) -> list[float]:
        k = num_prefill_tokens / 1000.0
        return [1.0, k, k * k, float(num_decode)]

    @staticmethod
    def _accumulate(xtx: list[list[float]], xty: list[float], x: list[float], y: float, w: float) -> None:
        for i in range(StepTimeModel._DIM):
            xty[i] += w * x[i] * y
            for j in range(StepTimeModel._DIM):
                xtx[i][j] += w * x[i] * x[j]

    def observe_step(self, *, num_prefill_tokens: int, num_decode: int, step_s: float) -> None:
        if not (math.isfinite(step_s) and step_s > 0):
            return
        lam = self._forgetting
        for i in range(self._DIM):
            self._xty[i] *= lam
            for j in range(self._DIM):
                self._xtx[i][j] *= lam
        self._accumulate(self._xtx, self._xty, self._features(num_prefill_tokens, num_decode), step_s, 1.0)
        self.num_steps += 1
        if self.num_steps <= 64 or self.num_steps % 16 == 0:  # refit often early, then every 16 steps
            self._coef = self._fit()

    def _fit(self) -> list[float]:
        # A floor keeps the seeds deciding what the steps never measured (e.g. long prompts).
        w = max(self._seed_weight * (8.0 / (8.0 + self.num_steps)) ** 2, 1e-3)
        dim = range(self._DIM)
        xtx = [[w * self._prior_xtx[i][j] + self._xtx[i][j] + (1e-6 if i == j else 0.0) for j in dim] for i in dim]
        xty = [w * self._prior_xty[i] + self._xty[i] for i in dim]
        return _solve(xtx, xty) or [0.03, 1.5, 0.4, 0.003]

    def prefill_s(self, num_tokens: int) -> float:
        """Seconds a step that prefills `num_tokens` (and nothing else) takes; >= 0, grows with n."""
        if num_tokens <= 0:
            return 0.0
        a, b, c, _ = self._coef
        k = num_tokens / 1000.0
        # A badly conditioned fit must not make a longer prompt look cheaper than a shorter one.
        return max(0.0, a + max(b, 0.0) * k + max(c, 0.0) * k * k)

    def decode_step_s(self, num_decode: int) -> float:
        a, _, _, d = self._coef
        return max(1e-4, a + max(d, 0.0) * num_decode)

    def snapshot(self) -> dict[str, Any]:
        a, b, c, d = self._coef
        return {
            "steps_observed": self.num_steps,
            "a_s": round(a, 6),
            "b_s_per_ktok": round(b, 6),
            "c_s_per_ktok2": round(c, 6),
            "d_s_per_decode": round(d, 6),
            "prefill_2048_s": round(self.prefill_s(2048), 4),
        }
