"""Op cases for tinyllm/ops/linalg.py (einsum, outer, triu, tril, diagonal) and
tinyllm/ops/conv.py (conv1d), run by tests/test_ops.py: forward against NumPy, float64
gradcheck, float32 against float64.

einsum's backward is einsum with the output's and the operand's subscripts swapped; the cases
cover two-operand contractions, one-operand forms (trace, transpose, sums), repeated indices
(diagonals), indices summed inside one operand (broadcast back), '...', the implicit output,
three operands, and size-1 axes broadcasting.
"""
import numpy as np

from tinyllm import functional as F
from tests.op_cases import C, normal


def _einsum_case(name, spec, *shapes):
    return C(f"einsum_{name}", lambda *xs: F.einsum(spec, *xs),
             lambda *xs: np.einsum(spec, *xs), *(normal(*s) for s in shapes))


def _conv1d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """conv1d written out as loops over (o, t, c, k): the definition, nothing shared."""
    B, C_in, T = x.shape
    C_out, Cg, K = w.shape
    xpad = np.pad(x, ((0, 0), (0, 0), (padding, padding)))
    T_out = (T + 2 * padding - dilation * (K - 1) - 1) // stride + 1
    out = np.zeros((B, C_out, T_out))
    Og = C_out // groups
    for o in range(C_out):
        g = o // Og
        for t in range(T_out):
            for c in range(Cg):
                for k in range(K):
                    out[:, o, t] += w[o, c, k] * xpad[:, g * Cg + c, t * stride + k * dilation]
    return out + (b[:, None] if b is not None else 0)


CASES = [
    _einsum_case("matmul", "ij,jk->ik", (3, 4), (4, 5)),
    _einsum_case("batched", "bij,bjk->bik", (2, 3, 4), (2, 4, 5)),
    _einsum_case("attention_scores", "bhqd,bhkd->bhqk", (2, 2, 3, 4), (2, 2, 5, 4)),
    _einsum_case("outer", "i,j->ij", (3,), (4,)),
    _einsum_case("dot", "i,i->", (5,), (5,)),
    _einsum_case("hadamard_sum", "ij,ij->i", (3, 4), (3, 4)),
    _einsum_case("contract_two", "ijk,jkl->il", (2, 3, 4), (3, 4, 2)),
    _einsum_case("summed_inside_operand", "ij,k->ik", (2, 3), (4,)),
    _einsum_case("both_summed_inside", "ij,kl->", (2, 3), (4, 2)),
    _einsum_case("trace", "ii->", (4, 4)),
    _einsum_case("diag", "ii->i", (3, 3)),
    _einsum_case("diag_times", "ii,i->i", (3, 3), (3,)),
    _einsum_case("repeated_three", "iij,jk->ik", (3, 3, 2), (2, 4)),
    _einsum_case("repeated_apart", "iji->j", (2, 3, 2)),
    _einsum_case("transpose", "ij->ji", (2, 3)),
    _einsum_case("permute3", "ijk->kij", (2, 3, 4)),
    _einsum_case("sum_all", "ij->", (2, 3)),
    _einsum_case("sum_rows", "ij->j", (2, 3)),
    _einsum_case("ellipsis", "...ij,...jk->...ik", (2, 3, 4), (4, 5)),
    _einsum_case("ellipsis_transpose", "...ij->...ji", (2, 2, 3)),
    _einsum_case("implicit", "ij,jk", (3, 4), (4, 2)),
    _einsum_case("implicit_order", "ba", (2, 3)),
    _einsum_case("three_operands", "ij,jk,kl->il", (2, 3), (3, 4), (4, 2)),
    _einsum_case("size1_broadcast", "ij,ij->ij", (1, 3), (4, 3)),
    C("einsum_list_operands", lambda a, b: F.einsum("ij,j->i", [a, b]),
      lambda a, b: a @ b, normal(3, 4), normal(4)),
    C("outer", F.outer, np.outer, normal(3), normal(4)),
    C("outer_method_flattens", lambda a, b: a.outer(b), np.outer, normal(2, 2), normal(3)),
    C("triu", F.triu, np.triu, normal(4, 4)),
    C("triu_k_batched", lambda a: F.triu(a, 1), lambda a: np.triu(a, 1), normal(2, 3, 5)),
    C("tril", F.tril, np.tril, normal(4, 3)),
    C("tril_diagonal_torch", lambda a: a.tril(diagonal=-1), lambda a: np.tril(a, -1),
      normal(2, 4, 4)),
    C("diagonal", F.diagonal, np.diagonal, normal(4, 4)),
    C("diagonal_offset", lambda a: F.diagonal(a, 1), lambda a: np.diagonal(a, 1), normal(3, 5)),
    C("diagonal_below_axes", lambda a: a.diagonal(-1, dim1=-1, dim2=0),
      lambda a: np.diagonal(a, -1, -1, 0), normal(4, 2, 3)),
    C("conv1d", F.conv1d, _conv1d, normal(2, 3, 9), normal(4, 3, 3), normal(4)),
    C("conv1d_stride_pad_dilation", lambda x, w, b: F.conv1d(x, w, b, 2, 2, 2),
      lambda x, w, b: _conv1d(x, w, b, 2, 2, 2), normal(2, 2, 11), normal(3, 2, 3), normal(3)),
    C("conv1d_groups_no_bias", lambda x, w: F.conv1d(x, w, groups=2),
      lambda x, w: _conv1d(x, w, groups=2), normal(1, 4, 6), normal(6, 2, 2)),
    C("conv1d_same", lambda x, w: F.conv1d(x, w, padding="same"),
      lambda x, w: _conv1d(x, w, padding=1), normal(2, 2, 5), normal(3, 2, 3)),
    C("conv1d_causal", lambda x, w: F.conv1d(F.pad(x, pad=(2, 0)), w),
      lambda x, w: _conv1d(np.pad(x, ((0, 0), (0, 0), (2, 0))), w), normal(2, 3, 6),
      normal(2, 3, 3)),
    C("conv1d_unbatched_k1", lambda x, w: F.conv1d(x, w, stride=3),
      lambda x, w: _conv1d(x[None], w, stride=3)[0], normal(2, 7), normal(3, 2, 1)),
]
