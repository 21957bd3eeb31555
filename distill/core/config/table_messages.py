"""The wording of config problems a TOML table causes: a table where a setting is meant, a setting's
name misspelt as a table, TOML's array of tables where one table is read (used by load.py)."""

from __future__ import annotations

from typing import Any

#: Pydantic's errors for a value that should be one setting (a table was written: a dict came).
_SCALAR_ERRORS = ("bool_type", "int_type", "float_type", "string_type", "literal_error", "list_type", "enum")
#: ... and for a value that should be one table (a list of tables came).
_TABLE_ERRORS = ("model_type", "dict_type", "union_tag_not_found", "union_tag_invalid")


def table_shape_message(e: dict, key: str) -> str:
    """For a pydantic error at `key`: the message when a table was written where a setting is meant
    ([trackers.tensorboard]) or a list of tables where one table is ([[student]]), else ""."""
    value = e.get("input")
    if isinstance(value, dict) and e["type"] in _SCALAR_ERRORS:
        parent, _, last = key.rpartition(".")
        where = f"under [{parent}]" if parent else "at the top of the file"
        return f"is a setting, not a table ([{key}]). Fix: write {last} = ... {where} (docs/configuration.md)"
    if e["type"] == "union_tag_not_found" and isinstance(value, dict) and isinstance(value.get("type"), dict):
        return f"{key}.type is a setting, not a table ([{key}.type]). Fix: write type = ... under [{key}]"
    if e["type"] in ("model_type", "dict_type") and isinstance(value, (str, int, float, bool)):
        return (  # student = "builtin:..." where [student] path = "..." is meant
            f"{key} is a table, not a setting (got {type(value).__name__} {value!r}). Fix: write [{key}] and "
            f'its keys below it, one key = value per line (e.g. [student] then path = "..."; docs/configuration.md)'
        )
    if e["type"] in _TABLE_ERRORS and isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return (
            f"{key} is written as a list of tables ([[{key}]], double brackets); it is one table. "
            f"Fix: write [{key}] (single brackets), once"
        )
    return ""


def unknown_key_message(key: str, value: Any, paths: tuple[str, ...]) -> str:
    """The message of an unknown key: a misspelt table's first key says which one was meant; a
    table written where a setting is meant ([trackers.tensorbord]) is told it is a setting."""
    from .keypaths import nearest_key

    sub = next(iter(value), None) if isinstance(value, dict) else None
    near = nearest_key(f"{key}.{sub}" if isinstance(sub, str) else key, paths)
    if isinstance(value, dict) and near is not None and near.count(".") == key.count("."):
        parent, _, last = near.rpartition(".")
        where = f"under [{parent}]" if parent else "at the top of the file"
        return (
            f"unknown table [{key}]; did you mean {near}? It is a setting, not a table. "
            f"Fix: write {last} = ... {where} (docs/configuration.md)"
        )
    return (
        f"unknown key {key}; "
        + (f"did you mean {near}? " if near else "")
        + "Fix: remove it or check its spelling against docs/configuration.md"
    )
