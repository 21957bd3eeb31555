"""Format "dataset": local Parquet/JSONL/CSV files read through the `datasets` library, streamed;
each row is then parsed as the record format it looks like (auto picks this reader for .parquet)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from orchestrator.replay.reading import Line
from orchestrator.replay.records import ReplayError

DATASET_SUFFIXES = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def reads_file(path: str) -> bool:
    """Whether format "auto" reads this file with `datasets` (rather than line by line)."""
    return Path(path).suffix.lower() == ".parquet"


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
    ds = datasets.load_dataset(builder, data_files=[str(path)], split="train", streaming=True)
    size = os.path.getsize(path)
    for i, row in enumerate(ds, 1):
        yield Line(i, 0, obj=row)
    yield Line(0, size, empty=True)  # account the file's bytes for progress once it is read
