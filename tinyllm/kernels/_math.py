"""Scalar math for the Numba kernels: an ``exp`` and a ``tanh`` that LLVM can vectorize.

Why: Numba compiles ``np.exp`` on a float32 scalar to a call into the C math library, one
element at a time (PyPI's llvmlite is built without Intel's SVML, and installing the SVML
runtime does not change that). A loop with a call in it does not vectorize, so a Numba softmax
was capped near 2x NumPy, whose own float32 exp is SIMD. Written as plain arithmetic, exp
vectorizes: 16 float32 lanes per AVX-512 instruction.

exp(x), float32 (the Cephes ``expf`` scheme, as in many SIMD math libraries):
    k = round(x / ln 2)                   so x = k ln 2 + r with |r| <= ln(2) / 2
    r = x - k * C1 - k * C2               ln 2 split in two (C1 exact in few bits) so that
                                          k * C1 has no rounding error
    e^r ~ 1 + r + r^2 P(r)                degree-5 minimax P: |relative error| < 3e-7
    e^x = e^r * 2^k                       2^k built directly as float32 bits:
                                          exponent field (k + 127) << 23
Below x = -87.34 (where e^x leaves the normal float32 range) the result is exactly 0, so
masked logits (-inf) give exact zeros, as np.exp does. x is clamped above at 89, where k = 128
and the exponent field 255 is that of +inf: so exp(+inf) = inf, as np.exp, and so is every x
above 88.38 (np.exp overflows only at 88.72; in between it still has a finite number near the
float32 maximum). NaN gives NaN: the clamps keep it, r and e^r are NaN. k goes to integer bits
through its float bits (k + 1.5 * 2^23 holds k in its low mantissa bits), not a float-to-int
conversion, which LLVM leaves undefined ("poison") for a NaN. That keeps one select at the end,
as fast as before NaN was handled; a NaN test and an inf test there cost 10-15% on GELU.
Float64 inputs use the C library's exp: float64 kernels exist for gradient checks, where
exactness matters more than speed.

tanh(u) = 1 - 2 / (e^(2u) + 1), with the exp above: absolute error ~1e-7 (relative error grows
as u -> 0, where tanh u ~ u; callers like GELU use 1 + tanh u, for which that does not matter).

erf(x), float32: Eigen's rational approximation, x clamped to [-4, 4] (beyond it erf is +-1 in
float32), erf x ~ x P(x^2) / Q(x^2) with P of degree 6 and Q of degree 4: |error| < 5e-7 over
the real line (checked against math.erf in tests/test_kernels.py). Float64 uses math.erf.

NaN and infinities: every function here gives what NumPy gives (NaN for NaN; exp(+-inf) = inf,
0; tanh and erf of +-inf = +-1), held by tests/test_kernels_nonfinite.py. Numba's ``min(a, b)``
and ``max(a, b)`` return ``a`` when the comparison is false, so the clamps below put x first:
a NaN x stays NaN instead of becoming the clamp's bound.

Each function has a Python body (what runs under NUMBA_DISABLE_JIT, and the plain statement of
its value) and a Numba overload, which is what compiled kernels inline. Numba's on-disk cache
(``cache=True``) keys a kernel by its own source file only: after editing this file, delete the
cached kernels (``find tinyllm -name '*.nb[ic]' -delete``), or kernels in unchanged files keep
the old inlined code.
"""
import math

import numpy as np

from tinyllm.kernels._numba import FASTMATH, NUMBA_AVAILABLE


def row_max(r):
    """max of the 1-D array ``r``, kept as 8 running maxima over interleaved elements.

    A single running max is a loop-carried compare-and-select, which LLVM vectorizes only when
    told there are no NaNs (fastmath ``nnan``, which the kernels do not use). Eight independent
    maxima need no such promise: they fill one vector register, and are combined at the end.
    Measured: softmax forward (16384, 256) float32 11.8 -> 7.7 ms. -inf entries are fine.

    NaN entries are skipped (``v > m`` is false for a NaN), unlike ``np.max``. A NaN-sticky
    select measured 1.35x slower on the softmax forward, and the callers do not need one: they
    subtract this max and sum exps, and a NaN entry makes that sum NaN, so the whole row comes
    out NaN, as in the ops' formulas. The one case that sum cannot catch is a row whose entries
    are all -inf or NaN: the max is then -inf, as for a fully masked row, and the caller asks
    ``masked_row_fill`` which of the two it is.
    """
    n = r.shape[0]
    n8 = n - n % 8
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = r.dtype.type(-np.inf)
    for c in range(0, n8, 8):
        m0 = r[c] if r[c] > m0 else m0
        m1 = r[c + 1] if r[c + 1] > m1 else m1
        m2 = r[c + 2] if r[c + 2] > m2 else m2
        m3 = r[c + 3] if r[c + 3] > m3 else m3
        m4 = r[c + 4] if r[c + 4] > m4 else m4
        m5 = r[c + 5] if r[c + 5] > m5 else m5
        m6 = r[c + 6] if r[c + 6] > m6 else m6
        m7 = r[c + 7] if r[c + 7] > m7 else m7
    m = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
    for c in range(n8, n):
        m = r[c] if r[c] > m else m
    return m


def masked_row_fill(r):
    """For a row whose ``row_max`` is -inf: 0 when every entry is -inf (a fully masked row,
    whose softmax is zeros by the project's convention), NaN when it holds a NaN (the
    formula's max is NaN there, and so is its softmax). Runs only on such rows."""
    for c in range(r.shape[0]):
        if r[c] != r[c]:
            return r[c]
    return r.dtype.type(0)


def softmax_row(x, y):
    """y = softmax(x) for one 1-D row, three passes: max; exp and sum; scale. ``y`` may be
    ``x`` (in place). A row with no finite maximum (all -inf: fully masked) gets zeros, or NaN
    if it holds a NaN (``masked_row_fill``); a NaN beside finite entries reaches the sum, so the
    row comes out NaN, as in the op's formula (tinyllm/ops/softmax.py). Shared by the softmax
    and the attention kernels."""
    C = x.shape[0]
    m = row_max(x)                                # NaN entries skipped: they reach s below
    if m == -np.inf:
        fill = masked_row_fill(x)
        for c in range(C):
            y[c] = fill
        return
    s = x.dtype.type(0)
    for c in range(C):
        e = exp(x[c] - m)                         # vectorizable exp (below)
        y[c] = e
        s += e
    inv = 1 / s
    for c in range(C):
        y[c] *= inv


def exp(x):
    """e^x. Inside a Numba kernel, float32 takes the vectorizable polynomial below."""
    return np.exp(x)


def tanh(x):
    """tanh x. Inside a Numba kernel, float32 uses 1 - 2 / (exp(2x) + 1) with the fast exp."""
    return np.tanh(x)


def erf(x):
    """erf x. Inside a Numba kernel, float32 uses the rational approximation above."""
    return math.erf(x)


if NUMBA_AVAILABLE:
    import numba
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic, overload

    _JIT_OPTIONS = {"fastmath": set(FASTMATH), "error_model": "numpy"}   # as _numba.jit

    @intrinsic
    def _int32_bits_as_float32(typingctx, bits):
        """Reinterpret the 32 bits of an int32 as a float32 (no conversion): one LLVM bitcast."""
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.FloatType())
        return types.float32(types.int32), codegen

    @intrinsic
    def _float32_bits_as_int32(typingctx, x):
        """Reinterpret the 32 bits of a float32 as an int32: one LLVM bitcast, defined for NaN."""
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.IntType(32))
        return types.int32(types.float32), codegen

    _LO = np.float32(-87.33654)                  # below: e^x under the normal float32 range
    _HI = np.float32(89.0)                       # k = 128 here: 2^k has the bits of +inf
    _SHIFTER = np.float32(1.5 * 2 ** 23)         # k + this holds k in its low mantissa bits
    _LOG2E = np.float32(1.44269504088896341)
    _C1, _C2 = np.float32(0.693359375), np.float32(-2.12194440e-4)   # C1 + C2 = ln 2
    _P0, _P1, _P2 = np.float32(1.9875691500e-4), np.float32(1.3981999507e-3), \
        np.float32(8.3334519073e-3)
    _P3, _P4, _P5 = np.float32(4.1665795894e-2), np.float32(1.6666665459e-1), \
        np.float32(5.0000001201e-1)
    _ONE, _TWO, _HALF = np.float32(1.0), np.float32(2.0), np.float32(0.5)

    def _expf(x):
        xc = min(max(x, _LO), _HI)                                # x first: NaN stays NaN
        k = np.floor(xc * _LOG2E + _HALF)                        # nearest integer, as float
        r = xc - k * _C1 - k * _C2
        p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
        er = p * (r * r) + r + _ONE                               # e^r
        k_bits = _float32_bits_as_int32(k + _SHIFTER)             # low 9 bits: k mod 512
        two_k = _int32_bits_as_float32((k_bits + np.int32(127)) << np.int32(23))
        return np.float32(0.0) if x <= _LO else er * two_k       # NaN: er is NaN

    row_max = numba.njit(inline="always", **_JIT_OPTIONS)(row_max)
    masked_row_fill = numba.njit(**_JIT_OPTIONS)(masked_row_fill)

    @overload(exp, inline="always", jit_options=_JIT_OPTIONS)
    def _exp_overload(x):
        if isinstance(x, types.Float) and x.bitwidth == 32:
            return _expf
        return lambda x: np.exp(x)

    @overload(tanh, inline="always", jit_options=_JIT_OPTIONS)
    def _tanh_overload(x):
        if isinstance(x, types.Float) and x.bitwidth == 32:
            return lambda x: _ONE - _TWO / (exp(_TWO * x) + _ONE)
        return lambda x: np.tanh(x)

    _EA = [np.float32(c) for c in (-1.60960333262415e-02, -2.95459980854025e-03,
                                   -7.34990630326855e-04, -5.69250639462346e-05,
                                   -2.10102402082508e-06, 2.77068142495902e-08,
                                   -2.72614225801306e-10)]
    _EB = [np.float32(c) for c in (-1.42647390514189e-02, -7.37332916720468e-03,
                                   -1.68282697438203e-03, -2.13374055278905e-04,
                                   -1.45660718464996e-05)]
    _A1, _A3, _A5, _A7, _A9, _A11, _A13 = _EA
    _B0, _B2, _B4, _B6, _B8 = _EB
    _FOUR = np.float32(4.0)

    def _erff(x):
        xc = min(max(x, -_FOUR), _FOUR)
        x2 = xc * xc
        p = ((((((_A13 * x2 + _A11) * x2 + _A9) * x2 + _A7) * x2 + _A5) * x2 + _A3) * x2
             + _A1) * xc
        q = (((_B8 * x2 + _B6) * x2 + _B4) * x2 + _B2) * x2 + _B0
        return p / q

    @overload(erf, inline="always", jit_options=_JIT_OPTIONS)
    def _erf_overload(x):
        if isinstance(x, types.Float) and x.bitwidth == 32:
            return _erff
        return lambda x: math.erf(x)

    softmax_row = numba.njit(inline="always", **_JIT_OPTIONS)(softmax_row)
