"""The KV cache: the keys and values of positions already processed, kept for decoding.

A decoder-only language model decodes one token at a time. The new token's query must attend
to the keys and values of every earlier position; these do not change once computed (causal
attention: position t never sees later positions), so they are kept instead of recomputed.
Decoding a token then costs one position's work in every layer, plus attention over the
T cached positions: O(T) per token instead of the O(T^2) of rerunning the window.

Layout, per attention layer (``KVCache``): two arrays k, v (B, Hkv, T_max, D), allocated on
the first write (batch B, dtype and device from the incoming keys) with room for ``T_max``
positions: the model's block_size where it has one (up to 64 MiB an array; past that, as
without a block_size and when a write goes past it, the room doubles as it fills).
``length`` positions are filled; a call with T new positions writes them in place into
[:, :, length:length + T] and attention reads the views [:, :, :length + T]: no copy of the
earlier positions per token (a concatenation copies all T of them, O(T)).
Keys are stored as attention uses them: after RoPE (LlamaAttention rotates before writing),
with Hkv = n_kv_head heads under grouped-query attention.

Cross-attention (the seq2seq decoder) uses the same class: its first call writes the encoder's
keys and values (S positions), later calls read them.

A model's cache (``model.new_cache()``) is a ``DecoderCache``: a list with one entry per layer,
a KVCache, or {"self": KVCache, "cross": KVCache} for a seq2seq decoder layer; its ``length``
is the number of positions decoded so far, and ``reorder(index)`` follows beam search's
choices. The compiled decode step (tinyllm/kernels/decode.py) writes into the same arrays, so
the readable forward and the compiled step can take turns on one cache.
"""
import numpy as np

from tinyllm import backend
from tinyllm import functional as F
from tinyllm.autograd.tensor import Tensor


PREALLOCATE_BYTES = 1 << 26     # up to 64 MiB per array, max_length is allocated at once


class KVCache:
    """One attention layer's keys and values (see the module docstring).

    k, v:     arrays (B, Hkv, capacity, D), or None before the first write;
    length:   positions filled, [:, :, :length];
    max_length: the room allocated on the first write (None, or over PREALLOCATE_BYTES:
                grow by doubling, up to max_length).
    """

    def __init__(self, max_length=None):
        self.max_length = max_length
        self.k = self.v = None
        self.length = 0
        self._graph = None          # (K, V) Tensors of all positions, kept while grads flow

    @property
    def capacity(self):
        return 0 if self.k is None else self.k.shape[2]

    def reserve(self, B, H, D, dtype, xp, T):
        """Room for T more positions of (B, H, ., D) keys in ``dtype`` (``xp``: the array
        module): allocates on first use, doubles the room when full."""
        need = self.length + T
        if self.k is not None and (self.k.shape[0], self.k.shape[1], self.k.shape[3],
                                   self.k.dtype) != (B, H, D, np.dtype(dtype)):
            raise ValueError(f"KVCache: keys of shape (B, Hkv, T, D) = {(B, H, T, D)} "
                             f"{np.dtype(dtype)} do not match the cached "
                             f"{self.k.shape[:2] + self.k.shape[3:]} {self.k.dtype}")
        if need <= self.capacity:
            return
        cap = max(need, 2 * self.capacity, 16)                  # double the room
        if self.max_length is not None and need <= self.max_length:
            full = B * H * self.max_length * D * np.dtype(dtype).itemsize
            # all of max_length at once, unless that is huge (a checkpoint's 128k positions)
            cap = self.max_length if full <= PREALLOCATE_BYTES else min(cap, self.max_length)
        k = xp.empty((B, H, cap, D), dtype=dtype)
        v = xp.empty((B, H, cap, D), dtype=dtype)
        if self.length:
            k[:, :, :self.length] = self.k[:, :, :self.length]
            v[:, :, :self.length] = self.v[:, :, :self.length]
        self.k, self.v = k, v

    def advance(self, T):
        """Mark T more positions as filled (after a writer, such as the compiled decode step,
        wrote them at [:, :, length:length + T])."""
        if self.length + T > self.capacity:
            raise ValueError(f"KVCache: {self.length + T} positions exceed the capacity "
                             f"{self.capacity}")
        self.length += T

    def view(self):
        """The filled keys and values: views (B, Hkv, length, D) (arrays; no copy)."""
        if self.k is None:
            raise ValueError("KVCache: nothing has been written yet")
        return self.k[:, :, :self.length], self.v[:, :, :self.length]

    def tensors(self):
        """All keys and values (B, Hkv, length, D) as Tensors: those that carry the graph
        while gradients flow (see ``append``), else Tensors over the views."""
        if self._graph is not None:
            return self._graph
        keys, values = self.view()
        return Tensor(keys), Tensor(values)

    def append(self, k, v):
        """Write this call's keys and values (B, Hkv, T, D), Tensors, after the cached ones;
        returns all keys and values (B, Hkv, length, D) as Tensors.

        Decoding (no gradient wanted): the arrays are written in place and the views come
        back, no copy of the earlier positions. When this call's keys need a gradient (a
        forward under grad: a gradient check, training through a cache), the Tensors are also
        joined by a concatenation, as a cache without room would, so that the gradient reaches
        every position's keys (positions written without grad are constants there).
        """
        B, H, T, D = k.shape
        xp = backend.get_array_module(k.data)
        self.reserve(B, H, D, k.dtype, xp, T)
        L = self.length
        self.k[:, :, L:L + T] = k.data
        self.v[:, :, L:L + T] = v.data
        self.length = L + T
        if not (k.requires_grad or v.requires_grad):
            self._graph = None
            return self.tensors()
        past = self._graph if self._graph is not None else (
            Tensor(self.k[:, :, :L]), Tensor(self.v[:, :, :L]))
        self._graph = (F.concatenate([past[0], k], axis=2) if L else k,
                       F.concatenate([past[1], v], axis=2) if L else v)
        return self._graph

    def reorder(self, index):
        """Keep the batch rows ``index`` (B_new,) in that order (beam search: each surviving
        hypothesis takes the cache of the one it extends). Same batch size: gathered in place;
        another size: into new arrays."""
        self._graph = None
        if self.k is None:
            return
        xp = backend.get_array_module(self.k)
        index = xp.asarray(index)
        L = self.length
        if index.shape[0] == self.k.shape[0]:
            self.k[:, :, :L] = self.k[index, :, :L]            # the right side is a copy
            self.v[:, :, :L] = self.v[index, :, :L]
            return
        shape = (index.shape[0],) + self.k.shape[1:]
        k, v = xp.empty(shape, self.k.dtype), xp.empty(shape, self.v.dtype)
        k[:, :, :L], v[:, :, :L] = self.k[index, :, :L], self.v[index, :, :L]
        self.k, self.v = k, v

    def __repr__(self):
        shape = None if self.k is None else tuple(self.k.shape)
        return f"KVCache(length={self.length}, buffer={shape})"


class DecoderCache(list):
    """A decoder stack's cache: one entry per layer, a ``KVCache`` or, for a layer with
    cross-attention, {"self": KVCache, "cross": KVCache}."""

    def layer_caches(self):
        """Every KVCache in it, self- and cross-attention."""
        for entry in self:
            if isinstance(entry, dict):
                yield from entry.values()
            else:
                yield entry

    @property
    def length(self):
        """Positions decoded so far (the self-attention caches' length; 0 when empty)."""
        if not self:
            return 0
        first = self[0]["self"] if isinstance(self[0], dict) else self[0]
        return first.length

    def reorder(self, index):
        """Gather every layer's batch rows ``index`` (see KVCache.reorder)."""
        for c in self.layer_caches():
            c.reorder(index)
