"""The content-keyed request cache: teacher answers shared between runs (`orchestrator.cache_dir`, opt-in).

    cache = AnswerCache(Path(dir), served=None)
    records, missing = cache.lookup(prompt, request_hash, indices)   # hits as recording records
    cache.store(records)                                             # fresh answers, after they are recorded

An answer is stored per sample: its key is the SHA-256 of the canonical JSON of
{"request_hash": <orchestrator.request_hash of model, messages, tools, sampling>, "sample_index": i,
"served": <local_teacher.model_path when distill starts the teacher, else null>}. So an identical request
(same model name, messages, tools, sampling arguments, extra_body, seed) for the same sample index is
answered from the cache in any run; a request for n=4 samples where the cache holds indices 0 and 1 asks
the teacher only for 2 and 3 (one request, n=2, the seed offset by 2 as for any partial re-ask).

The run's recording stays its one source of truth: a hit is appended to recording.jsonl like a fresh
answer, with `"provenance": "cache"`, `cache_key`, zero `usage` (nothing was paid in this run; the
original request's usage share is kept as `cached_usage`), so a resume never reads the cache and the
budget is not charged for hits.

Files: `<dir>/v1/<key[:2]>/<key>.json`, one JSON object each, written to a unique temporary file in the
same folder and renamed over the target (atomic on POSIX): concurrent runs writing the same key each
leave a whole entry, a reader never sees half of one. A torn or corrupt entry (a crash of the machine
before the data reached the disk, a hand edit) is ignored and counted (`cache_corrupt`), its sample asked
again and the entry rewritten. Nothing secret is in an entry or its key: the API key and headers never
enter either, and the sampling arguments are redacted (distill.core.redact) before they are hashed or
written.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from distill.core.redact import redact_url
from orchestrator.recording import make_record

CACHE_VERSION = 1
#: The fields of a recording record an entry keeps (the prompt-specific ones come from the asking run).
_KEPT = ("response", "finish_reason", "model", "endpoint", "sampling", "request_id", "request_hash")


def cache_key(request_hash: str, sample_index: int, served: str | None = None) -> str:
    """The hex SHA-256 naming the cached answer of sample `sample_index` of a request (see the module doc)."""
    blob = json.dumps(
        {"request_hash": request_hash, "sample_index": int(sample_index), "served": served},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class AnswerCache:
    """A cache folder; counts hits, misses, corrupt entries, writes and failed writes."""

    def __init__(self, root: Path, served: str | None = None):
        self.root = Path(root).expanduser() / f"v{CACHE_VERSION}"
        self.served = served
        self.hits = self.misses = self.corrupt = self.writes = self.write_errors = 0
        self._warned = False
        self._lock = threading.Lock()  # store() runs in worker threads

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def counts(self) -> dict[str, int]:
        return {
            "cache_hits": self.hits,
            "cache_misses": self.misses,
            "cache_corrupt": self.corrupt,
            "cache_writes": self.writes,
            "cache_write_errors": self.write_errors,
        }

    def get(self, key: str) -> dict[str, Any] | None:
        """The entry stored under `key`, or None (absent, or torn/corrupt: counted, ignored)."""
        p = self.path(key)
        try:
            raw = p.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            self._warn(f"cannot read {p} ({e}); that sample is asked again")
            self.corrupt += 1
            return None
        try:
            e = json.loads(raw)
            ok = (
                isinstance(e, dict)
                and e.get("v") == CACHE_VERSION
                and e.get("key") == key
                and isinstance(e.get("response"), dict)
                and e["response"].get("role") == "assistant"
            )
        except (ValueError, UnicodeDecodeError):
            ok = False
        if not ok:
            self.corrupt += 1
            return None
        return e

    def lookup(self, prompt: dict, request_hash: str, indices: list[int]) -> tuple[list[dict], list[int]]:
        """(recording records of the cached samples among `indices`, the indices not cached)."""
        now = time.time()
        records, missing = [], []
        for i in indices:
            key = cache_key(request_hash, i, self.served)
            e = self.get(key)
            if e is None:
                missing.append(i)
                continue
            rec = make_record(
                prompt_id=prompt["prompt_id"],
                sample_index=i,
                messages=prompt["messages"],
                tools=prompt.get("tools"),
                response=e["response"],
                finish_reason=e.get("finish_reason"),
                model=e.get("model"),
                endpoint=e.get("endpoint") or "",
                sampling=e.get("sampling") or {},
                usage={"prompt_tokens": 0, "completion_tokens": 0},
                usage_shared_by=1,
                t_start=now,
                t_end=now,
                reward=None,
                request_id=e.get("request_id"),
                request_hash=request_hash,
            )
            rec.update(provenance="cache", cache_key=key, cached_usage=e.get("usage") or {})
            records.append(rec)
        self.hits += len(records)
        self.misses += len(missing)
        return records, missing

    def store(self, records: list[dict]) -> None:
        """Writes each fresh record's answer under its key (atomically; a failure is counted and warned
        about once, never raised: the cache is an optimisation, the recording already holds the answer)."""
        for r in records:
            if r.get("request_hash") is None:
                continue
            key = cache_key(r["request_hash"], r["sample_index"], self.served)
            shared = max(1, int(r.get("usage_shared_by") or 1))
            usage = {k: (v or 0) / shared for k, v in (r.get("usage") or {}).items()}
            entry = {"v": CACHE_VERSION, "key": key, "sample_index": r["sample_index"], "usage": usage}
            entry.update({k: r.get(k) for k in _KEPT})
            entry["endpoint"] = redact_url(str(r.get("endpoint") or ""))  # credentials masked (an old record)
            try:
                self._write(self.path(key), entry)
                with self._lock:
                    self.writes += 1
            except OSError as e:
                with self._lock:
                    self.write_errors += 1
                self._warn(f"cannot write to {self.root} ({e}); answers are still recorded in the run")

    def covers(self, prompts, n: int, records: dict, stale: set, hash_of) -> bool:
        """Whether every (prompt, index < n) pair without a recorded answer in use has a cache entry (then
        the run sends nothing and needs no teacher). `hash_of(prompt)`: its request hash."""
        for prompt in prompts:
            h = None
            for i in range(n):
                key = (prompt["prompt_id"], i)
                if key in records and key not in stale:
                    continue
                h = h or hash_of(prompt)
                if not self.path(cache_key(h, i, self.served)).is_file():
                    return False
        return True

    @staticmethod
    def _write(p: Path, entry: dict) -> None:
        p.parent.mkdir(parents=True, exist_ok=True)
        blob = json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "backslashreplace")
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, p)  # atomic: readers see the old entry, or the whole new one
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def _warn(self, msg: str) -> None:
        if not self._warned:
            self._warned = True
            print(f"warning: orchestrator.cache_dir: {msg}", file=sys.stderr)


def open_cache(oc) -> AnswerCache | None:
    """The run's cache (`oc`: the orchestrator config), or None when orchestrator.cache_dir is unset."""
    if not oc.cache_dir:
        return None
    lt = oc.local_teacher
    return AnswerCache(Path(oc.cache_dir), served=lt.model_path if lt.enabled else None)
