"""`agentflow serve --tool-call-parser agentflow`: vLLM's hermes parser reading what the models really write."""

from __future__ import annotations

from agentflow.backends.tool_calls import parse_tool_calls

# -- the server's parser (`agentflow serve --tool-call-parser agentflow`) -------------------------------------


def test_the_servers_tool_parser_reads_bare_and_tagged_calls() -> None:
    from vllm.tool_parsers.abstract_tool_parser import ToolParserManager

    from serving import _vllm

    _vllm.register_tool_parser(lambda text: parse_tool_calls(text, bare_json=True))
    parser = ToolParserManager.get_tool_parser(_vllm.TOOL_CALL_PARSER)(tokenizer=object())  # no tokens read
    bare = parser.extract_tool_calls('```json\n{"name": "f", "arguments": {"x": 1}}\n```', request=None)
    assert bare.tools_called and bare.tool_calls[0].function.name == "f"
    assert bare.tool_calls[0].function.arguments == '{"x": 1}'
    tagged = parser.extract_tool_calls('Sure.<tool_call>{"name": "g", "arguments": {}}</tool_call>', request=None)
    assert tagged.tools_called and tagged.content == "Sure."
    prose = parser.extract_tool_calls("No tool needed.", request=None)
    assert not prose.tools_called and prose.content == "No tool needed."


def test_serve_turns_tool_calling_on_with_the_agentflow_parser() -> None:
    from pathlib import Path

    from serving._server import ServeOptions, vllm_server_args

    argv = vllm_server_args(ServeOptions(model_dir=Path("/m")))
    assert argv[argv.index("--tool-call-parser") + 1] == "agentflow" and "--enable-auto-tool-choice" in argv
    assert "--enable-auto-tool-choice" not in vllm_server_args(ServeOptions(model_dir=Path("/m"), tool_calls=False))
