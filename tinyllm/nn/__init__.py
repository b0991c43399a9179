"""Neural-network building blocks: Module, Parameter, containers and layers.

Imports flow one way: nn uses ops (through ``tinyllm.functional``) and never the reverse.
"""
from tinyllm.nn.attention import (Attention, FeedForward, LearnedPositionalEmbedding,
                                  MultiHeadAttention, ResidualBlock,
                                  SinusoidalPositionalEncoding, TransformerDecoderLayer,
                                  TransformerEncoderLayer, causal_mask,
                                  scaled_dot_product_attention, sinusoidal_positions)
from tinyllm.nn.layers import GELU, Dropout, Embedding, LayerNorm, Linear, ReLU, RMSNorm, Tanh
from tinyllm.nn.kv_cache import DecoderCache, KVCache
from tinyllm.nn.llama_layers import RotaryEmbedding, SwiGLU
from tinyllm.nn.module import Module, ModuleDict, ModuleList, Parameter, Sequential
from tinyllm.nn.rnn import LSTM, LSTMCell

__all__ = ["Module", "Parameter", "Sequential", "ModuleList", "ModuleDict", "Linear",
           "Embedding", "LayerNorm", "Dropout", "GELU", "ReLU", "Tanh", "LSTM", "LSTMCell",
           "Attention", "MultiHeadAttention", "ResidualBlock",
           "FeedForward", "SinusoidalPositionalEncoding", "LearnedPositionalEmbedding",
           "TransformerEncoderLayer", "TransformerDecoderLayer", "causal_mask",
           "scaled_dot_product_attention", "sinusoidal_positions", "RMSNorm", "RotaryEmbedding",
           "SwiGLU", "KVCache", "DecoderCache"]
