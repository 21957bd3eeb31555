"""The wording of config problems a TOML table causes: a table where a setting is meant, a setting's
name misspelt as a table, TOML's array of tables where one table is read (used by load.py)."""

from __future__ import annotations

from typing import Any

#: Pydantic's errors for a value that should be one setting (a table was written: a dict came).
_SCALAR_ERRORS = ("bool_type", "int_type", "float_type", "string_type", "literal_error", "list_type", "enum")
#: ... and for a value that should be one table (a list of tables came).
_TABLE_ERRORS = ("model_type", "dict_type", "model_attributes_type", "union_tag_not_found", "union_tag_invalid")


def table_shape_message(
    e: dict, key: str, origin: str = "file", paths: tuple[str, ...] = (), tags: tuple[str, ...] = ()
) -> str:
    """For a pydantic error at `key`: the message when a table was written where a setting is meant
    ([trackers.tensorboard]) or a list of tables where one table is ([[student]]), else "". The fix is
    told in the form of where the value was set (`origin`, load._where: the file, the command line or an
    environment variable); `paths`: the config's key paths, for an example key of a table; `tags`: the
    kinds of a table keyed on `type` ([orchestrator.source], [scorer]), when `key` is one."""
    value = e.get("input")
    if isinstance(value, dict) and e["type"] in _SCALAR_ERRORS:
        parent, _, last = key.rpartition(".")
        where = f"under [{parent}]" if parent else "at the top of the file"
        fix = f"write {last} = ... {where} (docs/configuration.md)"
        return f"is a setting, not a table ([{key}]). Fix: " + (_elsewhere(origin, key, "set it to one value") or fix)
    if e["type"] == "union_tag_not_found" and isinstance(value, dict) and isinstance(value.get("type"), dict):
        fix = _elsewhere(origin, f"{key}.type", "set it to one value") or f"write type = ... under [{key}]"
        return f"{key}.type is a setting, not a table ([{key}.type]). Fix: {fix}"
    kinds = f" (one of {', '.join(repr(t) for t in tags)})" if tags else ""
    if e["type"] == "union_tag_invalid" and isinstance(value, dict):  # the whole table echoed said nothing more
        return f"{key}.type {value.get('type')!r} is not a kind of [{key}]{kinds}. Fix: set {key}.type to one of them"
    if e["type"] == "union_tag_not_found" and isinstance(value, dict) and "type" not in value:
        fix = _elsewhere(origin, f"{key}.type", "set it") or f"write type = ... under [{key}]"
        return f"[{key}] says which kind it is with its type key{kinds}, and it has none. Fix: {fix}"
    sub = f"{key}.type" if tags else next((p for p in paths if p.startswith(key + ".")), f"{key}.KEY")
    keys = _elsewhere(origin, sub, "set its keys one at a time")
    scalar_errors = ("model_type", "dict_type", "model_attributes_type", "union_tag_not_found")
    if e["type"] in scalar_errors and isinstance(value, (str, int, float, bool)):
        last = sub.rpartition(".")[2]
        return (  # student = "builtin:..." where [student] path = "..." is meant
            f"{key} is a table, not a setting (got {type(value).__name__} {value!r}). Fix: "
            + (
                keys
                or f"write [{key}] and its keys below it, one key = value per line (e.g. [{key}] then "
                f'{last} = "..."; docs/configuration.md)'
            )
            + (f"; its kinds{kinds}" if tags else "")
        )
    if e["type"] in _TABLE_ERRORS and isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        if keys:  # JSON on the command line or in a variable: no TOML brackets to correct
            return f"{key} is one table, not a list of them. Fix: {keys}"
        return (
            f"{key} is written as a list of tables ([[{key}]], double brackets); it is one table. "
            f"Fix: write [{key}] (single brackets), once"
        )
    return ""


def _elsewhere(origin: str, key: str, what: str) -> str:
    """How to set `key` where it was set, when that is not the file: "" for the file."""
    if origin == "command line":
        return f"{what}, e.g. --{key} VALUE"
    if origin.startswith("environment variable"):
        return f"{what}, e.g. DISTILL_{key.upper().replace('.', '__')}=VALUE"
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
