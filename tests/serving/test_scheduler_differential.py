"""Requests without metadata: `ProgramAwareScheduler` schedules them exactly as vLLM's stock `Scheduler`.

Both schedulers are built on the CPU harness from the same configs, fed the same plain requests at
the same steps, and stepped side by side; every `SchedulerOutput` must match: which requests run,
how many tokens each, which blocks they get, who is preempted, who finishes. Under both scheduling
policies, with prefix caching on (shared prefixes), under preemption (a pool too small for all).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from scheduler_harness import Harness, build_scheduler, output_signature, tiny_model_dir, token_prompt
from vllm.v1.core.sched.scheduler import Scheduler

from serving._scheduler import ProgramAwareScheduler


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("model"))


def _workload(seed: int) -> list[tuple[int, str, list[int], int, int]]:
    """(step to add at, request id, prompt, max tokens, priority): bursts sharing system prompts."""
    rng = random.Random(seed)
    systems = [token_prompt(rng.randrange(16, 80), f"system{seed}:{i}") for i in range(3)]
    requests = []
    step = 0
    for i in range(40):
        step += rng.choice((0, 0, 1, 2, 5))
        prompt = rng.choice(systems) + token_prompt(rng.randrange(8, 200), f"user{seed}:{i}")
        requests.append((step, f"req-{rng.randrange(10**6):06d}-{i}", prompt, rng.randrange(1, 60), rng.randrange(3)))
    return requests


@pytest.mark.parametrize("policy", ["fcfs", "priority"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_blocks", [48, 400], ids=["preemption", "roomy"])
def test_plain_requests_get_identical_scheduler_outputs(
    model_dir: Path, policy: str, seed: int, num_blocks: int
) -> None:
    options = {"num_blocks": num_blocks, "max_num_seqs": 8, "max_num_batched_tokens": 256, "policy": policy}
    ours = Harness(build_scheduler(model_dir, ProgramAwareScheduler, **options))
    stock = Harness(build_scheduler(model_dir, Scheduler, **options))
    workload = _workload(seed)
    step = 0
    while workload or ours.scheduler.has_unfinished_requests() or stock.scheduler.has_unfinished_requests():
        while workload and workload[0][0] <= step:
            _, request_id, prompt, max_tokens, priority = workload.pop(0)
            arrival_s = 1000.0 + step * 0.01  # equal arrivals within a step: ties fall to the request id
            for h in (ours, stock):
                h.add(request_id, prompt, max_tokens=max_tokens, priority=priority, arrival_s=arrival_s)
        assert output_signature(ours.step()) == output_signature(stock.step()), f"step {step} differs"
        step += 1
        assert step < 5000
    assert ours.finished == stock.finished and ours.outputs == stock.outputs
    if num_blocks == 48:
        assert stock.preempted, "the small pool must force preemptions"
    assert ours.program_aware.agentflow_metrics()["requests"]["with_metadata"] == 0
