"""Checkpoints: the directory layout, tied weights, atomic saves, clear errors, exact resume."""
import hashlib
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

import tinyllm as tl
from tinyllm import backend, checkpoint
from tinyllm.checkpoint import load_checkpoint, save_checkpoint
from tinyllm.models import GPT, GPTConfig
from tinyllm.nn import Parameter
from tinyllm.optim import AdamW

TINY = dict(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=8)


def _model(seed=0, **kw):
    tl.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY, **kw}))


def _adamw(model):
    """nanoGPT's groups: decay the matrices, not the biases and LayerNorm gains."""
    params = list(model.parameters())
    return AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.1},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                 lr=1e-2, betas=(0.9, 0.99))


def _train(model, opt, data_rng, steps):
    losses = []
    for _ in range(steps):
        idx = data_rng.integers(0, TINY["vocab_size"], (4, TINY["block_size"] + 1))
        _, loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _weights(model):
    return {k: backend.asnumpy(t.data).copy() for k, t in model.state_dict().items()}


def _files(path):
    """{name: bytes} of every file in the checkpoint directory."""
    out = {}
    for name in os.listdir(path):
        with open(os.path.join(path, name), "rb") as f:
            out[name] = f.read()
    return out


def _meta(path):
    with open(os.path.join(path, "meta.json")) as f:
        return json.load(f)


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ----------------------------------------------------------------------------------------------
# layout and round trip

def test_layout_meta_and_tied_weights_saved_once(tmp_path):
    m = _model()
    opt = _adamw(m)
    _train(m, opt, np.random.default_rng(0), 2)
    path = save_checkpoint(tmp_path / "ck", m, opt, step=2, extra={"note": "tiny"})

    names = sorted(os.listdir(path))
    assert len(names) == 3 and names[0] == "meta.json"
    assert names[1].startswith("model-") and names[2].startswith("optim-")
    assert all(n.endswith(".safetensors") for n in names[1:])

    meta = _meta(path)
    assert meta["format_version"] == checkpoint.FORMAT_VERSION == 1
    assert meta["tinyllm_version"] == tl.__version__
    assert meta["step"] == 2 and meta["extra"] == {"note": "tiny"}
    fields = {**TINY, "dropout": 0.0, "bias": True, "gelu": "tanh"}
    assert meta["config"] == {"class": "GPTConfig", "fields": fields}
    assert meta["aliases"] == {"lm_head.weight": "transformer.wte.weight"}
    assert meta["files"] == {"model": names[1], "optim": names[2]}
    assert meta["sha256"] == {n: hashlib.sha256((tmp_path / "ck" / n).read_bytes()).hexdigest()
                              for n in names[1:]}

    weights = load_file(os.path.join(path, names[1]))              # plain safetensors
    expected = _weights(m)
    assert set(weights) == set(expected) - {"lm_head.weight"}       # the tied array once
    for k, v in weights.items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, expected[k], err_msg=k)

    n_params = len(list(m.parameters()))                            # 32: wte counted once
    optim_arrays = load_file(os.path.join(path, names[2]))
    assert len(optim_arrays) == 2 * n_params
    assert {"state.0.exp_avg", "state.0.exp_avg_sq"} <= set(optim_arrays)
    assert meta["optimizer"]["state"]["0"] == {"step": 2}           # scalars live in JSON
    assert [g["weight_decay"] for g in meta["optimizer"]["param_groups"]] == [0.1, 0.0]
    assert meta["optimizer"]["param_groups"][0]["betas"] == [0.9, 0.99]


def test_round_trip_into_a_fresh_model_and_optimizer(tmp_path):
    m = _model()
    opt = _adamw(m)
    _train(m, opt, np.random.default_rng(0), 2)
    save_checkpoint(tmp_path, m, opt, step=2)

    m2 = _model(seed=1)                                             # different weights
    opt2 = _adamw(m2)
    opt2.param_groups[0]["lr"] = 0.5
    info = load_checkpoint(tmp_path, m2, opt2)

    assert info["step"] == 2 and info["config"]["class"] == "GPTConfig"
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    _assert_same_weights(_weights(m2), _weights(m))
    assert m2.lm_head.weight is m2.transformer.wte.weight          # still tied
    sd, sd2 = opt.state_dict(), opt2.state_dict()
    assert [{k: v for k, v in g.items()} for g in sd2["param_groups"]] == sd["param_groups"]
    assert sd2["param_groups"][0]["betas"] == (0.9, 0.99)           # a tuple again
    assert sd2["param_groups"][0]["lr"] == 1e-2
    assert sd2["state"].keys() == sd["state"].keys()
    for i, s in sd["state"].items():
        assert sd2["state"][i]["step"] == s["step"] == 2
        for k in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(backend.asnumpy(sd2["state"][i][k]),
                                          backend.asnumpy(s[k]))


def test_model_only_checkpoint(tmp_path):
    m = _model()
    save_checkpoint(tmp_path, m)
    assert _meta(tmp_path)["optimizer"] is None and _meta(tmp_path)["step"] is None
    assert len(os.listdir(tmp_path)) == 2                           # meta.json, model-*
    m2 = _model(seed=1)
    load_checkpoint(tmp_path, m2)
    _assert_same_weights(_weights(m2), _weights(m))
    with pytest.raises(ValueError, match="holds no optimizer state"):
        load_checkpoint(tmp_path, m2, _adamw(m2))


# ----------------------------------------------------------------------------------------------
# resuming exactly

def test_resume_after_3_steps_equals_6_uninterrupted_steps_bitwise(tmp_path):
    """With dropout on and batches drawn from a data generator, so every random state counts."""
    tl.set_backend("numpy")                                         # bitwise: the CPU path
    m = _model(dropout=0.1)
    full = _train(m, _adamw(m), np.random.default_rng(7), 6)
    full_weights = _weights(m)

    m = _model(dropout=0.1)
    opt = _adamw(m)
    data_rng = np.random.default_rng(7)
    first = _train(m, opt, data_rng, 3)
    save_checkpoint(tmp_path, m, opt, step=3, extra={"data_rng": data_rng})
    del m, opt, data_rng

    tl.manual_seed(123)                                             # a different process
    m = _model(seed=123, dropout=0.1)
    opt = _adamw(m)
    info = load_checkpoint(tmp_path, m, opt)
    assert info["step"] == 3 and isinstance(info["extra"]["data_rng"], np.random.Generator)
    second = _train(m, opt, info["extra"]["data_rng"], 3)

    assert first + second == full                                   # losses of steps 4-6 too
    assert len(set(full)) == 6
    _assert_same_weights(_weights(m), full_weights)


def test_rng_states_are_restored(tmp_path):
    m = _model()
    data_rng = np.random.default_rng(3)
    data_rng.random(5)
    backend.get_generator("cpu").random(4)
    save_checkpoint(tmp_path, m, extra={"data_rng": data_rng})
    expected_data = data_rng.integers(0, 100, 8)
    expected_tl = tl.randn(3).numpy()

    tl.manual_seed(99)
    info = load_checkpoint(tmp_path, m)
    np.testing.assert_array_equal(info["extra"]["data_rng"].integers(0, 100, 8), expected_data)
    np.testing.assert_array_equal(tl.randn(3).numpy(), expected_tl)
    assert backend._state["seed"] == 0


def test_gpu_generator_state_is_saved_and_restored_without_touching_cupy(tmp_path):
    """The GPU generator's state is a host PCG64 (backend.CupyGenerator): a checkpoint stores
    it once the generator exists and restores it, with no draw, so no GPU is needed here."""
    import sys
    m = _model()
    tl.manual_seed(4)
    gen = backend.get_generator("cuda") if backend.cuda_is_available() else None
    if gen is None:                           # no GPU: create it the way get_generator does
        gen = backend._state["generators"]["cuda"] = backend.CupyGenerator(4)
    gen.bit_generator.advance(7)              # as if 7 keys had been drawn
    before = gen.bit_generator.state
    save_checkpoint(tmp_path, m)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["rng"]["cuda"] == before and meta["rng"]["cpu"]["bit_generator"] == "PCG64"
    tl.manual_seed(99)                        # forget every generator
    cupy_loaded = "cupy" in sys.modules
    load_checkpoint(tmp_path, m)
    assert backend._state["generators"]["cuda"].bit_generator.state == before
    assert ("cupy" in sys.modules) == cupy_loaded
    # the key stream is seeded apart from the CPU generator's
    tl.manual_seed(4)
    keys = backend.CupyGenerator(4).bit_generator.random_raw(3)
    assert list(keys) != list(backend.get_generator("cpu").bit_generator.random_raw(3))


@pytest.mark.gpu
def test_gpu_dropout_stream_continues_after_a_checkpoint(tmp_path):
    """On CuPy: masks drawn after load_checkpoint equal those an uninterrupted run draws."""
    m = _model()
    x = tl.ones(4, 5, device="cuda")
    tl.manual_seed(3)
    tl.dropout(x, 0.5)
    save_checkpoint(tmp_path, m)
    expected = [tl.dropout(x, 0.5).numpy() for _ in range(2)]
    expected.append(tl.randn(3, device="cuda").numpy())
    tl.manual_seed(42)
    load_checkpoint(tmp_path, m)
    got = [tl.dropout(x, 0.5).numpy() for _ in range(2)] + [tl.randn(3, device="cuda").numpy()]
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(got[0], got[1])            # fresh masks, not one repeated


# ----------------------------------------------------------------------------------------------
# atomic saves

def _fail_after_partial_write(tmp, *args, **kwargs):
    with open(tmp, "wb") as f:
        f.write(b"half a checkpoint")
    raise OSError("No space left on device")


@pytest.mark.parametrize("failing", ["weights", "optimizer", "meta"])
def test_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch, failing):
    m = _model()
    opt = _adamw(m)
    data_rng = np.random.default_rng(0)
    _train(m, opt, data_rng, 1)
    save_checkpoint(tmp_path, m, opt, step=1)
    before = _files(tmp_path)
    saved_weights = _weights(m)

    _train(m, opt, data_rng, 1)                                     # new weights to save
    if failing == "meta":
        monkeypatch.setattr(checkpoint, "_write_text", _fail_after_partial_write)
    else:
        real = checkpoint.save_file
        calls = []

        def save_file(tensors, filename, *args, **kwargs):
            calls.append(filename)
            if len(calls) == (1 if failing == "weights" else 2):
                _fail_after_partial_write(filename)
            return real(tensors, filename, *args, **kwargs)

        monkeypatch.setattr(checkpoint, "save_file", save_file)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path, m, opt, step=2)
    monkeypatch.undo()

    assert _files(tmp_path) == before                               # same names, same bytes
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    m2 = _model(seed=1)
    assert load_checkpoint(tmp_path, m2, _adamw(m2))["step"] == 1
    _assert_same_weights(_weights(m2), saved_weights)


def test_a_new_save_replaces_the_old_files(tmp_path):
    m = _model()
    save_checkpoint(tmp_path, m, _adamw(m), step=1)
    old = set(os.listdir(tmp_path))
    save_checkpoint(tmp_path, m, _adamw(m), step=2)
    new = set(os.listdir(tmp_path))
    assert len(new) == 3 and old & new == {"meta.json"}             # old data files deleted
    assert _meta(tmp_path)["step"] == 2


# ----------------------------------------------------------------------------------------------
# errors

def test_loading_into_another_config_names_tensor_shapes_and_config(tmp_path):
    save_checkpoint(tmp_path, _model())
    m = _model(n_embd=16)
    before = _weights(m)
    with pytest.raises(RuntimeError) as e:
        load_checkpoint(tmp_path, m)
    msg = str(e.value)
    first = "transformer.wte.weight: checkpoint (11, 8), model (11, 16)"
    assert msg.index("shape mismatches: " + first) < msg.index("transformer.wpe.weight")
    assert "another config: n_embd: checkpoint 8, model 16" in msg
    _assert_same_weights(_weights(m), before)                       # nothing copied

    with pytest.raises(RuntimeError, match=r"(?s)missing keys: transformer\.h\.2\.ln_1\.weight"
                                           r".*n_layer: checkpoint 2, model 3"):
        load_checkpoint(tmp_path, _model(n_layer=3))


def test_tie_mismatch_is_an_error_when_strict(tmp_path):
    save_checkpoint(tmp_path, _model())
    m = _model(seed=1)
    m.lm_head.weight = Parameter(m.transformer.wte.weight.data.copy())   # untie
    with pytest.raises(RuntimeError, match="the checkpoint ties lm_head.weight to "
                                           "transformer.wte.weight, the model ties nothing"):
        load_checkpoint(tmp_path, m)
    load_checkpoint(tmp_path, m, strict=False)                      # values into both names
    np.testing.assert_array_equal(m.lm_head.weight.numpy(), m.transformer.wte.weight.numpy())


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nothing", _model())
    with pytest.raises(TypeError, match=r"extra\['table'\] is not JSON-serializable"):
        save_checkpoint(tmp_path, _model(), extra={"table": np.zeros(3)})
    assert os.listdir(tmp_path) == []                               # refused before writing
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        save_checkpoint(tmp_path / "file", _model())
    save_checkpoint(tmp_path / "ck", _model())
    meta = _meta(tmp_path / "ck")
    meta["format_version"] = 99
    (tmp_path / "ck" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="checkpoint format 99, newer"):
        load_checkpoint(tmp_path / "ck", _model())
