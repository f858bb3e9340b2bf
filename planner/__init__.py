"""The planner: compiles a natural-language task into the IR and runs it, replanning when needed.

```python
from planner import compile_and_run
result = await compile_and_run("Which is bigger, Lima or Cairo?", tools=registry, model="embedded")
print(result.render())
```

Plans are LLMCompiler's text form (`N. tool(args)` lines, `$N` references, `join()`), parsed
with `ast` as they stream (`PlanParser`), constrained by a grammar generated from the registry
(`build_grammar`) where the backend enforces one, and judged by a joiner that finishes or
replans. `run_react` is the sequential baseline: one tool call per LLM turn.
"""

from ._format import format_plan, format_step, format_value
from ._grammar import DEFAULT_MAX_STEPS, build_grammar
from ._joiner import Finish, JoinDecision, Replan, build_joiner_prompt, join_schema, parse_join_output
from ._parse import END_OF_PLAN, Plan, PlanParser, parse_call, parse_plan
from ._prompt import Observation, PlanExample, build_planner_prompt, default_examples, render_observations
from ._react import ReactResult, ReactTurn, build_react_prompt, run_react
from ._run import PlannerOptions, PlanRound, PlanRunResult, compile_and_run, compile_and_run_sync

__all__ = [
    "DEFAULT_MAX_STEPS",
    "END_OF_PLAN",
    "Finish",
    "JoinDecision",
    "Observation",
    "Plan",
    "PlanExample",
    "PlanParser",
    "PlanRound",
    "PlanRunResult",
    "PlannerOptions",
    "ReactResult",
    "ReactTurn",
    "Replan",
    "build_grammar",
    "build_joiner_prompt",
    "build_planner_prompt",
    "build_react_prompt",
    "compile_and_run",
    "compile_and_run_sync",
    "default_examples",
    "format_plan",
    "format_step",
    "format_value",
    "join_schema",
    "parse_call",
    "parse_join_output",
    "parse_plan",
    "render_observations",
    "run_react",
]
