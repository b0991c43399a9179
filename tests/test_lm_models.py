"""The LSTM layers, the LSTM language model and the Kneser-Ney n-gram model (issue 6)."""
import itertools
import math
from collections import Counter, defaultdict

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import nn
from tinyllm.generate import generate
from tinyllm.models import KneserNeyLM, LSTMLM, LSTMLMConfig
from tinyllm.optim import AdamW
from tests.conftest import t64


# ----------------------------------------------------------------------------------------------
# nn.LSTM / nn.LSTMCell

class _Probe(tl.nn.Module):
    """A scalar of a module's outputs, so gradcheck_module can check every parameter."""

    def __init__(self, inner, fn):
        super().__init__()
        self.inner, self.fn = inner, fn

    def forward(self, *args):
        return self.fn(self.inner, *args)


def test_lstm_module_gradcheck_two_layers_with_state():
    tl.manual_seed(0)
    lstm = nn.LSTM(3, 4, num_layers=2, dtype=np.float64)
    rng = np.random.default_rng(1)
    x = t64(rng.standard_normal((2, 5, 3)))
    h0, c0 = t64(rng.standard_normal((2, 2, 4))), t64(rng.standard_normal((2, 2, 4)))

    def loss(m, x, h0, c0):
        out, (h, c) = m(x, (h0, c0))
        return out.sum() + (h * c).sum()

    # every weight and bias of both layers, and x, h0, c0
    assert tl.gradcheck_module(_Probe(lstm, loss), x, h0, c0)
    out, (h, c) = lstm(x, (h0, c0))
    assert out.shape == (2, 5, 4) and h.shape == c.shape == (2, 2, 4)
    np.testing.assert_array_equal(out.numpy()[:, -1], h.numpy()[-1])


def test_lstm_lm_gradcheck():
    tl.manual_seed(0)
    model = LSTMLM(LSTMLMConfig(vocab_size=6, n_embd=4, n_hidden=5, n_layer=2)).double()
    idx = np.random.default_rng(0).integers(0, 6, (2, 4))
    assert tl.gradcheck_module(_Probe(model, lambda m: m(idx[:, :-1], idx[:, 1:])[1]),
                               mode="directional")
    tied = LSTMLM(LSTMLMConfig(vocab_size=6, n_embd=5, n_hidden=5, tie_weights=True)).double()
    assert tl.gradcheck_module(_Probe(tied, lambda m: m(idx[:, :-1], idx[:, 1:])[1]),
                               mode="directional")


def test_lstm_cell_matches_one_step_of_lstm():
    tl.manual_seed(0)
    cell = nn.LSTMCell(3, 4, dtype=np.float64)
    seq = nn.LSTM(3, 4, dtype=np.float64)
    seq.weight_ih_l0.data[...] = cell.weight_ih.data
    seq.weight_hh_l0.data[...] = cell.weight_hh.data
    seq.bias_l0.data[...] = cell.bias.data
    x = np.random.default_rng(0).standard_normal((2, 3, 3))
    h = c = None
    for t in range(3):
        h, c = cell(tl.tensor(x[:, t]), None if h is None else (h, c))
    out, (hn, cn) = seq(tl.tensor(x))
    np.testing.assert_allclose(h.numpy(), hn.numpy()[0], atol=1e-14)
    np.testing.assert_allclose(c.numpy(), cn.numpy()[0], atol=1e-14)


def test_lstm_errors_name_the_op_and_shapes():
    lstm = nn.LSTM(3, 4)
    with pytest.raises(ValueError, match=r"LSTM: expected input \(B, T, 3\), got \(2, 5, 2\)"):
        lstm(tl.zeros(2, 5, 2))
    with pytest.raises(ValueError, match=r"h0 and c0 of shape \(num_layers, B, H\) = \(1, 2, 4\)"):
        lstm(tl.zeros(2, 5, 3), (tl.zeros(2, 4), tl.zeros(2, 4)))
    with pytest.raises(ValueError, match=r"lstm: expected x of shape \(B, T, I\) with T >= 1"):
        tl.functional.lstm(tl.zeros(2, 0, 3), tl.zeros(2, 4), tl.zeros(2, 4), tl.zeros(3, 16),
                           tl.zeros(4, 16), tl.zeros(16))
    with pytest.raises(TypeError, match=r"lstm_cell: x, h, c, w_ih, w_hh, b must share one "
                                        r"floating dtype, got float32, float32, float32, float32, "
                                        r"float64, float32"):
        tl.functional.lstm_cell(tl.zeros(2, 3), tl.zeros(2, 4), tl.zeros(2, 4), tl.zeros(3, 16),
                                tl.zeros(4, 16, dtype=np.float64), tl.zeros(16))


def test_lstm_against_pytorch():
    torch = pytest.importorskip("torch", reason="PyTorch not installed (optional test oracle)")
    tl.manual_seed(0)
    ours = nn.LSTM(3, 5, num_layers=2, dtype=np.float64)
    ref = torch.nn.LSTM(3, 5, num_layers=2, batch_first=True).double()
    with torch.no_grad():
        for k in range(2):
            getattr(ref, f"weight_ih_l{k}").copy_(torch.tensor(
                getattr(ours, f"weight_ih_l{k}").numpy().T))
            getattr(ref, f"weight_hh_l{k}").copy_(torch.tensor(
                getattr(ours, f"weight_hh_l{k}").numpy().T))
            getattr(ref, f"bias_ih_l{k}").copy_(torch.tensor(getattr(ours, f"bias_l{k}").numpy()))
            getattr(ref, f"bias_hh_l{k}").zero_()
    x = np.random.default_rng(2).standard_normal((4, 7, 3))
    v = np.random.default_rng(3).standard_normal((4, 7, 5))
    out, (h, c) = ours(tl.tensor(x))
    (out * tl.tensor(v)).sum().backward()
    xt = torch.tensor(x)
    out_t, (h_t, c_t) = ref(xt)
    (out_t * torch.tensor(v)).sum().backward()
    np.testing.assert_allclose(out.numpy(), out_t.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(c.numpy(), c_t.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(ours.weight_hh_l0.grad, ref.weight_hh_l0.grad.numpy().T,
                               atol=1e-12)
    np.testing.assert_allclose(ours.bias_l1.grad, ref.bias_ih_l1.grad.numpy(), atol=1e-12)


# ----------------------------------------------------------------------------------------------
# LSTM language model

def test_lstm_lm_learns_and_cached_decoding_equals_recomputing():
    tl.manual_seed(0)
    model = LSTMLM(LSTMLMConfig(vocab_size=5, n_embd=8, n_hidden=16, n_layer=2))
    opt = AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    seq = np.array([[0, 1, 2, 3, 4] * 4])                     # a cycle to memorize
    losses = []
    for _ in range(60):
        _, loss = model(seq[:, :-1], seq[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 1.4 and losses[-1] < 0.05          # from ~log 5 to memorized
    prompt = np.array([[2, 3]])
    cached = generate(model, prompt, 8, greedy=True)
    recomputed = generate(model, prompt, 8, greedy=True, use_cache=False)
    np.testing.assert_array_equal(cached, recomputed)
    np.testing.assert_array_equal(cached[0, 2:], [4, 0, 1, 2, 3, 4, 0, 1])
    # logits with a cache, fed one token at a time, equal one pass over the sequence
    model.eval()
    full = model(seq[:, :6]).numpy()
    cache = model.new_cache()
    steps = [model(seq[:, t:t + 1], cache=cache).numpy()[:, 0] for t in range(6)]
    np.testing.assert_allclose(np.stack(steps, axis=1), full, atol=1e-6)


def test_lstm_lm_tied_weights_need_equal_widths():
    with pytest.raises(ValueError, match="tie_weights needs n_embd == n_hidden"):
        LSTMLMConfig(n_embd=8, n_hidden=16, tie_weights=True)
    model = LSTMLM(LSTMLMConfig(vocab_size=7, n_embd=8, n_hidden=8, tie_weights=True))
    assert model.lm_head is None
    assert model(np.zeros((2, 3), np.int64)).shape == (2, 3, 7)


# ----------------------------------------------------------------------------------------------
# Kneser-Ney n-gram model

def _kn_reference(train, order, V):
    """Interpolated Kneser-Ney written from the formulas with dictionaries: p(w | history)."""
    raw = [Counter(tuple(train[i:i + k]) for i in range(len(train) - k + 1))
           for k in range(order + 1)]
    counts = {}
    for k in range(1, order + 1):
        if k == order:
            counts[k] = dict(raw[k])
        else:
            cont = Counter(g[1:] for g in raw[k + 1])           # distinct left extensions
            counts[k] = dict(cont)
    disc = {}
    for k, c in counts.items():
        n1 = sum(v == 1 for v in c.values())
        n2 = sum(v == 2 for v in c.values())
        disc[k] = n1 / (n1 + 2 * n2) if n1 and n2 else 0.75
    hist_total, hist_types = defaultdict(float), defaultdict(float)
    for c in counts.values():
        for g, v in c.items():
            hist_total[g[:-1]] += v
            hist_types[g[:-1]] += 1

    def p(w, hist):
        c1 = counts[1]
        total = sum(c1.values())
        prob = (max(c1.get((w,), 0) - disc[1], 0) + disc[1] * len(c1) / V) / total
        for k in range(2, min(order, len(hist) + 1) + 1):
            h = tuple(hist[len(hist) - (k - 1):])
            if hist_total.get(h, 0) == 0 or k not in counts:
                continue
            c = counts[k].get(h + (w,), 0)
            prob = (max(c - disc[k], 0) + disc[k] * hist_types[h] * prob) / hist_total[h]
        return prob
    return p


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_kneser_ney_matches_a_dictionary_reference(order):
    rng = np.random.default_rng(order)
    V = 6
    train = list(rng.choice(V, 300, p=[0.4, 0.2, 0.15, 0.1, 0.1, 0.05]))
    model = KneserNeyLM(order, vocab_size=V).fit(np.array(train))
    ref = _kn_reference(train, order, V)
    for hist in ([], [0], [3, 5], [1, 2, 0], [5, 5, 5, 5], list(train[:7])):
        want = np.array([ref(w, hist) for w in range(V)])
        got = model.probs(hist)
        np.testing.assert_allclose(got, want, rtol=1e-12)
        assert abs(got.sum() - 1) < 1e-12 and (got > 0).all()
    # loss over windows: the mean of -log p(target | the window's history)
    x = np.array([train[10:18], train[40:48]])
    y = np.array([train[11:19], train[41:49]])
    want = -np.mean([math.log(ref(y[m, j], list(x[m, :j + 1]))) for m, j in
                     itertools.product(range(2), range(8))])
    assert model.loss(x, y) == pytest.approx(want, rel=1e-12)


def test_kneser_ney_orders_on_a_memorizable_corpus_and_generation():
    text = [0, 1, 2, 3, 1, 2, 4, 0, 2, 1, 3] * 30                # period 11, ambiguous bigrams
    losses = {}
    for order in (1, 2, 3, 5):
        model = KneserNeyLM(order, vocab_size=5).fit(np.array(text))
        x = np.array([text[0:20]])
        y = np.array([text[1:21]])
        losses[order] = model.loss(x, y)
    assert losses[1] > losses[2] > losses[3] > losses[5]
    assert losses[5] < 0.2                                        # nearly deterministic
    model = KneserNeyLM(5, vocab_size=5).fit(np.array(text))
    out = model.generate(text[:4], 11, np.random.default_rng(0), temperature=0.05)
    assert out[4:] == text[4:15]


def test_kneser_ney_errors():
    with pytest.raises(ValueError, match="order must be >= 1"):
        KneserNeyLM(0)
    with pytest.raises(RuntimeError, match=r"KneserNeyLM.loss: call fit\(ids\) first"):
        KneserNeyLM(2).loss(np.zeros((1, 2), int), np.zeros((1, 2), int))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 3\)"):
        KneserNeyLM(2, vocab_size=3).fit(np.array([0, 1, 5]))
    with pytest.raises(ValueError, match="does not fit the int64 n-gram keys"):
        KneserNeyLM(8, vocab_size=50_000).fit(np.arange(20))
    model = KneserNeyLM(2, vocab_size=3).fit(np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"expected x and y of one shape \(M, T\)"):
        model.loss(np.zeros((1, 3), int), np.zeros((1, 2), int))
