"""The Transformer family built on tinyllm.nn. Config dataclasses carry a comment per default."""
from tinyllm.models.gpt import GPT, GPTConfig
from tinyllm.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer

__all__ = ["GPT", "GPTConfig", "Seq2SeqConfig", "Seq2SeqTransformer"]
