"""Format "dataset": local Parquet/JSONL/CSV files read through the `datasets` library, streamed;
each row is then parsed as the record format it looks like (auto picks this reader for .parquet and .csv)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from orchestrator.replay.reading import Line
from orchestrator.replay.records import ReplayError

DATASET_SUFFIXES = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def reads_file(path: str) -> bool:
    """Whether format "auto" reads this file with `datasets` (rather than line by line): Parquet and
    CSV, which are never JSON Lines."""
    return Path(path).suffix.lower() in (".parquet", ".csv")


def read(path: str) -> Iterator[Line]:
    """Rows of a local Parquet/JSONL/CSV file through the `datasets` library (streamed)."""
    suffix = Path(path).suffix.lower()
    builder = DATASET_SUFFIXES.get(suffix)
    if builder is None:
        raise ReplayError(
            path,
            None,
            None,
            f"the `datasets` reader handles {sorted(DATASET_SUFFIXES)} files, not {suffix or 'files without a suffix'}",
            "convert the file, or pick another format",
        )
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local files only: never ask the Hub
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise ReplayError(
            path,
            None,
            None,
            'reading Parquet files (format "dataset") needs the `datasets` library, which is not installed',
            "pip install datasets",
        ) from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # a file it cannot read: our error says it, once
    n = 0
    try:
        for n, row in enumerate(
            datasets.load_dataset(builder, data_files=[str(path)], split="train", streaming=True), 1
        ):
            yield Line(n, 0, obj=row)
    except Exception as e:  # noqa: BLE001 - whatever pyarrow/pandas/datasets raise on a bad file: one clear error
        raise unreadable(path, builder, n, e) from None
    yield Line(0, os.path.getsize(path), empty=True)  # account the file's bytes for progress once it is read


_KINDS = {"parquet": "a Parquet file", "csv": "a CSV file", "json": "JSON Lines"}
_FIXES = {
    "parquet": "check that it is a complete Parquet file (write it again, e.g. with pandas.DataFrame.to_parquet), "
    "or remove it from the inputs",
    "csv": "give every row the same number of columns as the header (quote fields that hold commas or newlines), "
    "or remove it from the inputs",
    "json": 'make every line one complete JSON object, or read it line by line with format = "auto" '
    "(a bad line is then a counted bad record, not an error)",
}


def unreadable(path: str, builder: str, rows_read: int, e: BaseException) -> ReplayError:
    """The error for a file the `datasets` library cannot read (not Parquet, empty, a ragged CSV, a torn
    JSON line, ...): the underlying cause (datasets' own wrappers skipped), the row it stopped at, the fix."""
    cause: BaseException = e
    while type(cause).__module__.startswith("datasets") and (cause.__cause__ or cause.__context__) is not None:
        cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
    what = f"{type(cause).__name__}: {str(cause).strip().rstrip('.')}"
    where = f"; {rows_read} row(s) before it were read" if rows_read else ""
    return ReplayError(
        path,
        rows_read + 1 if rows_read else None,
        None,
        f"cannot be read as {_KINDS[builder]} by the `datasets` library ({what}){where}",
        _FIXES[builder],
    )
