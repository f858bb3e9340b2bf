#!/usr/bin/env python3
"""vLLM's own CPU scheduler tests against our scheduler: every test that passes on stock must pass with ours.

    .venv/bin/python scripts/vllm_upstream_tests.py          # part of `make test`

`serving._scheduler.ProgramAwareScheduler` promises that requests without program metadata are
scheduled exactly as stock vLLM schedules them, under the fcfs and priority policies. vLLM's own
unit tests of its scheduler (`tests/v1/core` of the vllm 0.32.0 source distribution, which carry
no program metadata) check that promise:

1. The sdist is downloaded once into `<AGENTFLOW_CACHE_DIR or ~/.cache/agentflow>/vllm-src/`, and
   its size and SHA-256 are checked before anything is extracted (a mismatch is refused).
2. Only what the tests need is extracted (`EXTRACT_FILES`, `EXTRACT_TREES`).
3. Every Hugging Face hub model the tests name gets a local directory with a `config.json` of
   its architecture (`LOCAL_MODELS`; no weights, no tokenizer), reached through vLLM's
   own `VLLM_MODEL_REDIRECT_PATH` (a JSON map, hub name -> directory): no test file is edited,
   nothing is monkeypatched for it, and `HF_HUB_OFFLINE=1` makes any model left out fail loudly.
4. pytest runs `tests/v1/core` twice with `scripts/vllm_upstream_plugin.py`: stock vLLM (the
   reference), then with our classes substituted wherever the tests build a scheduler.
5. Every test that passes on stock must pass with ours, but for `KNOWN_DIFFERENCES` (each with
   its reason). The exit status is non-zero on a regression, on an empty or implausibly small run
   (`MIN_TESTS_RAN`), or when the substitution did not take.

Deselected (`DESELECTED`, `IGNORED`, each with its reason): tests that need a real engine or a
server with real weights, and multimodal tests whose model modules import torchvision, which this
CPU venv removes. Full pytest output: `<cache>/vllm-src/logs/{stock,ours}.log`.

Options: `--only stock|ours`, `-k EXPR` and `--paths` for a quicker look (the plausibility floor
then does not apply), `--cache-dir`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPTS_DIR = Path(__file__).resolve().parent
PLUGIN = "vllm_upstream_plugin"  # scripts/vllm_upstream_plugin.py

VLLM_VERSION = "0.32.0"
SDIST_URL = (
    "https://files.pythonhosted.org/packages/d5/df/5471312c76e335eaa2b8333e87ea39f0d37bfe24f10a582620e34ff12e33/"
    f"vllm-{VLLM_VERSION}.tar.gz"
)
SDIST_SHA256 = "d2c957d5eee3d0985012151315ddc62cbe0cd368fc96a5fc3510438d9dddf2ad"
SDIST_NAME = f"vllm-{VLLM_VERSION}.tar.gz"
SDIST_PREFIX = f"vllm-{VLLM_VERSION}/"  # every member's path starts with it

# What the tests import, besides the tests themselves. vLLM's tests/conftest.py and tests/utils.py
# are left out on purpose: the first needs tblib (not in the venv), test assets and HF runners, and
# its autouse fixtures tear down distributed state these tests never set up (the plugin stands in
# for the one fixture used here, `caplog_vllm`); the second serves only the server test (IGNORED).
EXTRACT_FILES = (
    "tests/__init__.py",
    "tests/v1/__init__.py",
    "tests/v1/kv_connector/__init__.py",
    "tests/v1/kv_connector/unit/__init__.py",
    "tests/v1/kv_connector/unit/utils.py",  # MockKVConfig, create_model_runner_output, create_vllm_config
)
EXTRACT_TREES = ("tests/v1/core/",)
TEST_ROOT = "tests/v1/core"

_LLAVA = (
    "multimodal: vLLM's LlavaForConditionalGeneration module imports torchvision, which this CPU venv "
    "removes (scripts/install.sh: its CUDA build breaks transformers); fails on stock the same way"
)
_QWEN_VL = (
    "multimodal: vLLM's Qwen2_5_VLForConditionalGeneration module imports torchvision, which this CPU "
    "venv removes (scripts/install.sh); fails on stock the same way"
)
_LLAVA_TESTS = (  # test_scheduler.py functions whose scheduler is built on llava-hf/llava-1.5-7b-hf
    "test_schedule_multimodal_requests",
    "test_schedule_partial_requests",
    "test_no_mm_input_chunking",
    "test_no_mm_input_chunking_for_same_step_duplicate",
    "test_encoder_only_prompt_longer_than_budget_is_chunked",
    "test_same_step_duplicate_encoder_input_stays_cached",
    "test_ec_connector_text_only_request",
    "test_ec_connector_cache_hit_external_load",
    "test_ec_connector_cache_miss_computes_locally",
    "test_ec_connector_with_partial_cache_hit_multi_round",
    "test_ec_connector_schedule_multiple_requests",
    "test_ec_connector_unable_to_allocate",
    "test_priority_scheduling_ec_connector_preemption_and_resumption",
    "test_ec_connector_allocate_encoder_tokens_with_external_load",
    "test_ec_connector_update_connector_output_called",
    "test_ec_connector_ensure_cache_available_defers_request",
    "test_ec_connector_defers_running_request_for_async_reload",
    "test_eagle3_mm_encoder_cache_with_shift",
    "test_free_encoder_inputs_respects_unconfirmed_placeholders",
    "test_free_encoder_inputs_notifies_the_ec_connector",
    "test_free_encoder_inputs_defers_for_eagle_lookahead",
    "test_free_encoder_inputs_unchanged_without_spec_decode",
    "test_unavailable_encoder_input_fails_the_request_as_retryable",
    "test_encoder_cache_accepts_matching_embed_count",
    "test_encoder_cache_rejects_mismatched_embed_count",
    "test_encoder_cache_embed_count_mismatch_restores_prior_hit_state",
    "test_encoder_cache_rejects_mismatched_embed_count_within_request",
    "test_encoder_cache_retained_across_preemption_and_resume",
    "test_encoder_cache_recomputed_when_evicted_during_preemption",
)
# Deselected, each with its reason: a file (`path`) or every parametrization of a function
# (`path::function`). The plugin reports a pattern that matches nothing, and the run fails then.
DESELECTED: dict[str, str] = {
    "tests/v1/core/test_scheduler_e2e.py": (
        "end to end: vllm.LLM on hmellor/tiny-random-LlamaForCausalLM generates (weights, an engine)"
    ),
    "tests/v1/core/test_reset_prefix_cache_e2e.py": (
        "end to end: an LLMEngine on Qwen/Qwen3-0.6B generates (weights, an engine)"
    ),
    "tests/v1/core/test_priority_scheduler_random.py::test_priority_scheduling_blast": _QWEN_VL,
    **{f"tests/v1/core/test_scheduler.py::{name}": _LLAVA for name in _LLAVA_TESTS},
}
# Files not even collected, each with its reason.
IGNORED: dict[str, str] = {
    "tests/v1/core/prefix_cache/test_hybrid_prefix_cache_hit_rate.py": (
        "end to end: an OpenAI server on Qwen/Qwen3.5-0.8B (weights); not collected, since collecting it "
        "imports tests/utils.py (the server harness, not extracted)"
    ),
}

# Tests that pass on stock and may fail with ours: node id -> why. Ideally empty.
_STUB = (
    "harness artifact: the test builds its scheduler with object.__new__ (no __init__) and sets only the "
    "attributes vLLM's update_from_output reads; our override also reads self._steps, which our __init__ "
    "sets (AttributeError). With those attributes present the test passes: no scheduling difference"
)
KNOWN_DIFFERENCES: dict[str, str] = {
    "tests/v1/core/test_scheduler.py::test_abort_request_when_structured_output_fsm_cannot_advance": _STUB,
    "tests/v1/core/test_async_scheduler.py::test_abort_request_when_structured_output_fsm_cannot_advance": _STUB,
}

MIN_TESTS_RAN = 800  # a full run executes ~940 tests on stock: fewer means tests went missing

_OPT_125M = {
    "architectures": ["OPTForCausalLM"],
    "model_type": "opt",
    "activation_function": "relu",
    "bos_token_id": 2,
    "do_layer_norm_before": True,
    "dropout": 0.1,
    "eos_token_id": 2,
    "ffn_dim": 3072,
    "hidden_size": 768,
    "max_position_embeddings": 2048,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "torch_dtype": "float16",
    "vocab_size": 50272,
    "word_embed_proj_dim": 768,
}
_OPT_350M = {
    **_OPT_125M,
    "do_layer_norm_before": False,
    "ffn_dim": 4096,
    "hidden_size": 1024,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "word_embed_proj_dim": 512,
}
_QWEN3_0_6B = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "max_position_embeddings": 40960,
    "max_window_layers": 28,
    "num_attention_heads": 16,
    "num_hidden_layers": 28,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_sliding_window": False,
    "vocab_size": 151936,
}
_QWEN1_5_7B = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_sliding_window": False,
    "vocab_size": 151936,
}
# Every hub model the tests in scope name -> the config.json of a local stand-in (shapes as published).
LOCAL_MODELS: dict[str, dict[str, Any]] = {
    "facebook/opt-125m": _OPT_125M,  # tests/v1/core/utils.py's default, tests/v1/kv_connector/unit/utils.py
    "facebook/opt-350m": _OPT_350M,  # test_priority_preemption_bug.py
    "Qwen/Qwen3-0.6B": _QWEN3_0_6B,  # vLLM's ModelConfig() default (test_kv_cache_utils.py)
    "Qwen/Qwen1.5-7B": _QWEN1_5_7B,  # test_kv_cache_utils.py (max_model_len estimates)
}


class SdistError(Exception):
    """The sdist could not be fetched, or is not the file we pinned."""


# -- the sdist --------------------------------------------------------------------------------------


def cache_dir() -> Path:
    root = os.environ.get("AGENTFLOW_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "agentflow"
    return base / "vllm-src"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sdist(path: Path, expected_sha256: str = SDIST_SHA256) -> None:
    """Raise `SdistError` unless `path` is a non-empty file whose SHA-256 is `expected_sha256`."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise SdistError(f"{path}: cannot read it ({e})") from e
    if size <= 0:
        raise SdistError(f"{path} is empty: refusing to extract it")
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise SdistError(
            f"{path}: SHA-256 {actual} is not the pinned {expected_sha256} of vllm {VLLM_VERSION}'s sdist: "
            "refusing to extract it (delete the file to download it again)"
        )


def fetch_sdist(directory: Path, url: str = SDIST_URL) -> Path:
    """The verified sdist in `directory`, downloaded first if it is not there yet."""
    path = directory / SDIST_NAME
    if path.exists():
        verify_sdist(path)
        return path
    directory.mkdir(parents=True, exist_ok=True)
    print(f"vllm-upstream: downloading {url}", flush=True)
    fd, tmp_name = tempfile.mkstemp(prefix=SDIST_NAME + ".", suffix=".part", dir=directory)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out, 1 << 20)
        verify_sdist(tmp)  # before it takes the final name: a bad download is never reused
        tmp.replace(path)
    except OSError as e:
        raise SdistError(f"downloading {url} failed: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)
    return path


def wanted_member(name: str) -> str | None:
    """The path under the extraction root of sdist member `name`, or None if the tests do not need it."""
    if not name.startswith(SDIST_PREFIX):
        return None
    rel = name[len(SDIST_PREFIX) :]
    if rel in EXTRACT_FILES or any(rel.startswith(tree) and rel != tree for tree in EXTRACT_TREES):
        return rel
    return None


def extract_tests(sdist: Path, dest: Path) -> Path:
    """Extract what the tests need into `dest` (once per sdist hash); `dest` holds `tests/`."""
    marker = dest / ".extracted"
    stamp = json.dumps({"sha256": SDIST_SHA256, "files": EXTRACT_FILES, "trees": EXTRACT_TREES})
    if marker.exists() and marker.read_text() == stamp:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        found: set[str] = set()
        try:
            with tarfile.open(sdist, "r:gz") as tar:
                members = []
                for member in tar.getmembers():
                    rel = wanted_member(member.name)
                    if rel is None or not (member.isfile() or member.isdir()):
                        continue
                    member.name = rel
                    members.append(member)
                    found.add(rel)
                tar.extractall(staging, members=members, filter="data")  # no links, nothing outside staging
        except (tarfile.TarError, OSError) as e:
            raise SdistError(f"extracting {sdist} failed: {e}") from e
        missing = [name for name in EXTRACT_FILES if name not in found]
        missing += [tree for tree in EXTRACT_TREES if not any(name.startswith(tree) for name in found)]
        if missing:
            raise SdistError(f"{sdist} lacks {', '.join(missing)}")
        (staging / ".extracted").write_text(stamp)
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return dest


# -- local stand-ins for hub models -----------------------------------------------------------------


def write_local_models(root: Path, models: Mapping[str, Mapping[str, Any]] = LOCAL_MODELS) -> Path:
    """A directory per hub model holding only its config.json, and the redirect map; the map's path.

    No tokenizer files: where a test does not skip tokenizer init, transformers builds an empty
    tokenizer of the model type's class, and the scheduler never tokenizes.
    """
    redirects: dict[str, str] = {}
    for hub_name, config in models.items():
        model_dir = root / hub_name.replace("/", "--")
        if model_dir.exists():
            shutil.rmtree(model_dir)  # nothing but what is written now
        model_dir.mkdir(parents=True)
        (model_dir / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
        redirects[hub_name] = str(model_dir)
    redirect_path = root / "redirects.json"
    redirect_path.write_text(json.dumps(redirects, indent=1, sort_keys=True))
    return redirect_path


# -- the runs ---------------------------------------------------------------------------------------

OUR_CLASSES = frozenset({"ProgramAwareScheduler", "ProgramAwareAsyncScheduler"})
STOCK_CLASSES = frozenset({"Scheduler", "AsyncScheduler"})  # what `ours` substitutes


@dataclass
class RunResult:
    mode: str
    returncode: int
    wall_s: float
    outcomes: dict[str, str] = field(default_factory=dict)  # node id -> passed | failed | error | skipped | ...
    built_by_test: dict[str, dict[str, int]] = field(default_factory=dict)  # node id -> scheduler class -> count
    substituted: list[str] = field(default_factory=list)
    deselected: dict[str, str] = field(default_factory=dict)  # node id -> pattern of DESELECTED
    unmatched_deselections: list[str] = field(default_factory=list)
    log_path: Path | None = None

    @property
    def counts(self) -> Counter[str]:
        return Counter(self.outcomes.values())

    @property
    def ran(self) -> int:
        """Tests that executed (not skipped)."""
        return sum(n for outcome, n in self.counts.items() if outcome != "skipped")

    def built(self, classes: frozenset[str]) -> list[str]:
        """Tests that built a scheduler of one of `classes`."""
        return sorted(nodeid for nodeid, built in self.built_by_test.items() if classes & set(built))

    def summary(self) -> str:
        c = self.counts
        parts = [f"{c[k]} {k}" for k in ("passed", "failed", "error", "skipped", "xfailed", "xpassed") if c[k]]
        return f"{', '.join(parts) or 'nothing'}, {len(self.deselected)} deselected in {self.wall_s:.1f}s"


def pytest_env(
    src_root: Path, redirect_path: Path, mode: str, results_path: Path, deselect_path: Path
) -> dict[str, str]:
    env = dict(os.environ)
    python_path = [str(src_root), str(REPO_ROOT), str(SCRIPTS_DIR)]  # vLLM's `tests` first, then ours
    if env.get("PYTHONPATH"):
        python_path.append(env["PYTHONPATH"])
    env.update(
        PYTHONPATH=os.pathsep.join(python_path),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        VLLM_MODEL_REDIRECT_PATH=str(redirect_path),
        AGENTFLOW_UPSTREAM_MODE=mode,
        AGENTFLOW_UPSTREAM_RESULTS=str(results_path),
        AGENTFLOW_UPSTREAM_DESELECT=str(deselect_path),
    )
    for name in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "VLLM_TEST_DEFER_FREE_MODEL"):
        env.pop(name, None)  # the command line below is the whole configuration
    return env


def pytest_command(ini_path: Path, src_root: Path, *, paths: Iterable[str], keyword: str | None) -> list[str]:
    cmd = [
        sys.executable, "-m", "pytest",
        "-c", str(ini_path), "--rootdir", str(src_root),
        "-p", PLUGIN, "-p", "no:cacheprovider",
        "-q", "--tb=short", "--durations=5", "-W", "ignore::DeprecationWarning",
    ]  # fmt: skip
    for path in IGNORED:
        cmd += ["--ignore", path]
    if keyword:
        cmd += ["-k", keyword]
    return [*cmd, *paths]


def write_ini(src_root: Path) -> Path:
    """A pytest config with vLLM's markers (from its pyproject.toml) so its tests collect cleanly; nothing of ours."""
    ini = src_root / "pytest-agentflow.ini"
    markers = [
        "slow_test", "skip_global_cleanup", "core_model", "hybrid_model", "cpu_model", "cpu_test",
        "split", "distributed", "optional",
    ]  # fmt: skip
    ini.write_text("[pytest]\nmarkers =\n" + "".join(f"    {m}\n" for m in markers))
    return ini


def run_pytest(
    mode: str,
    src_root: Path,
    redirect_path: Path,
    *,
    paths: Iterable[str],
    keyword: str | None,
    log_path: Path,
) -> RunResult:
    ini = write_ini(src_root)
    with tempfile.TemporaryDirectory(prefix=f"vllm-upstream-{mode}-") as tmp:
        results_path = Path(tmp) / "results.json"
        deselect_path = Path(tmp) / "deselect.json"
        deselect_path.write_text(json.dumps(DESELECTED))
        cmd = pytest_command(ini, src_root, paths=paths, keyword=keyword)
        print(f"vllm-upstream: [{mode}] pytest {' '.join(cmd[3:])}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run(
            cmd,
            cwd=src_root,
            env=pytest_env(src_root, redirect_path, mode, results_path, deselect_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wall_s = time.perf_counter() - start
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(proc.stdout)
        data = json.loads(results_path.read_text()) if results_path.exists() else {}
    return RunResult(
        mode=mode,
        returncode=proc.returncode,
        wall_s=wall_s,
        outcomes=data.get("outcomes", {}),
        built_by_test=data.get("built_by_test", {}),
        substituted=data.get("substituted", []),
        deselected=data.get("deselected", {}),
        unmatched_deselections=data.get("unmatched_deselections", []),
        log_path=log_path,
    )


# -- the comparison ---------------------------------------------------------------------------------


@dataclass
class Verdict:
    problems: list[str]  # each one fails the run
    regressions: list[str]  # pass on stock, not with ours, not known
    known: list[str]  # known differences that did differ
    stale_known: list[str]  # known differences that did not differ this time
    improvements: list[str]  # fail on stock, pass with ours


def compare(
    stock: RunResult,
    ours: RunResult,
    *,
    known: Mapping[str, str] = KNOWN_DIFFERENCES,
    min_ran: int = MIN_TESTS_RAN,
    full: bool = True,
) -> Verdict:
    """Every test that passes on stock passes with ours (but `known`); both runs plausible."""
    problems: list[str] = []
    for run in (stock, ours):
        if run.returncode not in (0, 1):  # 2: interrupted, 3: internal error, 4: usage, 5: nothing collected
            problems.append(f"{run.mode}: pytest exited {run.returncode}, not a completed run")
        if not run.outcomes:
            problems.append(f"{run.mode}: no test outcome recorded")
        elif run.ran < min_ran:
            problems.append(f"{run.mode}: only {run.ran} tests ran (at least {min_ran} expected)")
        if full and run.unmatched_deselections:
            problems.append(f"{run.mode}: deselections that match no test: {', '.join(run.unmatched_deselections)}")
    if set(stock.outcomes) != set(ours.outcomes):
        only = sorted(set(stock.outcomes) ^ set(ours.outcomes))
        problems.append(f"the runs ran different tests: {', '.join(only[:5])}{' ...' if len(only) > 5 else ''}")

    stock_built = stock.built(OUR_CLASSES)
    if stock_built:
        problems.append(f"stock: {len(stock_built)} tests built our scheduler, e.g. {stock_built[0]}")
    if ours.outcomes and not ours.built(OUR_CLASSES):
        problems.append("ours: no test built ProgramAwareScheduler: the substitution did not take")
    leaked = ours.built(STOCK_CLASSES)
    if leaked:
        problems.append(f"ours: {len(leaked)} tests still built vLLM's Scheduler/AsyncScheduler, e.g. {leaked[0]}")

    regressions, known_hit = [], []
    for nodeid, outcome in sorted(stock.outcomes.items()):
        if outcome != "passed" or ours.outcomes.get(nodeid) == "passed":
            continue
        (known_hit if nodeid in known else regressions).append(nodeid)
    if regressions:
        problems.append(f"{len(regressions)} tests pass on stock vLLM but not with ours")
    stale = sorted(nodeid for nodeid in known if nodeid not in known_hit and (full or nodeid in stock.outcomes))
    improvements = sorted(
        nodeid
        for nodeid, outcome in ours.outcomes.items()
        if outcome == "passed" and stock.outcomes.get(nodeid) != "passed"
    )
    return Verdict(problems, regressions, known_hit, stale, improvements)


def report(runs: Iterable[RunResult], verdict: Verdict | None) -> None:
    runs = list(runs)
    print("\n== vLLM tests/v1/core: stock vLLM vs ProgramAwareScheduler ==")
    for run in runs:
        print(f"  {run.mode:5s}: {run.summary()} (pytest exit {run.returncode}; log {run.log_path})")
        if run.mode == "ours":
            ours_built = run.built(OUR_CLASSES)
            others = {name for built in run.built_by_test.values() for name in built} - OUR_CLASSES
            other_built = set(run.built(frozenset(others))) - set(ours_built)
            passed = sum(run.outcomes.get(nodeid) == "passed" for nodeid in ours_built)
            line = f"         {len(ours_built)} tests built a ProgramAware scheduler ({passed} passed)"
            if other_built:
                line += f"; {len(other_built)} only other vLLM schedulers ({', '.join(sorted(others))})"
            print(line)
    if runs:
        per_pattern = Counter(runs[0].deselected.values())
        print(f"  deselected: {len(runs[0].deselected)} tests; not collected: {len(IGNORED)} file(s)")
        by_reason: dict[str, list[str]] = {}
        for pattern, reason in DESELECTED.items():
            by_reason.setdefault(reason, []).append(pattern)
        for reason, patterns in by_reason.items():
            where = patterns[0] if len(patterns) == 1 else f"{len(patterns)} functions or files"
            print(f"    - {sum(per_pattern[p] for p in patterns)} tests ({where}): {reason}")
        for path, reason in IGNORED.items():
            print(f"    - {path} (not collected): {reason}")
    if verdict is None:
        return
    if verdict.known:
        print(f"  known differences ({len(verdict.known)}):")
        for nodeid in verdict.known:
            print(f"    - {nodeid}: {KNOWN_DIFFERENCES[nodeid]}")
    if verdict.stale_known:
        print(f"  known differences that no longer differ (take them off the list): {', '.join(verdict.stale_known)}")
    if verdict.improvements:
        print(f"  fail on stock, pass with ours ({len(verdict.improvements)}): {', '.join(verdict.improvements)}")
    if verdict.regressions:
        ours = next(run for run in runs if run.mode == "ours")
        print(f"  REGRESSIONS ({len(verdict.regressions)}): pass on stock, not with ours:")
        for nodeid in verdict.regressions:
            print(f"    - {nodeid} [{ours.outcomes.get(nodeid, 'not run')}]")
    for problem in verdict.problems:
        print(f"  FAIL: {problem}")
    if not verdict.problems:
        print("  OK: every test that passes on stock vLLM passes with ours (but the known differences)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--only", choices=("stock", "ours"), help="one run, no comparison")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression (a quick look: no plausibility floor)")
    parser.add_argument("--paths", nargs="+", help=f"test paths under the source root (default: {TEST_ROOT})")
    parser.add_argument("--cache-dir", type=Path, help="default: <AGENTFLOW_CACHE_DIR or ~/.cache/agentflow>/vllm-src")
    args = parser.parse_args(argv)

    directory = args.cache_dir or cache_dir()
    try:
        sdist = fetch_sdist(directory)
        src_root = extract_tests(sdist, directory / f"vllm-{VLLM_VERSION}-tests")
    except SdistError as e:
        print(f"vllm-upstream: {e}", file=sys.stderr)
        return 2
    redirect_path = write_local_models(src_root / "_local_models")
    full = not (args.keyword or args.paths)

    runs: dict[str, RunResult] = {}
    for mode in ("stock", "ours"):
        if args.only and mode != args.only:
            continue
        log_path = directory / "logs" / f"{mode}.log"
        paths = args.paths or [TEST_ROOT]
        run = run_pytest(mode, src_root, redirect_path, paths=paths, keyword=args.keyword, log_path=log_path)
        runs[mode] = run
        print(f"vllm-upstream: [{mode}] {run.summary()}", flush=True)
        if run.returncode not in (0, 1) or not run.outcomes:
            print(log_path.read_text()[-4000:])
    if len(runs) == 1:
        (run,) = runs.values()
        report(runs.values(), None)
        return 0 if run.returncode in (0, 1) and run.outcomes else 1
    verdict = compare(runs["stock"], runs["ours"], min_ran=MIN_TESTS_RAN if full else 1, full=full)
    report(runs.values(), verdict)
    return 1 if verdict.problems else 0


if __name__ == "__main__":
    sys.exit(main())
