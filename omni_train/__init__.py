"""omni-train: teach any causal text LLM to hear and talk (the Mini-Omni recipe)."""

__version__ = "0.1.0"
