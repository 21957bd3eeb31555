"""Small helpers shared by several test modules (no tests here)."""

from __future__ import annotations

import json
import socket
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    """Every non-blank line of a JSONL file, parsed."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def free_port() -> int:
    """A loopback port that nothing listens on now (bound, then released): for a server to start on,
    or for an endpoint that refuses connections."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
