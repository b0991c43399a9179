"""examples/attention_walkthrough.py: the hand-computed attention head equals the engine's.

The script computes one causal head's forward and backward by hand with NumPy and compares
every array with three engine runs (op by op, scaled_dot_product_attention, the fused op);
``main`` returns {run: {array name: max |hand - engine|}}.
"""
import math

import numpy as np
import pytest

import tinyllm
from tests.conftest import load_script

HEADINGS = ["1. projections", "2. scores: S = q k^T / sqrt(D)", "3. causal mask",
            "4. weights: P = softmax(S)", "5. output: out = P v", "6. loss: L = sum(out * G)",
            "7. backward through out = P v", "8. backward through the softmax",
            "9. backward through S", "10. backward through the projections", "gradcheck"]


@pytest.fixture(scope="module")
def walkthrough():
    return load_script("examples/attention_walkthrough.py")


@pytest.fixture(autouse=True)
def _numpy_backend():
    tinyllm.set_backend("numpy")            # a CPU walkthrough: NumPy arrays compared directly


def _check_diffs(result, tol=1e-12):
    for run, diffs in result.items():
        for name, d in diffs.items():
            assert isinstance(d, float) and math.isfinite(d), (run, name, d)
            assert 0.0 <= d < tol, f"{run}: {name} differs by {d}"


def test_default_run_agrees_everywhere(walkthrough, capsys):
    result = walkthrough.main([])
    out = capsys.readouterr().out
    assert set(result) == {"op by op (matmul, *, masked_fill, softmax)",
                           "nn.attention.scaled_dot_product_attention",
                           "functional.attention (fused op)"}
    _check_diffs(result)
    # every hand-computed array is compared with some engine array
    compared = set().union(*(d.keys() for d in result.values()))
    assert compared == {"q", "k", "v", "S", "P", "out", "L", "dout", "dv", "dP", "dS", "dq",
                        "dk", "dx", "dW_q", "dW_k", "dW_v"}
    fused = result["functional.attention (fused op)"]
    assert {"out", "dq", "dk", "dv", "dx", "dW_q", "dW_k", "dW_v"} <= set(fused)
    positions = [out.find(h) for h in HEADINGS]
    assert all(p >= 0 for p in positions), [h for h, p in zip(HEADINGS, positions) if p < 0]
    assert positions == sorted(positions), "the steps are printed out of order"
    assert "exactly 0: True" in out                    # masked weights and their dS
    assert "all agree" in out and "passed" in out


def test_other_sizes_and_seed(walkthrough, capsys):
    _check_diffs(walkthrough.main(["--T", "3", "--D", "3", "--C", "2", "--seed", "7"]))
    capsys.readouterr()


def test_hand_steps_hold_their_identities(walkthrough, capsys):
    """What the printout claims about the numbers: rows of P sum to 1, masked weights and
    their dS are exactly 0, rows of dS sum to 0, dq's first row is 0, dx is the sum of the
    three paths."""
    rng = np.random.default_rng(3)
    T, C, D = 4, 3, 2
    x = rng.standard_normal((T, C))
    W_q, W_k, W_v = (rng.standard_normal((C, D)) for _ in range(3))
    G = rng.standard_normal((T, D))
    fwd = walkthrough.forward_by_hand(x, W_q, W_k, W_v, G)
    grads = walkthrough.backward_by_hand(x, W_q, W_k, W_v, G, fwd)
    capsys.readouterr()
    mask = fwd["mask"]
    assert mask.sum() == T * (T - 1) // 2
    np.testing.assert_allclose(fwd["P"].sum(axis=1), 1.0, rtol=0, atol=1e-15)
    assert np.all(fwd["P"][mask] == 0) and np.all(grads["dS"][mask] == 0)
    np.testing.assert_allclose(grads["dS"].sum(axis=1), 0.0, rtol=0, atol=1e-13)
    assert np.all(grads["dq"][0] == 0)
    dx = grads["dq"] @ W_q.T + grads["dk"] @ W_k.T + grads["dv"] @ W_v.T
    np.testing.assert_allclose(grads["dx"], dx, rtol=0, atol=1e-15)
    assert fwd["L"] == pytest.approx(float((fwd["out"] * G).sum()), abs=1e-15)


def test_bad_size_is_refused(walkthrough, capsys):
    with pytest.raises(SystemExit):
        walkthrough.main(["--T", "0"])
    assert "--T must be between 1 and 16" in capsys.readouterr().err
