"""The Transformer family built on tinyllm.nn. Config dataclasses carry a comment per default."""
from tinyllm.models.gpt import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig"]
