"""One attention head, forward and backward, by hand with NumPy, then checked against the engine.

A single causal self-attention head on T = 4 positions of width C = 3, head size D = 2, in
float64 with a fixed seed, small enough that every array fits on the screen:

    q = x W_q,  k = x W_k,  v = x W_v                     (T, D) each
    S = q k^T / sqrt(D)                                   (T, T) scores
    S_ij = -inf where j > i                               causal mask: no peeking ahead
    P = softmax(S) row by row                             (T, T) weights, rows sum to 1
    out = P v                                             (T, D)
    L = sum(out * G)                                      G = dL/dout, a fixed upstream gradient

The script prints each step with its numbers, then walks the chain rule back from G to dx by
hand, one line of NumPy per formula. Then it runs the same head on tinyllm three ways: op by op
(matmul, scale, masked_fill, softmax, matmul, with ``retain_grad`` on every intermediate),
through ``tinyllm.nn.attention.scaled_dot_product_attention`` (the same ops, packaged) and
through the fused op ``tinyllm.functional.attention`` (one graph node, hand-derived backward:
tinyllm/ops/attention.py), and prints the largest difference between every hand-computed array
and the engine's. They agree to 1e-12 (float64 rounding), or the script stops and says which
array does not. Finally ``tinyllm.gradcheck`` checks the fused op against finite differences.

Run it from the repository root:

    python examples/attention_walkthrough.py
    python examples/attention_walkthrough.py --T 3 --D 3 --seed 1

The formulas are those of tinyllm/ops/attention.py, whose docstring has the same derivation in
the batched (B, H, T, D) form the models use, and whose ``ScaledDotProductAttention.forward``
and ``.backward`` compute them.
"""
import argparse
import math

import numpy as np

import tinyllm
import tinyllm.functional as F
from tinyllm.nn.attention import causal_mask, scaled_dot_product_attention

TOL = 1e-12                      # float64: the hand and engine results differ only by rounding


# ----------------------------------------------------------------------------------------------
# command line

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--T", type=int, default=4, help="positions (sequence length)")
    p.add_argument("--C", type=int, default=3, help="width of each input vector x_t")
    p.add_argument("--D", type=int, default=2, help="head size (width of q, k, v)")
    p.add_argument("--seed", type=int, default=0, help="seeds x, the weights and G")
    args = p.parse_args(argv)
    for name in ("T", "C", "D"):
        if not 1 <= getattr(args, name) <= 16:
            p.error(f"--{name} must be between 1 and 16 (this is a walkthrough: keep it small)")
    return args


# ----------------------------------------------------------------------------------------------
# printing

def step(title):
    print(f"\n---- {title} " + "-" * max(0, 90 - len(title)))


def show(name, a, note=""):
    """Print ``a`` under a line naming it and its shape, with a one-line note."""
    shape = "(" + ", ".join(str(n) for n in a.shape) + ")"
    print(f"{name} {shape}" + (f"   {note}" if note else ""))
    a = np.asarray(a) + 0                  # + 0 turns -0.0 (e.g. 0 * negative) into 0.0
    text = np.array2string(a, precision=4, suppress_small=True, floatmode="fixed",
                           max_line_width=100)
    print("    " + text.replace("\n", "\n    "))


def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, np.float64))))


# ----------------------------------------------------------------------------------------------
# forward by hand

def forward_by_hand(x, W_q, W_k, W_v, G):
    """Every forward array of the head, in a dict (the names used in the printout)."""
    T, D = x.shape[0], W_q.shape[1]

    step("1. projections: q = x W_q, k = x W_k, v = x W_v")
    print("Each position t turns its input x_t into a query (what it looks for), a key (what "
          "it offers)\nand a value (what it passes on) with three learned (C, D) matrices.")
    show("x", x, "one row per position")
    show("W_q", W_q)
    show("W_k", W_k)
    show("W_v", W_v)
    q = x @ W_q                                                  # (T, C) @ (C, D) -> (T, D)
    k = x @ W_k                                                  # (T, D)
    v = x @ W_v                                                  # (T, D)
    show("q", q)
    show("k", k)
    show("v", v)

    step("2. scores: S = q k^T / sqrt(D)")
    print(f"S_ij says how well query i matches key j. Dividing by sqrt(D) = "
          f"{math.sqrt(D):.4f} keeps the scores'\nvariance near 1 (a dot product of D "
          f"unit-variance terms has variance D).")
    S = q @ k.T / math.sqrt(D)                                   # (T, T)
    show("S", S)

    step("3. causal mask: S_ij = -inf above the diagonal (key j after query i)")
    print("Position i may only look at positions j <= i. A score of -inf becomes a weight "
          "of exactly\ne^-inf = 0 in the softmax, so the future contributes nothing.")
    mask = np.triu(np.ones((T, T), dtype=bool), k=1)            # (T, T), True = hidden
    Sm = np.where(mask, -np.inf, S)                              # (T, T)
    show("mask", mask.astype(int), "1 = hidden")
    show("S masked", Sm)

    step("4. weights: P = softmax(S) row by row")
    print("P_ij = e^(S_ij - m_i) / sum_l e^(S_il - m_i), m_i = the row's max (subtracting it "
          "changes nothing\nbut keeps e^ from overflowing). Each row is a probability "
          "distribution over the keys.")
    m = Sm.max(axis=1, keepdims=True)                            # (T, 1); the diagonal is finite
    E = np.exp(Sm - m)                                           # (T, T), 0 where masked
    P = E / E.sum(axis=1, keepdims=True)                         # (T, T)
    show("P", P)
    show("row sums of P", P.sum(axis=1), "each 1")
    show("P above the diagonal", P[mask], f"the masked weights; exactly 0: "
         f"{bool(np.all(P[mask] == 0))}")
    print("Row 0 can only see itself, so P_00 = 1.")

    step("5. output: out = P v")
    print("Each output row is an average of the value rows, weighted by that query's row "
          "of P.")
    out = P @ v                                                  # (T, T) @ (T, D) -> (T, D)
    show("out", out)

    step("6. loss: L = sum(out * G)")
    print("A stand-in for whatever the rest of the network does with out: its gradient "
          "dL/dout is\nexactly G, a fixed (T, D) array, so the backward pass starts from "
          "known numbers.")
    L = float((out * G).sum())
    show("G = dL/dout", G)
    print(f"L = {L:.6f}")
    return {"q": q, "k": k, "v": v, "S": S, "mask": mask, "P": P, "out": out, "L": L}


# ----------------------------------------------------------------------------------------------
# backward by hand

def backward_by_hand(x, W_q, W_k, W_v, G, fwd):
    """Every gradient of L, by the chain rule, one line per formula, in a dict."""
    q, k, v, P, mask = fwd["q"], fwd["k"], fwd["v"], fwd["P"], fwd["mask"]
    D = q.shape[1]
    dout = G                                                     # (T, D) dL/dout

    step("7. backward through out = P v: dv = P^T dout, dP = dout v^T")
    print("out_id = sum_j P_ij v_jd, so dL/dv_jd = sum_i P_ij dout_id and dL/dP_ij = "
          "sum_d dout_id v_jd.")
    dv = P.T @ dout                                              # (T, T) @ (T, D) -> (T, D)
    dP = dout @ v.T                                              # (T, D) @ (D, T) -> (T, T)
    show("dv", dv)
    show("dP", dP, "nonzero above the diagonal too: P there is a constant 0, not a function "
         "of S")

    step("8. backward through the softmax: dS = P * (dP - rowsum(dP * P))")
    # Derivation, one row at a time (drop the row index i): P_j = e^S_j / sum_l e^S_l, so
    #     dP_j/dS_l = P_j ([j == l] - P_l)
    # (the quotient rule: the numerator gives P_j [j == l], the denominator -P_j P_l). The
    # vector-Jacobian product is then
    #     dS_l = sum_j dP_j dP_j/dS_l = P_l dP_l - P_l sum_j dP_j P_j = P_l (dP_l - <dP, P>)
    # with <dP, P> = rowsum(dP * P): the (T, T) Jacobian of each row is never formed.
    print("dP_ij/dS_il = P_ij ([j == l] - P_il) (the softmax Jacobian); multiplied by dP it "
          "folds into\ndS = P * (dP - rowsum(dP * P)). Where P = 0 (masked) dS = 0: the "
          "-inf scores get no gradient.")
    dot = (dP * P).sum(axis=1, keepdims=True)                    # (T, 1) rowsum(dP * P)
    dS = P * (dP - dot)                                          # (T, T)
    show("rowsum(dP * P)", dot[:, 0])
    show("dS", dS)
    show("dS above the diagonal", dS[mask], f"exactly 0: {bool(np.all(dS[mask] == 0))}")
    show("row sums of dS", dS.sum(axis=1), "0 up to rounding: adding c to a row of S changes "
         "nothing")

    step("9. backward through S = q k^T / sqrt(D): dq = dS k / sqrt(D), dk = dS^T q / sqrt(D)")
    print("S_ij = sum_d q_id k_jd / sqrt(D): q_id meets every key j of its row, k_jd "
          "every query i\nof its column.")
    dq = dS @ k / math.sqrt(D)                                   # (T, T) @ (T, D) -> (T, D)
    dk = dS.T @ q / math.sqrt(D)                                 # (T, T) @ (T, D) -> (T, D)
    show("dq", dq, "row 0 is 0: query 0 sees only key 0, whose weight is 1 whatever S_00")
    show("dk", dk)

    step("10. backward through the projections: dW = x^T d(q|k|v); dx sums three paths")
    print("q = x W_q gives dW_q = x^T dq and a contribution dq W_q^T to dx; likewise k and "
          "v. x feeds all\nthree projections, so its gradient is the sum of the three "
          "(the chain rule adds over every use).")
    dW_q = x.T @ dq                                              # (C, T) @ (T, D) -> (C, D)
    dW_k = x.T @ dk                                              # (C, D)
    dW_v = x.T @ dv                                              # (C, D)
    dx_q, dx_k, dx_v = dq @ W_q.T, dk @ W_k.T, dv @ W_v.T        # (T, D) @ (D, C) -> (T, C)
    dx = dx_q + dx_k + dx_v                                      # (T, C)
    show("dW_q", dW_q)
    show("dW_k", dW_k)
    show("dW_v", dW_v)
    show("dx via q", dx_q)
    show("dx via k", dx_k)
    show("dx via v", dx_v)
    show("dx", dx, "the sum of the three")
    return {"dout": dout, "dv": dv, "dP": dP, "dS": dS, "dq": dq, "dk": dk, "dW_q": dW_q,
            "dW_k": dW_k, "dW_v": dW_v, "dx": dx}


# ----------------------------------------------------------------------------------------------
# the same head on the engine

def _leaves(x, W_q, W_k, W_v):
    return [tinyllm.tensor(a, requires_grad=True) for a in (x, W_q, W_k, W_v)]   # float64


def _leaf_grads(leaves):
    return dict(zip(("dx", "dW_q", "dW_k", "dW_v"), (t.grad for t in leaves)))


def engine_op_by_op(x, W_q, W_k, W_v, G):
    """The head from plain tensor ops (the lines of scaled_dot_product_attention), keeping
    the gradient of every intermediate with ``retain_grad``."""
    xt, wq, wk, wv = leaves = _leaves(x, W_q, W_k, W_v)
    T, D = x.shape[0], W_q.shape[1]
    q, k, v = (xt @ wq).retain_grad(), (xt @ wk).retain_grad(), (xt @ wv).retain_grad()
    S = ((q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))).retain_grad()   # (T, T)
    Sm = S.masked_fill(causal_mask(T, T), float("-inf"))
    P = F.softmax(Sm, axis=-1).retain_grad()                               # (T, T)
    out = (P @ v).retain_grad()                                            # (T, D)
    L = (out * tinyllm.tensor(G)).sum()
    L.backward()
    return ({"q": q.data, "k": k.data, "v": v.data, "S": S.data, "P": P.data, "out": out.data,
             "L": L.item()},
            {"dout": out.grad, "dv": v.grad, "dP": P.grad, "dS": S.grad, "dq": q.grad,
             "dk": k.grad, **_leaf_grads(leaves)})


def engine_sdpa(x, W_q, W_k, W_v, G):
    """The head through tinyllm.nn.attention.scaled_dot_product_attention (composed ops)."""
    xt, wq, wk, wv = leaves = _leaves(x, W_q, W_k, W_v)
    T = x.shape[0]
    q, k, v = (xt @ wq).retain_grad(), (xt @ wk).retain_grad(), (xt @ wv).retain_grad()
    out, P = scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, T))
    P.retain_grad()
    L = (out * tinyllm.tensor(G)).sum()
    L.backward()
    return ({"P": P.data, "out": out.data, "L": L.item()},
            {"dP": P.grad, "dq": q.grad, "dk": k.grad, "dv": v.grad, **_leaf_grads(leaves)})


def engine_fused(x, W_q, W_k, W_v, G):
    """The head through the fused op tinyllm.functional.attention (one node for S..out)."""
    xt, wq, wk, wv = leaves = _leaves(x, W_q, W_k, W_v)
    T, D = x.shape[0], W_q.shape[1]
    q, k, v = (xt @ wq).retain_grad(), (xt @ wk).retain_grad(), (xt @ wv).retain_grad()
    # the op wants (B, H, T, D): one batch entry, one head
    out = F.attention(q.reshape(1, 1, T, D), k.reshape(1, 1, T, D), v.reshape(1, 1, T, D),
                      causal=True).reshape(T, D)
    L = (out * tinyllm.tensor(G)).sum()
    L.backward()
    return ({"out": out.data, "L": L.item()},
            {"dq": q.grad, "dk": k.grad, "dv": v.grad, **_leaf_grads(leaves)})


def compare(label, hand, engine_fwd, engine_grads):
    """{name: max |hand - engine|} for every array the engine run produced; printed."""
    diffs = {}
    for name, a in list(engine_fwd.items()) + list(engine_grads.items()):
        diffs[name] = max_diff(hand[name], a)
    print(f"{label}, max |hand - engine|:")
    items = [f"{n} {d:.1e}" for n, d in diffs.items()]
    for i in range(0, len(items), 6):
        print("    " + "  ".join(items[i:i + 6]))
    return diffs


def check(results):
    """Stop with a clear message if any engine array differs from the hand one by > TOL."""
    worst = max(((d, path, name) for path, diffs in results.items()
                 for name, d in diffs.items()), key=lambda t: t[0])
    d, path, name = worst
    if not d <= TOL:                                   # a NaN fails too
        raise SystemExit(f"attention_walkthrough: {path}: {name} differs from the hand-computed "
                         f"value by {d:.3g} (tolerance {TOL:g})")
    return d


# ----------------------------------------------------------------------------------------------
# main

def main(argv=None):
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    T, C, D = args.T, args.C, args.D
    x = rng.standard_normal((T, C))                              # (T, C)
    W_q, W_k, W_v = (rng.standard_normal((C, D)) for _ in range(3))   # (C, D) each
    G = rng.standard_normal((T, D))                              # (T, D) dL/dout
    with np.printoptions(precision=4, suppress=True):
        print(f"one causal attention head: T = {T} positions, C = {C} input channels, head size "
              f"D = {D}, float64, seed {args.seed}")
        print("\n==== forward, by hand " + "=" * 78)
        fwd = forward_by_hand(x, W_q, W_k, W_v, G)
        print("\n==== backward, by hand " + "=" * 77)
        grads = backward_by_hand(x, W_q, W_k, W_v, G, fwd)
    hand = {**fwd, **grads}

    print("\n==== the engine gives the same numbers " + "=" * 61)
    print("Each run builds the head from float64 leaves x, W_q, W_k, W_v and calls "
          "L.backward();\nevery array it exposes is compared with the hand-computed one.\n")
    runs = {
        "op by op (matmul, *, masked_fill, softmax)": engine_op_by_op,
        "nn.attention.scaled_dot_product_attention": engine_sdpa,
        "functional.attention (fused op)": engine_fused,
    }
    results = {}
    for label, run in runs.items():
        results[label] = compare(label, hand, *run(x, W_q, W_k, W_v, G))
    worst = check(results)
    print(f"\nall agree: the largest difference is {worst:.2e} <= {TOL:g}")

    step("gradcheck: the fused op's backward against central finite differences")
    q4, k4, v4 = (tinyllm.tensor(a.reshape(1, 1, T, D), requires_grad=True)
                  for a in (fwd["q"], fwd["k"], fwd["v"]))
    tinyllm.gradcheck(lambda q, k, v: F.attention(q, k, v, causal=True), [q4, k4, v4])
    print("tinyllm.gradcheck(F.attention(q, k, v, causal=True)): passed (dq, dk, dv, every "
          "element)")
    tinyllm.gradcheck(
        lambda xt, wq, wk, wv: F.attention((xt @ wq).reshape(1, 1, T, D),
                                           (xt @ wk).reshape(1, 1, T, D),
                                           (xt @ wv).reshape(1, 1, T, D), causal=True),
        _leaves(x, W_q, W_k, W_v))
    print("tinyllm.gradcheck(the whole head from x, W_q, W_k, W_v): passed")
    return results


if __name__ == "__main__":
    main()
