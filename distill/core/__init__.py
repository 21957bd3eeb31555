"""The leaf layer: what both the orchestrator and the trainer use (the sample contract, the run
configuration, redaction, student/tokenizer loading, verbosity). It imports nothing from
`orchestrator`, `trainer` or any `distill` module outside `distill.core` (checked by import-linter,
see pyproject.toml). Stays free of imports so that `import distill.core.x` stays light."""
