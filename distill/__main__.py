"""`python -m distill ...` (also what torchrun launches: `torchrun ... -m distill train cfg.toml`)."""

import sys

from .cli import main

sys.exit(main())
