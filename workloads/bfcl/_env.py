"""Import BFCL's checkers and decoders offline, without its heavy dependency set.

`bfcl-eval` is installed with `--no-deps` (plus `filelock`, `tenacity`, `mpmath`). Two of its
modules would drag in what we do not install, and neither is needed for Python categories:

- `bfcl_eval.constants.model_config` imports every vendor SDK to build `MODEL_CONFIG_MAPPING`;
  the AST checker only reads `MODEL_CONFIG_MAPPING[name].underscore_to_dot`. We register a small
  stand-in whose mapping answers any name with `underscore_to_dot = False` (our prompts keep dots).
- the Java/JavaScript call parsers import `tree_sitter`; when it is absent they are replaced by
  parsers that refuse (Java/JavaScript categories are not offered).

`BFCL_PROJECT_ROOT` is pointed at a scratch directory first: importing BFCL creates `result/`,
`score/` and lock directories there.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentflow.exceptions import UserError

__all__ = ["Bfcl", "bfcl", "bfcl_data_dir"]

_MODEL_CONFIG = "bfcl_eval.constants.model_config"
_PARSERS = ("bfcl_eval.model_handler.parser.java_parser", "bfcl_eval.model_handler.parser.js_parser")
_INSTALL_HINT = "install it with `pip install --no-deps bfcl-eval==2026.3.23 && pip install filelock tenacity mpmath`"


@dataclass(frozen=True, slots=True, kw_only=True)
class Bfcl:
    """The pieces of `bfcl_eval` the runner uses, imported once."""

    ast_checker: Any
    multi_turn_checker: Any
    multi_turn_utils: Any  # module: holds the checker's cached backend instances in its globals
    decode_ast: Any  # default_decode_ast_prompting
    decode_execute: Any  # default_decode_execute_prompting
    decoded_to_execution_list: Any
    system_prompt_pre_processing: Any
    format_execution_results: Any
    add_language_hint: Any
    is_function_calling_format_output: Any
    is_empty_output: Any
    is_empty_execute_response: Any
    language_python: Any
    return_format_python: Any
    max_steps_per_turn: int
    additional_function_prompt: str
    class_file_path_mapping: dict[str, str]
    stateless_classes: tuple[str, ...]
    func_doc_file_mapping: dict[str, str]
    # FC mode: BFCL's function-doc -> OpenAI tool conversion, and its FC announcements and renderings
    convert_to_tool: Any
    gorilla_to_openapi: dict[str, str]
    openai_style: Any  # ModelStyle.OPENAI_COMPLETIONS
    convert_to_function_call: Any
    additional_function_prompt_fc: str


class _AnyModelConfig(dict[str, Any]):
    """`MODEL_CONFIG_MAPPING` stand-in: every model name keeps dotted function names as they are."""

    def __missing__(self, key: str) -> Any:
        return types.SimpleNamespace(underscore_to_dot=False, model_name=key)

    def __contains__(self, key: object) -> bool:
        return True


def _refuse(*_args: Any, **_kwargs: Any) -> Any:
    raise UserError("Java/JavaScript BFCL categories need tree_sitter, which agentflow does not install")


def _install_stand_ins() -> None:
    if _MODEL_CONFIG not in sys.modules:
        stand_in = types.ModuleType(_MODEL_CONFIG)
        stand_in.MODEL_CONFIG_MAPPING = _AnyModelConfig()  # type: ignore[attr-defined]
        sys.modules[_MODEL_CONFIG] = stand_in
    if importlib.util.find_spec("tree_sitter") is None:
        for name in _PARSERS:
            if name not in sys.modules:
                parser = types.ModuleType(name)
                parser.parse_java_function_call = _refuse  # type: ignore[attr-defined]
                parser.parse_javascript_function_call = _refuse  # type: ignore[attr-defined]
                sys.modules[name] = parser


def _scratch_root() -> Path:
    return Path(tempfile.gettempdir()) / f"agentflow-bfcl-{os.getuid()}"


def bfcl_data_dir() -> Path:
    """`bfcl_eval/data` of the installed package (found without importing it)."""
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the BFCL runner needs bfcl-eval: {_INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@functools.cache
def bfcl() -> Bfcl:
    """Import BFCL's checkers with the stand-ins in place (once per process)."""
    bfcl_data_dir()  # a clear error when the package is missing
    os.environ.setdefault("BFCL_PROJECT_ROOT", str(_scratch_root()))
    _install_stand_ins()
    try:
        from bfcl_eval import utils as bfcl_utils
        from bfcl_eval.constants import default_prompts, enums, executable_backend_config, type_mappings
        from bfcl_eval.eval_checker.ast_eval import ast_checker
        from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_checker, multi_turn_utils
        from bfcl_eval.model_handler import utils as handler_utils
    except ImportError as exc:
        raise UserError(f"cannot import bfcl-eval's checkers ({exc}); {_INSTALL_HINT}") from exc
    return Bfcl(
        ast_checker=ast_checker.ast_checker,
        multi_turn_checker=multi_turn_checker.multi_turn_checker,
        multi_turn_utils=multi_turn_utils,
        decode_ast=handler_utils.default_decode_ast_prompting,
        decode_execute=handler_utils.default_decode_execute_prompting,
        decoded_to_execution_list=handler_utils.decoded_output_to_execution_list,
        system_prompt_pre_processing=handler_utils.system_prompt_pre_processing_chat_model,
        format_execution_results=handler_utils.format_execution_results_prompting,
        add_language_hint=bfcl_utils.add_language_specific_hint_to_function_doc,
        is_function_calling_format_output=bfcl_utils.is_function_calling_format_output,
        is_empty_output=bfcl_utils.is_empty_output,
        is_empty_execute_response=multi_turn_utils.is_empty_execute_response,
        language_python=enums.Language.PYTHON,
        return_format_python=enums.ReturnFormat.PYTHON,
        max_steps_per_turn=default_prompts.MAXIMUM_STEP_LIMIT,
        additional_function_prompt=default_prompts.DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_PROMPTING,
        class_file_path_mapping=dict(executable_backend_config.CLASS_FILE_PATH_MAPPING),
        stateless_classes=tuple(executable_backend_config.STATELESS_CLASSES),
        func_doc_file_mapping=dict(executable_backend_config.MULTI_TURN_FUNC_DOC_FILE_MAPPING),
        convert_to_tool=handler_utils.convert_to_tool,
        gorilla_to_openapi=dict(type_mappings.GORILLA_TO_OPENAPI),
        openai_style=enums.ModelStyle.OPENAI_COMPLETIONS,
        convert_to_function_call=handler_utils.convert_to_function_call,
        additional_function_prompt_fc=default_prompts.DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC,
    )
