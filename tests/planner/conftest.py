"""Fixtures of the planner tests."""

from __future__ import annotations

import pytest
from plan_tools import TEST_TOOLS  # type: ignore[import-not-found]

from agentflow.tools import ToolRegistry


@pytest.fixture
def registry() -> ToolRegistry:
    return ToolRegistry(TEST_TOOLS)
