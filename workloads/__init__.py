"""Batch runners for real workloads, in two wings, with their own data and checkers, resumable, with reports.

- `workloads.bfcl` (`agentflow bfcl`): bfcl-eval's shipped records run as agentflow programs and
  scored by BFCL's own checkers.
- `workloads.replay` (`agentflow replay`, `agentflow bench serving`): real agent traces replayed
  through the embedded engine under several serving policies.
- Shared: `run_batch` / `ResultsFile` (K records at once, JSONL appended durably as each
  completes, `--resume` after a kill, summary table, accuracy plot) and `SchemaTool` (a tool from
  a JSON-schema function description, validated like `@tool`).
"""

from workloads._batch import BatchItem, BatchStats, CategorySummary, ResultsFile, run_batch, summarize
from workloads._schema import SchemaTool
from workloads.bfcl import (
    ALL_CATEGORIES,
    BfclOptions,
    BfclRecord,
    BfclReport,
    MalformedRecord,
    load_category,
    run_bfcl,
    run_bfcl_async,
)

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
