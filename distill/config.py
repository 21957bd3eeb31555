"""The run configuration, for users and the CLI: a thin facade over `distill.core.config`
(where the models, loading and checks live). Orchestrator and trainer import `distill.core.config`
directly, never this module."""

from distill.core.config import *  # noqa: F401,F403
from distill.core.config import __all__  # noqa: F401
