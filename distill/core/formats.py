"""Names of the replay input formats: what `orchestrator.source.format` may be set to.

Leaf module (the config schema reads it; it imports nothing). The formats themselves are
registered in orchestrator/replay/formats/ (one module each), which asserts at import that
its registry holds exactly these names: adding a format adds its name here too.
"""

#: Replay formats, one parser module each (orchestrator/replay/formats/).
REPLAY_FORMATS = ("recording", "chat", "sharegpt", "prompt_completion", "openai_batch", "dataset")
#: `orchestrator.source.format` choices: "auto" detects the format per line (per file for Parquet).
SOURCE_FORMATS = ("auto", *REPLAY_FORMATS)
