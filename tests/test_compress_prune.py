"""tinyllm.compress.prune: exact sparsity, global vs per-layer ranking, structured heads and
hidden units, masks that AdamW (with weight decay) cannot undo, state_dict round trips, and the
masked Linear's backward against finite differences."""
import numpy as np
import pytest

import tinyllm as tl
from tinyllm import compress
from tinyllm.compress import MaskedLinear, PrunedLinear
from tinyllm.models.gpt import GPT, GPTConfig
from tinyllm.models.llama import Llama, LlamaConfig
from tinyllm.nn import Linear, Module

CFG = dict(block_size=8, vocab_size=40, n_layer=2, n_head=4, n_embd=32)


def _gpt(seed=0, dtype=None):
    tl.manual_seed(seed)
    model = GPT(GPTConfig(**CFG))
    return model.to(dtype) if dtype is not None else model


def _idx(seed=0, B=2, T=8):
    return np.random.default_rng(seed).integers(0, CFG["vocab_size"], (B, T))


class TwoScales(Module):
    """Two Linears whose weights differ in scale: |w| in [0.5, 1] and in [0.001, 0.005]."""

    def __init__(self):
        super().__init__()
        self.big, self.small = Linear(16, 16), Linear(16, 16)
        rng = np.random.default_rng(0)
        sign = rng.choice([-1.0, 1.0], (2, 16, 16))
        self.big.weight.data[...] = sign[0] * rng.uniform(0.5, 1.0, (16, 16))
        self.small.weight.data[...] = sign[1] * rng.uniform(0.001, 0.005, (16, 16))

    def forward(self, x):
        return self.small(self.big(x))


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_exact_sparsity(scope, sparsity):
    model = compress.prune(_gpt(), sparsity, scope=scope)
    report = compress.sparsity_report(model)
    assert report["zeros"] == (round(sparsity * report["total"]) if scope == "global" else
                               sum(round(sparsity * r["total"])
                                   for r in report["layers"].values()))
    if scope == "layer":
        for r in report["layers"].values():
            assert r["zeros"] == round(sparsity * r["total"])
    assert len(report["layers"]) == 4 * CFG["n_layer"]          # c_attn, c_proj, c_fc, c_proj


def test_embeddings_norms_and_biases_are_not_pruned():
    model = _gpt()
    before = {k: v.data.copy() for k, v in model.state_dict().items()}
    compress.prune(model, 0.9)
    for k, v in model.state_dict().items():
        if not k.endswith(("weight_orig", "weight_mask")):
            np.testing.assert_array_equal(v.data, before[k])
    assert type(model.lm_head).__name__ == "TiedLMHead"


def test_global_and_layer_scopes_differ_with_weight_scales():
    g = compress.sparsity_report(compress.prune(TwoScales(), 0.5, scope="global"))
    per_layer = compress.sparsity_report(compress.prune(TwoScales(), 0.5, scope="layer"))
    assert g["zeros"] == per_layer["zeros"] == 256
    assert g["layers"]["small"]["sparsity"] == 1.0 and g["layers"]["big"]["sparsity"] == 0.0
    assert per_layer["layers"]["small"]["sparsity"] == per_layer["layers"]["big"]["sparsity"]


def test_unstructured_keeps_the_largest_magnitudes():
    model = _gpt()
    w = [m.weight.data.copy() for _, m in model.named_modules() if isinstance(m, Linear)]
    compress.prune(model, 0.4)
    kept = [compress.effective_weight(m) for _, m in model.named_modules()
            if isinstance(m, Linear)]
    dropped = np.concatenate([np.abs(a[k == 0]) for a, k in zip(w, kept)])
    remaining = np.concatenate([np.abs(k[k != 0]) for k in kept])
    assert dropped.max() <= remaining.min()


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_structured_heads_zero_whole_heads(scope):
    model = compress.prune(_gpt(), 0.5, scope=scope, structured="heads")
    D, C = CFG["n_embd"] // CFG["n_head"], CFG["n_embd"]
    pruned = 0
    for block in model.transformer.h:
        attn_w = compress.effective_weight(block.attn.c_attn)            # (C, 3C)
        proj_w = compress.effective_weight(block.attn.c_proj)            # (C, C)
        for h in range(CFG["n_head"]):
            rows = slice(h * D, (h + 1) * D)
            if np.all(proj_w[rows] == 0):
                pruned += 1
                for part in range(3):                                    # q, k, v columns
                    assert np.all(attn_w[:, part * C + h * D:part * C + (h + 1) * D] == 0)
            else:
                assert np.all(proj_w[rows] != 0)
        if scope == "layer":
            assert sum(np.all(proj_w[h * D:(h + 1) * D] == 0) for h in range(4)) == 2
    assert pruned == round(0.5 * CFG["n_head"] * CFG["n_layer"])
    assert isinstance(model.transformer.h[0].mlp.c_fc, Linear)
    assert not isinstance(model.transformer.h[0].mlp.c_fc, PrunedLinear)


def test_pruned_heads_contribute_nothing():
    """Masking a head's q, k, v columns too changes nothing once its c_proj rows are 0: the
    pruned model equals the original with only those rows zeroed."""
    model, rows_only = _gpt(dtype=np.float64), _gpt(dtype=np.float64)
    compress.prune(model, 0.25, scope="layer", structured="heads")
    for block, other in zip(model.transformer.h, rows_only.transformer.h):
        proj = compress.effective_weight(block.attn.c_proj)
        dead = [h for h in range(4) if np.all(proj[h * 8:(h + 1) * 8] == 0)]
        assert len(dead) == 1
        other.attn.c_proj.weight.data[dead[0] * 8:(dead[0] + 1) * 8] = 0
    idx = _idx()
    np.testing.assert_allclose(model(idx).data, rows_only(idx).data, rtol=0, atol=1e-12)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_structured_rows_zero_whole_hidden_units(scope):
    model = compress.prune(_gpt(), 0.25, scope=scope, structured="rows")
    d_ff = 4 * CFG["n_embd"]
    dead = 0
    for block in model.transformer.h:
        fc, proj = (compress.effective_weight(block.mlp.c_fc),
                    compress.effective_weight(block.mlp.c_proj))       # (C, 4C), (4C, C)
        for j in range(d_ff):
            if np.all(proj[j] == 0):
                dead += 1
                assert np.all(fc[:, j] == 0)
            else:
                assert np.all(fc[:, j] != 0) and np.all(proj[j] != 0)
    assert dead == round(0.25 * d_ff * CFG["n_layer"])


def test_structured_on_llama():
    tl.manual_seed(0)
    cfg = LlamaConfig(block_size=8, vocab_size=40, n_layer=1, n_head=4, n_kv_head=2, n_embd=32,
                      intermediate_size=48)
    model = Llama(cfg)
    compress.prune(model, 0.5, structured="heads")
    compress.prune(model, 0.5, structured="rows")
    report = compress.sparsity_report(model)["layers"]
    assert report["model.layers.0.self_attn.o_proj"]["sparsity"] == 0.5
    assert report["model.layers.0.self_attn.q_proj"]["sparsity"] == 0.5
    assert report["model.layers.0.self_attn.k_proj"]["sparsity"] == 0.0   # shared (GQA)
    for name in ("gate_proj", "up_proj", "down_proj"):
        assert report[f"model.layers.0.mlp.{name}"]["sparsity"] == 0.5
    assert np.all(np.isfinite(model(_idx()).data))


def test_pruned_weights_stay_zero_through_adamw_with_weight_decay():
    model = _gpt()
    compress.prune(model, 0.6)
    masks = {n: m.weight_mask.data.copy() for n, m in model.named_modules()
             if isinstance(m, PrunedLinear)}
    names = {n for n, _ in model.named_parameters()}
    assert all(f"{n}.weight_orig" in names for n in masks)
    opt = tl.optim.AdamW(tl.optim.weight_decay_groups(model, 0.1), lr=1e-2)
    idx = _idx()
    for step in range(5):
        _, loss = model(idx, idx)
        opt.zero_grad()
        loss.backward()
        for n, m in model.named_modules():
            if isinstance(m, PrunedLinear):
                assert np.all(m.weight_orig.grad[masks[n] == 0] == 0.0)
                assert np.any(m.weight_orig.grad[masks[n] == 1] != 0.0)
        opt.step()
    for n, m in model.named_modules():
        if isinstance(m, PrunedLinear):
            w = compress.effective_weight(m)
            assert np.all(w[masks[n] == 0] == 0.0) and np.all(m.weight_mask.data == masks[n])
    assert compress.sparsity_report(model)["sparsity"] == pytest.approx(0.6, abs=1e-4)


def test_optimizer_built_before_pruning_keeps_working():
    model = _gpt()
    opt = tl.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    compress.prune(model, 0.5)
    assert {id(p) for p in model.parameters()} == {id(p) for g in opt.param_groups
                                                   for p in g["params"]}
    _, loss = model(_idx(), _idx())
    loss.backward()
    opt.step()
    assert compress.sparsity_report(model)["sparsity"] == 0.5


def test_forward_equals_model_with_zeros_baked_in():
    model, baked = _gpt(), _gpt()
    compress.prune(model, 0.5, scope="layer")
    for (_, m), (_, b) in zip(model.named_modules(), baked.named_modules()):
        if isinstance(m, PrunedLinear):
            b.weight.data[...] = compress.effective_weight(m)
    idx = _idx()
    np.testing.assert_array_equal(model(idx).data, baked(idx).data)
    compress.remove_pruning(model)
    assert not any(isinstance(m, PrunedLinear) for m in model.modules())
    assert set(model.state_dict()) == set(baked.state_dict())
    np.testing.assert_array_equal(model(idx).data, baked(idx).data)
    assert compress.sparsity_report(model)["sparsity"] == 0.5


def test_remove_pruning_keeps_the_parameter_objects():
    model = _gpt()
    compress.prune(model, 0.5)
    orig = [m.weight_orig for m in model.modules() if isinstance(m, PrunedLinear)]
    compress.remove_pruning(model)
    now = [m.weight for m in model.modules() if type(m) is Linear]
    assert [id(p) for p in orig] == [id(p) for p in now]


def test_pruning_again_is_cumulative():
    model = compress.prune(_gpt(), 0.5)
    first = {n: m.weight_mask.data.copy() for n, m in model.named_modules()
             if isinstance(m, PrunedLinear)}
    compress.prune(model, 0.3)                                   # less: nothing revived
    assert compress.sparsity_report(model)["sparsity"] == 0.5
    compress.prune(model, 0.7, scope="layer")
    for n, m in model.named_modules():
        if isinstance(m, PrunedLinear):
            assert np.all(m.weight_mask.data <= first[n])
    assert compress.sparsity_report(model)["sparsity"] == pytest.approx(0.7, abs=1e-4)


def test_state_dict_round_trip_into_a_fresh_model():
    model = compress.prune(_gpt(), 0.5, structured="rows")
    sd = {k: v.data.copy() for k, v in model.state_dict().items()}
    assert any(k.endswith("weight_mask") for k in sd)
    assert any(k.endswith("weight_orig") for k in sd)
    fresh = _gpt(seed=1)
    with pytest.raises(RuntimeError, match="weight_orig"):
        fresh.load_state_dict(sd)
    compress.restore_pruning(fresh, sd)
    fresh.load_state_dict(sd)
    idx = _idx()
    np.testing.assert_array_equal(fresh(idx).data, model(idx).data)


def test_masked_linear_gradcheck_float64():
    rng = np.random.default_rng(0)
    mask = (rng.random((5, 4)) > 0.4).astype(np.float64)
    x = tl.tensor(rng.standard_normal((2, 3, 5)), requires_grad=True)
    w = tl.tensor(rng.standard_normal((5, 4)), requires_grad=True)
    b = tl.tensor(rng.standard_normal(4), requires_grad=True)
    tl.gradcheck(lambda x, w, b: MaskedLinear.apply(x, w, b, mask=mask), [x, w, b])
    tl.gradcheck(lambda x, w: MaskedLinear.apply(x, w, mask=mask), [x, w])
    y = MaskedLinear.apply(x, w, b, mask=mask)
    y.sum().backward()
    assert np.all(w.grad[mask == 0] == 0)


def test_pruned_linear_gradcheck_module():
    tl.manual_seed(0)
    lin = Linear(6, 5, dtype=np.float64)
    holder = Module()
    holder.fc = lin
    compress.prune(holder, 0.5)
    x = tl.tensor(np.random.default_rng(1).standard_normal((3, 6)), requires_grad=True)
    tl.gradcheck_module(holder.fc, x)


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(sparsity=1.5), ValueError, r"prune: sparsity must be a number in \[0, 1\]"),
    (dict(sparsity=-0.1), ValueError, "prune: sparsity"),
    (dict(sparsity=0.5, scope="model"), ValueError, "prune: scope"),
    (dict(sparsity=0.5, structured="cols"), ValueError, "prune: structured"),
])
def test_bad_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        compress.prune(_gpt(), **kwargs)


def test_a_bare_linear_or_no_heads_is_refused():
    with pytest.raises(TypeError, match="prune: pass the model"):
        compress.prune(Linear(4, 4), 0.5)
    with pytest.raises(ValueError, match="structured='heads' found no attention"):
        compress.prune(TwoScales(), 0.5, structured="heads")


def test_format_sparsity_report():
    text = compress.format_sparsity_report(compress.sparsity_report(compress.prune(_gpt(), 0.5)))
    assert "transformer.h.0.attn.c_attn" in text and text.splitlines()[-1].endswith("50.00%")
