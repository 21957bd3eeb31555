"""Segment tokenisation and sample assembly: the steps build_many runs per chunk.

Part of `Reconstructor` (reconstructor.py sets the state used here; its build_many
runs these steps: a helper thread makes one chunk's tokenizer call while this thread
plans the next chunk and reads the ids of the one before, `_encode_job`).
Every segment is tokenised as if alone, in one batch call to the fast tokenizer
(trained turns without a SentencePiece dummy prefix, in a second call to its copy:
orchestrator/segment_tokenize.py), in runs of texts joined by a separator token
(joined.py); prompt ids are cached by prompt text, a split sample's
prompt reuses the ids of the previous sample's prompt, and a prompt the ids of a prefix it
shares with earlier prompts, where that is exact (prompt_jobs.py). Then the self-check
(selfcheck.py) and the max_seq_len / overlong policy make the `Sample`s.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from distill.core.contract import Rejection, Sample
from orchestrator.reconstruction.cache import put_bounded
from orchestrator.reconstruction.joined import SegmentJoiner
from orchestrator.reconstruction.plan import Pending
from orchestrator.reconstruction.prompt_jobs import PromptJobs
from orchestrator.reconstruction.prompt_reuse import PromptReuse
from orchestrator.reconstruction.reasons import Reject
from orchestrator.segment_tokenize import PrefixSpaceRule

if TYPE_CHECKING:  # config imports no torch/transformers; we only need its type here
    from distill.core.config import Reconstruction


class Pipeline:
    """Tokenises planned samples and turns them into Samples (a mixin of Reconstructor)."""

    # Set by Reconstructor.__init__:
    PROMPT_CACHE_SIZE: int
    cfg: Reconstruction
    max_seq_len: int | None
    stats: collections.Counter
    backend: Any  # the fast tokenizer's Rust tokenizer
    _prompt_cache: dict[str, list[int]]  # prompt text -> ids
    _prefix_rule: PrefixSpaceRule | None  # SentencePiece-style dummy prefix, else None
    _continuation: Any  # _prefix_rule's tokenizer without the dummy prefix, else None
    _token_bytes: list[bytes | None] | None  # selfcheck.token_bytes (byte-level decoders), else None
    _joiner: SegmentJoiner  # runs of texts joined by a separator token
    _cont_joiner: SegmentJoiner  # the same for _continuation (no separator without one)
    _prompt_reuse: PromptReuse | None  # cut tokens for reusing an earlier prompt's ids, else None
    # From the other parts:
    _reject: Callable[[str, Reject], Rejection]  # reconstructor.Reconstructor._reject
    _prepare: Callable[..., tuple[list[Pending], list[Rejection]]]  # plan.Planner._prepare
    _roundtrip: Callable[[list[Pending], list[list[list[int]]]], list[Reject | None]]  # selfcheck.SelfCheck

    def _prepare_chunk(self, conversations: list[dict], base: int, results: list) -> list[tuple[int, "Pending"]]:
        pending: list[tuple[int, Pending]] = []
        for ci, conv in enumerate(conversations, base):
            plans, rejections = self._prepare(**conv)
            results.append(([], rejections))
            pending += [(ci, p) for p in plans]
        return pending

    def _complete(self, pending: list[tuple[int, "Pending"]], seg_ids: list[list[list[int]]], results: list) -> None:
        """Self-check the tokenised samples and add them (or their rejections) to `results`."""
        checks = self._roundtrip([p for _, p in pending], seg_ids)
        for n, check in enumerate(checks):
            p = pending[n][1]
            if check is not None and (self._joiner.id is not None or self._cont_joiner.id is not None):
                # maybe joined texts cut wrong (joined.py): encode the sample's texts one at a time
                ids = self._encode_alone(p)
                if ids != seg_ids[n] and self._roundtrip([p], [ids])[0] is None:  # same ids: same verdict
                    seg_ids[n], checks[n] = ids, None
                    put_bounded(self._prompt_cache, p.texts[0], ids[0], self.PROMPT_CACHE_SIZE)
                    self.stats["segments_encoded_again"] += 1
        for (ci, p), ids, check in zip(pending, seg_ids, checks):
            try:
                if check is not None:
                    raise check
                completion, mask = _completion_and_mask(ids, p.trained)
                s = self._finish(p, ids[0], completion, mask)
            except Reject as r:
                results[ci][1].append(self._reject(p.sid, r))
                continue
            if p.opening_context and not results[ci][0]:  # once per conversation that gives a sample
                self.stats["opening_turns_as_context"] += 1
            results[ci][0].append(s)
            self.stats["samples"] += 1
            if p.split:
                self.stats["split_samples"] += 1

    def _encode(self, pending: list["Pending"]) -> list[list[list[int]]]:
        """Token ids of every segment, each tokenised on its own, in one batch call.

        Prompts repeat (n samples per prompt, shared system prompts), so their ids are
        kept in a small cache keyed by the prompt text; a split sample's prompt is encoded
        as the text after its previous sample's prompt's ids, and a prompt that starts like
        an earlier one (a shared system prompt) as the text after that shared prefix's ids,
        where that is exact (prompt_jobs.py, prompt_reuse.py). The texts (prompts, then
        segments) go in as runs joined by a separator token, and the ids are cut at that
        token (joined.py).
        """
        run, finish, _ = self._encode_job(pending, None)
        return finish(run())

    def _encode_job(
        self, pending: list["Pending"], before: PromptJobs | None
    ) -> tuple[Callable[[], Any], Callable[[Any], list[list[list[int]]]], PromptJobs | None]:
        """`_encode` in two steps, `finish(run())`, and the chunk's PromptJobs: `run` holds no
        Python work (only the tokenizer's calls, which release the GIL), so build_many runs
        it in a helper thread while this thread does the Python of the chunks around it;
        `finish` cuts, resolves the prompts and fills the prompt cache, on this thread. The
        job is made before the chunk before (`before`, its PromptJobs) has finished: its
        prompts and prefixes are taken from it once it has (prompt_jobs.py).

        With a dummy-prefix rule (segment_tokenize.py) the prompts and the segments the rule
        applies to go to the tokenizer, the trained turns to its copy without the prefix
        (`_continuation`), each in runs joined by its own separator where one passed the
        probes (joined.py)."""
        jobs = PromptJobs(pending, self._prompt_cache, self._prompt_reuse, before)
        rest = [t for p in pending for t in p.texts[1:]]
        rule, cont = self._prefix_rule, self._continuation
        # which segments after the prompts the tokenizer itself takes (all of them without a copy)
        ruled = None if cont is None else [rule.context_has_prefix(f) for p in pending for f in p.trained[1:]]  # type: ignore[union-attr]
        if ruled is None:
            own, copy = self._joiner.join(jobs.texts + rest), self._cont_joiner.join([])
        else:
            own = self._joiner.join(jobs.texts + [t for t, r in zip(rest, ruled) if r])
            copy = self._cont_joiner.join([t for t, r in zip(rest, ruled) if not r])

        def run() -> tuple[list, list]:
            return (
                self.backend.encode_batch_fast(own.inputs, add_special_tokens=False) if own.inputs else [],
                cont.encode_batch_fast(copy.inputs, add_special_tokens=False) if copy.inputs else [],
            )

        def finish(out: tuple[list, list]) -> list[list[list[int]]]:
            cut = self._joiner.cut_all(own, out[0], self.backend, self.stats)
            ids = iter(cut)
            prompts = jobs.resolve(ids, self.backend, self.stats)
            if ruled is None:  # the segments after the prompts are the rest of `cut`, in order
                at, samples = len(jobs.texts), []
                for p in pending:
                    n = at + len(p.texts) - 1
                    samples.append([prompts[p.texts[0]], *cut[at:n]])
                    at = n
                return self._cache_prompts(prompts, samples)
            plain = iter(self._cont_joiner.cut_all(copy, out[1], cont, self.stats))
            flags = iter(ruled)
            return self._cache_prompts(
                prompts,
                [
                    [prompts[p.texts[0]]] + [next(ids) if next(flags) else next(plain) for _ in p.texts[1:]]
                    for p in pending
                ],
            )

        return run, finish, jobs

    def _encode_alone(self, p: "Pending") -> list[list[int]]:
        """A sample's segment ids, each text encoded as one input (no separator)."""
        if self._continuation is None:
            return [e.ids for e in self.backend.encode_batch_fast(p.texts, add_special_tokens=False)]
        prompt = self.backend.encode_batch_fast(p.texts[:1], add_special_tokens=False)[0].ids
        rest = self._prefix_rule.encode_after_prompt(self.backend, list(zip(p.texts[1:], p.trained[1:])))  # type: ignore[union-attr]
        return [prompt] + [e.ids for e in rest]

    def _cache_prompts(self, prompts: dict[str, list[int]], out: list[list[list[int]]]) -> list[list[list[int]]]:
        for t, ids in prompts.items():
            put_bounded(self._prompt_cache, t, ids, self.PROMPT_CACHE_SIZE)
        return out

    def _finish(self, p: "Pending", prompt_ids: list[int], completion_ids: list[int], mask: list[int]) -> Sample:
        meta = dict(p.meta)
        if p.keep_open:
            meta["truncated_turn"] = True
            self.stats["truncated_kept"] += 1
        n = len(prompt_ids) + len(completion_ids)
        if self.max_seq_len is not None and n > self.max_seq_len:
            if self.cfg.overlong == "drop":
                raise Reject("overlong", f"{n} tokens > max_seq_len {self.max_seq_len}")
            keep = self.max_seq_len - len(prompt_ids)
            if keep <= 0 or not any(mask[:keep]):
                raise Reject(
                    "overlong",
                    f"{n} tokens > max_seq_len {self.max_seq_len}, and the prompt "
                    f"({len(prompt_ids)} tokens) leaves nothing trainable",
                )
            completion_ids, mask = completion_ids[:keep], mask[:keep]
            meta["truncated_from"] = n
            self.stats["overlong_truncated"] += 1
        if not any(mask):
            raise Reject("no_trained_tokens", "no trained token in this sample")
        return Sample(
            sample_id=p.sid,
            prompt_ids=list(prompt_ids),
            completion_ids=completion_ids,
            completion_mask=mask,
            meta=meta,
            **p.fields,
        )


def _completion_and_mask(seg_ids: list[list[int]], trained: list[bool]) -> tuple[list[int], list[int]]:
    """The segments after the prompt as one id list, and its mask: 1 on the trained
    segments' ids, 0 on the others'. (Extending a list by each segment and filling the
    untrained spans of an all-ones mask in place: ~40% less than chaining the ids and
    adding a list per segment to the mask.)"""
    completion: list[int] = []
    for x in itertools.islice(seg_ids, 1, None):
        completion += x
    mask = [1] * len(completion)
    pos = 0
    for x, t in zip(itertools.islice(seg_ids, 1, None), itertools.islice(trained, 1, None)):
        n = len(x)
        if not t and n:
            mask[pos : pos + n] = _ZERO * n
        pos += n
    return completion, mask


_ZERO = [0]
