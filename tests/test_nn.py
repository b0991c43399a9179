"""nn: Module bookkeeping, state_dict, freezing, the layers, and float64 gradchecks of each."""
import numpy as np
import pytest

import tinyllm as tl
from tinyllm import backend, nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.ln = nn.LayerNorm(6)
        self.register_buffer("mask", np.ones(6), persistent=False)
        self.register_buffer("count", np.zeros(1))

    def forward(self, x):
        return self.ln(self.fc(x)).tanh() * self.mask


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(10, 4)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(6, 10, bias=False)
        self.drop = nn.Dropout(0.5)

    def forward(self, idx):
        x = self.wte(idx)
        x = self.blocks[1](self.drop(self.blocks[0](x)) @ tl.tensor(np.eye(6, 4, dtype=x.dtype)))
        return self.head(x)


def _np(a):
    return backend.asnumpy(a)


def test_registration_names_and_order():
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["wte.weight",
                     "blocks.0.fc.weight", "blocks.0.fc.bias", "blocks.0.ln.weight",
                     "blocks.0.ln.bias",
                     "blocks.1.fc.weight", "blocks.1.fc.bias", "blocks.1.ln.weight",
                     "blocks.1.ln.bias", "head.weight"]
    assert [n for n, _ in net.named_children()] == ["wte", "blocks", "head", "drop"]
    assert [n for n, _ in net.named_modules()][:4] == ["", "wte", "blocks", "blocks.0"]
    assert net.num_parameters() == 10 * 4 + 2 * (4 * 6 + 6 + 6 + 6) + 6 * 10
    assert net.blocks[0].fc.weight.shape == (4, 6)          # (in, out): y = x @ W + b
    assert [n for n, _ in net.named_buffers()] == ["blocks.0.mask", "blocks.0.count",
                                                   "blocks.1.mask", "blocks.1.count"]


def test_tied_parameter_counted_once_but_saved_under_both_names():
    net = Net()
    net.head.weight = nn.Parameter(tl.randn(6, 10))
    net.extra = nn.Linear(6, 10, bias=False)
    net.extra.weight = net.head.weight                       # tie
    params = list(net.parameters())
    assert sum(p is net.head.weight for p in params) == 1
    sd = net.state_dict()
    assert "head.weight" in sd and "extra.weight" in sd
    assert sd["head.weight"] is net.head.weight or tl.backend.get_array_module(
        net.head.weight.data).shares_memory(sd["head.weight"].data, net.head.weight.data)


def test_state_dict_round_trip_and_persistence():
    a, b = Net(), Net()
    sd = a.state_dict()
    assert "blocks.0.count" in sd and "blocks.0.mask" not in sd    # non-persistent buffer
    b.load_state_dict(sd)
    for (n1, p1), (n2, p2) in zip(a.named_parameters(), b.named_parameters()):
        assert n1 == n2 and np.array_equal(_np(p1.data), _np(p2.data))
    b.load_state_dict({k: _np(v.data).astype(np.float64) for k, v in sd.items()})   # arrays
    assert b.head.weight.dtype == np.float32                 # cast to the module's dtype


def test_load_state_dict_errors_name_every_problem_and_copy_nothing():
    net = Net()
    sd = net.state_dict()
    before = _np(net.head.weight.data).copy()
    bad = dict(sd)
    del bad["blocks.1.fc.bias"]
    bad["head.weight"] = np.zeros((7, 10))
    bad["lm_head.weight"] = np.zeros((6, 10))
    with pytest.raises(RuntimeError) as info:
        net.load_state_dict(bad)
    msg = str(info.value)
    assert "missing keys: blocks.1.fc.bias" in msg
    assert "unexpected keys: lm_head.weight" in msg
    assert "head.weight: checkpoint (7, 10), model (6, 10)" in msg
    assert np.array_equal(_np(net.head.weight.data), before)
    del bad["head.weight"]
    missing, unexpected = net.load_state_dict(bad, strict=False)
    assert missing == ["blocks.1.fc.bias", "head.weight"] and unexpected == ["lm_head.weight"]


def test_train_eval_propagates_to_dropout():
    net = Net()
    tl.manual_seed(0)
    idx = np.array([[1, 2, 3, 4]])
    net.eval()
    assert not net.drop.training and not net.blocks[0].training
    y1, y2 = net(idx).numpy(), net(idx).numpy()
    np.testing.assert_array_equal(y1, y2)                    # no dropout in eval
    net.train()
    assert net.drop.training
    assert not np.array_equal(net(idx).numpy(), y1)


def test_freezing_the_base_trains_only_the_new_head():
    net = Net()
    net.requires_grad_(False)
    net.head = nn.Linear(6, 3)                               # new head, trainable
    net.eval()
    loss = tl.cross_entropy(net(np.array([[1, 2]])).reshape(-1, 3), np.array([0, 2]))
    loss.backward()
    assert net.head.weight.grad is not None and net.head.bias.grad is not None
    assert all(p.grad is None for n, p in net.named_parameters() if not n.startswith("head"))
    assert net.num_parameters(trainable_only=True) == 6 * 3 + 3


def test_zero_grad_and_to_dtype_keep_parameter_identity():
    net = Net()
    w = net.head.weight
    net.eval()
    net(np.array([[1]])).sum().backward()
    assert w.grad is not None
    net.zero_grad()
    assert w.grad is None
    net.double()
    assert net.head.weight is w and w.dtype == np.float64
    assert all(p.dtype == np.float64 for p in net.parameters())
    assert net.blocks[0].count.dtype == np.float64


def test_setattr_before_init_is_a_clear_error():
    class Bad(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(2, 2)

    with pytest.raises(AttributeError, match=r"call super\(\)\.__init__\(\) first in Bad"):
        Bad()


def test_containers():
    seq = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert len(seq) == 3 and isinstance(seq[1], nn.ReLU)
    assert seq(tl.randn(5, 3)).shape == (5, 2)
    d = nn.ModuleDict({"a": nn.Linear(2, 2)})
    d["b"] = nn.Tanh()
    assert list(d.keys()) == ["a", "b"] and "a" in d
    with pytest.raises(TypeError, match="ModuleList holds Modules"):
        nn.ModuleList([3])
    assert "Linear(in_features=3, out_features=4, bias=True)" in repr(seq)


# ----------------------------------------------------------------------------------------------
# layers

def test_linear_is_x_at_w_plus_b():
    lin = nn.Linear(3, 2)
    x = tl.randn(4, 3)
    expected = x.numpy() @ lin.weight.numpy() + lin.bias.numpy()
    np.testing.assert_allclose(lin(x).numpy(), expected, rtol=1e-6)
    bound = 1 / np.sqrt(3)
    assert np.abs(lin.weight.numpy()).max() <= bound             # PyTorch's U(-1/sqrt(in), ..)
    assert nn.Linear(3, 2, bias=False).bias is None
    with pytest.raises(ValueError, match=r"Linear: input's last axis is 5, expected "
                                         r"in_features=3"):
        lin(tl.randn(2, 5))


def test_seeded_init_is_reproducible():
    tl.manual_seed(7)
    a = Net()
    tl.manual_seed(7)
    b = Net()
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy())


def test_embedding_padding_idx_gets_no_gradient():
    emb = nn.Embedding(5, 3, padding_idx=0)
    np.testing.assert_array_equal(emb.weight.numpy()[0], np.zeros(3))
    emb(np.array([[0, 1, 0, 4]])).sum().backward()
    g = _np(emb.weight.grad)
    np.testing.assert_array_equal(g[0], np.zeros(3))
    np.testing.assert_array_equal(g[1], np.ones(3))
    with pytest.raises(ValueError, match="padding_idx 5 out of range"):
        nn.Embedding(5, 3, padding_idx=5)


@pytest.mark.parametrize("make,inputs", [
    (lambda: nn.Linear(3, 4), lambda: (tl.randn(2, 3, dtype=np.float64, requires_grad=True),)),
    (lambda: nn.Linear(3, 4, bias=False), lambda: (tl.randn(5, 3, dtype=np.float64),)),
    (lambda: nn.Embedding(6, 3), lambda: (np.array([[0, 5, 5], [2, 0, 1]]),)),
    (lambda: nn.LayerNorm(4), lambda: (tl.randn(3, 4, dtype=np.float64, requires_grad=True),)),
    (lambda: nn.LayerNorm((2, 3)), lambda: (tl.randn(4, 2, 3, dtype=np.float64),)),
    (lambda: nn.Sequential(nn.Linear(3, 5), nn.GELU("tanh"), nn.LayerNorm(5), nn.Linear(5, 2)),
     lambda: (tl.randn(4, 3, dtype=np.float64, requires_grad=True),)),
])
def test_module_gradcheck_float64(make, inputs):
    tl.manual_seed(0)
    module = make().double()
    for p in module.parameters():                    # move LayerNorm off its trivial init
        p.data[...] = p.data + 0.1 * tl.tensor(
            np.random.default_rng(1).standard_normal(p.shape), dtype=p.dtype).data
    assert tl.gradcheck_module(module, *inputs())


def test_whole_net_gradcheck_directional_and_dropout_seeded():
    tl.manual_seed(0)
    net = Net().double()
    idx = np.array([[1, 2, 3], [4, 5, 9]])

    class Seeded(nn.Module):              # dropout active, same mask on every evaluation
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, idx):
            tl.manual_seed(123)
            return self.inner(idx)

    assert tl.gradcheck_module(Seeded(net), idx, mode="directional")
    assert tl.gradcheck_module(net.eval(), idx)


def test_gradcheck_module_names_the_wrong_parameter_and_needs_float64():
    class WrongScale(tl.Function):
        def forward(self, x):
            return 2 * x

        def backward(self, dout):
            return 3 * dout

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.good = nn.Linear(2, 2)
            self.bad = nn.Parameter(np.ones(2))

        def forward(self, x):
            return self.good(x) * WrongScale.apply(self.bad)

    m = M()
    with pytest.raises(TypeError, match="call module.double()"):
        tl.gradcheck_module(m, tl.randn(3, 2))
    m.double()
    with pytest.raises(tl.GradcheckError, match="parameter 'bad'"):
        tl.gradcheck_module(m, tl.randn(3, 2, dtype=np.float64))


def test_dropout_module():
    d = nn.Dropout(0.25)
    x = tl.ones(1000)
    assert d.eval()(x) is x
    y = d.train()(x).numpy()
    assert set(np.unique(y).tolist()) <= {0.0, np.float32(1 / 0.75)}
    with pytest.raises(ValueError, match="Dropout: probability"):
        nn.Dropout(2.0)


def test_layers_match_torch_when_available():
    torch = pytest.importorskip("torch", reason="PyTorch not installed (optional oracle)")
    tl.manual_seed(0)
    lin, ln = nn.Linear(3, 4).double(), nn.LayerNorm(4).double()
    x = np.random.default_rng(0).standard_normal((5, 3))
    tx = tl.tensor(x, requires_grad=True)
    y = ln(lin(tx)).tanh().sum()
    y.backward()
    px = torch.tensor(x, requires_grad=True)
    pw = torch.tensor(lin.weight.numpy().T.copy(), requires_grad=True)    # torch stores (out, in)
    pb = torch.tensor(lin.bias.numpy(), requires_grad=True)
    py = torch.nn.functional.layer_norm(torch.nn.functional.linear(px, pw, pb), (4,)).tanh().sum()
    py.backward()
    assert y.item() == pytest.approx(py.item(), rel=1e-12)
    np.testing.assert_allclose(_np(tx.grad), px.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(_np(lin.weight.grad), pw.grad.numpy().T, rtol=1e-10)


def test_linear_module_is_one_fused_op_equal_to_matmul_plus_add():
    """nn.Linear records ONE Linear node (x @ W + b fused) with the numbers of MatMul + Add."""
    tl.manual_seed(0)
    lin = nn.Linear(4, 3, dtype=np.float64)
    x = tl.tensor(np.random.default_rng(0).standard_normal((2, 5, 4)), requires_grad=True)
    y = lin(x)
    assert type(y._ctx).__name__ == "Linear"
    assert {type(p._ctx).__name__ if p._ctx else None for p in y._ctx.parents} == {None}
    y.sum().backward()
    grads = [_np(x.grad).copy(), _np(lin.weight.grad).copy(), _np(lin.bias.grad).copy()]
    for t in (x, lin.weight, lin.bias):
        t.grad = None
    (x @ lin.weight + lin.bias).sum().backward()
    for g, t in zip(grads, (x, lin.weight, lin.bias)):
        np.testing.assert_allclose(g, _np(t.grad), rtol=1e-13, atol=1e-13)
