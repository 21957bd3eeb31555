"""Teacher messages -> student tokens and loss mask, built turn by turn and verified.

The code lives in the orchestrator/reconstruction/ package (its __init__ explains the
steps; docs/reconstruction.md, "Code map", lists the modules). This module keeps the
import path every caller uses: `from orchestrator.reconstruct import Reconstructor`.
"""

from __future__ import annotations

from orchestrator.reconstruction import (
    KNOWN_ROLES,
    REJECTION_REASONS,
    Reconstructor,
    normalize_messages,
    tokenize_file,
)
from orchestrator.reconstruction.selfcheck import token_bytes_uncached as _token_bytes_uncached  # noqa: F401 - tests

__all__ = ["KNOWN_ROLES", "REJECTION_REASONS", "Reconstructor", "normalize_messages", "tokenize_file"]
