"""Weight-only symmetric int8 quantization of a model's Linear layers, for inference.

    tl.compress.quantize_int8(model, group_size=64)     # every Linear -> QuantizedLinear
    with tl.no_grad():
        logits = model(idx)

Each weight W (in, out) becomes int8 codes q in [-127, 127] and float scales s, one per group
of ``group_size`` consecutive input rows of one output column (``group_size=None``: one per
output column, "per channel"):

    s[g, j] = max_{i in g} |W[i, j]| / 127        q[i, j] = round(W[i, j] / s[g(i), j])
    W_hat[i, j] = q[i, j] s[g(i), j]              |W_hat - W| <= s / 2 per element

(card "int8 symmetric quantization" in docs/compression.md: the bound, and why smaller groups
are tighter). Scales keep the weight's dtype. Activations stay float: only the storage of W
and the matmul's input change.

What is quantized: every Linear (a PrunedLinear's effective weight W_orig * M, whose zeros stay
0). Not quantized: biases (kept as they are), embeddings, norms, and GPT's tied lm_head: it IS
the token embedding (TiedLMHead), read row by row by the lookup too, so quantizing it would
either change the embedding lookups or store a second (int8) copy of the largest matrix.

A QuantizedLinear holds no Parameters (codes, scales and bias are buffers), so nothing in it is
trained; its op passes the gradient to its input (dx = dout W_hat^T), so layers before it could
still be tuned. Use it under ``no_grad`` for inference.
"""
import json
import os

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from tinyllm import backend
from tinyllm._files import atomic_write
from tinyllm.autograd.function import Function
from tinyllm.autograd.tensor import Tensor
from tinyllm.compress._modules import replace_modules
from tinyllm.compress.masked import effective_weight
from tinyllm.dispatch import accelerator
from tinyllm.kernels import int8 as int8_kernels
from tinyllm.nn.module import Module
from tinyllm.ops.matmul import gemm

QMAX = 127                                    # symmetric: -128 is never used
FORMAT = "tinyllm-int8/1"                     # the safetensors metadata "format" of a save


def _group(group_size, K):
    """Rows per scale: ``group_size``, or K (one group: per output channel) for None."""
    return K if group_size is None else min(int(group_size), max(K, 1))


def quantize_weight(w, group_size=64):
    """(codes int8 (K, N), scales (G, N) of w's dtype) of a weight w (K, N), G = ceil(K / S).

    scale = max |w| / 127 over the group; codes = round(w / scale) (to nearest, ties to even),
    so every code is in [-127, 127]. An all-zero group gets scale 0 and codes 0."""
    xp = backend.get_array_module(w)
    K, N = w.shape
    S = _group(group_size, K)
    G = -(-K // S) if K else 0
    pad = G * S - K                                   # a last, shorter group: pad with zeros
    wg = xp.concatenate([w, xp.zeros((pad, N), w.dtype)]) if pad else w
    wg = wg.reshape(G, S, N)                          # (G, S, N): group g = rows g S .. g S + S-1
    scales = xp.abs(wg).max(axis=1) / QMAX if G else xp.zeros((0, N), w.dtype)   # (G, N)
    safe = xp.where(scales == 0, 1, scales)
    codes = xp.clip(xp.rint(wg / safe[:, None, :]), -QMAX, QMAX)
    return codes.reshape(G * S, N)[:K].astype(np.int8), scales.astype(w.dtype)


def dequantize(codes, scales, group_size=64):
    """W_hat (K, N) = codes * scales, each scale row repeated over its group's input rows."""
    xp = backend.get_array_module(scales)
    K = codes.shape[0]
    S = _group(group_size, K)
    return codes * xp.repeat(scales, S, axis=0)[:K]   # int8 * float -> the scales' dtype


class Int8Linear(Function):
    """out = x @ W_hat + b with W_hat = codes * scales (weight-only int8; x stays float).

    Forward, the readable path: dequantize (W_hat (K, N), the scale of each row's group
    broadcast over it), then one GEMM. Backward, for the input only (codes, scales and b are
    keyword constants, not graph inputs):
        dx = dout @ W_hat^T              (M, N) @ (N, K) = (M, K)
    Shapes: x (..., K) seen as (M, K); codes (K, N) int8; scales (G, N); b (N,); out (..., N).
    Fast path: a Numba kernel that multiplies the int8 codes directly and applies each group's
    scale to its partial sum (tinyllm/kernels/int8.py), under the switch; "auto" takes it for
    up to AUTO_MAX_ROWS rows (decoding), where it beats dequantizing the whole matrix.
    """

    # "auto" takes the kernel up to this many rows. Measured on the 2-core dev machine
    # (float32, K=768, N=3072): 1 row 0.11 ms vs 8-14 ms for dequantize + GEMM; 64 rows 11 vs
    # 23 ms; 256 rows 31 vs 25 ms (BLAS wins). 16 keeps a margin (timings were noisy).
    AUTO_MAX_ROWS = 16

    def forward(self, x, codes=None, scales=None, bias=None, group_size=64):
        K, N = codes.shape
        self.codes, self.scales, self.group_size, self.shape = codes, scales, group_size, x.shape
        x2 = x.reshape(-1, K)                                        # (..., K) -> (M, K)
        if accelerator("int8_matmul", x2, scales, auto=x2.shape[0] <= self.AUTO_MAX_ROWS):
            out = int8_kernels.int8_matmul(x2, codes, scales, _group(group_size, K))
        else:
            out = gemm(x2, dequantize(codes, scales, group_size).astype(x.dtype, copy=False))
        if bias is not None:
            out = out + bias
        return out.reshape(x.shape[:-1] + (N,))

    def backward(self, dout):
        W = dequantize(self.codes, self.scales, self.group_size).astype(dout.dtype, copy=False)
        d2 = dout.reshape(-1, W.shape[1])                            # (M, N)
        return gemm(d2, W.T).reshape(self.shape)                     # (M, K) -> (..., K)


class QuantizedLinear(Module):
    """A Linear with int8 weights: y = x @ (codes * scales) + b (see ``Int8Linear``).

    Buffers (all in the state_dict): ``weight_codes`` int8 (in, out), ``weight_scales``
    (ceil(in / group_size), out) in the weight's dtype, ``bias`` (out,) if the Linear had one.
    ``group_size`` None means one scale per output column."""

    def __init__(self, in_features, out_features, bias=True, group_size=64, dtype=np.float32,
                 device="cpu"):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, \
            group_size
        xp = backend.xp_for_device(device)
        G = -(-in_features // _group(group_size, in_features)) if in_features else 0
        self.register_buffer("weight_codes", Tensor(xp.zeros((in_features, out_features),
                                                             np.int8)))
        self.register_buffer("weight_scales", Tensor(xp.zeros((G, out_features), dtype)))
        self.register_buffer("bias", Tensor(xp.zeros(out_features, dtype)) if bias else None)

    @classmethod
    def from_linear(cls, linear, group_size=64):
        """The quantized copy of a Linear (or a PrunedLinear's effective weight)."""
        w = effective_weight(linear)
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size,
                w.dtype, backend.device_of(w))
        q.weight_codes.data, q.weight_scales.data = quantize_weight(w, group_size)
        if linear.bias is not None:
            q.bias.data = linear.bias.data.copy()
        return q

    @property
    def weight(self):
        """The dequantized weight W_hat (in, out), a new Tensor (no gradient)."""
        return Tensor(dequantize(self.weight_codes.data, self.weight_scales.data,
                                 self.group_size))

    def forward(self, x):
        if x.shape[-1] != self.in_features:
            raise ValueError(f"QuantizedLinear: input's last axis is {x.shape[-1]}, expected "
                             f"in_features={self.in_features} (input shape {x.shape})")
        b = None if self.bias is None else self.bias.data
        return Int8Linear.apply(x, codes=self.weight_codes.data, scales=self.weight_scales.data,
                                bias=b, group_size=self.group_size)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, group_size={self.group_size}")


def quantize_int8(model, group_size=64):
    """Replace every Linear under ``model`` by a QuantizedLinear, in place; returns ``model``.
    ``group_size``: input rows per scale (a positive int), or None for one scale per output
    channel. The tied GPT lm_head and embeddings stay float (module docstring)."""
    if group_size is not None and (isinstance(group_size, bool) or
                                   not isinstance(group_size, (int, np.integer)) or
                                   group_size < 1):
        raise ValueError(f"quantize_int8: group_size must be a positive int or None, got "
                         f"{group_size!r}")
    replace_modules(model, lambda name, m: QuantizedLinear.from_linear(m, group_size),
                    op="quantize_int8")
    return model


def quantized_size_bytes(model):
    """Bytes of the model's arrays, each shared array once: parameters and persistent buffers
    (for a quantized model: int8 codes, scales, biases, and the float embeddings and norms)."""
    seen, total = set(), 0
    for t in model.state_dict().values():
        if id(t.data) not in seen:
            seen.add(id(t.data))
            total += int(t.data.nbytes)
    return total


def save_quantized(model, path):
    """Write a quantized model's state to one safetensors file, atomically (a temporary file
    beside ``path``, then ``os.replace``). Each shared array is stored once (GPT's lm_head is
    the token embedding); the metadata holds the format, each QuantizedLinear's group size and
    the tied names. Returns ``path``."""
    arrays, aliases, first = {}, {}, {}
    for name, t in model.state_dict().items():
        if id(t.data) in first:
            aliases[name] = first[id(t.data)]
            continue
        first[id(t.data)] = name
        arrays[name] = np.ascontiguousarray(backend.asnumpy(t.data))
    layers = {name: m.group_size for name, m in model.named_modules()
              if isinstance(m, QuantizedLinear)}
    if not layers:
        raise ValueError("save_quantized: the model has no QuantizedLinear (call quantize_int8 "
                         "first)")
    meta = {"format": FORMAT, "group_sizes": json.dumps(layers), "aliases": json.dumps(aliases)}
    atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata=meta))
    return path


def load_quantized(path, model):
    """Load a ``save_quantized`` file into ``model``: a float model of the same architecture
    (its Linears are swapped for empty QuantizedLinears of the saved group sizes, nothing is
    quantized) or one quantized with the same group sizes. Strict: every name and shape must
    match. Returns ``model``."""
    with safe_open(os.fspath(path), framework="numpy") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"load_quantized: {path} is not a tinyllm int8 file (format "
                         f"{meta.get('format')!r}, expected {FORMAT!r})")
    group_sizes = json.loads(meta["group_sizes"])
    arrays = load_file(os.fspath(path))
    for alias, name in json.loads(meta["aliases"]).items():
        arrays[alias] = arrays[name]

    def make(name, linear):
        if name not in group_sizes:
            raise ValueError(f"load_quantized: the file has no quantized layer {name!r}")
        w = linear.weight.data
        return QuantizedLinear(linear.in_features, linear.out_features,
                               linear.bias is not None, group_sizes[name], w.dtype,
                               backend.device_of(w))
    replace_modules(model, make, op="load_quantized")
    for name, m in model.named_modules():
        if isinstance(m, QuantizedLinear) and group_sizes.get(name, m.group_size) != m.group_size:
            raise ValueError(f"load_quantized: layer {name!r} has group_size {m.group_size}, "
                             f"the file {group_sizes[name]}")
    model.load_state_dict(arrays, strict=True)
    return model
