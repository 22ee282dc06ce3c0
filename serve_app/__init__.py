"""hybrid-llm: a Ray Serve router between a local vLLM model and the Anthropic API."""

__version__ = "0.1.0"
