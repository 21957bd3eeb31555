"""ExactModel: SmolLM2-135M-Instruct run in-process with transformers, fp32, for exact teacher logprobs.

The project-owned score server (tests/support/score_server.py) answers every scoring shape from this
model, and the tests compare what a request kind parsed with `direct()`, the same weights evaluated
here without any server in between. The weights are the cached HF conversion of the builtin model
(`distill.core.student.resolve_student("builtin:smollm2-135m-instruct")`); nothing is downloaded.

Positions: `rows(ids)[j]` is the log-softmax of the logits at position j, i.e. the distribution of the
token at j + 1. `score(ids, k)` returns the project convention (orchestrator/kinds/score_types.py):
lp[0] None, lp[i] = rows[i - 1][ids[i]]; with `shift=1` it returns what llama-cpp-python's server
echoes instead, rows[i][ids[i]] (each token scored under the NEXT position's distribution).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

BUILTIN = "builtin:smollm2-135m-instruct"


class ExactModel:
    def __init__(self, spec: str = BUILTIN):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from distill.core.student import resolve_student

        self.path = resolve_student(spec, with_model=True)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the "Loading weights" bar, in the middle of test output
        try:
            self.model = AutoModelForCausalLM.from_pretrained(str(self.path), dtype=torch.float32).eval()
        finally:
            hf_logging.enable_progress_bar()
        self.vocab_size = int(self.model.config.vocab_size)
        self.eos_id = self.tokenizer.eos_token_id
        # Every forward runs on this one thread, whoever asks (the server's handler threads, the tests):
        # torch's intra-op thread count is per OS thread under OpenMP, and a module fixture that sets and
        # restores it on the test thread would otherwise let a served score and `direct()` sum in a
        # different order (1e-5 apart, seen in the full suite). One worker also means one forward at a time.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="exact-model")

    # -- the model, directly -------------------------------------------------------------------

    def rows(self, ids: list[int]):
        """[len(ids), vocab] fp32 log-softmax of the logits at every position (row j predicts ids[j + 1])."""
        import torch

        def forward():
            with torch.no_grad():
                logits = self.model(torch.tensor([ids], dtype=torch.long)).logits[0].float()
            return torch.log_softmax(logits, dim=-1)

        return self._worker.submit(forward).result()

    def direct(self, ids: list[int]) -> list[float | None]:
        """log p(ids[i] | ids[:i]) for every position (None at 0): the reference the tests compare with."""
        r = self.rows(ids)
        return [None] + [float(r[i - 1, ids[i]]) for i in range(1, len(ids))]

    def score(self, ids: list[int], k: int = 0, shift: int = 0):
        """(logprobs, topk, ranks): logprobs[0] None; topk[i] the k best (id, logprob) of the distribution
        that scored ids[i], best first ([] at 0); ranks[i] the 1-based rank of ids[i] in it (0 at 0).
        shift=1 scores each token under the following position's distribution (llama.cpp's echo)."""
        import torch

        r = self.rows(ids)
        lps: list[float | None] = [None]
        tops: list[list[tuple[int, float]]] = [[]]
        ranks = [0]
        for i in range(1, len(ids)):
            row = r[i - 1 + shift] if i - 1 + shift < len(ids) else r[i - 1]
            lp = row[ids[i]]
            lps.append(float(lp))
            ranks.append(int((row > lp).sum()) + 1)
            if k:
                v, j = torch.topk(row, k)
                tops.append([(int(a), float(b)) for a, b in zip(j.tolist(), v.tolist())])
            else:
                tops.append([])
        return lps, tops, ranks

    def generate(self, ids: list[int], max_tokens: int, k: int = 0):
        """Greedy continuation of `ids` (stops after EOS): (token ids, their logprobs, their top-k)."""
        import torch

        out: list[int] = []
        lps: list[float] = []
        tops: list[list[tuple[int, float]]] = []
        for _ in range(max_tokens):
            row = self.rows(ids + out)[-1]
            t = int(torch.argmax(row))
            out.append(t)
            lps.append(float(row[t]))
            if k:
                v, j = torch.topk(row, k)
                tops.append([(int(a), float(b)) for a, b in zip(j.tolist(), v.tolist())])
            else:
                tops.append([])
            if t == self.eos_id:
                break
        return out, lps, tops

    # -- text ------------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """The token ids of `text`, no special tokens added (SmolLM2 adds none anyway)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def piece(self, token_id: int) -> str:
        """The text of one token alone, as a legacy-completions `tokens` entry shows it."""
        return _piece(self.tokenizer, token_id)


def _piece(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id])
