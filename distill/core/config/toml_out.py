"""Dumping a resolved run configuration: as plain data with secrets redacted, and as TOML."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .schema_run import RunConfig


def redacted_dict(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as plain data: every header value and every secret-looking key redacted
    (anywhere, nested dicts and lists included; see distill.core.redact)."""
    from distill.core.redact import redact  # stdlib only

    return redact(cfg.model_dump(mode="json"))


def to_toml(d: dict[str, Any]) -> str:
    """Minimal TOML writer for config dicts (tables, scalars, lists, inline dicts)."""
    lines: list[str] = []

    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {val(x)}" for k, x in v.items() if x is not None) + "}"
        raise TypeError(type(v))

    def table(prefix: str, t: dict[str, Any]) -> None:
        scalars = {k: v for k, v in t.items() if not (isinstance(v, dict) and k not in _INLINE)}
        subs = {k: v for k, v in t.items() if isinstance(v, dict) and k not in _INLINE}
        if prefix:
            lines.append(f"\n[{prefix}]")
        for k, v in scalars.items():
            if v is None:
                continue
            lines.append(f"{k} = {val(v)}")
        for k, v in subs.items():
            table(f"{prefix}.{k}" if prefix else k, v)

    table("", d)
    return "\n".join(lines).lstrip("\n") + "\n"


_INLINE = {"headers", "extra_body", "chat_template_kwargs"}
