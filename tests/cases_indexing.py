"""Op cases (tests/test_ops.py runs them): indexing of issue 19 (gather, take_along_axis,
index_select, scatter_add, masked_select). Indices repeat, so the scatter-add backward is tested
where positions are read more than once."""
import numpy as np

from tinyllm import functional as F
from tests.op_cases import C, normal

GATHER_IDX = np.array([[0, 0, 3], [2, 1, 2], [3, 3, 3]])            # x (3, 4), axis 1, repeats
GATHER_IDX0 = np.array([[1, 0, 1, 1], [2, 2, 0, 1]])                 # x (3, 4), axis 0
SMALL_IDX = np.array([[1], [0]])                                    # torch.gather: index smaller
ALONG_IDX = np.array([[[0], [2], [2]]])                             # (1, 3, 1): broadcasts over 0
SELECT_IDX = np.array([2, 0, 2, 2])
MASK = np.array([[True, False, True, True],
                 [False, False, False, True],
                 [True, True, False, False]])


def _torch_gather_ref(a, axis, idx):
    """torch.gather written out: out[i][j] = a[i][idx[i][j]] (axis 1) / a[idx[i][j]][j] (axis 0)."""
    out = np.empty(idx.shape)
    for i, j in np.ndindex(*idx.shape):
        out[i, j] = a[i, idx[i, j]] if axis == 1 else a[idx[i, j], j]
    return out


def _scatter_add_ref(x, axis, idx, src):
    out = x.copy()
    for i, j in np.ndindex(*idx.shape):
        if axis == 1:
            out[i, idx[i, j]] += src[i, j]
        else:
            out[idx[i, j], j] += src[i, j]
    return out


CASES = [
    C("gather_axis1_repeats", lambda a: F.gather(a, 1, GATHER_IDX),
      lambda a: _torch_gather_ref(a, 1, GATHER_IDX), normal(3, 4)),
    C("gather_dim0", lambda a: a.gather(dim=0, index=GATHER_IDX0),
      lambda a: _torch_gather_ref(a, 0, GATHER_IDX0), normal(3, 4)),
    C("gather_smaller_index", lambda a: F.gather(a, 1, SMALL_IDX),
      lambda a: _torch_gather_ref(a, 1, SMALL_IDX), normal(3, 4)),
    C("take_along_axis_bcast", lambda a: F.take_along_axis(a, ALONG_IDX, axis=1),
      lambda a: np.take_along_axis(a, ALONG_IDX, axis=1), normal(2, 3, 4)),
    C("take_along_axis_neg", lambda a: F.take_along_axis(a, GATHER_IDX - 4, axis=-1),
      lambda a: np.take_along_axis(a, GATHER_IDX - 4, axis=-1), normal(3, 4)),
    C("take_along_axis_flat", lambda a: F.take_along_axis(a, np.array([5, 0, 5]), axis=None),
      lambda a: np.take_along_axis(a, np.array([5, 0, 5]), axis=None), normal(2, 3)),
    C("index_select_axis1", lambda a: F.index_select(a, 1, SELECT_IDX),
      lambda a: np.take(a, SELECT_IDX, axis=1), normal(3, 4)),
    C("index_select_dim0", lambda a: a.index_select(dim=0, index=[1, 1]),
      lambda a: a[[1, 1]], normal(3, 2, 2)),
    C("scatter_add_axis1", lambda x, s: F.scatter_add(x, 1, GATHER_IDX, s),
      lambda x, s: _scatter_add_ref(x, 1, GATHER_IDX, s), normal(3, 4), normal(3, 3)),
    C("scatter_add_src_larger", lambda x, s: x.scatter_add(0, GATHER_IDX0, s),
      lambda x, s: _scatter_add_ref(x, 0, GATHER_IDX0, s), normal(3, 4), normal(3, 5)),
    C("masked_select", lambda a: F.masked_select(a, MASK), lambda a: a[MASK], normal(3, 4)),
    C("masked_select_bcast", lambda a: a.masked_select(MASK), lambda a: np.broadcast_to(
        a, MASK.shape)[MASK], normal(4)),
]
