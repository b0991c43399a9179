"""Neural-network building blocks: Module, Parameter, containers and layers.

Imports flow one way: nn uses ops (through ``tinyllm.functional``) and never the reverse.
"""
from tinyllm.nn.layers import GELU, Dropout, Embedding, LayerNorm, Linear, ReLU, Tanh
from tinyllm.nn.module import Module, ModuleDict, ModuleList, Parameter, Sequential

__all__ = ["Module", "Parameter", "Sequential", "ModuleList", "ModuleDict", "Linear",
           "Embedding", "LayerNorm", "Dropout", "GELU", "ReLU", "Tanh"]
