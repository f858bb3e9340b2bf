"""BFCL (`agentflow bfcl`): bfcl-eval's shipped records run as agentflow programs, scored by BFCL's checkers.

Modes: native (calls in one model turn, as BFCL prompts) and compiled (the planner builds the
DAG). Scores come from BFCL's own AST, multi-turn and relevance checkers, run offline.
"""

from workloads.bfcl._data import ALL_CATEGORIES, BfclRecord, MalformedRecord, load_category
from workloads.bfcl._run import BfclOptions, BfclReport, run_bfcl, run_bfcl_async

__all__ = [
    "ALL_CATEGORIES",
    "BfclOptions",
    "BfclRecord",
    "BfclReport",
    "MalformedRecord",
    "load_category",
    "run_bfcl",
    "run_bfcl_async",
]
