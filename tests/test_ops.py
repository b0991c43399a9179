"""Every op, declaratively: forward against a plain NumPy reference, backward by gradcheck.

Each ``Case`` names an op, the tinyllm call, a NumPy reference and how to make its inputs. Four
tests run on every case (in the spirit of Chainer's FunctionTestCase and tinygrad's
helper_test_op):
- forward in float64 equals the reference to ~1e-10;
- forward in float32 stays float32 and equals the reference to float32 precision;
- backward equals central finite differences (float64 ``gradcheck``, full mode);
- backward in float32 gives float32 grads close to the float64 ones.
"""
import math

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import functional as F
from tinyllm import kernels
from tests.op_cases import (C, Case, away_from_zero, const, distinct,  # noqa: F401
                            extra_cases, ints, normal, positive)


def _erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax(x, axis):
    z = x - x.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def _cross_entropy(z, t, ignore_index=-100, reduction="mean", eps=0.0):
    C = z.shape[-1]
    logp = _log_softmax(z.reshape(-1, C), 1)
    t = t.reshape(-1)
    losses = []
    for n in range(len(t)):
        if t[n] == ignore_index:
            losses.append(0.0)
            continue
        q = np.full(C, eps / C)
        q[t[n]] += 1 - eps
        losses.append(-(q * logp[n]).sum())
    losses = np.array(losses)
    if reduction == "none":
        return losses.reshape(z.shape[:-1])
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / (t != ignore_index).sum()


def _layer_norm(x, w, b, n_axes, eps=1e-5):
    axes = tuple(range(x.ndim - n_axes, x.ndim))
    mu = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _attention_ref(q, k, v, mask=None, causal=False):
    """softmax(q k^T / sqrt(D), masked) v in float64, written out independently of tinyllm."""
    s = np.einsum("bhid,bhjd->bhij", q, k) / np.sqrt(q.shape[-1])
    Tq, Tk = s.shape[-2:]
    hidden = np.zeros((Tq, Tk), bool)
    if causal:
        hidden = np.arange(Tk)[None, :] > np.arange(Tq)[:, None] + (Tk - Tq)
    if mask is not None:
        hidden = hidden | mask
    s = np.where(hidden, -np.inf, s)
    m = s.max(-1, keepdims=True)
    e = np.exp(s - np.where(np.isfinite(m), m, 0))
    tot = e.sum(-1, keepdims=True)
    return np.einsum("bhij,bhjd->bhid", e / np.where(tot == 0, 1, tot), v)


def _qkv_ref(qkv, H):
    B, T, C3 = qkv.shape
    q, k, v = (x.reshape(B, T, H, -1).transpose(0, 2, 1, 3) for x in np.split(qkv, 3, axis=2))
    return _attention_ref(q, k, v, causal=True).transpose(0, 2, 1, 3).reshape(B, T, C3 // 3)


def _sig(a):
    return 1 / (1 + np.exp(-a))


def _lstm_ref(x, h, c, w_ih, w_hh, b):
    """An LSTM over x (B, T, I) written out step by step: (B, T, 2H) of [h_t, c_t]."""
    H = h.shape[-1]
    out = []
    for t in range(x.shape[1]):
        a = x[:, t] @ w_ih + h @ w_hh + b
        i, f, g, o = _sig(a[:, :H]), _sig(a[:, H:2 * H]), np.tanh(a[:, 2 * H:3 * H]), \
            _sig(a[:, 3 * H:])
        c = f * c + i * g
        h = o * np.tanh(c)
        out.append(np.concatenate([h, c], axis=-1))
    return np.stack(out, axis=1)


def _lstm_out(x, h, c, w_ih, w_hh, b):
    """What the test cases read from F.lstm: the outputs, and h_T * c_T (so that the final
    state's two gradients both reach the op)."""
    hc = _lstm_ref(x, h, c, w_ih, w_hh, b)
    H = h.shape[-1]
    return np.concatenate([hc[:, :, :H].reshape(len(x), -1), hc[:, -1, :H] * hc[:, -1, H:]],
                          axis=1)


def _lstm_call(x, h, c, w_ih, w_hh, b):
    out, (hT, cT) = F.lstm(x, h, c, w_ih, w_hh, b)
    return F.cat([out.reshape(x.shape[0], -1), hT * cT], axis=1)


def _lstm_cell_call(x, h, c, w_ih, w_hh, b):
    h2, c2 = F.lstm_cell(x, h, c, w_ih, w_hh, b)
    return F.cat([h2, c2 * 0.5], axis=1)


def _lstm_cell_ref(x, h, c, w_ih, w_hh, b):
    hc = _lstm_ref(x[:, None], h, c, w_ih, w_hh, b)[:, 0]
    H = h.shape[-1]
    return np.concatenate([hc[:, :H], hc[:, H:] * 0.5], axis=1)


ATT_MASK = np.random.default_rng(7).random((2, 1, 4, 6)) < 0.3        # (B, 1, Tq, Tk)
ATT_MASK[1, 0, 2, :] = True                                            # one fully hidden query

MASK = np.array([[True, False, True, True],
                 [False, False, True, False],
                 [True, True, False, False]])

CASES = [
    # ---- arithmetic, with broadcasting, size-1 axes and 0-d operands
    C("add", lambda a, b: a + b, np.add, normal(3, 4), normal(3, 4)),
    C("add_bcast_row", lambda a, b: a + b, np.add, normal(3, 4), normal(4)),
    C("add_bcast_both", lambda a, b: a + b, np.add, normal(2, 1, 3), normal(4, 1)),
    C("add_0d", lambda a, b: a + b, np.add, normal(), normal(3)),
    C("add_size1", lambda a, b: a + b, np.add, normal(1), normal(2, 3)),
    C("add_scalar_left", lambda a: 2.5 + a, lambda a: 2.5 + a, normal(3)),
    C("sub", lambda a, b: a - b, np.subtract, normal(2, 3), normal(3, 1, 1)),
    C("sub_scalar_left", lambda a: 1.0 - a, lambda a: 1.0 - a, normal(2, 2)),
    C("mul", lambda a, b: a * b, np.multiply, normal(4, 1), normal(1, 5)),
    C("mul_0d_both", lambda a, b: a * b, np.multiply, normal(), normal()),
    C("mul_numpy_scalar", lambda a: a * np.float64(3.0), lambda a: a * 3.0, normal(3)),
    C("div", lambda a, b: a / b, np.divide, normal(3, 4), away_from_zero(4)),
    C("div_scalar_left", lambda a: 3.0 / a, lambda a: 3.0 / a, away_from_zero(5)),
    C("pow_tensor", lambda a, b: a ** b, np.power, positive(3, 4), normal(4)),
    C("pow_square", lambda a: a ** 2, lambda a: a ** 2, normal(3, 2)),
    C("pow_neg_frac", lambda a: a ** -1.5, lambda a: a ** -1.5, positive(3)),
    C("rpow", lambda a: 2.0 ** a, lambda a: 2.0 ** a, normal(3)),
    C("neg", lambda a: -a, np.negative, normal(2, 3)),
    # ---- unary math and activations
    C("exp", F.exp, np.exp, normal(3, 4)),
    C("log", F.log, np.log, positive(3, 4)),
    C("sqrt", F.sqrt, np.sqrt, positive(2, 3)),
    C("tanh", F.tanh, np.tanh, normal(3, 4)),
    C("sigmoid", F.sigmoid, lambda a: 1 / (1 + np.exp(-a)), normal(3, 4)),
    C("sigmoid_large", F.sigmoid, lambda a: 1 / (1 + np.exp(-a)),
      const([-40.0, -5.0, 0.0, 5.0, 40.0])),
    C("relu", F.relu, lambda a: np.maximum(a, 0), away_from_zero(3, 4)),
    C("gelu_erf", F.gelu, lambda a: a * 0.5 * (1 + _erf(a / np.sqrt(2))), normal(3, 5)),
    C("gelu_erf_wide", F.gelu, lambda a: a * 0.5 * (1 + _erf(a / np.sqrt(2))),
      lambda rng: rng.uniform(-6, 6, (40,))),
    C("gelu_tanh", lambda a: F.gelu(a, approximate="tanh"),
      lambda a: 0.5 * a * (1 + np.tanh(np.sqrt(2 / np.pi) * (a + 0.044715 * a ** 3))),
      normal(3, 5)),
    # ---- selection
    C("where", lambda a, b: F.where(MASK, a, b), lambda a, b: np.where(MASK, a, b),
      normal(3, 4), normal(4)),
    C("where_scalar", lambda a: F.where(MASK, a, 0.0), lambda a: np.where(MASK, a, 0.0),
      normal(3, 4)),
    C("masked_fill", lambda a: a.masked_fill(MASK[0], -5.0),
      lambda a: np.where(MASK[0], -5.0, a), normal(3, 4)),
    # ---- reductions
    C("sum_all", lambda a: a.sum(), np.sum, normal(3, 4)),
    C("sum_axis0", lambda a: a.sum(axis=0), lambda a: a.sum(axis=0), normal(3, 4)),
    C("sum_axes_keep", lambda a: a.sum(axis=(0, 2), keepdims=True),
      lambda a: a.sum(axis=(0, 2), keepdims=True), normal(2, 3, 4)),
    C("sum_neg_axis", lambda a: a.sum(axis=-1), lambda a: a.sum(axis=-1), normal(2, 3, 4)),
    C("sum_0d", lambda a: a.sum(), np.sum, normal()),
    C("mean_all", lambda a: a.mean(), np.mean, normal(3, 4)),
    C("mean_axis_keep", lambda a: a.mean(axis=1, keepdims=True),
      lambda a: a.mean(axis=1, keepdims=True), normal(2, 3, 4)),
    C("max_all", lambda a: a.max(), np.max, distinct(3, 4)),
    C("max_axis", lambda a: a.max(axis=1), lambda a: a.max(axis=1), distinct(2, 3, 4)),
    C("max_axes_keep", lambda a: a.max(axis=(0, -1), keepdims=True),
      lambda a: a.max(axis=(0, -1), keepdims=True), distinct(2, 3, 4)),
    C("var_all", lambda a: a.var(), np.var, normal(3, 4)),
    C("var_axis_ddof1", lambda a: a.var(axis=0, ddof=1), lambda a: a.var(axis=0, ddof=1),
      normal(4, 3)),
    C("var_axis_keep", lambda a: a.var(axis=-1, keepdims=True),
      lambda a: a.var(axis=-1, keepdims=True), normal(2, 5)),
    # ---- movement
    C("reshape", lambda a: a.reshape(4, 3), lambda a: a.reshape(4, 3), normal(3, 4)),
    C("reshape_infer", lambda a: a.reshape(-1, 2), lambda a: a.reshape(-1, 2), normal(2, 3, 2)),
    C("reshape_0d", lambda a: a.reshape(1, 1), lambda a: a.reshape(1, 1), normal()),
    C("view", lambda a: a.view((6,)), lambda a: a.reshape(6), normal(2, 3)),
    C("permute", lambda a: a.permute(2, 0, 1), lambda a: a.transpose(2, 0, 1), normal(2, 3, 4)),
    C("transpose_swap", lambda a: a.transpose(1, 2), lambda a: a.swapaxes(1, 2),
      normal(2, 3, 4)),
    C("T", lambda a: a.T, lambda a: a.T, normal(2, 3, 4)),
    C("swapaxes_neg", lambda a: F.swapaxes(a, 0, -1), lambda a: a.swapaxes(0, -1),
      normal(2, 3, 4)),
    C("getitem_slice", lambda a: a[1:, ::2], lambda a: a[1:, ::2], normal(3, 5)),
    C("getitem_int", lambda a: a[1], lambda a: a[1], normal(3, 5)),
    C("getitem_neg_step", lambda a: a[::-1, 2], lambda a: a[::-1, 2], normal(4, 3)),
    C("getitem_none_ellipsis", lambda a: a[..., None, 1], lambda a: a[..., None, 1],
      normal(2, 3, 4)),
    C("getitem_int_array_repeats", lambda a: a[[0, 2, 0, 0]], lambda a: a[[0, 2, 0, 0]],
      normal(3, 4)),
    C("getitem_two_int_arrays", lambda a: a[np.array([0, 1, 1]), np.array([2, 2, 0])],
      lambda a: a[np.array([0, 1, 1]), np.array([2, 2, 0])], normal(2, 3)),
    C("getitem_bool_mask", lambda a: a[MASK], lambda a: a[MASK], normal(3, 4)),
    C("getitem_tensor_index", lambda a: a[tl.tensor([1, 1, 0])], lambda a: a[[1, 1, 0]],
      normal(2, 3)),
    C("getitem_mixed", lambda a: a[1:, [0, 0, 2]], lambda a: a[1:, [0, 0, 2]], normal(3, 4)),
    # a tuple inside the index is an integer array, as in NumPy (issue 17: repeats once counted
    # their gradient once)
    C("getitem_tuple_in_tuple", lambda a: a[:, (0, 0, 2)], lambda a: a[:, [0, 0, 2]],
      normal(3, 4)),
    C("getitem_tuple_alone", lambda a: a[((1, 1, 0),)], lambda a: a[[1, 1, 0]], normal(3, 4)),
    C("getitem_two_tuples", lambda a: a[(0, 1, 1), (2, 2, -1)],
      lambda a: a[[0, 1, 1], [2, 2, -1]], normal(2, 3)),
    C("getitem_nested_tuple", lambda a: a[((0, -1), (2, 2)), 1:],
      lambda a: a[np.array([[0, -1], [2, 2]]), 1:], normal(3, 4)),
    C("getitem_nested_list_ellipsis", lambda a: a[..., [[1, 1], [0, 1]]],
      lambda a: a[..., np.array([[1, 1], [0, 1]])], normal(2, 3)),
    C("concatenate", lambda a, b: F.concatenate([a, b], axis=1),
      lambda a, b: np.concatenate([a, b], axis=1), normal(2, 3), normal(2, 5)),
    C("concatenate_three_neg_axis", lambda a, b, c: F.concatenate([a, b, c], axis=-1),
      lambda a, b, c: np.concatenate([a, b, c], axis=-1), normal(2, 1), normal(2, 2),
      normal(2, 3)),
    C("stack", lambda a, b: F.stack([a, b], axis=1), lambda a, b: np.stack([a, b], axis=1),
      normal(2, 3), normal(2, 3)),
    C("stack_last", lambda a, b, c: F.stack([a, b, c], axis=-1),
      lambda a, b, c: np.stack([a, b, c], axis=-1), normal(4), normal(4), normal(4)),
    C("split_sections", lambda a: F.split(a, 3, axis=1)[1] * 2 + F.split(a, 3, axis=1)[2],
      lambda a: np.split(a, 3, axis=1)[1] * 2 + np.split(a, 3, axis=1)[2], normal(2, 6)),
    C("split_indices", lambda a: a.split([1, 3])[2] * a.split([1, 3])[0],
      lambda a: np.split(a, [1, 3])[2] * np.split(a, [1, 3])[0], normal(4, 2)),
    # ---- matmul: 1-D, 2-D, batched, broadcast
    C("matmul_2d", lambda a, b: a @ b, np.matmul, normal(3, 4), normal(4, 5)),
    C("matmul_vec_mat", lambda a, b: a @ b, np.matmul, normal(4), normal(4, 5)),
    C("matmul_mat_vec", lambda a, b: a @ b, np.matmul, normal(3, 4), normal(4)),
    C("matmul_vec_vec", lambda a, b: a @ b, np.matmul, normal(4), normal(4)),
    C("matmul_batched", lambda a, b: a @ b, np.matmul, normal(2, 3, 4), normal(2, 4, 5)),
    C("matmul_batch_bcast", lambda a, b: a @ b, np.matmul, normal(2, 3, 4), normal(4, 5)),
    C("matmul_batch_bcast_4d", lambda a, b: a @ b, np.matmul, normal(2, 1, 3, 4),
      normal(3, 4, 2)),
    C("matmul_vec_batched", lambda a, b: a @ b, np.matmul, normal(4), normal(2, 4, 3)),
    C("matmul_batched_vec", lambda a, b: a @ b, np.matmul, normal(2, 3, 4), normal(4)),
    # ---- fused attention: plain, causal, causal with Tk > Tq (a KV cache), masked, packed qkv
    C("attention", F.attention, _attention_ref, normal(2, 3, 4, 5), normal(2, 3, 6, 5),
      normal(2, 3, 6, 5)),
    C("attention_causal", lambda q, k, v: F.attention(q, k, v, causal=True),
      lambda q, k, v: _attention_ref(q, k, v, causal=True), normal(2, 2, 5, 3),
      normal(2, 2, 5, 3), normal(2, 2, 5, 3)),
    C("attention_causal_cache", lambda q, k, v: F.attention(q, k, v, causal=True),
      lambda q, k, v: _attention_ref(q, k, v, causal=True), normal(1, 2, 2, 3),
      normal(1, 2, 6, 3), normal(1, 2, 6, 3)),
    C("attention_mask", lambda q, k, v: F.attention(q, k, v, mask=ATT_MASK),
      lambda q, k, v: _attention_ref(q, k, v, mask=ATT_MASK), normal(2, 3, 4, 5),
      normal(2, 3, 6, 5), normal(2, 3, 6, 5)),
    C("qkv_self_attention", lambda x: F.qkv_self_attention(x, 2), lambda x: _qkv_ref(x, 2),
      normal(2, 5, 12)),
    # ---- linear (x @ w + b as one op): 2-D, batched rows, 1-D x, no bias
    C("linear", F.linear, lambda x, w, b: x @ w + b, normal(3, 4), normal(4, 5), normal(5)),
    C("linear_3d", F.linear, lambda x, w, b: x @ w + b, normal(2, 3, 4), normal(4, 5),
      normal(5)),
    C("linear_vec", F.linear, lambda x, w, b: x @ w + b, normal(4), normal(4, 2), normal(2)),
    C("linear_no_bias", F.linear, np.matmul, normal(2, 3, 4), normal(4, 5)),
    # ---- softmax family and losses
    C("softmax_last", F.softmax, lambda a: _softmax(a, -1), normal(3, 5)),
    C("softmax_axis1", lambda a: F.softmax(a, axis=1), lambda a: _softmax(a, 1), normal(2, 3, 4)),
    C("softmax_large_logits", F.softmax, lambda a: _softmax(a, -1),
      lambda rng: rng.standard_normal((3, 4)) * 1e4, tol32=1e-4),
    C("softmax_masked", lambda a: F.softmax(a.masked_fill(MASK, float("-inf"))),
      lambda a: _softmax(np.where(MASK, -np.inf, a), -1), normal(3, 4)),
    C("log_softmax_last", F.log_softmax, lambda a: _log_softmax(a, -1), normal(3, 5)),
    C("log_softmax_axis0", lambda a: F.log_softmax(a, axis=0), lambda a: _log_softmax(a, 0),
      normal(4, 3)),
    C("log_softmax_large_logits", F.log_softmax, lambda a: _log_softmax(a, -1),
      lambda rng: rng.standard_normal((3, 4)) * 1e4, tol32=1e-4),
    C("cross_entropy_mean", lambda z, t: F.cross_entropy(z, t), _cross_entropy,
      normal(6, 5), ints(5, 6)),
    C("cross_entropy_sum", lambda z, t: F.cross_entropy(z, t, reduction="sum"),
      lambda z, t: _cross_entropy(z, t, reduction="sum"), normal(4, 3), ints(3, 4)),
    C("cross_entropy_none_3d", lambda z, t: F.cross_entropy(z, t, reduction="none"),
      lambda z, t: _cross_entropy(z, t, reduction="none"), normal(2, 3, 5), ints(5, 2, 3)),
    C("cross_entropy_ignore", lambda z, t: F.cross_entropy(z, t, ignore_index=1),
      lambda z, t: _cross_entropy(z, t, ignore_index=1), normal(8, 4), ints(4, 8)),
    C("cross_entropy_smoothing", lambda z, t: F.cross_entropy(z, t, label_smoothing=0.1),
      lambda z, t: _cross_entropy(z, t, eps=0.1), normal(5, 4), ints(4, 5)),
    C("cross_entropy_smooth_ignore_none",
      lambda z, t: F.cross_entropy(z, t, ignore_index=0, label_smoothing=0.2, reduction="none"),
      lambda z, t: _cross_entropy(z, t, ignore_index=0, reduction="none", eps=0.2),
      normal(7, 3), ints(3, 7)),
    C("cross_entropy_single_row", lambda z, t: F.cross_entropy(z, t), _cross_entropy,
      normal(5), const(3)),
    C("mse_mean", F.mse_loss, lambda a, b: ((a - b) ** 2).mean(), normal(3, 4), normal(3, 4)),
    C("mse_sum", lambda a, b: F.mse_loss(a, b, reduction="sum"),
      lambda a, b: ((a - b) ** 2).sum(), normal(5), normal(5)),
    C("mse_none", lambda a, b: F.mse_loss(a, b, reduction="none"), lambda a, b: (a - b) ** 2,
      normal(2, 3), normal(2, 3)),
    # ---- normalization, embedding, dropout
    C("layer_norm", lambda x, w, b: F.layer_norm(x, 5, w, b), lambda x, w, b:
      _layer_norm(x, w, b, 1), normal(2, 3, 5), normal(5), normal(5), tol32=1e-4),
    C("layer_norm_no_affine", lambda x: F.layer_norm(x, (5,)),
      lambda x: _layer_norm(x, 1.0, 0.0, 1), normal(4, 5), tol32=1e-4),
    C("layer_norm_two_axes", lambda x, w, b: F.layer_norm(x, (3, 4), w, b),
      lambda x, w, b: _layer_norm(x, w, b, 2), normal(2, 3, 4), normal(3, 4), normal(3, 4),
      tol32=1e-4),
    C("embedding", lambda i, w: F.embedding(i, w), lambda i, w: w[i], ints(5, 3, 4),
      normal(5, 3)),
    C("embedding_repeats", lambda i, w: F.embedding(i, w), lambda i, w: w[i],
      const([[1, 1, 1], [0, 1, 4]]), normal(6, 2)),
    C("dropout", lambda x: F.dropout(x, 0.3, generator=np.random.default_rng(7)),
      lambda x: x * (np.random.default_rng(7).random(x.shape) >= 0.3) / 0.7, normal(5, 6)),
    C("dropout_eval", lambda x: F.dropout(x, 0.3, training=False), lambda x: x, normal(5)),
    # ---- VAE losses: binary cross-entropy on logits (with soft targets), Gaussian KL
    C("bce_logits", lambda z, y: F.binary_cross_entropy_with_logits(z, y),
      lambda z, y: np.mean(-(y * np.log(_sig(z)) + (1 - y) * np.log(1 - _sig(z)))),
      normal(3, 4), lambda rng: rng.uniform(0, 1, (3, 4))),
    C("bce_logits_sum_large", lambda z, y: F.binary_cross_entropy_with_logits(z * 20, y, "sum"),
      lambda z, y: np.sum(np.maximum(20 * z, 0) - 20 * z * y + np.log1p(np.exp(-np.abs(20 * z)))),
      normal(5), lambda rng: (rng.uniform(0, 1, 5) > 0.5).astype(float)),
    C("bce_logits_none", lambda z, y: F.binary_cross_entropy_with_logits(z, y, "none"),
      lambda z, y: -(y * np.log(_sig(z)) + (1 - y) * np.log(1 - _sig(z))),
      normal(2, 3), lambda rng: rng.uniform(0, 1, (2, 3))),
    C("gaussian_kl", lambda m, lv: F.gaussian_kl(m, lv),
      lambda m, lv: np.mean(0.5 * (m ** 2 + np.exp(lv) - 1 - lv).sum(-1)),
      normal(4, 3), normal(4, 3)),
    C("gaussian_kl_none", lambda m, lv: F.gaussian_kl(m, lv, "none"),
      lambda m, lv: 0.5 * (m ** 2 + np.exp(lv) - 1 - lv).sum(-1), normal(2, 3, 5), normal(2, 3, 5)),
    C("gaussian_kl_sum", lambda m, lv: F.gaussian_kl(m, lv, "sum"),
      lambda m, lv: np.sum(0.5 * (m ** 2 + np.exp(lv) - 1 - lv)), normal(3, 2), normal(3, 2)),
    # ---- recurrent: one LSTM step, and a sequence with backprop through time
    C("lstm_cell", _lstm_cell_call, _lstm_cell_ref, normal(3, 4), normal(3, 5), normal(3, 5),
      normal(4, 20), normal(5, 20), normal(20)),
    C("lstm", _lstm_call, _lstm_out, normal(2, 6, 3), normal(2, 4), normal(2, 4),
      normal(3, 16), normal(4, 16), normal(16)),
    # ---- composites that exercise several ops in one graph
    C("attention_head", lambda q, k, v: F.softmax(q @ k.transpose(-2, -1) / 2.0) @ v,
      lambda q, k, v: _softmax(q @ k.swapaxes(-2, -1) / 2.0, -1) @ v,
      normal(2, 3, 4), normal(2, 3, 4), normal(2, 3, 4)),
    C("mlp_tanh_ce", lambda x, w, t: F.cross_entropy((x @ w).tanh(), t),
      lambda x, w, t: _cross_entropy(np.tanh(x @ w), t), normal(4, 3), normal(3, 5),
      ints(5, 4)),
]


CASES += extra_cases()          # the families in tests/cases_*.py


@pytest.fixture(params=["numpy", "numba"], autouse=True)
def kernel_impl(request):
    """Every case runs with the NumPy reference kernels and with the Numba kernels (where a
    kernel exists for the op: softmax, cross-entropy, layer norm, GELU, matmul)."""
    kernels.set_impl(request.param)
    return request.param


def _tensors(arrays, dtype):
    """Float arrays become tensors of ``dtype`` requiring grad; integer arrays stay ints."""
    out = []
    for a in arrays:
        if a.dtype.kind == "f":
            out.append(tl.tensor(a.astype(dtype), requires_grad=True))
        else:
            out.append(tl.tensor(a))
    return out


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_forward_float64_matches_reference(case):
    arrays = case.arrays()
    out = case.fn(*_tensors(arrays, np.float64))
    expected = np.asarray(case.ref(*arrays), dtype=np.float64)
    assert out.dtype == np.float64
    assert out.shape == expected.shape
    np.testing.assert_allclose(out.numpy(), expected, rtol=case.tol64, atol=case.tol64)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_forward_float32_matches_reference(case):
    arrays = case.arrays()
    out = case.fn(*_tensors(arrays, np.float32))
    # the reference sees the same float32-rounded inputs, computed in float64
    rounded = [a.astype(np.float32).astype(np.float64) if a.dtype.kind == "f" else a
               for a in arrays]
    expected = np.asarray(case.ref(*rounded), dtype=np.float64)
    assert out.dtype == np.float32, f"{case.name} promoted float32 input to {out.dtype}"
    scale = max(1.0, float(np.abs(expected[np.isfinite(expected)]).max(initial=0.0)))
    np.testing.assert_allclose(out.numpy(), expected, rtol=case.tol32, atol=case.tol32 * scale)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_backward_gradcheck_float64(case):
    arrays = case.arrays()
    assert tl.gradcheck(case.fn, _tensors(arrays, np.float64))


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_backward_float32_grads_match_float64(case):
    arrays = case.arrays()
    grads = {}
    for dtype in (np.float32, np.float64):
        xs = _tensors(arrays, dtype)
        out = case.fn(*xs)
        v = np.random.default_rng(5).standard_normal(out.shape) + 0.5
        out.backward(tl.tensor(v.astype(dtype)))
        grads[dtype] = [x.grad for x in xs if x.requires_grad]
    for g32, g64 in zip(grads[np.float32], grads[np.float64]):
        assert g32.dtype == np.float32
        g32, g64 = tl.tensor(g32).numpy(), tl.tensor(g64).numpy()
        scale = max(1.0, float(np.abs(g64).max()))
        np.testing.assert_allclose(g32, g64, rtol=2e-3, atol=2e-4 * scale)


def test_every_function_class_is_covered_by_a_case():
    """A new op must come with a case here: its Function class must run in some case."""
    from tinyllm.autograd.function import Function

    seen = set()
    original = Function.apply.__func__

    def spy(cls, *args, **kwargs):
        seen.add(cls.__name__)
        return original(cls, *args, **kwargs)

    Function.apply = classmethod(spy)
    try:
        for case in CASES:
            case.fn(*_tensors(case.arrays(), np.float64))
    finally:
        Function.apply = classmethod(original)
    ops = {cls.__name__ for cls in _all_subclasses(Function) if cls.__module__.startswith(
        "tinyllm.ops")}
    missing = ops - seen - {"Cast", "ToDevice"}     # tested in test_tensor / test_backend
    assert not missing, f"ops without a test case: {sorted(missing)}"


def _all_subclasses(cls):
    out, stack = set(), [cls]
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub not in out:
                out.add(sub)
                stack.append(sub)
    return out


# ----------------------------------------------------------------------------------------------
# getitem: the gradient of every index form against np.add.at (issue 17)

GETITEM_INDICES = {
    "tuple_in_tuple": ((slice(None), (0, 0, 2)), (slice(None), np.array([0, 0, 2]))),
    "tuple_alone": (((1, 1, 0),), (np.array([1, 1, 0]),)),
    "tuple_of_tuples": (((1, 1, 0), (2, 2, 0)), (np.array([1, 1, 0]), np.array([2, 2, 0]))),
    "nested_tuple": ((((0, 2), (2, 2)),), (np.array([[0, 2], [2, 2]]),)),
    "list": ([2, 0, 2, 2], np.array([2, 0, 2, 2])),
    "nested_list": ([[0, 0], [1, 0]], np.array([[0, 0], [1, 0]])),
    "int_array": (np.array([1, 1, 1]), np.array([1, 1, 1])),
    "tensor": (tl.tensor([0, 0]), np.array([0, 0])),
    "negative": ((slice(None), (-1, -1, 3)), (slice(None), np.array([-1, -1, 3]))),
    "slice_then_list": ((slice(1, None), [0, 0, -4]), (slice(1, None), np.array([0, 0, -4]))),
    "int_and_tuple": ((1, (2, 2, 0)), (1, np.array([2, 2, 0]))),
    "ellipsis_none": ((Ellipsis, None, (3, 3)), (Ellipsis, None, np.array([3, 3]))),
    "bool_and_tuple": ((np.array([True, False, True]), (0, 0)),
                       (np.array([True, False, True]), np.array([0, 0]))),
    "empty_tuple": ((slice(None), ()), (slice(None), np.array([], dtype=np.intp))),
    "basic_multi_axis": ((0, 1), (0, 1)),               # a top-level tuple: x[0, 1], no arrays
}


@pytest.mark.parametrize("name", list(GETITEM_INDICES))
def test_getitem_gradient_matches_np_add_at(name):
    index, np_index = GETITEM_INDICES[name]
    data = np.random.default_rng(0).standard_normal((3, 4))
    x = tl.tensor(data, requires_grad=True)
    y = x[index]
    np.testing.assert_array_equal(y.numpy(), data[np_index])
    dout = np.random.default_rng(1).standard_normal(y.shape)
    y.backward(tl.tensor(dout))
    expected = np.zeros_like(data)
    np.add.at(expected, np_index, dout)               # every read passes its gradient back
    np.testing.assert_allclose(x.grad, expected, rtol=1e-15, atol=0)
    x64 = tl.tensor(data, requires_grad=True)
    assert tl.gradcheck(lambda t: t[index], [x64])


def test_getitem_refuses_a_ragged_sequence():
    x = tl.tensor(np.zeros((3, 4)))
    with pytest.raises(IndexError, match=r"getitem: .*\(tensor of shape \(3, 4\)\)"):
        x[((0, 1), (2,)),]
