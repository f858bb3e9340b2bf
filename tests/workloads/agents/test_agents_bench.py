"""The pure parts of `agentflow bench agents`: tasks, config, proxy bookkeeping, attribution, servers' argv."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agentflow.exceptions import UserError
from workloads.agents import load_tasks, score_attribution
from workloads.agents._bench import AgentsBenchOptions, _labels, _p95, check_options, kv_bytes_per_token
from workloads.agents._config import AgentSettings, agent_overrides, deep_merge, mini_command, render_config
from workloads.agents._proxy import AgentProxy, ProxyGroup, response_id, usage_of
from workloads.agents._servers import ServerSpec, prometheus_counters, server_command, stock_vllm_args
from workloads.agents._tasks import apply_fix, copy_task, run_task_tests
from workloads.agents._venv import AgentInstall, agent_env, install_requirements

# -- tasks ----------------------------------------------------------------------------------------------


def test_tasks_are_shipped_and_named() -> None:
    tasks = load_tasks()
    assert len(tasks) >= 3
    assert [t.name for t in tasks] == sorted(t.name for t in tasks)
    assert all(t.statement and (t.repo / "tests").is_dir() for t in tasks)


def test_unknown_task_names_the_known_ones() -> None:
    with pytest.raises(UserError, match="unknown task.*stats_mean"):
        load_tasks(["no_such_task"])


@pytest.mark.parametrize("name", [t.name for t in load_tasks()])
def test_each_task_fails_until_its_fix(name: str, tmp_path: Path) -> None:
    (task,) = load_tasks([name])
    repo = copy_task(task, tmp_path / "repo")
    assert not run_task_tests(repo), "the shipped bug must make a test fail"
    apply_fix(task, repo)
    assert run_task_tests(repo), "the known fix must make the tests pass"
    assert (task.repo / task.fix.path).read_text().count(task.fix.old) == 1, "the pristine repo stays untouched"


def test_copy_is_a_fresh_git_repository(tmp_path: Path) -> None:
    task = load_tasks()[0]
    repo = copy_task(task, tmp_path / "repo")
    log = subprocess.run(["git", "log", "--oneline"], cwd=repo, capture_output=True, text=True, check=True)
    assert len(log.stdout.splitlines()) == 1
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True)
    assert status.stdout == ""
    apply_fix(task, repo)
    diff = subprocess.run(["git", "diff", "--stat"], cwd=repo, capture_output=True, text=True, check=True)
    assert task.fix.path in diff.stdout


# -- config -----------------------------------------------------------------------------------------------

_BUILTIN = """\
agent:
  system_template: |
    You are a helpful assistant.
  step_limit: 0
  cost_limit: 3.
  mode: confirm
environment:
  env:
    PAGER: cat
model:
  model_kwargs:
    drop_params: true
"""


def test_config_keeps_the_agents_own_and_sets_only_the_server(tmp_path: Path) -> None:
    settings = AgentSettings(step_limit=5, max_tokens=64, temperature=0.5, seed=7)
    overrides = agent_overrides(
        settings, base_url="http://127.0.0.1:9/v1", api_key="k", model_name="default", cwd=tmp_path
    )
    config = json.loads(render_config(_BUILTIN, overrides))  # JSON is YAML: what mini-swe-agent reads
    assert config["agent"]["system_template"] == "You are a helpful assistant.\n"
    assert config["agent"] | {} == {
        "system_template": "You are a helpful assistant.\n",
        "step_limit": 5,
        "cost_limit": 0,
        "mode": "yolo",
        "confirm_exit": False,
    }
    assert config["environment"]["env"] == {"PAGER": "cat"}
    assert config["environment"]["cwd"] == str(tmp_path)
    model = config["model"]
    assert model["model_name"] == "hosted_vllm/default"
    assert model["model_kwargs"] == {
        "drop_params": True,
        "api_base": "http://127.0.0.1:9/v1",
        "api_key": "k",
        "max_tokens": 64,
        "temperature": 0.5,
        "seed": 7,
    }
    greedy = agent_overrides(AgentSettings(), base_url="u", api_key="k", model_name="m", cwd=tmp_path)
    assert "seed" not in greedy["model"]["model_kwargs"] and greedy["model"]["model_kwargs"]["temperature"] == 0.0
    # nothing that names a program or a session
    text = json.dumps(config)
    for key in ("program_id", "session_id", "x-session-id", "prompt_cache_key", "vllm_xargs", '"user"'):
        assert key not in text


def test_deep_merge_does_not_modify_its_inputs() -> None:
    base = {"a": {"b": 1, "c": [1]}, "d": 1}
    extra = {"a": {"b": 2}, "e": {"f": 1}}
    merged = deep_merge(base, extra)
    assert merged == {"a": {"b": 2, "c": [1]}, "d": 1, "e": {"f": 1}}
    assert base == {"a": {"b": 1, "c": [1]}, "d": 1}
    merged["a"]["c"].append(2)
    assert base["a"]["c"] == [1]


def test_mini_command_is_the_users_unattended_one(tmp_path: Path) -> None:
    argv = mini_command(tmp_path / "mini", config=tmp_path / "c.yaml", task="fix it", trajectory=tmp_path / "t.json")
    assert argv[0].endswith("/mini")
    assert "--yolo" in argv and "--exit-immediately" in argv
    assert argv[argv.index("--task") + 1] == "fix it"


def test_agent_env_puts_its_venv_first_and_ours_out(tmp_path: Path) -> None:
    install = AgentInstall(venv=tmp_path / "venv", version="2.4.6")
    ours = str(Path(sys.prefix) / "bin")
    env = agent_env(install, {"PATH": f"{ours}:/usr/bin", "PYTHONPATH": "/x", "VIRTUAL_ENV": sys.prefix})
    assert env["PATH"].split(":") == [str(tmp_path / "venv" / "bin"), "/usr/bin"]
    assert "PYTHONPATH" not in env
    assert env["VIRTUAL_ENV"] == str(tmp_path / "venv")
    assert env["MSWEA_CONFIGURED"] == "true"


def test_install_requirements_are_pinned() -> None:
    assert all("==" in requirement for requirement in install_requirements("2.4.6"))
    assert "mini-swe-agent==2.4.6" in install_requirements("2.4.6")


# -- proxy bookkeeping ------------------------------------------------------------------------------------


def test_response_id_and_usage_of_a_json_reply() -> None:
    body = json.dumps(
        {
            "id": "chatcmpl-abc",
            "usage": {"prompt_tokens": 100, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 64}},
        }
    ).encode()
    assert response_id(body, "application/json") == "chatcmpl-abc"
    assert usage_of(body, "application/json") == (100, 64, 7)
    assert usage_of(b'{"id": "x", "usage": {"prompt_tokens": 5, "prompt_tokens_details": null}}', "") == (5, 0, 0)


def test_response_id_of_a_stream_and_of_errors() -> None:
    stream = (
        b'data: {"id": "chatcmpl-s", "choices": []}\n\n'
        b'data: {"id": "chatcmpl-s", "usage": {"prompt_tokens": 3}}\n\n'
        b"data: [DONE]\n\n"
    )
    assert response_id(stream, "text/event-stream") == "chatcmpl-s"
    assert usage_of(stream, "text/event-stream") == (3, 0, 0)
    assert response_id(b"not json", "application/json") is None
    assert response_id(b'{"error": {"message": "bad"}}', "application/json") is None
    assert response_id(b'["id"]', "application/json") is None


def test_proxy_books_generation_requests_only() -> None:
    proxy = AgentProxy(agent="agent0", upstream="http://127.0.0.1:1")
    proxy.record(path="/v1/models", started_s=0.0, status=200, body=b"{}", content_type="application/json")
    proxy.record(
        path="/v1/chat/completions",
        started_s=0.0,
        status=200,
        body=b'{"id": "chatcmpl-1"}',
        content_type="application/json",
    )
    proxy.record(
        path="/v1/chat/completions",
        started_s=0.0,
        status=400,
        body=b'{"id": "chatcmpl-2"}',
        content_type="application/json",
    )
    assert proxy.other_requests == 1
    assert len(proxy.turns) == 2
    assert proxy.response_ids() == ["chatcmpl-1"]  # a refused request has no id the server could attribute


async def test_proxy_group_forwards_and_records_per_agent() -> None:
    from aiohttp import web

    seen: list[tuple[str, str, bytes]] = []

    async def upstream(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append((request.path, request.headers.get("Authorization", ""), body))
        reply = {"id": f"chatcmpl-{len(seen)}", "usage": {"prompt_tokens": 10, "completion_tokens": 2}}
        return web.json_response(reply)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", upstream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    group = ProxyGroup(f"http://127.0.0.1:{port}", ["a", "b"])
    await group.start()
    try:
        import aiohttp

        async with aiohttp.ClientSession() as client:
            for proxy, n in zip(group.proxies, (2, 1), strict=True):
                for _ in range(n):
                    async with client.post(
                        proxy.base_url + "/chat/completions",
                        json={"messages": []},
                        headers={"Authorization": "Bearer k"},
                    ) as response:
                        assert response.status == 200
                        assert (await response.json())["id"].startswith("chatcmpl-")
    finally:
        await group.stop()
        await runner.cleanup()
    a, b = group.proxies
    assert a.response_ids() == ["chatcmpl-1", "chatcmpl-2"]
    assert b.response_ids() == ["chatcmpl-3"]
    assert all(auth == "Bearer k" and body == b'{"messages": []}' for _, auth, body in seen)
    assert a.turns[0].prompt_tokens == 10


# -- attribution --------------------------------------------------------------------------------------------


def test_attribution_all_right() -> None:
    report = score_attribution(
        {"a": ["1", "2", "3"], "b": ["4", "5"]}, {"1": "p", "2": "p", "3": "p", "4": "q", "5": "q"}
    )
    assert report.accuracy == 1.0
    assert report.to_dict()["agents_split"] == 0


def test_attribution_merged_agents_are_wrong_for_the_minority() -> None:
    report = score_attribution({"a": ["1", "2", "3"], "b": ["4", "5"]}, {k: "p" for k in "12345"})
    assert report.correct == 3
    assert report.accuracy == pytest.approx(3 / 5)
    (a, b) = report.agents
    assert a.program == "p" and b.program is None and b.correct == 0


def test_attribution_split_unattributed_and_missing() -> None:
    attributions = {"1": "p", "2": "p", "3": "r", "4": None, "6": "q"}
    report = score_attribution({"a": ["1", "2", "3", "4", "5"], "b": ["6"]}, attributions)
    a, b = report.agents
    assert (a.correct, a.unattributed, a.missing, a.programs) == (2, 1, 1, 2)
    assert b.correct == 1
    assert report.accuracy == pytest.approx(3 / 6)
    assert report.to_dict()["unattributed"] == 1 and report.to_dict()["missing"] == 1


def test_attribution_programs_go_to_the_agent_with_most_turns_in_them() -> None:
    # b holds more of p than a does; a then gets its next best, r.
    attributions = {"1": "p", "2": "r", "3": "r", "4": "p", "5": "p", "6": "p"}
    report = score_attribution({"a": ["1", "2", "3"], "b": ["4", "5", "6"]}, attributions)
    a, b = report.agents
    assert (b.program, b.correct) == ("p", 3)
    assert (a.program, a.correct) == ("r", 2)


def test_attribution_of_nothing() -> None:
    report = score_attribution({"a": []}, {})
    assert report.accuracy is None and report.turns == 0


# -- servers and options -------------------------------------------------------------------------------------


def _spec(tmp_path: Path) -> ServerSpec:
    return ServerSpec(model_dir=tmp_path, port=8123, kv_cache_bytes=96 * 1024**2, max_model_len=4096, max_num_seqs=16)


def test_stock_server_gets_the_same_vllm_args_without_ours(tmp_path: Path) -> None:
    from serving._server import ServeOptions, vllm_server_args

    spec = _spec(tmp_path)
    stock = stock_vllm_args(spec)
    for flag in ("--middleware", "--scheduler-cls", "--additional-config"):
        assert flag not in stock
    ours = vllm_server_args(
        ServeOptions(
            model_dir=tmp_path, port=8123, kv_cache_bytes=96 * 1024**2, max_model_len=4096, max_num_seqs=16, seed=0
        )
    )
    shared = (
        "--model",
        "--dtype",
        "--block-size",
        "--max-model-len",
        "--max-num-seqs",
        "--kv-cache-memory-bytes",
        "--seed",
    )
    for flag in shared:
        assert stock[stock.index(flag) + 1] == ours[ours.index(flag) + 1]
    assert "--enforce-eager" in stock
    assert stock[-len(spec.extra_args()) :] == spec.extra_args()
    assert stock.count("--tool-call-parser") == 1 and stock[stock.index("--tool-call-parser") + 1] == "hermes"
    command = server_command("vllm", spec)
    assert command[1:4] == ["-m", "vllm.entrypoints.launchers.api_server.entry", "--model"]


def test_agentflow_server_is_its_cli_with_the_same_extra_args(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    command = server_command("agentflow", spec)
    assert command[1:4] == ["-m", "agentflow", "serve"]
    assert command[command.index("--") + 1 :] == spec.extra_args()
    assert command[command.index("--kv-cache-bytes") + 1] == str(96 * 1024**2)
    with pytest.raises(UserError, match="unknown server"):
        server_command("sglang", spec)


def test_prometheus_counters_sum_labels() -> None:
    text = (
        "# HELP vllm:prefix_cache_hits_total hits\n"
        'vllm:prefix_cache_hits_total{engine="0",model_name="default"} 120.0\n'
        'vllm:prefix_cache_hits_total{engine="1",model_name="default"} 30.0\n'
        "vllm:prefix_cache_queries_total 300\n"
        "garbage line\n"
    )
    counters = prometheus_counters(text)
    assert counters["vllm:prefix_cache_hits_total"] == 150.0
    assert counters["vllm:prefix_cache_queries_total"] == 300.0


def test_bad_options_are_user_errors(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(
        json.dumps({"num_attention_heads": 9, "hidden_size": 576, "num_key_value_heads": 3, "num_hidden_layers": 30})
    )
    assert kv_bytes_per_token(model) == 23040  # SmolLM2-135M's, as the catalog says
    check_options(AgentsBenchOptions(model_dir=model))
    with pytest.raises(UserError, match="at least 1"):
        check_options(AgentsBenchOptions(model_dir=model, agents=0))
    with pytest.raises(UserError, match="--steps"):
        check_options(AgentsBenchOptions(model_dir=model, settings=AgentSettings(step_limit=0)))
    with pytest.raises(UserError, match="no config.json"):
        check_options(AgentsBenchOptions(model_dir=tmp_path / "missing"))
    with pytest.raises(UserError, match="unknown sglang"):
        check_options(AgentsBenchOptions(model_dir=model, servers=("agentflow", "sglang")))


def test_labels_and_p95() -> None:
    assert _labels(("agentflow", "vllm", "vllm")) == ["agentflow", "vllm", "vllm:aa"]
    assert _p95([1.0, 2.0, 3.0, 4.0]) == 4.0
    assert _p95([float(i) for i in range(1, 101)]) == 95.0


def test_bench_is_registered() -> None:
    from agentflow.cli import build_parser

    args = build_parser().parse_args(["bench", "agents", "--agents", "2", "--tasks", "stats_mean", "--steps", "3"])
    assert (args.agents, args.tasks, args.steps) == (2, "stats_mean", 3)


def test_venv_failure_is_a_user_error_naming_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from workloads.agents import _venv

    def failing_run(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 1, stdout="", stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(_venv.subprocess, "run", failing_run)
    with pytest.raises(UserError, match=r"pip install mini-swe-agent==2\.4\.6.*--agent-venv"):
        _venv.ensure_agent_venv("2.4.6", venv=tmp_path / "venv")
    with pytest.raises(UserError, match="not installed"):
        _venv.ensure_agent_venv("2.4.6", venv=tmp_path / "other", create=False)


def test_git_is_there() -> None:
    assert shutil.which("git"), "the tasks are copied as git repositories"
    assert asyncio.iscoroutinefunction(ProxyGroup.start)
