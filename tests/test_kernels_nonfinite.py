"""NaN and +-inf through every accelerated op, switch on, against the op's own formula.

The rule (issue 17): a non-finite input gives what the formula gives, position by position:
NaN where the formula has NaN, the same infinities, and the finite values close. A kernel that
drops a NaN (a running max written ``if v > m``, a clamp, fastmath ``nnan``) turns a diverged
run into plausible numbers; these tests are the table that catches it.

Each case poisons one input with NaN, +inf or -inf, in one element (the start of a row, inside
the 8-wide main loop, the tail past it) or a whole row, and runs the op on raw arrays with the
switch on ("numba", and "auto", which picks per call) and off ("numpy": the formula). Rows are
19 long: two passes of the 8-wide loops and a tail of 3. Backward gets the same saved values on
both sides (the formula's forward's), so each direction is checked on its own.
"""
import math

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import kernels
from tinyllm.kernels import matmul as M
from tinyllm.ops import rnn
from tinyllm.ops.attention import ScaledDotProductAttention
from tinyllm.ops.matmul import MatMul
from tests.test_kernels import (_op, cross_entropy_formula, embedding_formula, gelu_formula,
                                layer_norm_formula, softmax_formula)

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}
IMPLS = [pytest.param("numba", marks=pytest.mark.skipif(not kernels.NUMBA_AVAILABLE,
                                                        reason="numba not installed")),
         "auto"]
VALUES = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf}
N, C = 5, 19            # rows x columns of the row kernels' inputs
ROW = 1                 # the row that gets the poison
WHERE = {"first": [0], "middle": [9], "last": [C - 1], "row": list(range(C))}


@pytest.fixture(autouse=True)
def _quiet_numpy():
    """NumPy's "invalid value" warnings are the point here (setup.cfg makes tinyllm's errors)."""
    with np.errstate(all="ignore"):
        yield


def _x(shape, dtype, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def _poison(a, value, where, row=ROW):
    """A copy of ``a`` with ``value`` at columns ``WHERE[where]`` of row ``row`` (1-D: the
    columns themselves; more axes: the last axis of ``a[row]`` flattened over the rest)."""
    a = a.copy()
    if a.ndim == 1:
        cols = [c % a.shape[0] for c in WHERE[where]]
        a[cols] = value
        return a
    r = a.reshape(-1, a.shape[-1])
    cols = [c % r.shape[1] for c in WHERE[where]] if where != "row" else slice(None)
    r[row, cols] = value
    return a


def assert_nonfinite_match(got, want, dtype, what=""):
    """Same NaN positions, the same infinities at the same positions, finite values close."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    nan_got, nan_want = np.isnan(got), np.isnan(want)
    if (nan_got != nan_want).any():
        bad = np.argwhere(nan_got != nan_want)[:5].tolist()
        differ = nan_got != nan_want
        raise AssertionError(f"{what}: NaN positions differ at {bad}: got {got[differ][:5]}, "
                             f"reference {want[differ][:5]}")
    inf_want = np.isinf(want)
    if (np.isinf(got) != inf_want).any() or (got[inf_want] != want[inf_want]).any():
        bad = np.argwhere((np.isinf(got) != inf_want) | (np.isinf(want) & (got != want)))
        raise AssertionError(f"{what}: infinities differ at {bad[:5].tolist()}: got "
                             f"{got[tuple(bad[:5].T)]}, reference {want[tuple(bad[:5].T)]}")
    fin = np.isfinite(want)
    np.testing.assert_allclose(got[fin], want[fin], err_msg=what, **TOL[dtype])


def _match_all(got, want, dtype, what):
    for i, (g, w) in enumerate(zip(got, want)):
        assert_nonfinite_match(g, w, dtype, f"{what}[{i}]")


cases = pytest.mark.parametrize("where", list(WHERE))
values = pytest.mark.parametrize("value", list(VALUES))
dtypes = pytest.mark.parametrize("dtype", DTYPES)
impls = pytest.mark.parametrize("impl", IMPLS)


# ----------------------------------------------------------------------------------------------
# softmax

@impls
@dtypes
@values
@cases
def test_softmax(impl, dtype, value, where):
    x = _poison(_x((N, C), dtype), VALUES[value], where)
    y_ref = softmax_formula(x)[0]
    assert_nonfinite_match(softmax_formula(x, impl=impl)[0], y_ref, dtype, "forward")
    dout = _x((N, C), dtype, seed=1)
    assert_nonfinite_match(softmax_formula(x, dout, y=y_ref, impl=impl)[1],
                           softmax_formula(x, dout, y=y_ref)[1], dtype, "backward y")
    x = _x((N, C), dtype)
    y = softmax_formula(x)[0]
    dout = _poison(dout, VALUES[value], where)
    assert_nonfinite_match(softmax_formula(x, dout, y=y, impl=impl)[1],
                           softmax_formula(x, dout, y=y)[1], dtype, "backward dout")


@impls
@dtypes
def test_softmax_special_rows(impl, dtype):
    """+inf gives NaN (exp(inf - inf)), as NumPy and PyTorch; a row of -inf (fully masked)
    gives zeros; NaN with -inf around it is still NaN, not a masked row; -inf entries next to
    finite ones give exact zeros."""
    x = np.array([[np.inf, 1, 2], [-np.inf, -np.inf, -np.inf], [np.nan, -np.inf, -np.inf],
                  [-np.inf, 0, -np.inf], [np.inf, np.inf, 0], [np.inf, -np.inf, -np.inf]],
                 dtype)
    x = np.concatenate([x, np.full((6, 16), -np.inf, dtype)], axis=1)    # past the 8-wide loop
    y = softmax_formula(x, impl=impl)[0]
    assert_nonfinite_match(y, softmax_formula(x)[0], dtype)
    assert np.isnan(y[[0, 2, 4, 5]]).all()
    assert (y[1] == 0).all() and y[3, 1] == 1 and (np.delete(y[3], 1) == 0).all()


# ----------------------------------------------------------------------------------------------
# cross-entropy

@impls
@dtypes
@values
@cases
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy(impl, dtype, value, where, label_smoothing):
    t = np.array([3, 9, 0, -100, C - 1])            # row 1's target is the "middle" column
    z = _poison(_x((N, C), dtype), VALUES[value], where)
    dloss = np.abs(_x(N, dtype, seed=2)) + 0.5
    loss, lse, dz = cross_entropy_formula(z, t, -100, label_smoothing, dloss)
    got = cross_entropy_formula(z, t, -100, label_smoothing, dloss, lse=lse, impl=impl)
    _match_all(got[:2], (loss, lse), dtype, "forward")
    assert_nonfinite_match(got[2], dz, dtype, "backward")
    dloss = _poison(dloss, VALUES[value], "middle" if where == "row" else "first")
    z = _x((N, C), dtype)
    lse = cross_entropy_formula(z, t, -100, label_smoothing)[1]
    assert_nonfinite_match(
        cross_entropy_formula(z, t, -100, label_smoothing, dloss, lse=lse, impl=impl)[2],
        cross_entropy_formula(z, t, -100, label_smoothing, dloss, lse=lse)[2],
        dtype, "backward dloss")


@impls
@dtypes
@values
def test_cross_entropy_ignored_row(impl, dtype, value):
    """A row whose target is ignore_index has loss 0 and gradient 0, whatever its logits."""
    t = np.array([3, 9, 0, -100, C - 1])
    z = _poison(_x((N, C), dtype), VALUES[value], "row", row=3)
    for which in ("numpy", impl):
        loss, _, dz = cross_entropy_formula(z, t, dloss=np.ones(N, dtype), impl=which)
        assert loss[3] == 0 and (dz[3] == 0).all(), which
        assert np.isfinite(loss[[0, 1, 2, 4]]).all() and np.isfinite(dz[[0, 1, 2, 4]]).all()


# ----------------------------------------------------------------------------------------------
# layer norm

@impls
@dtypes
@values
@cases
@pytest.mark.parametrize("operand", ["x", "w", "b"])
def test_layer_norm(impl, dtype, value, where, operand):
    ops = {"x": _x((N, C), dtype), "w": _x(C, dtype, seed=1) + 1, "b": _x(C, dtype, seed=2)}
    ops[operand] = _poison(ops[operand], VALUES[value], where)
    x, w, b = ops["x"], ops["w"], ops["b"]
    dout = _x((N, C), dtype, seed=3)
    fwd, bwd = layer_norm_formula(x, w, b, dout=dout)
    got_fwd, got_bwd = layer_norm_formula(x, w, b, dout=dout, saved=fwd[1:], impl=impl)
    _match_all(got_fwd, fwd, dtype, "forward")
    _match_all(got_bwd, bwd, dtype, "backward")


@impls
@dtypes
@values
@cases
def test_layer_norm_backward_dout(impl, dtype, value, where):
    x, w, b = _x((N, C), dtype), _x(C, dtype, seed=1) + 1, _x(C, dtype, seed=2)
    dout = _poison(_x((N, C), dtype, seed=3), VALUES[value], where)
    fwd, bwd = layer_norm_formula(x, w, b, dout=dout)
    _match_all(layer_norm_formula(x, w, b, dout=dout, saved=fwd[1:], impl=impl)[1], bwd, dtype,
               "backward")


# ----------------------------------------------------------------------------------------------
# GELU

@impls
@dtypes
@values
@cases
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(impl, dtype, value, where, approximate):
    x = _poison(_x((N, C), dtype, scale=3), VALUES[value], where)
    dout = _x((N, C), dtype, seed=1)
    _match_all(gelu_formula(x, approximate, dout, impl=impl), gelu_formula(x, approximate, dout),
               dtype, "forward, backward")
    x, dout = _x((N, C), dtype, scale=3), _poison(dout, VALUES[value], where)
    assert_nonfinite_match(gelu_formula(x, approximate, dout, impl=impl)[1],
                           gelu_formula(x, approximate, dout)[1], dtype, "backward dout")


# ----------------------------------------------------------------------------------------------
# attention

B, H, T, D = 2, 2, 11, 4


@impls
@dtypes
@values
@pytest.mark.parametrize("where", ["first", "last", "row"])
@pytest.mark.parametrize("operand", ["q", "k", "v", "dout"])
@pytest.mark.parametrize("masking", ["none", "causal", "mask"])
def test_attention(impl, dtype, value, where, operand, masking):
    ops = {name: _x((B, H, T, D), dtype, seed=i) for i, name in enumerate("qkv")}
    ops["dout"] = _x((B, H, T, D), dtype, seed=3)
    # (B, H, T, D) seen as rows of D: row 7 is batch 0, head 0, position 7
    ops[operand] = _poison(ops[operand], VALUES[value], where, row=7)
    q, k, v, dout = ops["q"], ops["k"], ops["v"], ops["dout"]
    mask = None
    if masking == "mask":
        mask = np.random.default_rng(5).random((B, 1, T, T)) < 0.3
        mask[0, 0, 2] = True                                     # one fully masked query
    causal, scale = masking == "causal", 1 / math.sqrt(D)

    def run(which, p=None):
        with kernels.using(which):
            op = _op(ScaledDotProductAttention, 3)
            out = op.forward(q, k, v, mask=mask, causal=causal, scale=scale)
            p_own = op.p
            if p is not None:
                op.p = p
            return (out.copy(), p_own), op.backward(dout)

    (out, p), grads = run("numpy")
    got_fwd, got_bwd = run(impl, p)
    _match_all(got_fwd, (out, p), dtype, "forward")
    _match_all(got_bwd, grads, dtype, "backward")
    if masking != "none":                 # hidden keys get exactly 0 weight, NaN or not around
        hidden = np.triu(np.ones((T, T), bool), k=1) if causal else mask
        p_impl = got_fwd[1]
        fin = np.isfinite(p_impl).all(axis=-1, keepdims=True)
        assert (p_impl[np.broadcast_to(hidden, p.shape) & fin] == 0).all()


# ----------------------------------------------------------------------------------------------
# Adam / AdamW

@impls
@dtypes
@values
@cases
@pytest.mark.parametrize("operand", ["p", "g", "m", "v"])
@pytest.mark.parametrize("weight_decay,decoupled", [(0.0, True), (0.1, True), (0.1, False)])
def test_adam_step(impl, dtype, value, where, operand, weight_decay, decoupled):
    ops = {"p": _x((N, C), dtype), "g": _x((N, C), dtype, seed=1),
           "m": _x((N, C), dtype, seed=2) * 0.1, "v": np.abs(_x((N, C), dtype, seed=3)) * 0.01}
    if operand == "v" and value == "-inf":
        value = "+inf"                      # v is a running mean of squares: never negative
    ops[operand] = _poison(ops[operand], VALUES[value], where)
    ref = adam_update(ops, weight_decay, decoupled, "numpy")
    got = adam_update(ops, weight_decay, decoupled, impl)
    for name, r, o in zip("pmv", ref, got):
        assert_nonfinite_match(o, r, dtype, name)


def adam_update(arrays, weight_decay, decoupled, impl, step=3):
    """(p, m, v) after the optimizer's step ``step`` on copies of ``arrays`` (p, g, m, v),
    under the switch ``impl``."""
    p, g, m, v = (arrays[k].copy() for k in "pgmv")
    param = tl.tensor(p, requires_grad=True)
    cls = tl.optim.AdamW if decoupled else tl.optim.Adam
    opt = cls([param], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
    opt.state[param] = {"step": step - 1, "exp_avg": m, "exp_avg_sq": v}
    param.grad = g
    with kernels.using(impl):
        opt.step()
    return param.data, opt.state[param]["exp_avg"], opt.state[param]["exp_avg_sq"]


# ----------------------------------------------------------------------------------------------
# LSTM cell

Bl, Hl = 3, 5


@impls
@dtypes
@values
@pytest.mark.parametrize("where", ["first", "last", "row"])
@pytest.mark.parametrize("operand", ["a", "c"])
def test_lstm_cell(impl, dtype, value, where, operand):
    ops = {"a": _x((Bl, 4 * Hl), dtype, scale=2), "c": _x((Bl, Hl), dtype, seed=1)}
    ops[operand] = _poison(ops[operand], VALUES[value], where)
    a, c = ops["a"], ops["c"]
    with kernels.using("numpy"):
        h, c_new, gates, tanh_c = ref = rnn.cell_forward(a, c)
    with kernels.using(impl):
        _match_all(rnn.cell_forward(a, c), ref, dtype, "forward")
    dh, dc = _x((Bl, Hl), dtype, seed=2), _x((Bl, Hl), dtype, seed=3)
    with kernels.using("numpy"):
        want = rnn.cell_backward(dh, dc, gates, tanh_c, c)
    with kernels.using(impl):
        _match_all(rnn.cell_backward(dh, dc, gates, tanh_c, c), want, dtype, "backward")


@impls
@dtypes
@values
@pytest.mark.parametrize("operand", ["dh", "dc"])
def test_lstm_cell_backward_upstream(impl, dtype, value, operand):
    a, c = _x((Bl, 4 * Hl), dtype, scale=2), _x((Bl, Hl), dtype, seed=1)
    with kernels.using("numpy"):
        _, _, gates, tanh_c = rnn.cell_forward(a, c)
    ops = {"dh": _x((Bl, Hl), dtype, seed=2), "dc": _x((Bl, Hl), dtype, seed=3)}
    ops[operand] = _poison(ops[operand], VALUES[value], "last")
    with kernels.using("numpy"):
        want = rnn.cell_backward(ops["dh"], ops["dc"], gates, tanh_c, c)
    with kernels.using(impl):
        _match_all(rnn.cell_backward(ops["dh"], ops["dc"], gates, tanh_c, c), want, dtype,
                   "backward")


# ----------------------------------------------------------------------------------------------
# matmul and embedding (sums of products: NaN and inf pass through as in BLAS)

@impls
@dtypes
@values
@cases
@pytest.mark.parametrize("operand", ["a", "b"])
@pytest.mark.parametrize("batch", [(), (3,)])
def test_matmul(impl, dtype, value, where, operand, batch):
    ops = {"a": _x(batch + (6, C), dtype), "b": _x(batch + (C, 7), dtype, seed=1)}
    ops[operand] = _poison(ops[operand], VALUES[value], where)
    with kernels.using("numpy"):
        want = _op(MatMul, 2).forward(ops["a"], ops["b"])
    with kernels.using(impl):
        assert_nonfinite_match(_op(MatMul, 2).forward(ops["a"], ops["b"]), want, dtype, "op")
    if kernels.NUMBA_AVAILABLE:                     # the teaching kernel itself
        assert_nonfinite_match(M.matmul(ops["a"], ops["b"]), want, dtype, "kernel")


@impls
@dtypes
@values
@cases
def test_embedding_backward(impl, dtype, value, where):
    idx = np.array([0, 2, 2, 4, 1])                 # repeated id 2: the poisoned row adds in
    dout = _poison(_x((N, C), dtype), VALUES[value], where)
    assert_nonfinite_match(embedding_formula(idx, dout, 6, impl=impl),
                           embedding_formula(idx, dout, 6), dtype)


# ----------------------------------------------------------------------------------------------
# the compiled CuPy kernels (LayerNorm, GELU, Adam) against the reference on the same GPU arrays

def _gpu(*arrays):
    from tinyllm import backend
    return [backend.to_device(a, "cuda") for a in arrays]


def _cpu(*arrays):
    from tinyllm import backend
    return [backend.asnumpy(a) for a in arrays]


@pytest.mark.gpu
@dtypes
@values
@pytest.mark.parametrize("where", ["middle", "row"])
def test_cupy_kernels(dtype, value, where):
    """LayerNorm, GELU and Adam on CuPy arrays: the formula ("numpy") and the compiled kernels
    ("auto") against the formula on NumPy."""
    x = _poison(_x((N, C), dtype, scale=3), VALUES[value], where)
    w, b, dout = _x(C, dtype, seed=1) + 1, _x(C, dtype, seed=2), _x((N, C), dtype, seed=3)
    gx, gw, gb, gdout = _gpu(x, w, b, dout)
    fwd, bwd = layer_norm_formula(x, w, b, dout=dout)
    for impl in ("numpy", "auto"):                      # "auto" takes the CuPy kernels
        got_fwd, got_bwd = layer_norm_formula(gx, gw, gb, dout=gdout, saved=_gpu(*fwd[1:]),
                                              impl=impl)
        _match_all(_cpu(*got_fwd), fwd, dtype, "ln fwd")
        _match_all(_cpu(*got_bwd), bwd, dtype, "ln bwd")
        for approximate in ("none", "tanh"):
            _match_all(_cpu(*gelu_formula(gx, approximate, gdout, impl=impl)),
                       gelu_formula(x, approximate, dout), dtype, "gelu")
        arrays = {"p": x, "g": dout, "m": dout * 0.1, "v": np.abs(dout) * 0.01}
        want = adam_update(arrays, 0.1, True, "numpy")
        got = adam_update({k: _gpu(a)[0] for k, a in arrays.items()}, 0.1, True, impl)
        _match_all(_cpu(*got), want, dtype, "adam")


# ----------------------------------------------------------------------------------------------
# the Numba kernels' scalar math

@pytest.mark.skipif(not kernels.NUMBA_AVAILABLE, reason="numba not installed")
@dtypes
def test_fast_math_functions_propagate_nonfinite(dtype):
    """exp, tanh, erf of kernels/_math.py (the float32 ones are polynomials with clamps)."""
    from tinyllm.kernels._math import erf, exp, tanh
    from tinyllm.kernels._numba import jit

    @jit()
    def apply(x, e, t, f):
        for i in range(x.shape[0]):
            e[i] = exp(x[i])
            t[i] = tanh(x[i])
            f[i] = erf(x[i])

    x = np.array([np.nan, np.inf, -np.inf, 0.0, 1.5, -1.5, 200.0, -200.0, 50.0], dtype)
    e, t, f = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    apply(x, e, t, f)
    assert_nonfinite_match(e, np.exp(x), dtype, "exp")
    assert_nonfinite_match(t, np.tanh(x), dtype, "tanh")
    assert_nonfinite_match(f, np.array([math.erf(v) for v in x], dtype), dtype, "erf")


# ----------------------------------------------------------------------------------------------
# the public ops, with the switch on "numba" and on the default

def _run_ops(x, dtype):
    """Every op with a kernel behind it, forward and backward, on one poisoned (N, C) input.
    Returns a dict name -> NumPy array."""
    out = {}
    for name, fn in [("softmax", lambda t: tl.softmax(t)), ("log_softmax", tl.log_softmax),
                     ("gelu", lambda t: tl.gelu(t)),
                     ("gelu_tanh", lambda t: tl.gelu(t, approximate="tanh")),
                     ("layer_norm", lambda t: tl.layer_norm(t, C))]:
        t = tl.tensor(x, requires_grad=True)
        y = fn(t)
        y.backward(tl.tensor(_x(x.shape, dtype, seed=7)))
        out[name], out[name + ".grad"] = y.numpy(), t.grad
    t = tl.tensor(x, requires_grad=True)
    target = np.array([3, 9, 0, -100, C - 1])
    loss = tl.cross_entropy(t, target, label_smoothing=0.1, reduction="sum")
    loss.backward()
    out["cross_entropy"], out["cross_entropy.grad"] = loss.numpy(), t.grad
    qkv = [tl.tensor(x.reshape(1, 1, N, C) * s, requires_grad=True) for s in (1.0, 0.5, 2.0)]
    y = tl.attention(*qkv, causal=True)
    y.backward(tl.tensor(_x(y.shape, dtype, seed=8)))
    out["attention"] = y.numpy()
    for name, t in zip("qkv", qkv):
        out[f"attention.d{name}"] = t.grad
    return out


@pytest.mark.parametrize("impl", [pytest.param("numba", marks=pytest.mark.skipif(
    not kernels.NUMBA_AVAILABLE, reason="numba not installed")), None])
@dtypes
@values
@cases
def test_public_ops_match_reference(impl, dtype, value, where):
    x = _poison(_x((N, C), dtype), VALUES[value], where)
    kernels.set_impl("numpy")
    want = _run_ops(x, dtype)
    kernels.set_impl(impl)
    got = _run_ops(x, dtype)
    for name in want:
        assert_nonfinite_match(got[name], want[name], dtype, name)


def test_issue_17_examples():
    """The issue's own examples: the default float32 kernels must give NaN here."""
    y = tl.softmax(tl.tensor([[float("nan"), 1.0, 2.0]])).numpy()
    assert np.isnan(y).all()
    z = tl.tensor([[float("nan"), 1.0, 2.0], [0.0, 1.0, 2.0]], requires_grad=True)
    tl.cross_entropy(z, np.array([1, 2]), reduction="sum").backward()
    assert np.isnan(z.grad[0]).all() and np.isfinite(z.grad[1]).all()
