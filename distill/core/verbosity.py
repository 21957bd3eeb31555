"""Terminal output: third-party progress bars and chatter are quiet unless DISTILL_VERBOSE=1,
and distill's own bars each keep their own line.

Quiet means: huggingface_hub's and datasets' progress bars off ("Loading checkpoint shards",
shard downloads / writes, dataset maps), transformers' logging at "error", and the bar
transformers draws while converting a GGUF file (the builtin student). A variable the user
set explicitly (HF_HUB_DISABLE_PROGRESS_BARS=0, TRANSFORMERS_VERBOSITY=info, ...) wins.

distill's own bars: in `distill run` the trainer bar (row 0) and the teacher bar (row 1, from
the orchestrator thread) are drawn at fixed rows (BAR_ROWS), so neither overwrites the other
whichever starts first; the teacher bar is cleared when sampling ends (its summary line says
what it did) and close_bar() keeps it whole when it outlives the trainer's bar.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

VERBOSE_VAR = "DISTILL_VERBOSE"

#: terminal row of each of distill's progress bars when they run at once (distill run)
BAR_ROWS = {"train": 0, "teacher": 1}

_QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}


def verbose() -> bool:
    return os.environ.get(VERBOSE_VAR, "").strip().lower() not in ("", "0", "false", "no", "off")


def quiet_third_party() -> None:
    """Unless DISTILL_VERBOSE is set: third-party progress bars off, transformers logging at error.
    Called by the CLI before anything imports transformers (the variables are read at import);
    libraries already imported are told through their own switches too."""
    if verbose():
        return
    for k, v in _QUIET_ENV.items():
        os.environ.setdefault(k, v)
    if "huggingface_hub" in sys.modules and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules and os.environ["TRANSFORMERS_VERBOSITY"] == "error":
        from transformers.utils import logging

        logging.set_verbosity_error()
        logging.disable_progress_bar()
    if "datasets" in sys.modules and os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1":
        import datasets

        datasets.disable_progress_bars()


@contextlib.contextmanager
def quiet_gguf_conversion():
    """transformers draws its GGUF de-quantizing bar with plain tqdm (no switch): off here unless verbose."""
    if verbose():
        yield
        return
    import functools

    from transformers import modeling_gguf_pytorch_utils as g

    bar = g.tqdm
    g.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        g.tqdm = bar


#: Seconds between bar updates when stderr is not a terminal (a log file, CI): a line now and then
#: instead of a redraw every 0.1 s.
LOG_BAR_INTERVAL = 30.0


def bar_position(name: str, together: bool, tty: bool | None = None) -> dict:
    """tqdm keyword arguments for distill's bar `name` ("teacher" or "train"); `together`: both run at once.
    Fixed rows need cursor movement, so only on a terminal (`tty`, default: whether stderr is one);
    elsewhere the bars are written rarely and never moved."""
    tty = sys.stderr.isatty() if tty is None else tty
    if not tty:
        return {"dynamic_ncols": True, "mininterval": LOG_BAR_INTERVAL}
    if not together:
        return {"dynamic_ncols": True}
    return {"position": BAR_ROWS[name], "dynamic_ncols": True, "leave": name == "train"}


def close_bar(bar: Any) -> None:
    """Closes one of distill's bars. A bar at row > 0 that outlives the bars above it (the trainer
    finished before the teacher) would leave a stale copy of itself below the cursor: then it is
    cleared and its final state written once, on the current line."""
    from tqdm import tqdm

    alone = len(getattr(tqdm, "_instances", ())) <= 1
    if bar.disable or not abs(getattr(bar, "pos", 0)) or not alone:
        bar.close()
        return
    final = str(bar)
    bar.leave = False
    bar.close()
    bar.fp.write("\r" + final + "\x1b[K\n")
    bar.fp.flush()


def quoted(text: str, limit: int = 400) -> str:
    """`text` on one line (runs of whitespace, newlines included, made one space) and at most `limit`
    characters (then "..."): a rejection's detail quoted inside a one-line error message."""
    one = " ".join(str(text).split())
    return one if len(one) <= limit else one[:limit] + "..."
