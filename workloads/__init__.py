"""Batch runners for real workloads, with their own data and checkers, resumable, with reports.

- BFCL (`agentflow bfcl`): bfcl-eval's shipped records run as agentflow programs (native: calls
  in one model turn as BFCL prompts; compiled: the planner builds the DAG) and scored by BFCL's
  own AST, multi-turn and relevance checkers.
- `run_batch` / `ResultsFile`: the shared batch behaviour (K records at once, JSONL appended
  durably as each completes, `--resume` after a kill, summary table, accuracy plot).
- `SchemaTool`: a tool from a JSON-schema function description, validated like `@tool`.
"""

from workloads._batch import BatchItem, BatchStats, CategorySummary, ResultsFile, run_batch, summarize
from workloads._bfcl import BfclOptions, BfclReport, run_bfcl, run_bfcl_async
from workloads._bfcl_data import ALL_CATEGORIES, BfclRecord, MalformedRecord, load_category
from workloads._schema import SchemaTool

__all__ = [
    "ALL_CATEGORIES",
    "BatchItem",
    "BatchStats",
    "BfclOptions",
    "BfclRecord",
    "BfclReport",
    "CategorySummary",
    "MalformedRecord",
    "ResultsFile",
    "SchemaTool",
    "load_category",
    "run_batch",
    "run_bfcl",
    "run_bfcl_async",
    "summarize",
]
