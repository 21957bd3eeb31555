"""Run configuration schema, part 5: `[orchestrator.source]`, where prompts come from.

A union keyed on `type`: "reasoning_gym", "jsonl" and "replay" (the `Source` model), "table" (a local
JSONL / Parquet / CSV file read with a column mapping) and "hf_dataset" (`datasets.load_dataset` from the
local cache only, offline). orchestrator/prompts.py and orchestrator/prompt_tables.py read them; a
column mapping naming a column the data does not have is a preflight error that lists the columns present.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from distill.core.formats import SOURCE_FORMATS

from .strict import Strict


class Source(Strict):
    """Where prompts (or, for replay, whole conversations) come from."""

    # "reasoning_gym" (generated prompts), "jsonl" (prompt file) or "replay" (recorded conversations);
    # "table" and "hf_dataset" are the dataset sources below.
    type: Literal["reasoning_gym", "jsonl", "replay"] = "reasoning_gym"
    # reasoning_gym: dataset name and how many prompts.
    dataset: str = "gsm_symbolic"
    # Number of prompts.
    size: int = Field(16, ge=1)
    # Seed of the prompt generator.
    seed: int = 0
    # jsonl/replay: input file(s).
    path: str | None = None
    # replay: input format ("auto" detects per line).
    # ("dataset" reads Parquet/JSONL through the `datasets` library; auto picks it for .parquet.)
    format: Literal[SOURCE_FORMATS] = "auto"  # type: ignore[valid-type]  # names: distill/core/formats.py
    # Optional system prompt put before each prompt.
    system_prompt: str | None = None


class Columns(Strict):
    """Which column of a dataset source holds what. Set `prompt` or `messages` (neither: the column
    named "messages" if there is one, else "prompt")."""

    # Column holding the user prompt text (sent as one user message).
    prompt: str | None = None
    # Column holding a list of {"role", "content"} messages ending where the teacher answers
    # (a JSON string of that list is accepted too, e.g. from CSV).
    messages: str | None = None
    # Column holding a per-row system prompt (an empty value: none); wins over `system_prompt`.
    system: str | None = None
    # Column holding the row's id (unset: "<source name>-<row number>"); ids must be unique, without "/".
    id: str | None = None
    # Column holding a reference answer, passed to the reward function (unset: none).
    answer: str | None = None
    # Column holding the tools offered to the teacher: a list of tool definitions, or its JSON text (unset:
    # the column named "tools" if there is one, else OpenAI's legacy "functions"; an empty value: none).
    tools: str | None = None

    @model_validator(mode="after")
    def _one_prompt_column(self) -> Columns:
        if self.prompt is not None and self.messages is not None:
            raise ValueError(
                f"sets both prompt ({self.prompt!r}) and messages ({self.messages!r}); a row's prompt comes "
                "from one of them. Fix: remove one"
            )
        return self


class TableSourceBase(Strict):
    """What the dataset sources share: column mapping, order and count."""

    # Column mapping (see [orchestrator.source.columns]).
    columns: Columns = Columns()
    # Shuffle the rows (with `seed`) before `limit` is applied; ids stay those of the original rows.
    shuffle: bool = False
    # Seed of the shuffle.
    seed: int = 0
    # Use at most this many rows (after the shuffle; unset: all).
    limit: int | None = Field(None, ge=1)
    # Optional system prompt put before each prompt (a row's `columns.system` value wins).
    system_prompt: str | None = None


class TableSource(TableSourceBase):
    """Prompts from a local JSONL, Parquet or CSV file, one row per prompt, read with a column mapping."""

    # A local table file read with a column mapping.
    type: Literal["table"] = "table"
    # The file.
    path: str
    # "auto" picks by extension: .jsonl/.json/.ndjson -> jsonl, .parquet/.pq -> parquet, .csv -> csv.
    format: Literal["auto", "jsonl", "parquet", "csv"] = "auto"


class HFDatasetSource(TableSourceBase):
    """Prompts from a Hugging Face dataset: `datasets.load_dataset(name, config_name, split=split)` from the
    local cache only (run offline: HF_DATASETS_OFFLINE=1, nothing is downloaded), or a folder written by
    `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""

    # A Hugging Face dataset from the local cache (offline).
    type: Literal["hf_dataset"] = "hf_dataset"
    # Dataset name (a hub id already in the local cache), a local dataset folder, or a save_to_disk folder.
    name: str
    # Dataset configuration (subset) name (unset: the default one).
    config_name: str | None = None
    # Split to read.
    split: str = "train"
    # The `datasets` cache folder to read from (unset: HF_DATASETS_CACHE, else ~/.cache/huggingface/datasets).
    cache_dir: str | None = None


#: The types the Source model covers; the dataset types have their own models.
SOURCE_TYPES = ("reasoning_gym", "jsonl", "replay")
TABLE_TYPES = ("table", "hf_dataset")


def _source_tag(v: Any) -> str | None:
    """The union tag of a source: its `type` (reasoning_gym when unset, as Source's default)."""
    tag = v.get("type", "reasoning_gym") if isinstance(v, dict) else getattr(v, "type", None)
    return tag if isinstance(tag, str) else None  # ([orchestrator.source.type]: a dict, no tag)


PromptSource = Annotated[
    Annotated[Source, Tag("reasoning_gym")]
    | Annotated[Source, Tag("jsonl")]
    | Annotated[Source, Tag("replay")]
    | Annotated[TableSource, Tag("table")]
    | Annotated[HFDatasetSource, Tag("hf_dataset")],
    Discriminator(_source_tag),
]


def as_replay_source(src: Source | TableSource | HFDatasetSource) -> Source:
    """The source `distill replay INPUT...` uses when the config's source is not a replay one."""
    if isinstance(src, Source):
        return src.model_copy(update={"type": "replay"})
    return Source(type="replay", system_prompt=src.system_prompt)
