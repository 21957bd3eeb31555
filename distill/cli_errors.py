"""Which errors `distill` shows as one line (exit 1) rather than a traceback: those whose message is complete
for a user, and OS errors about a path the user chose."""

from __future__ import annotations

import errno
import os
import sys
import time

# Errors whose message is complete for a user (file/line/field and the fix); no traceback.
USER_ERRORS = {
    "ReplayError",
    "LocalTeacherError",
    "RolloutError",
    "PromptSourceError",
    "TableSourceError",
    "RecordingError",
    "FileNotFoundError",
    "PreflightError",
    "EndpointCheckError",
    "ShardError",
    "SamplesTimeout",
    "SampleTooLong",
    "TokenOutOfVocab",
    "NothingTrained",
    "NoMetrics",
    "DoneMismatch",
    "CheckpointError",
    "CheckpointSaveError",
    "FileExistsError",
    "NotADirectoryError",
    "TokenizerError",
    "TokenizeInputError",
    "LossInputError",
    "ScoreError",
    "ScoreCheckError",
    "LoraError",
    "OnPolicyError",
    "StudentServerError",
    "RunDirBusy",
    "SamplesBuiltOtherwise",
    "SamplesNotWritable",
}

#: OS errors about a path the user chose (missing, a file where a folder goes, no permission, a full or
#: read-only disk): one line naming the path, not a traceback.
PATH_ERRNOS = {
    errno.ENOENT,
    errno.EEXIST,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EACCES,
    errno.EPERM,
    errno.ENOSPC,
    errno.EROFS,
    errno.EDQUOT,
}


def path_error(e: OSError) -> str:
    why = "a file is there, where a folder is needed" if e.errno == errno.EEXIST else e.strerror
    if e.errno == errno.EEXIST and os.path.islink(e.filename) and not os.path.exists(e.filename):
        why = f"it is a link to {os.readlink(e.filename)}, which does not exist"
    return (
        f"cannot use {e.filename}: {why}. Fix: check that path and its folders (output_dir, an input, "
        "or -o): each folder must exist or be creatable, be a folder, be writable, and have free space"
    )


def user_message(e: BaseException) -> str | None:
    """The one line distill prints (exit 1) for an error a user can fix: a raw OS error about a path they
    chose, or one of USER_ERRORS (bad input or environment: the message says what to do). None for any
    other error: a bug, shown with its traceback."""
    if isinstance(e, OSError) and e.filename is not None and e.errno in PATH_ERRNOS:
        return path_error(e)
    if type(e).__name__ in USER_ERRORS:
        return str(e)
    return None


#: Seconds a torchrun worker other than its node's first waits before printing its error (print_error).
OTHER_RANK_DELAY_S = 3.0


def print_error(message: str) -> None:
    """`message` on stderr, once per node under torchrun. Every worker reads the same config and files, so a
    user's mistake fails them all alike: the node's first worker (LOCAL_RANK 0) prints at once and exits; the
    others wait, and torchrun, seeing that exit, ends them before they print the same line again. An error
    only another worker meets is still printed, after the wait (torchrun then names that rank)."""
    if os.environ.get("TORCHELASTIC_RUN_ID") and os.environ.get("LOCAL_RANK", "0") != "0":
        time.sleep(OTHER_RANK_DELAY_S)
    print(f"distill: {message}", file=sys.stderr, flush=True)
