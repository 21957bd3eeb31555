"""Facade kept for old imports: the SFT loss lives in trainer/losses/sft.py, and the loss a run
trains is chosen by `trainer.loss.type` through the registry in trainer/losses/__init__.py."""

from __future__ import annotations

from trainer.losses.base import IGNORE
from trainer.losses.sft import chunked_nll, naive_nll

__all__ = ["IGNORE", "chunked_nll", "naive_nll"]
