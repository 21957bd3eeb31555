"""`distill run|rollout|replay|train --help`: each config command's own flags and how overrides work."""

from __future__ import annotations

USAGE = """distill <command> ...

  run CONFIG [--dry-run] [--no-resume] [--key.path VALUE ...]
                         sample from the teacher (or replay) and train, concurrently
  rollout CONFIG [...]   only sample from the teacher -> OUTPUT_DIR/samples
  replay CONFIG [INPUT ...] [--on-error skip|fail] [...]
                         only turn recorded trajectories into samples (no network)
  train CONFIG [--resume] [--samples DIR] [...]
                         only train on OUTPUT_DIR/samples (torchrun-compatible)
  score CONFIG [--samples DIR] [--out DIR] [...]
                         only add the [scorer] teacher's logprobs -> OUTPUT_DIR/scored
  tokenize --tokenizer DIR INPUT.jsonl -o OUT.jsonl
                         messages -> prompt_ids / completion_ids / completion_mask
  inspect PATH [--tokenizer DIR] [--index N] [--html OUT.html]
                         show samples with the trained tokens highlighted
  probe URL --model M [--api-key-var VAR] [--scorer vllm|sglang|echo]
                         what an OpenAI-compatible endpoint (or a scorer) supports
  report RUN_DIR         PNG of loss / tokens/s / lr and a text summary
  export RUN_DIR|CKPT --merged OUT
                         merge a LoRA checkpoint into a plain HF model folder

`distill COMMAND --help` shows a command's options.
"""

OVERRIDES = """
Configuration: CONFIG is a TOML file (see docs/configuration.md for every key).
Any key can be overridden after the config path, and from the environment:
  --key.path VALUE       e.g. --trainer.optim.lr 1e-5  --orchestrator.sampling.stop '["###"]'
                         (VALUE is read as TOML when it parses as TOML, else as a string;
                         --key.path=VALUE and dashes for underscores work too)
  DISTILL_KEY__PATH=VALUE
                         e.g. DISTILL_TRAINER__MAX_STEPS=20 (tables joined by __)
Precedence: TOML file < environment < command line. An unknown key is an error that
names the nearest valid key. Before anything is written to output_dir, the student and
tokenizer folders, the reward function, output_dir and the inputs are checked.

  -h, --help             show this help and exit
"""

COMMAND_HELP = {
    "run": """usage: distill run CONFIG [--dry-run] [--no-resume] [--key.path VALUE ...]

Sample from the teacher (or replay recorded conversations) and train the student on the
samples, concurrently. Rerunning the same command resumes an interrupted run.
With on_policy.enabled = true the student samples its own completions, the [scorer]
grades every sampled token and an on-policy loss trains on them (docs/on_policy.md).

options:
  --dry-run              print the resolved configuration (secrets redacted), run the
                         checks made before a run asks the teacher anything (student,
                         chat template, prompts or replay inputs, the API key's variable,
                         output_dir) and exit: 1 with the problem, 0 when there is none;
                         nothing is written to output_dir
  --no-resume            train from scratch; refused when output_dir already holds a run
                         (recording.jsonl, samples or checkpoints): rerun without it to
                         resume, or choose a new output_dir, or delete that folder
""",
    "rollout": """usage: distill rollout CONFIG [--batch] [--key.path VALUE ...]

Only sample from the teacher (or replay, with orchestrator.source.type = "replay"):
rebuilt samples go to OUTPUT_DIR/samples, every answer to OUTPUT_DIR/recording.jsonl.
Rerunning the same command resumes it; nothing already recorded is requested again.

options:
  --batch                through the teacher's Batch API (= --orchestrator.batch.enabled true):
                         one batch of every missing pair, polled; a rerun collects it
""",
    "replay": """usage: distill replay CONFIG [INPUT ...] [--on-error skip|fail] [--key.path VALUE ...]

Only turn recorded conversations into samples (no network). INPUT: files, folders (their
.jsonl/.jsonl.gz/.parquet files) or globs; default orchestrator.source.path.

options:
  INPUT                  recordings, chat/ShareGPT JSONL, OpenAI Batch output, Parquet
  --on-error skip|fail   a malformed record: list it in replay_rejects.jsonl and go on
                         (skip), or stop naming file:line (fail; orchestrator.replay.on_error)
""",
    "train": """usage: distill train CONFIG [--resume] [--samples DIR] [--key.path VALUE ...]

Only train on OUTPUT_DIR/samples (torchrun-compatible: torchrun ... -m distill train CONFIG).

options:
  --resume               continue from the latest checkpoint in OUTPUT_DIR/checkpoints
                         (without it, earlier checkpoints there are refused)
  --samples DIR          train on this samples folder instead of OUTPUT_DIR/samples
""",
    "score": """usage: distill score CONFIG [--samples DIR] [--out DIR] [--no-follow] [--key.path VALUE ...]

Only add the [scorer] teacher's log-probabilities (and top-k, with scorer.top_k > 0) to the
samples of a samples folder, into a scored folder the trainer can read (distill train --samples).
The scorer's self-tests (tokenizer identity, alignment, determinism) run first and refuse a
scorer that fails one. Every answer is recorded in OUTPUT_DIR/scores.jsonl: rerunning the same
command resumes and never sends a recorded request again. [scorer.budget] stops it cleanly.

options:
  --samples DIR          score this samples folder (default OUTPUT_DIR/samples)
  --out DIR              write the scored samples here (default OUTPUT_DIR/scored)
  --no-follow            score what is there and exit, even when the input has no DONE
                         marker yet (default: wait for more shards until the input's DONE)
""",
}


def command_help(command: str) -> str:
    return COMMAND_HELP[command] + OVERRIDES
