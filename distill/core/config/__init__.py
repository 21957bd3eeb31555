"""Run configuration: TOML file < environment (DISTILL_...) < command-line overrides.

schema.py / schema_run.py: the pydantic models (each field's comment is its documentation);
checks.py: mode and cross-field checks; load.py: load_config, overrides, environment, resolve;
toml_out.py: redacted_dict / to_toml; keypaths.py: key paths and env var names for messages.
No torch/transformers imports.
"""

from .checks import KNOWN_NON_SFT_LOSSES, ConfigProblems, Problem, check_cross_fields, check_external_teacher_mode
from .load import (
    ConfigError,
    api_key,
    key_from_env,
    key_var_problems,
    load_config,
    parse_overrides,
    read_toml,
    resolve,
    unset_key_fix,
)
from .schema import (
    BUILTIN_STUDENT,
    BUILTIN_TEACHER_GGUF,
    ENV_VAR_NAME,
    Budget,
    LocalTeacher,
    Orchestrator,
    Reconstruction,
    Replay,
    Retry,
    RolloutModel,
    Sampling,
    Source,
    Strict,
    check_http_url,
)
from .schema_run import (
    LOSS_CONFIGS,
    Checkpoint,
    Loss,
    Optim,
    PlannedLoss,
    RunConfig,
    SFTLoss,
    Student,
    TopKKLLoss,
    Trainer,
    Wandb,
    WeightBroadcast,
)
from .schema_onpolicy import OnPolicy
from .schema_prompts import Columns, HFDatasetSource, PromptSource, TableSource, as_replay_source
from .schema_score import SCORER_CONFIGS, EchoScorer, ScoreBudget, Scorer, SGLangScorer, VLLMScorer
from .toml_out import redacted_dict, to_toml

__all__ = [
    "Columns",
    "HFDatasetSource",
    "PromptSource",
    "TableSource",
    "as_replay_source",
    "OnPolicy",
    "SCORER_CONFIGS",
    "EchoScorer",
    "ScoreBudget",
    "Scorer",
    "SGLangScorer",
    "TopKKLLoss",
    "VLLMScorer",
    "BUILTIN_STUDENT",
    "BUILTIN_TEACHER_GGUF",
    "ENV_VAR_NAME",
    "KNOWN_NON_SFT_LOSSES",
    "LOSS_CONFIGS",
    "Budget",
    "Checkpoint",
    "ConfigError",
    "ConfigProblems",
    "LocalTeacher",
    "Loss",
    "Optim",
    "Orchestrator",
    "PlannedLoss",
    "Problem",
    "Reconstruction",
    "Replay",
    "Retry",
    "RolloutModel",
    "RunConfig",
    "SFTLoss",
    "Sampling",
    "Source",
    "Strict",
    "Student",
    "Trainer",
    "Wandb",
    "WeightBroadcast",
    "api_key",
    "key_from_env",
    "key_var_problems",
    "unset_key_fix",
    "check_cross_fields",
    "check_external_teacher_mode",
    "check_http_url",
    "load_config",
    "parse_overrides",
    "read_toml",
    "redacted_dict",
    "resolve",
    "to_toml",
]
