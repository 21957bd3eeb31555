"""The scorer's three self-tests, run before any scoring (`distill score`, `distill run` with a `[scorer]`,
`distill probe --scorer`); generic over the `[scorer] type`'s ScorerKinds (score, sample, tokenize).

- tokenizer identity: the teacher tokenises a probe set (plain text, unicode, digits, whitespace runs,
  code, a chat-template render with its special tokens) exactly as the student does; every special token
  (bos / eos / pad / the template's) is one token with the same id on both sides; the vocabulary size
  agrees where the server reports it. Scores are in the teacher's vocabulary: with another tokenizer
  they are about other tokens, so cross-tokenizer distillation is refused.
- alignment: the teacher generates ~16 tokens greedily and reports each one's logprob; the prompt plus
  those tokens is scored, and every generated position must agree within scorer.alignment_tolerance.
  Catches a server whose scores are shifted by one position (llama-cpp-python's echo) or mis-keyed.
- determinism: one sequence scored twice agrees within scorer.determinism_tolerance.

Each failure is a ScoreCheckError with one message (the CLI prints it, exit 1); `run_self_tests`
returns the rows `distill probe` prints: (test, "pass" | "FAIL" | "skipped", detail).
"""

from __future__ import annotations

from typing import Any

from distill.core.redact import redact_url
from orchestrator.kinds.score_types import SampleRequest, ScoreBatch, TokenizeRequest
from orchestrator.scoring import ScoreError, check_answer, make_kinds, make_seq, piece_to_id
from orchestrator.transport import TeacherError, Transport

#: The probe texts of the tokenizer-identity test (the chat-template render is added per student).
PROBE_TEXTS = {
    "plain": "The quick brown fox jumps over the lazy dog.",
    "unicode": "Größe, naïve café — 東京 🙂 Ωμέγα",
    "digits": "3.14159 + 2718281828 = 12345678901234567890; 007",
    "whitespace": "a  b   c\t\td\n\n\ne    \n  f",
    "code": 'def f(x):\n    return {"k": [x ** 2 for _ in range(3)]}  # comment\n',
}
ALIGN_PROMPT = "Count from one to ten in words, separated by commas."
ALIGN_TOKENS = 16
# The echo shape carries text, in which a special token may not survive (llama.cpp echoes them as ""),
# so its alignment test scores plain text: the test is about positions, not the chat template.
ALIGN_TEXT = "The numbers from one to ten in words are: one, two, three,"


class ScoreCheckError(Exception):
    """A self-test failed: the scorer cannot be used for this student (the message says which and why)."""


def _special_tokens(tok: Any, render_ids: list[int]) -> dict[str, int]:
    """bos / eos / pad and every special token the chat-template render uses: text -> the student's id."""
    out: dict[str, int] = {}
    for name in ("bos_token", "eos_token", "pad_token"):
        t = getattr(tok, name, None)
        if t:
            out[str(t)] = tok.convert_tokens_to_ids(t)
    special = set(getattr(tok, "all_special_ids", []) or [])
    for i in render_ids:
        if i in special:
            out.setdefault(tok.convert_ids_to_tokens(i), i)
    return out


class SelfTests:
    """The three self-tests against one scorer (its `[scorer]` config) for one student tokenizer."""

    def __init__(self, sc: Any, transport: Transport, tokenizer: Any):
        self.sc, self.t, self.tok = sc, transport, tokenizer
        self.vocab_size: int | None = None
        self.echo = sc.type == "echo"
        self.pieces = piece_to_id(tokenizer) if self.echo else None
        self.score_kind, self.sample_kind, self.tokenize_kind = make_kinds(sc, tokenizer, self.pieces)

    async def _req(self, kind: Any, req: Any, what: str) -> Any:
        try:
            return (await self.t.request(kind, req)).answer
        except TeacherError as e:
            raise ScoreCheckError(
                f"scorer self-test: {what} failed at {redact_url(self.sc.base_url)}: {e.reason}: {e.detail}. Fix: check "
                f"scorer.base_url and scorer.type = {self.sc.type!r} (distill probe URL --scorer TYPE shows what "
                "the endpoint supports)"
            ) from None

    def _ids(self, ids: list[int] | None, pieces: list[str] | None) -> list[int | None]:
        if ids is not None:
            return list(ids)
        assert self.pieces is not None
        return [self.pieces.get(p) for p in pieces or []]

    async def tokenizer_identity(self) -> str:
        texts = dict(PROBE_TEXTS)
        render = self.tok.apply_chat_template(
            [{"role": "user", "content": "Hi there!"}, {"role": "assistant", "content": "Hello."}], tokenize=False
        )
        texts["chat template render"] = render
        skipped = []
        for name, text in texts.items():
            if self.echo and not self._spellable(text):
                skipped.append(name)  # the echo shape shows tokens as text: one splitting a character is lost
                continue
            want, got = await self._tokenize(text, f"tokenizing the {name} probe")
            if got != want:
                i = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
                raise ScoreCheckError(
                    f"scorer self-test 'tokenizer identity' failed: the teacher tokenises the {name} probe "
                    f"{text[:60]!r} differently from the student (first difference at token {i}: student "
                    f"{want[i] if i < len(want) else '(end)'}, teacher {got[i] if i < len(got) else '(end)'}; "
                    f"{len(want)} vs {len(got)} tokens). Teacher scores are per token of the teacher's "
                    "vocabulary: cross-tokenizer distillation is not supported. Fix: serve a teacher with the "
                    "student's tokenizer"
                )
        specials = _special_tokens(self.tok, self.tok.encode(render, add_special_tokens=False))
        for text, sid in specials.items():
            _, got = await self._tokenize(text, f"tokenizing {text!r}")
            if got != [sid] and got != [text]:
                raise ScoreCheckError(
                    f"scorer self-test 'tokenizer identity' failed: the special token {text!r} is id {sid} for "
                    f"the student but {got} for the teacher. Cross-tokenizer distillation is not supported. Fix: "
                    "serve a teacher with the student's tokenizer and special tokens"
                )
        vs = self.vocab_size
        if vs is not None and vs != len(self.tok):
            raise ScoreCheckError(
                f"scorer self-test 'tokenizer identity' failed: the teacher's vocabulary has {vs} tokens, the "
                f"student's {len(self.tok)}. Cross-tokenizer distillation is not supported"
            )
        note = f" (skipped, tokens that split a character cannot be echoed as text: {', '.join(skipped)})"
        return f"{len(texts) - len(skipped)} probe texts and {len(specials)} special tokens tokenised identically" + (
            note if skipped else ""
        )

    def _spellable(self, text: str) -> bool:
        from orchestrator.kinds.score_echo import token_pieces

        return "".join(token_pieces(self.tok, self.tok.encode(text, add_special_tokens=False))) == text

    async def _tokenize(self, text: str, what: str) -> tuple[list, list]:
        """(the student's tokens, the teacher's) of `text`: ids, or text pieces where the server gives strings."""
        ans = await self._req(self.tokenize_kind, TokenizeRequest(text), what)
        self.vocab_size = getattr(ans, "vocab_size", None) or self.vocab_size
        want = self.tok.encode(text, add_special_tokens=False)
        if ans.token_ids is not None:
            return want, list(ans.token_ids)
        from orchestrator.kinds.score_echo import token_pieces

        return token_pieces(self.tok, want), list(ans.pieces or [])

    def _prompt_ids(self) -> list[int]:
        if self.echo:
            return self.tok.encode(ALIGN_TEXT, add_special_tokens=False)
        text = self.tok.apply_chat_template(
            [{"role": "user", "content": ALIGN_PROMPT}], tokenize=False, add_generation_prompt=True
        )
        return self.tok.encode(text, add_special_tokens=False)

    async def _score(self, ids: list[int], what: str, k: int = 0) -> Any:
        seq = make_seq(ids, self.tok, self.echo)
        ans = await self._req(self.score_kind, ScoreBatch([seq], k), what)
        try:
            check_answer(seq, ans.seqs[0], k, f"scorer self-test ({what})")
        except (ScoreError, IndexError) as e:
            raise ScoreCheckError(str(e)) from None
        return ans.seqs[0]

    async def alignment(self) -> tuple[str, list[int]]:
        prompt = self._prompt_ids()
        ans = await self._req(
            self.sample_kind,
            SampleRequest(make_seq(prompt, self.tok, self.echo), ALIGN_TOKENS),
            "generating with logprobs",
        )
        gen = self._ids(ans.token_ids, ans.pieces)
        if not gen or None in gen or len(ans.logprobs) != len(gen):
            raise ScoreCheckError(
                f"scorer self-test 'alignment' failed: the teacher's generation could not be read as student "
                f"tokens with one logprob each ({len(gen)} tokens, {len(ans.logprobs)} logprobs)"
            )
        ids = prompt + [int(g) for g in gen if g is not None]
        if self.echo:
            ids = self._canonical_prefix(ids, len(prompt))
            if len(ids) - len(prompt) < 4:  # a pass must have compared something
                raise ScoreCheckError(
                    "scorer self-test 'alignment' could not be run: the teacher's greedy continuation is not a "
                    f"text the student tokenizes back to the same tokens beyond {len(ids) - len(prompt)} token(s), "
                    "so its echo cannot be lined up. Fix: use a scorer type that takes token ids (vllm, sglang)"
                )
        answer = await self._score(ids, "scoring a generated sequence", 1)
        scored = answer.logprobs
        p, tol = len(prompt), self.sc.alignment_tolerance
        worst = 0.0
        for j, want in enumerate(ans.logprobs[: len(ids) - p]):
            got = scored[p + j]
            diff = abs(got - want) if got is not None else float("inf")
            worst = max(worst, diff)
            if diff > tol:
                hint = _shift_hint(answer, ids[p:], p)
                raise ScoreCheckError(
                    f"scorer self-test 'alignment' failed: at generated token {j} (sequence position {p + j}) the "
                    f"teacher reported logprob {want:.4f} while sampling but {_num(got)} when scoring (difference "
                    f"{diff:.4f} > scorer.alignment_tolerance = {tol}){hint}. The scores cannot be trusted for "
                    "this sequence's positions"
                )
        return f"{len(ids) - p} generated tokens, max |diff| {worst:.2g} nats (tolerance {tol})", ids

    def _canonical_prefix(self, ids: list[int], p: int) -> list[int]:
        """The longest prefix of `ids` (at least the prompt's `p` tokens) that is its own text's tokenization:
        the echo shape sends text, and a generation may hold a token run the tokenizer would merge (two "\n"
        tokens read back as one "\n\n"), which would be a tokenizer mismatch, not a misalignment."""
        for n in range(len(ids), p, -1):
            head = ids[:n]
            if self.tok.encode(self.tok.decode(head), add_special_tokens=False) == head:
                return head
        return ids[:p]

    async def determinism(self, ids: list[int]) -> str:
        a = (await self._score(ids, "scoring twice (1)")).logprobs
        b = (await self._score(ids, "scoring twice (2)")).logprobs
        tol = self.sc.determinism_tolerance
        worst, at = 0.0, 0
        for i, (x, y) in enumerate(zip(a, b)):
            if x is None or y is None:
                continue
            if abs(x - y) > worst:
                worst, at = abs(x - y), i
        if worst > tol:
            raise ScoreCheckError(
                f"scorer self-test 'determinism' failed: the same sequence scored twice differs by {worst:.4f} "
                f"nats at position {at} ({a[at]} vs {b[at]}; scorer.determinism_tolerance = {tol}). Fix: serve "
                "the teacher with deterministic kernels / batch-invariant settings, or raise the tolerance"
            )
        return f"{len(ids)} positions, max |diff| {worst:.2g} nats (tolerance {tol})"


def _num(x: float | None) -> str:
    return "none" if x is None else f"{x:.4f}"


def _shift_hint(got: Any, gen: list[int], p: int) -> str:
    """ "; off by one?" when the scored top-1 at each generated position is the NEXT generated token (the
    generation is greedy, so an aligned scorer's top-1 is the token itself): the scores are one position late."""
    tops = got.topk or []
    n = len(gen) - 1
    if n < 2 or len(tops) < p + n:
        return ""
    late = sum(1 for j in range(n) if tops[p + j] and tops[p + j][0][0] == gen[j + 1])
    if late >= 0.8 * n:
        return (
            "; off by one? the scored top-1 at each position is the token AFTER it, so the server reports each "
            "token's logprob under the next position's distribution (llama-cpp-python's echo does)"
        )
    return ""


async def run_self_tests(sc: Any, transport: Transport, tokenizer: Any, stop_at_failure: bool = True) -> list:
    """Runs the three self-tests; rows (test, result, detail). With `stop_at_failure` the first failure is
    raised (ScoreCheckError); otherwise it is a FAIL row and the tests after it still run where they can."""
    st = SelfTests(sc, transport, tokenizer)
    rows: list[tuple[str, str, str]] = []
    ids: list[int] | None = None
    for name in ("tokenizer identity", "alignment", "determinism"):
        try:
            if name == "tokenizer identity":
                detail = await st.tokenizer_identity()
            elif name == "alignment":
                detail, ids = await st.alignment()
            else:
                ids = ids or st._prompt_ids()
                detail = await st.determinism(ids)
            rows.append((name, "pass", detail))
        except ScoreCheckError as e:
            if stop_at_failure:
                raise
            rows.append((name, "FAIL", str(e)))
    return rows
