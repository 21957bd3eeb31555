"""From `Sample`s to model inputs: shifted labels, best-fit-decreasing packing, micro-batches.

A sample's tokens are `prompt_ids + completion_ids`. Position `t` is trained to
predict token `t+1` when that token is trained (completion_mask == 1), so the
labels are shifted here, per sample, before packing: a packed row never asks one
sample to predict the next sample's first token.

Packed rows carry, per sample, position ids restarting at 0 and a segment id (0 = padding).
A micro-batch is a [B, T] batch of rows as wide as its longest row; the model does not run
it that way on the sdpa path: `LossModel` (trainer/model.py `one_row`) drops the padding
slots and runs the micro-batch's samples back to back as one row [1, N], attention causal
per sample (trainer/attention.py), so padding costs no compute. `block_causal_mask` turns the
segment ids into the dense 4D boolean mask (causal inside a sample, nothing across samples)
of the older [B, T] path, kept for comparison (`LossModel.varlen = False`); the flash-attention
path reads the sample boundaries from the restarting position ids.

Samples that carry per-token teacher fields (`Sample.teacher_logprobs`, top-k) have them
carried through packing as tensors aligned with the labels: position `t` holds the teacher's
values for the token `labels[t]` (the completion token at `t+1`), only where `labels[t]` is
trained; elsewhere NaN (logprobs), or token id 0 with logprob -inf (top-k padding). On-policy
samples' `sampling_logprobs` travel the same way, and so do group-relative advantages
(`group_advantages`: a sample's reward minus its group's mean, the same at each of its trained
positions) when the step asks for them.
"""

from __future__ import annotations

import errno
import math
import os
import sys
from collections import defaultdict
from pathlib import Path
from dataclasses import dataclass, fields

import torch

from distill.core import contract
from distill.core.contract import Sample
from trainer.losses.base import IGNORE

_NO_ID, _NO_LOGPROB = 0, float("-inf")  # top-k padding: a token of probability 0
# Per-token float fields: [B, T] float32 aligned with the labels, NaN where there is no value.
_FLOAT_FIELDS = ("teacher_logprobs", "sampling_logprobs", "advantages")


class SampleTooLong(ValueError):
    """A sample longer than trainer.seq_len (a user error: the message names it and the fix)."""


class TokenOutOfVocab(ValueError):
    """A sample holding a token id the student has no embedding row for: the samples were made with
    another tokenizer (a user error: the message names the sample and the fix)."""


def check_vocab(samples: list[Sample], vocab: int, samples_dir: object) -> None:
    """Refuse a sample with a token id >= `vocab` (the student's embedding rows) before the model sees
    it: torch would stop on it with an index error that names neither the sample nor the cause."""
    for s in samples:
        top = max(max(s.prompt_ids, default=0), max(s.completion_ids, default=0))
        if top >= vocab:
            raise TokenOutOfVocab(
                f"sample {s.sample_id} in {samples_dir} holds token id {top}, but the student has {vocab} token "
                f"embeddings (ids 0..{vocab - 1}): the samples were made with another tokenizer than the "
                "student's. Fix: train the student they were made for (student.path), or make the samples "
                f"again with this student's tokenizer; `distill inspect {samples_dir}` names every such line"
            )


def sample_arrays(sample: Sample, seq_len: int) -> tuple[list[int], list[int]]:
    """(input ids, shifted labels) of one sample; refuses samples longer than seq_len."""
    ids = list(sample.prompt_ids) + list(sample.completion_ids)
    if len(ids) > seq_len:
        raise SampleTooLong(
            f"sample {sample.sample_id} has {len(ids)} tokens, more than trainer.seq_len = {seq_len}. "
            f"Fix: raise trainer.seq_len, or set orchestrator.reconstruction.max_seq_len <= {seq_len} "
            "so the orchestrator drops such samples"
        )
    trained = [0] * len(sample.prompt_ids) + list(sample.completion_mask)
    labels = [ids[t + 1] if trained[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]
    return ids, labels


def teacher_arrays(sample: Sample, labels: list[int]) -> dict[str, list]:
    """The sample's per-token teacher (and sampling) fields, shifted like `labels` (see the module docstring)."""
    p = len(sample.prompt_ids)
    out: dict[str, list] = {}
    for name in ("teacher_logprobs", "sampling_logprobs"):
        lp = getattr(sample, name)
        if lp is not None:
            out[name] = [float(lp[t + 1 - p]) if lab != IGNORE else math.nan for t, lab in enumerate(labels)]
    if sample.teacher_topk_ids is not None and sample.teacher_topk_logprobs is not None:
        ids, lps = sample.teacher_topk_ids, sample.teacher_topk_logprobs
        out["teacher_topk_ids"] = [ids[t + 1 - p] if lab != IGNORE else [] for t, lab in enumerate(labels)]
        out["teacher_topk_logprobs"] = [lps[t + 1 - p] if lab != IGNORE else [] for t, lab in enumerate(labels)]
    return out


def group_advantages(samples: list[Sample]) -> dict[str, float]:
    """Group-relative advantage of each sample, by sample id: its reward minus the mean reward of the
    samples of `samples` with its `group_id` (not divided by the group's std: Dr. GRPO). Take it over a
    whole step's samples, before they are split over ranks and micro-batches."""
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        if s.reward is None or s.group_id is None or not math.isfinite(s.reward):
            raise ValueError(
                f"sample {s.sample_id} has reward {s.reward!r} and group_id {s.group_id!r}; a group-relative "
                "advantage needs a finite reward and a group id. Fix: score every sample with the reward function"
            )
        groups[s.group_id].append(s)
    out: dict[str, float] = {}
    for members in groups.values():
        mean = sum(float(m.reward) for m in members) / len(members)
        out.update({m.sample_id: float(m.reward) - mean for m in members})
    return out


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of item indices: longest first, each into the fullest bin it still fits in."""
    bins: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"item {i} of length {n} does not fit in a row of {capacity}")
        best = -1
        for b, f in enumerate(free):
            if n <= f and (best < 0 or f < free[best]):
                best = b
        if best < 0:
            bins.append([i])
            free.append(capacity - n)
        else:
            bins[best].append(i)
            free[best] -= n
    return bins


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [B, T]
    labels: torch.Tensor  # [B, T] shifted, IGNORE where not trained
    position_ids: torch.Tensor  # [B, T] restart at 0 for every sample
    segment_ids: torch.Tensor  # [B, T] 1.. per sample in the row, 0 = padding
    num_tokens: int  # real (non-padding) tokens
    num_trained: int  # positions with a label
    num_samples: int
    # Per-token teacher fields aligned with labels, when a sample of the micro-batch has them:
    teacher_logprobs: torch.Tensor | None = None  # [B, T] float32, NaN where none
    sampling_logprobs: torch.Tensor | None = None  # [B, T] float32, NaN where none (on-policy: mu_t)
    advantages: torch.Tensor | None = None  # [B, T] float32, the sample's group-relative advantage; NaN where none
    teacher_topk_ids: torch.Tensor | None = None  # [B, T, K] long, 0 where none
    teacher_topk_logprobs: torch.Tensor | None = None  # [B, T, K] float32, -inf where none

    @property
    def slots(self) -> int:
        return self.input_ids.numel()

    def input(self, name: str) -> torch.Tensor:
        """The per-token tensor `name` (labels or a teacher field), empty of values when no sample has it."""
        value = getattr(self, name)
        if value is not None:
            return value
        if name in _FLOAT_FIELDS:
            return torch.full(self.labels.shape, math.nan, device=self.labels.device)
        dtype = torch.long if name == "teacher_topk_ids" else torch.float32
        return torch.empty((*self.labels.shape, 0), dtype=dtype, device=self.labels.device)

    def to(self, device) -> "MicroBatch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return MicroBatch(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in moved.items()})


def block_causal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] bool, True = may attend: same sample and not in the future.

    Padding positions (segment 0) attend only to themselves, so no softmax row is empty.
    """
    t = segment_ids.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segment_ids.device).tril()
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    pad_self = (segment_ids == 0)[:, :, None] & torch.eye(t, dtype=torch.bool, device=segment_ids.device)
    return ((same & causal & (segment_ids != 0)[:, :, None]) | pad_self)[:, None]


# One sample in a row: (input ids, shifted labels, shifted teacher fields by name).
_Item = tuple[list[int], list[int], dict[str, list]]


def _rows(samples: list[Sample], seq_len: int, packing: bool, advantages: dict[str, float] | None) -> list[list[_Item]]:
    arrays = []
    for s in samples:
        ids, labels = sample_arrays(s, seq_len)
        extra = teacher_arrays(s, labels)
        if advantages is not None:
            extra["advantages"] = [advantages[s.sample_id] if lab != IGNORE else math.nan for lab in labels]
        arrays.append((ids, labels, extra))
    if not packing:
        return [[a] for a in arrays]
    bins = best_fit_decreasing([len(ids) for ids, _, _ in arrays], seq_len)
    return [[arrays[i] for i in b] for b in bins]


def _collate(rows: list[list[_Item]], width: int, pad_id: int) -> MicroBatch:
    b = len(rows)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    labels = torch.full((b, width), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((b, width), dtype=torch.long)
    segment_ids = torch.zeros((b, width), dtype=torch.long)
    tokens = trained = samples = 0
    for r, row in enumerate(rows):
        pos = 0
        for seg, (ids, lab, _) in enumerate(row, 1):
            n = len(ids)
            input_ids[r, pos : pos + n] = torch.tensor(ids)
            labels[r, pos : pos + n] = torch.tensor(lab)
            position_ids[r, pos : pos + n] = torch.arange(n)
            segment_ids[r, pos : pos + n] = seg
            pos += n
            tokens += n
            trained += sum(1 for x in lab if x != IGNORE)
            samples += 1
    return MicroBatch(
        input_ids, labels, position_ids, segment_ids, tokens, trained, samples, **_collate_teacher(rows, width)
    )


def _collate_teacher(rows: list[list[_Item]], width: int) -> dict[str, torch.Tensor]:
    """The teacher fields of the rows' samples as [B, T(, K)] tensors, for the fields any sample has."""
    present = {name for row in rows for _, _, extra in row for name in extra}
    out = {name: torch.full((len(rows), width), math.nan) for name in _FLOAT_FIELDS if name in present}
    if "teacher_topk_ids" in present:
        k = max(len(x) for row in rows for _, _, extra in row for x in extra.get("teacher_topk_ids", [[]]))
        out["teacher_topk_ids"] = torch.full((len(rows), width, k), _NO_ID, dtype=torch.long)
        out["teacher_topk_logprobs"] = torch.full((len(rows), width, k), _NO_LOGPROB)
    for r, row in enumerate(rows):
        pos = 0
        for ids, _, extra in row:
            for name in _FLOAT_FIELDS:
                if name in extra:
                    out[name][r, pos : pos + len(ids)] = torch.tensor(extra[name])
            for t, (tk_ids, tk_lps) in enumerate(
                zip(extra.get("teacher_topk_ids", ()), extra.get("teacher_topk_logprobs", ()))
            ):
                if tk_ids:
                    out["teacher_topk_ids"][r, pos + t, : len(tk_ids)] = torch.tensor(tk_ids)
                    out["teacher_topk_logprobs"][r, pos + t, : len(tk_lps)] = torch.tensor(tk_lps, dtype=torch.float32)
            pos += len(ids)
    return out


def make_micro_batches(
    samples: list[Sample],
    seq_len: int,
    rows_per_batch: int,
    packing: bool = True,
    pad_id: int = 0,
    advantages: dict[str, float] | None = None,
) -> list[MicroBatch]:
    """Pack (or not) `samples` into rows and group rows into micro-batches.

    Rows hold at most seq_len tokens; each micro-batch is only as wide as its longest
    row (with one row per micro-batch there is no padding at all), and the sdpa path runs
    it without its padding slots (module docstring), so rows_per_batch bounds a micro-batch's
    tokens (rows_per_batch x seq_len) without costing padding. `advantages` (sample id -> value,
    from `group_advantages` over the whole step) are packed as the per-token `advantages` field.
    """
    rows = _rows(samples, seq_len, packing, advantages)
    out = []
    for i in range(0, len(rows), rows_per_batch):
        group = rows[i : i + rows_per_batch]
        width = max(sum(len(ids) for ids, _, _ in row) for row in group)
        out.append(_collate(group, width, pad_id))
    return out


def empty_micro_batch(pad_id: int = 0) -> MicroBatch:
    """One padding token, nothing trained: keeps ranks with fewer micro-batches in step."""
    return _collate([[]], 1, pad_id)


_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
_consumed_off: set[str] = set()  # finished samples folders that cannot be written: told once, then skipped


class SamplesNotWritable(Exception):
    """An unfinished samples folder (no DONE) that training cannot write its CONSUMED into (a user error:
    the message names the folder and the fix)."""


def _not_writable(samples_dir: Path, why: str) -> str:
    return (
        f"cannot write {contract.CONSUMED_FILE} in {samples_dir} ({why}): the folder has no DONE marker, so a "
        f"producer (distill rollout / replay) may still be writing it, and training tells it how far it is in "
        f"{contract.CONSUMED_FILE}. Fix: make the folder writable for this user, or finish it first (rerun the "
        "rollout or replay that writes it; it ends with DONE) and then train from it as it is"
    )


def check_consumed_writable(samples_dir: Path) -> None:
    """Before anything is loaded: refuse an unfinished samples folder this process cannot write into."""
    if samples_dir.is_dir() and not contract.is_done(samples_dir) and not os.access(samples_dir, os.W_OK | os.X_OK):
        raise SamplesNotWritable(_not_writable(samples_dir, "not writable"))


def note_consumed(samples_dir: Path, n: int) -> None:
    """Write samples_dir/CONSUMED (how far training is: the producer's backpressure). A finished folder
    (DONE) on a read-only disk has no producer to tell: training goes on, with one note, rather than
    failing at its first step. An unfinished one is still an error (its producer would wait forever)."""
    if str(samples_dir) in _consumed_off:
        return
    try:
        contract.write_consumed(samples_dir, n)
    except OSError as e:
        if e.errno not in _READ_ONLY:
            raise
        if not contract.is_done(samples_dir):
            raise SamplesNotWritable(_not_writable(samples_dir, e.strerror or "not writable")) from e
        _consumed_off.add(str(samples_dir))
        print(
            f"note: cannot write {contract.CONSUMED_FILE} in {samples_dir} ({e.strerror}); it only tells a "
            "running producer how far training is, and this folder is finished, so training goes on without it",
            file=sys.stderr,
        )
