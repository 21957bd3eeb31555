"""distill: distil a student LLM from an external OpenAI-compatible teacher."""

__version__ = "0.1.0"
