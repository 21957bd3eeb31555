"""Prompts from dataset sources: a local JSONL / Parquet / CSV table (type "table") or a Hugging Face
dataset loaded from the local cache only (type "hf_dataset"), with a column mapping.

    table = open_table(src)          # .name, .where, .columns, .num_rows, .row(i) (read once per file state)
    check_columns(src, table)        # TableSourceError naming the key, the column and the columns present
    table_prompts(src, errors=None)  # the prompt dicts (orchestrator/prompts.py shape), in source order

Row order: all rows, or (`shuffle`) a permutation drawn with random.Random(seed); then the first `limit`.
A row's id is its `columns.id` value, else "<name>-<row number in the file>" (so ids stay stable under
shuffle and limit, which resume relies on). The other columns go to the prompt's metadata.
`datasets` is imported with HF_DATASETS_OFFLINE=1 / HF_HUB_OFFLINE=1: nothing is ever downloaded; a
dataset missing from the cache is an error naming the command that fetches it.
"""

from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from orchestrator.prompts import (
    LISTED_BAD_LINES,
    PromptSourceError,
    _json_safe,
    _prompt_messages,
    _with_system,
    prompt_tools,
)

#: Mapping keys that name a column, in the order they are checked.
MAPPED = ("prompt", "messages", "system", "id", "answer", "tools")
#: Columns read as the tools when `columns.tools` is unset, the first one present (functions: OpenAI's legacy name).
TOOL_COLUMNS = ("tools", "functions")
#: How many column names an error lists.
SHOWN_COLUMNS = 30


class TableSourceError(PromptSourceError):
    """A dataset source that cannot be read or mapped; `key` is the config key to fix."""

    def __init__(self, key: str, detail: str):
        self.key, self.detail = key, detail
        super().__init__(f"{key}: {detail}")


@dataclass
class Table:
    name: str  # id prefix: the file stem or the dataset name
    where: str  # for messages: the file, or "dataset NAME (split S)"
    columns: list[str]
    num_rows: int
    row: Callable[[int], dict[str, Any]]


_OPENED: dict[str, tuple[Any, Table]] = {}


def open_table(src) -> Table:
    """The table of a "table" or "hf_dataset" source (reused while the file / config is unchanged)."""
    key = src.model_dump_json()
    stamp: Any = None
    if src.type == "table":
        p = Path(src.path).expanduser()
        if not p.is_file():
            what = "is a folder, not a file" if p.is_dir() else "does not exist"
            raise TableSourceError(
                "orchestrator.source.path", f"{src.path} {what}. Fix: point it at a .jsonl, .parquet or .csv file"
            )
        st = p.stat()
        stamp = (st.st_mtime_ns, st.st_size)
    hit = _OPENED.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    table = _open_file(src) if src.type == "table" else _open_hf(src)
    _OPENED[key] = (stamp, table)
    return table


def _format(src) -> str:
    if src.format != "auto":
        return src.format
    ext = Path(src.path).suffix.lower()
    fmt = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}.get(ext)
    fmt = fmt or ("csv" if ext == ".csv" else None)
    if fmt is None:
        raise TableSourceError(
            "orchestrator.source.format",
            f"cannot tell the format of {src.path} from its extension {ext or '(none)'!r}. "
            'Fix: set orchestrator.source.format = "jsonl", "parquet" or "csv"',
        )
    return fmt


def _open_file(src) -> Table:
    p = Path(src.path).expanduser()
    fmt = _format(src)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            t = pq.read_table(p)
            return Table(p.stem, str(p), list(t.column_names), t.num_rows, lambda i: t.slice(i, 1).to_pylist()[0])
        if fmt == "csv":
            with open(p, newline="", encoding="utf-8-sig") as f:  # (-sig: Excel's "CSV UTF-8" starts with a BOM)
                reader = csv.DictReader(f)
                rows = list(reader)
                cols = list(reader.fieldnames or [])
            return Table(p.stem, str(p), cols, len(rows), rows.__getitem__)
        rows, cols = _jsonl_rows(p)
        return Table(p.stem, str(p), cols, len(rows), rows.__getitem__)
    except ImportError:
        raise TableSourceError(
            "orchestrator.source.path", "reading Parquet needs pyarrow. Fix: pip install 'distill[datasets]'"
        ) from None
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as e:
        if isinstance(e, TableSourceError):
            raise
        raise TableSourceError(
            "orchestrator.source.path", f"{p} is not a readable {fmt} file ({type(e).__name__}: {e})"
        ) from None


def _jsonl_rows(p: Path) -> tuple[list[dict], list[str]]:
    """The rows of a JSON Lines table, read as every JSONL file is (distill/core/jsonl.py: bounded lines, a
    BOM, a cut-short last line named); every bad line counted and the first five listed in one error."""
    from distill.core.jsonl import read_jsonl

    rows, cols, bad = [], {}, []
    for ln in read_jsonl(p, cut_only=True):
        if ln.blank:
            continue
        if ln.reason is not None or not isinstance(ln.value, dict):
            bad.append(f"{p}:{ln.number}: " + (ln.problem if ln.reason is not None else "expected a JSON object"))
            continue
        rows.append(ln.value)
        cols.update(dict.fromkeys(ln.value))
    if bad:
        n = LISTED_BAD_LINES  # as a prompt file's bad lines are listed (prompts._raise_bad)
        listed = "\n  ".join(bad[:n]) + (f"\n  ... and {len(bad) - n} more" if len(bad) > n else "")
        raise TableSourceError(
            "orchestrator.source.path",
            f"{len(bad)} bad line(s) in {p} ({len(rows)} good). Fix: one JSON object per line, in UTF-8:\n  {listed}",
        )
    return rows, list(cols)


def _row_tools(row: dict, col: str | None, where: str) -> list[dict] | None:
    """A row's tools from column `col` (prompts.prompt_tools); Parquet structs carry every field of every
    row's tools, unset ones as null: those are left out."""
    v = row.get(col) if col is not None else None
    return prompt_tools(_without_nulls(v) if isinstance(v, list) else v, f"{where}: column {col!r}")


def _without_nulls(v: Any) -> Any:
    """`v` with the null fields of its objects left out, at every depth."""
    if isinstance(v, dict):
        return {k: _without_nulls(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_without_nulls(x) for x in v]
    return v


def _open_hf(src) -> Table:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise TableSourceError(
            "orchestrator.source.type",
            "type \"hf_dataset\" needs the datasets package. Fix: pip install 'distill[datasets]'",
        ) from None
    _force_offline(datasets)
    where = f"dataset {src.name} (split {src.split!r})"
    p = Path(src.name).expanduser()
    try:
        if (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():  # written by save_to_disk
            ds = datasets.load_from_disk(str(p))
        else:
            ds = datasets.load_dataset(src.name, src.config_name, cache_dir=src.cache_dir)
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds for "not in the cache"
        raise TableSourceError(
            "orchestrator.source.name",
            f"cannot load {src.name!r} from the local cache, offline ({type(e).__name__}: {str(e)[:300]}). "
            f'Fix: fetch it once with network access: python -c "import datasets; datasets.load_dataset('
            f'{src.name!r}{", " + repr(src.config_name) if src.config_name else ""})" (or point name at a '
            "local dataset folder / save_to_disk folder)",
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if src.split not in ds:
            raise TableSourceError(
                "orchestrator.source.split",
                f"{src.name} has no split {src.split!r} (splits: {', '.join(map(repr, ds))}). Fix: use one of them",
            )
        ds = ds[src.split]
    name = p.name if p.exists() else src.name.rsplit("/", 1)[-1]
    return Table(name, where, list(ds.column_names), len(ds), ds.__getitem__)


def _force_offline(datasets) -> None:
    """Offline even when `datasets` was imported before HF_DATASETS_OFFLINE was set."""
    for attr in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        if hasattr(datasets.config, attr):
            setattr(datasets.config, attr, True)


def _shown(columns: list[str]) -> str:
    more = f", ... ({len(columns) - SHOWN_COLUMNS} more)" if len(columns) > SHOWN_COLUMNS else ""
    return ", ".join(repr(c) for c in columns[:SHOWN_COLUMNS]) + more


def check_columns(src, table: Table) -> dict[str, str]:
    """{mapping key: column} with the prompt column resolved; TableSourceError naming the first unknown column."""
    cols = src.columns
    mapping = {k: getattr(cols, k) for k in MAPPED if getattr(cols, k) is not None}
    for k, col in mapping.items():
        if col not in table.columns:
            raise TableSourceError(
                f"orchestrator.source.columns.{k}",
                f"column {col!r} is not in {table.where} (columns: {_shown(table.columns)}). "
                f"Fix: set orchestrator.source.columns.{k} to one of them",
            )
    if "prompt" not in mapping and "messages" not in mapping:
        found = next((c for c in ("messages", "prompt") if c in table.columns), None)
        if found is None:
            raise TableSourceError(
                "orchestrator.source.columns",
                f'{table.where} has neither a "messages" nor a "prompt" column (columns: {_shown(table.columns)}). '
                "Fix: set orchestrator.source.columns.prompt (a text column) or .messages (a list of messages)",
            )
        mapping[found] = found
    if "tools" not in mapping:
        found = next((c for c in TOOL_COLUMNS if c in table.columns), None)
        if found is not None:
            mapping["tools"] = found
    return mapping


def row_order(src, n: int) -> list[int]:
    order = list(range(n))
    if src.shuffle:
        random.Random(src.seed).shuffle(order)
    return order[: src.limit] if src.limit is not None else order


def table_prompts(src, errors: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """The prompts of a dataset source. A bad row raises PromptSourceError naming it, or, when `errors` is
    given, is appended there and skipped (count_prompts reports them all at once, before any request)."""
    table = open_table(src)
    mapping = check_columns(src, table)
    seen: dict[str, int] = {}
    for i in row_order(src, table.num_rows):
        where = f"{table.where}: row {i}"
        try:
            yield _row_prompt(src, table, mapping, i, where, seen)
        except PromptSourceError as e:
            if errors is None:
                raise
            errors.append(str(e))


def _row_prompt(src, table: Table, mapping: dict[str, str], i: int, where: str, seen: dict[str, int]) -> dict:
    row = table.row(i)
    if "messages" in mapping:
        msgs = row.get(mapping["messages"])
        if isinstance(msgs, str):
            try:
                msgs = json.loads(msgs)
            except json.JSONDecodeError:
                raise PromptSourceError(f"{where}: column {mapping['messages']!r} is text, not a list of messages")
        if isinstance(msgs, list):  # Parquet structs carry every field, unset ones as null
            msgs = [
                {k: v for k, v in m.items() if v is not None or k == "content"} if isinstance(m, dict) else m
                for m in msgs
            ]
        messages = _prompt_messages({"messages": msgs}, f"{where} (column {mapping['messages']!r})")
    else:
        messages = _prompt_messages({"prompt": row.get(mapping["prompt"])}, f"{where} (column {mapping['prompt']!r})")
    system = row.get(mapping["system"]) if "system" in mapping else None
    if system:
        messages = _with_system(messages, str(system))
    else:
        messages = _with_system(messages, src.system_prompt)
    pid = str(row[mapping["id"]]) if "id" in mapping and row.get(mapping["id"]) is not None else f"{table.name}-{i}"
    if "/" in pid:
        raise PromptSourceError(f"{where}: id {pid!r} contains '/', which separates sample-id parts")
    if pid in seen:
        raise PromptSourceError(f"{where}: id {pid!r} was already used by row {seen[pid]}. Fix: ids must be unique")
    seen[pid] = i
    used = set(mapping.values())
    answer = row.get(mapping["answer"]) if "answer" in mapping else None
    meta = {k: _json_safe(v) for k, v in row.items() if k not in used}
    return {
        "prompt_id": pid,
        "messages": messages,
        "tools": _row_tools(row, mapping.get("tools"), where),
        "answer": None if answer is None else _json_safe(answer),
        "metadata": {"source": src.type, "from": table.where, "row": i, **meta},
    }
