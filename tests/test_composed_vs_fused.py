"""benchmarks/composed_vs_fused.py: for softmax + cross-entropy, LayerNorm and attention, the
composed path (primitive ops) and the fused op agree, both pass gradcheck, the fused one is
one graph node and saves fewer bytes for backward; the saved bytes match a count by hand."""
import numpy as np
import pytest

import tinyllm
from tests.conftest import load_script

SMALL = {"cross_entropy": (6, 5),             # (N, V)
         "layer_norm": (2, 3, 4),             # (B, T, C)
         "attention": (2, 2, 4, 3)}           # (B, H, T, D)
FUSED_OP = {"cross_entropy": "CrossEntropy", "layer_norm": "LayerNorm",
            "attention": "ScaledDotProductAttention"}
COMPOSED_OPS = {
    "cross_entropy": ["Sub", "Exp", "Sum", "Log", "Sub", "GetItem", "Mean", "Neg"],
    "layer_norm": ["Mean", "Sub", "Mul", "Mean", "Add", "Sqrt", "Div", "Mul", "Add"],
    "attention": ["Permute", "MatMul", "Mul", "Where", "Softmax", "MatMul"],
}
F8 = 8                                        # bytes per float64 (and per int64 index)


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/composed_vs_fused.py")


@pytest.fixture(autouse=True)
def _numpy_backend():
    tinyllm.set_backend("numpy")              # the byte counts below are of NumPy arrays


def expected_saved_bytes(case, shape):
    """(composed, fused) bytes saved for backward, counted by hand from each op's forward.

    Inputs saved by reference count (they stay alive because the graph holds them); a view
    counts as its base; an array saved by two nodes counts once.
    """
    if case == "cross_entropy":
        N, V = shape
        # Exp keeps e^z (N, V), Log its input sum e^z (N, 1), GetItem its index: arange(N)
        # and the targets (int64)
        composed = N * V * F8 + N * F8 + N * F8 + N * F8
        # CrossEntropy keeps the logits (N, V), the targets (N,), the log-sum-exp (N,) and
        # the count of counted targets (a scalar in the logits' dtype)
        fused = N * V * F8 + N * F8 + N * F8 + F8
    elif case == "layer_norm":
        *lead, C = shape
        N = int(np.prod(lead))
        # Mul(xc, xc) keeps xc (N, C); Sqrt and Div share std (N, 1); Div keeps xc again;
        # Mul(xhat, w) keeps xhat (N, C) and w (C,)
        composed = 2 * N * C * F8 + N * F8 + C * F8
        # LayerNorm keeps x (N, C), w (C,), mu (N,) and rstd (N,), not xhat: backward
        # recomputes it
        fused = N * C * F8 + C * F8 + 2 * N * F8
    else:
        B, H, T, D = shape
        qkv = 3 * B * H * T * D * F8
        # MatMul keeps q and k^T (a view of k), Mul the scores (B, H, T, T) and the scale (a
        # 0-d array), Where the (T, T) bool mask, Softmax P, the last MatMul P (again) and v
        composed = qkv + 2 * B * H * T * T * F8 + F8 + T * T
        # ScaledDotProductAttention keeps q, k, v and P
        fused = qkv + B * H * T * T * F8
    return composed, fused


@pytest.mark.parametrize("case", list(SMALL))
def test_paths_agree_in_float64(bench, case):
    diffs = bench.validate(case, SMALL[case])
    assert list(diffs) == list(bench.COMPARED[case])      # the output and every input grad
    for name, d in diffs.items():
        assert 0.0 <= d < 1e-10, f"{case}: {name} differs by {d}"


@pytest.mark.parametrize("case", list(SMALL))
@pytest.mark.parametrize("path", [0, 1], ids=["composed", "fused"])
def test_both_paths_pass_gradcheck(bench, case, path):
    args = bench.make_inputs(case, SMALL[case], np.float64)
    assert tinyllm.gradcheck(bench.PATHS[case][path], args)


@pytest.mark.parametrize("case", list(SMALL))
def test_graph_nodes_and_saved_bytes(bench, case):
    composed, fused = bench.PATHS[case]
    args = bench.make_inputs(case, SMALL[case], np.float64)
    _, _, info_c = bench.run(composed, args)
    _, _, info_f = bench.run(fused, args)
    assert info_f["ops"] == [FUSED_OP[case]] and info_f["nodes"] == 1
    assert info_c["ops"] == COMPOSED_OPS[case] and info_c["nodes"] == len(COMPOSED_OPS[case])
    want_c, want_f = expected_saved_bytes(case, SMALL[case])
    assert (info_c["saved_bytes"], info_f["saved_bytes"]) == (want_c, want_f)
    assert info_f["saved_bytes"] < info_c["saved_bytes"]


def test_saved_bytes_scale_with_the_dtype_at_the_benchmark_sizes(bench):
    """At the default sizes in float32 the fused ops save about half (LayerNorm: one (N, C)
    array instead of two) and 71% (attention: P only, not the scores too) of the composed."""
    ratios = {}
    for case, shape in bench.DEFAULT_SHAPES.items():
        saved = [bench.run(fn, bench.make_inputs(case, shape, np.float32))[2]["saved_bytes"]
                 for fn in bench.PATHS[case]]
        ratios[case] = saved[1] / saved[0]
    assert ratios["layer_norm"] == pytest.approx(0.506, abs=1e-3)
    assert ratios["attention"] == pytest.approx(1920 / 2692, abs=1e-3)
    assert 0.9 < ratios["cross_entropy"] < 1.0


def test_main_prints_the_table(bench, capsys):
    rows = bench.main(["--ce", "8,5", "--ln", "2,3,8", "--attn", "1,2,4,3", "--repeat", "2",
                       "--dtype", "float64"])
    out = capsys.readouterr().out
    assert len(rows) == 6 and {r["path"] for r in rows} == {"composed", "fused"}
    for r in rows:
        assert r["ms"] > 0 and r["peak_bytes"] > 0 and r["max_diff"] < 1e-10
    assert "| case | shape | path | nodes | saved KiB |" in out
    assert "ScaledDotProductAttention" in out and "max |composed - fused|" in out


def test_bad_shape_is_refused(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--attn", "2,3"])
    assert "--attn B,H,T,D" in capsys.readouterr().err
