"""tinyllm.compress.quantize_int8: codes and scales, the rounding bound, the Int8Linear formula
and its Numba kernel held equal, a quantized tiny GPT against the float one, sizes, and the
safetensors save/load round trip."""
import os

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import compress, kernels
from tinyllm.compress import Int8Linear, QuantizedLinear, dequantize, quantize_weight
from tinyllm.kernels import int8 as int8_kernels
from tinyllm.models.gpt import GPT, GPTConfig
from tinyllm.models.llama import Llama, LlamaConfig
from tinyllm.nn import Linear, Module

CFG = dict(block_size=16, vocab_size=64, n_layer=2, n_head=4, n_embd=128)


def _gpt(seed=0):
    tl.manual_seed(seed)
    model = GPT(GPTConfig(**CFG))
    model.eval()
    return model


def _idx(seed=0):
    return np.random.default_rng(seed).integers(0, CFG["vocab_size"], (2, CFG["block_size"]))


def _logits(model, idx):
    with tl.no_grad():
        return model(idx).data


def test_codes_and_scales_of_a_hand_made_weight():
    # (in=4, out=2); groups of 2 input rows within each output column
    w = np.array([[1.0, -0.5],
                  [-2.54, 0.25],
                  [0.0, 0.0],
                  [0.127, 0.0]], np.float32)
    codes, scales = quantize_weight(w, group_size=2)
    np.testing.assert_array_equal(scales, np.float32([[2.54 / 127, 0.5 / 127],
                                                      [0.127 / 127, 0.0]]))
    np.testing.assert_array_equal(codes, [[50, -127], [-127, 64], [0, 0], [127, 0]])
    assert codes.dtype == np.int8 and scales.dtype == np.float32
    codes, scales = quantize_weight(w, group_size=None)             # one scale per column
    np.testing.assert_array_equal(scales, np.float32([[2.54 / 127, 0.5 / 127]]))
    np.testing.assert_array_equal(codes, [[50, -127], [-127, 64], [0, 0], [6, 0]])


@pytest.mark.parametrize("group_size", [None, 64, 48, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_error_is_at_most_half_a_scale(group_size, dtype):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((200, 24)) * rng.uniform(0.01, 3, 24)).astype(dtype)
    codes, scales = quantize_weight(w, group_size)
    S = 200 if group_size is None else group_size
    assert scales.shape == (-(-200 // S), 24) and scales.dtype == dtype
    assert codes.min() >= -127 and codes.max() <= 127
    err = np.abs(dequantize(codes, scales, group_size) - w)
    bound = np.repeat(scales, S, axis=0)[:200] / 2
    assert np.all(err <= bound * (1 + 1e-6))
    assert np.abs(codes).max() == 127                                 # the max maps to 127


def test_groups_are_tighter_than_channels():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((256, 32)).astype(np.float32)
    w[:64] *= 10                                                      # one loud group
    errs = {}
    for gs in (None, 64):
        codes, scales = quantize_weight(w, gs)
        errs[gs] = np.abs(dequantize(codes, scales, gs) - w)
        assert scales.shape[0] == (1 if gs is None else 4)
    assert errs[64][64:].max() < errs[None][64:].max() / 5            # quiet rows gain
    assert np.all(errs[64].max(axis=0) <= errs[None].max(axis=0) * (1 + 1e-6))


def test_all_zero_group_gives_zero_codes_not_nan():
    codes, scales = quantize_weight(np.zeros((8, 3), np.float32), 4)
    assert np.all(codes == 0) and np.all(scales == 0)
    assert np.all(dequantize(codes, scales, 4) == 0)


def _qlinear(K=96, N=40, group_size=64, dtype=np.float32, seed=0):
    tl.manual_seed(seed)
    holder = Module()
    holder.fc = Linear(K, N, dtype=dtype)
    compress.quantize_int8(holder, group_size)
    return holder.fc


@pytest.mark.parametrize("group_size", [None, 64, 32])
def test_forward_is_dequantize_then_matmul(group_size):
    q = _qlinear(group_size=group_size)
    x = np.random.default_rng(0).standard_normal((3, 5, 96)).astype(np.float32)
    with kernels.using("numpy"):
        y = q(tl.tensor(x)).data
    W = dequantize(q.weight_codes.data, q.weight_scales.data, group_size)
    np.testing.assert_array_equal(y, x @ W + q.bias.data)
    assert isinstance(q, QuantizedLinear) and list(q.parameters()) == []


@pytest.mark.parametrize("impl", ["numba", "auto"])
@pytest.mark.parametrize("group_size", [None, 64, 40])
@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float64, 1e-13)])
def test_numba_kernel_equals_the_formula(impl, group_size, dtype, tol):
    q = _qlinear(group_size=group_size, dtype=dtype)
    rng = np.random.default_rng(1)
    for rows in (1, 7):                                               # "auto": few rows only
        x = rng.standard_normal((rows, 96)).astype(dtype)
        with kernels.using("numpy"):
            ref = q(tl.tensor(x)).data
        with kernels.using(impl):
            got = q(tl.tensor(x)).data
        direct = int8_kernels.int8_matmul(x, q.weight_codes.data, q.weight_scales.data,
                                          96 if group_size is None else group_size)
        assert got.dtype == dtype
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())
        np.testing.assert_allclose(direct + q.bias.data, ref, rtol=tol,
                                   atol=tol * np.abs(ref).max())


def test_auto_takes_the_kernel_for_few_rows_only(monkeypatch):
    calls = []
    real = int8_kernels.int8_matmul
    monkeypatch.setattr(int8_kernels, "int8_matmul", lambda *a: calls.append(1) or real(*a))
    q = _qlinear()
    with kernels.using("auto"):
        q(tl.tensor(np.ones((1, 96), np.float32)))
        q(tl.tensor(np.ones((Int8Linear.AUTO_MAX_ROWS + 1, 96), np.float32)))
    with kernels.using("numpy"):
        q(tl.tensor(np.ones((1, 96), np.float32)))
    assert len(calls) == (1 if kernels.NUMBA_AVAILABLE and not kernels.jit_disabled() else 0)


def test_int8_linear_input_gradient_gradcheck():
    q = _qlinear(K=10, N=6, group_size=4, dtype=np.float64)
    x = tl.tensor(np.random.default_rng(2).standard_normal((3, 10)), requires_grad=True)
    tl.gradcheck(lambda x: q(x), [x])


def test_output_error_within_the_rounding_bound():
    """|y_q - y|_j <= sum_i |x_i| s_(g(i), j) / 2 for one quantized Linear."""
    tl.manual_seed(3)
    holder = Module()
    holder.fc = Linear(128, 16, dtype=np.float64)
    w = holder.fc.weight.data.copy()
    compress.quantize_int8(holder, 64)
    x = np.random.default_rng(3).standard_normal((4, 128))
    y_q = holder.fc(tl.tensor(x)).data
    bound = np.abs(x) @ (np.repeat(holder.fc.weight_scales.data, 64, axis=0) / 2)
    assert np.all(np.abs(y_q - (x @ w + holder.fc.bias.data)) <= bound + 1e-12)


@pytest.mark.parametrize("group_size", [64, None])
def test_quantized_gpt_logits_close_to_float32(group_size):
    """Tolerance: each weight moves by at most s/2 = max|w_group|/254, and by s/sqrt(12) rms
    (rounding errors ~ uniform); for GPT's N(0, 0.02) weights the group max is ~2.5-3 std, so
    each Linear's output carries a ~0.6% rms relative error, and 8 Linears add theirs to the
    residual stream: measured 0.7-0.95% rms, <= 3.6% at the worst logit (6 seeds). Asserted:
    rms error <= 2% and max error <= 8% of the logits' rms."""
    model, idx = _gpt(), _idx()
    ref = _logits(model, idx)
    compress.quantize_int8(model, group_size)
    got = _logits(model, idx)
    rms = np.sqrt((ref ** 2).mean())
    assert got.dtype == np.float32
    assert np.sqrt(((got - ref) ** 2).mean()) <= 0.02 * rms
    assert np.abs(got - ref).max() <= 0.08 * rms
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9
    assert type(model.lm_head).__name__ == "TiedLMHead"            # tied head stays float
    assert sum(isinstance(m, QuantizedLinear) for m in model.modules()) == 4 * CFG["n_layer"]


def test_quantize_a_pruned_model_keeps_its_zeros():
    model = compress.prune(_gpt(), 0.5)
    ref = _logits(model, _idx())
    compress.quantize_int8(model, 64)
    for m in model.modules():
        if isinstance(m, QuantizedLinear):
            assert (m.weight_codes.data == 0).mean() >= 0.3
    assert np.sqrt(((_logits(model, _idx()) - ref) ** 2).mean()) <= 0.02 * np.sqrt(
        (ref ** 2).mean())


def test_sizes_shrink_to_about_a_quarter(tmp_path):
    model = _gpt()
    float_bytes = compress.quantized_size_bytes(model)
    linear_float = sum(m.weight.data.nbytes for m in model.modules() if type(m) is Linear)
    compress.quantize_int8(model, 64)
    q_bytes = compress.quantized_size_bytes(model)
    linear_q = sum(m.weight_codes.data.nbytes + m.weight_scales.data.nbytes
                   for m in model.modules() if isinstance(m, QuantizedLinear))
    assert linear_q / linear_float == pytest.approx(0.25 + 1 / 64)  # 1 byte + 4/64 per weight
    assert float_bytes - q_bytes == linear_float - linear_q
    path = tmp_path / "q.safetensors"
    compress.save_quantized(model, path)
    float_file = tmp_path / "f.safetensors"
    from safetensors.numpy import save_file
    fm = _gpt()
    save_file({k: v.data for k, v in fm.state_dict().items() if k != "lm_head.weight"},
              str(float_file))
    assert os.path.getsize(path) < os.path.getsize(float_file)
    assert os.path.getsize(path) == pytest.approx(q_bytes, rel=0.05)


def test_save_load_round_trip_gives_identical_logits(tmp_path):
    model, idx = _gpt(), _idx()
    compress.quantize_int8(model, 64)
    path = tmp_path / "model-int8.safetensors"
    assert compress.save_quantized(model, path) == path
    assert [p.name for p in tmp_path.iterdir()] == ["model-int8.safetensors"]   # no temp left
    fresh = _gpt(seed=5)                                             # other float weights
    compress.load_quantized(path, fresh)
    np.testing.assert_array_equal(_logits(fresh, idx), _logits(model, idx))
    assert fresh.lm_head.weight is fresh.transformer.wte.weight      # the tie survives
    for m in fresh.modules():
        if isinstance(m, QuantizedLinear):
            assert m.weight_codes.dtype == np.int8 and m.group_size == 64
    again = compress.quantize_int8(_gpt(seed=6), 64)                 # into a quantized model
    compress.load_quantized(path, again)
    np.testing.assert_array_equal(_logits(again, idx), _logits(model, idx))


def test_load_refuses_other_files_and_group_sizes(tmp_path):
    model = compress.quantize_int8(_gpt(), None)
    path = tmp_path / "q.safetensors"
    compress.save_quantized(model, path)
    with pytest.raises(ValueError, match="group_size"):
        compress.load_quantized(path, compress.quantize_int8(_gpt(), 64))
    from safetensors.numpy import save_file
    save_file({"a": np.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a tinyllm int8 file"):
        compress.load_quantized(tmp_path / "other.safetensors", _gpt())
    with pytest.raises(ValueError, match="no QuantizedLinear"):
        compress.save_quantized(_gpt(), tmp_path / "x.safetensors")


def test_llama_untied_head_is_quantized():
    tl.manual_seed(0)
    model = Llama(LlamaConfig(block_size=8, vocab_size=40, n_layer=1, n_head=4, n_kv_head=2,
                              n_embd=32, intermediate_size=48))
    ref = _logits(model, _idx()[:, :8] % 40)
    compress.quantize_int8(model, None)
    assert isinstance(model.lm_head, QuantizedLinear)
    got = _logits(model, _idx()[:, :8] % 40)
    assert np.sqrt(((got - ref) ** 2).mean()) <= 0.02 * np.sqrt((ref ** 2).mean())


@pytest.mark.parametrize("group_size", [0, -1, 2.5, True])
def test_bad_group_size(group_size):
    with pytest.raises(ValueError, match="quantize_int8: group_size"):
        compress.quantize_int8(_gpt(), group_size)
