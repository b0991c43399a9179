"""Linear algebra beyond matmul: einsum, outer, and the matrix-structure ops triu, tril,
diagonal.

einsum's backward is einsum again. For out = einsum('ij,jk->ik', a, b), out[i, k] =
sum_j a[i, j] b[j, k], so dL/da[i, j] = sum_k dout[i, k] b[j, k]: da = einsum('ik,jk->ij', dout,
b). In general the gradient of one operand is the einsum of dout with all the other operands,
written to that operand's subscripts: swap the output's subscripts with the operand's. Two
details make it exact for every subscript string:
- an index only that operand has and the output lacks (summed out inside it, 'ij->i' on j) is
  in no other term: the gradient is constant along it, so it is broadcast back;
- a repeated index ('ii->i', the diagonal) reads only the positions where the repeated indices
  are equal: the gradient goes to those positions, zeros elsewhere.
"""
from tinyllm import backend
from tinyllm.autograd.function import Function
from tinyllm.ops._util import as_float, as_tensor

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


class Einsum(Function):
    """out = einsum('<inputs[0]>,<inputs[1]>,...-><output>', *operands), explicit subscripts,
    every index of one size in all operands (``einsum`` has expanded '...' and size-1 axes).

    d operand_k = einsum(output, every other operand -> operand_k's distinct indices), then
    broadcast along the indices only operand_k has (summed out inside it), then, if operand_k
    repeats an index ('ii'), written onto that diagonal of zeros.
    Shapes: operand_k has one axis per letter of inputs[k]; out one per letter of ``output``;
    dout like out; each gradient like its operand.
    """

    def forward(self, *operands, inputs=(), output=""):
        xp = backend.get_array_module(*operands)
        self.operands, self.inputs, self.output = operands, inputs, output
        return xp.einsum(",".join(inputs) + "->" + output, *operands, optimize=True)

    def backward(self, dout):
        return tuple(self._operand_grad(dout, k) if need else None
                     for k, need in enumerate(self.needs_input_grad))

    def _operand_grad(self, dout, k):
        xp = backend.get_array_module(dout)
        a, subs = self.operands[k], self.inputs[k]
        others = [j for j in range(len(self.operands)) if j != k]
        seen = set(self.output).union(*(self.inputs[j] for j in others))
        distinct = "".join(dict.fromkeys(subs))                 # 'iij' -> 'ij'
        size = {s: n for s, n in zip(subs, a.shape)}
        target = "".join(s for s in distinct if s in seen)
        spec = ",".join([self.output] + [self.inputs[j] for j in others]) + "->" + target
        g = xp.einsum(spec, dout, *(self.operands[j] for j in others), optimize=True)
        # indices only this operand has: the gradient is the same all along them
        g = xp.broadcast_to(g.reshape([size[s] if s in seen else 1 for s in distinct]),
                            [size[s] for s in distinct])
        if len(distinct) == len(subs):
            return g
        # repeated indices: g lands on the diagonal positions that were read, zeros elsewhere
        da = xp.zeros(a.shape, dtype=dout.dtype)
        index = tuple(xp.arange(size[s]).reshape([-1 if t == s else 1 for t in distinct])
                      for s in subs)
        da[index] = g
        return da


class Outer(Function):
    """out[i, j] = x[i] y[j].   dx = dout @ y,  dy = dout^T @ x   (dx_i = sum_j dout_ij y_j).

    Shapes: x (M,), y (N,), out and dout (M, N).
    """

    def forward(self, x, y):
        self.x, self.y = x, y
        return x[:, None] * y[None, :]

    def backward(self, dout):
        dx = dout @ self.y if self.needs_input_grad[0] else None
        dy = dout.T @ self.x if self.needs_input_grad[1] else None
        return dx, dy


class Triu(Function):
    """out = x on and above diagonal ``k`` of the last two axes (j - i >= k), 0 below.

    dx = dout where kept, 0 where zeroed (those elements do not reach out).
    Shapes: x (..., M, N); out, dx like x.
    """

    def forward(self, x, k=0):
        xp = backend.get_array_module(x)
        self.keep = ~xp.tri(x.shape[-2], x.shape[-1], k - 1, dtype=bool)    # (M, N)
        return xp.where(self.keep, x, xp.zeros((), x.dtype))                # x's dtype, bool too

    def backward(self, dout):
        return backend.get_array_module(dout).where(self.keep, dout, 0)


class Tril(Function):
    """out = x on and below diagonal ``k`` of the last two axes (j - i <= k), 0 above.

    dx = dout where kept, 0 where zeroed.   Shapes: x (..., M, N); out, dx like x.
    """

    def forward(self, x, k=0):
        xp = backend.get_array_module(x)
        self.keep = xp.tri(x.shape[-2], x.shape[-1], k, dtype=bool)          # (M, N)
        return xp.where(self.keep, x, xp.zeros((), x.dtype))                # x's dtype, bool too

    def backward(self, dout):
        return backend.get_array_module(dout).where(self.keep, dout, 0)


class Diagonal(Function):
    """out[..., i] = x[..., i, i + offset] on the plane of ``axis1`` and ``axis2`` (the
    diagonal becomes the last axis; offset < 0 starts below the main diagonal).

    dx = zeros like x with dout written back onto that diagonal (each element read once).
    Shapes: x (..., M, ..., N, ...); out (the other axes..., L), L the diagonal's length.
    """

    def forward(self, x, offset=0, axis1=0, axis2=1):
        self.in_shape, self.offset, self.axes = x.shape, offset, (axis1, axis2)
        return backend.get_array_module(x).diagonal(x, offset, axis1, axis2).copy()

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        dx = xp.zeros(self.in_shape, dtype=dout.dtype)
        plane = xp.moveaxis(dx, self.axes, (-2, -1))           # a view: (..., M, N)
        i = xp.arange(dout.shape[-1])
        plane[..., i + max(-self.offset, 0), i + max(self.offset, 0)] = dout
        return dx


# ----------------------------------------------------------------------------------------------
# functional forms

def _parse(subscripts, operands):
    """(inputs, output) with '...' replaced by letters no operand uses, and the implicit
    output (no '->': the letters used once, sorted, after the '...' axes) spelled out."""
    spec = subscripts.replace(" ", "")
    lhs, arrow, out = spec.partition("->")
    inputs = lhs.split(",")
    if len(inputs) != len(operands):
        raise ValueError(f"einsum: {subscripts!r} names {len(inputs)} operands, got "
                         f"{len(operands)}")
    bad = set(spec) - set(_LETTERS) - set(",->.")
    if bad or any(s.replace("...", "").count(".") for s in inputs + [out]):
        raise ValueError(f"einsum: {subscripts!r}: subscripts are letters a-z, A-Z and '...'")
    spare = [c for c in _LETTERS if c not in spec]
    n_ell = max([t.ndim - len(s.replace("...", "")) for s, t in zip(inputs, operands)
                 if "..." in s] or [0])
    ell = "".join(spare[:n_ell])
    for k, (s, t) in enumerate(zip(inputs, operands)):
        if "..." in s:
            inputs[k] = s.replace("...", ell[n_ell - (t.ndim - len(s.replace("...", ""))):])
    if not arrow:
        letters = "".join(inputs)
        out = ell + "".join(sorted(c for c in set(letters) - set(ell) if letters.count(c) == 1))
    out = out.replace("...", ell)
    return inputs, out


def einsum(subscripts, *operands):
    """Einstein summation, as np.einsum / torch.einsum: e.g. 'ij,jk->ik' (matmul),
    'bij,bjk->bik', 'i,j->ij' (outer), 'ii->' (trace), 'ij->ji', 'ij->' (sum), '...ij->...ji';
    without '->' the output is the letters used once, sorted. Operands may also be given as one
    list. Size-1 axes broadcast against the other operands' sizes."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if not isinstance(subscripts, str):
        raise TypeError(f"einsum: subscripts must be a string such as 'ij,jk->ik', got "
                        f"{subscripts!r}")
    operands = [as_float(t) for t in operands]
    inputs, output = _parse(subscripts, operands)
    sizes = {}
    for k, (s, t) in enumerate(zip(inputs, operands)):
        if len(s) != t.ndim:
            raise ValueError(f"einsum: operand {k} has shape {t.shape} ({t.ndim} axes) but "
                             f"subscripts {s!r} ({len(s)} axes) in {subscripts!r}")
        own = {}
        for c, n in zip(s, t.shape):
            if own.setdefault(c, n) != n:
                raise ValueError(f"einsum: operand {k} repeats index {c!r} over axes of "
                                 f"different sizes (shape {t.shape}, subscripts {s!r})")
            if sizes.get(c, 1) == 1:
                sizes[c] = n
            elif n not in (1, sizes[c]):
                raise ValueError(f"einsum: index {c!r} has sizes {sizes[c]} and {n} in "
                                 f"{subscripts!r} (shapes {[o.shape for o in operands]})")
    if len(set(output)) != len(output) or set(output) - set("".join(inputs)):
        raise ValueError(f"einsum: output {output!r} of {subscripts!r} must name each input "
                         f"index at most once")
    from tinyllm.ops.shape import broadcast_to           # size-1 axes stretch (Expand)
    operands = [t if all(sizes[c] == n for c, n in zip(s, t.shape)) else
                broadcast_to(t, tuple(sizes[c] for c in s)) for s, t in zip(inputs, operands)]
    return Einsum.apply(*operands, inputs=tuple(inputs), output=output)


def outer(x, y):
    """out[i, j] = x[i] * y[j]; x and y are flattened first, as np.outer."""
    x, y = as_tensor(x), as_tensor(y)
    if x.ndim != 1 or y.ndim != 1:
        from tinyllm.ops.shape import flatten
        x, y = flatten(x), flatten(y)
    if x.dtype.kind != "f" or y.dtype.kind != "f":
        x, y = as_float(x), as_float(y)
    return Outer.apply(x, y)


def _matrix(op, x):
    x = as_tensor(x)
    if x.ndim < 2:
        raise ValueError(f"{op}: needs at least 2 axes (a matrix or a batch of them), got shape "
                         f"{x.shape}")
    return x


def triu(x, k=0, *, diagonal=None):
    """x with the elements below diagonal ``k`` zeroed (np.triu; torch.triu's ``diagonal=``)."""
    k = diagonal if diagonal is not None else k
    return Triu.apply(_matrix("triu", x), k=int(k))


def tril(x, k=0, *, diagonal=None):
    """x with the elements above diagonal ``k`` zeroed (np.tril; torch.tril's ``diagonal=``)."""
    k = diagonal if diagonal is not None else k
    return Tril.apply(_matrix("tril", x), k=int(k))


def diagonal(x, offset=0, axis1=0, axis2=1, *, dim1=None, dim2=None):
    """The diagonal ``offset`` of the plane (axis1, axis2), as a new last axis (np.diagonal,
    torch.diagonal with ``dim1``/``dim2``)."""
    x = _matrix("diagonal", x)
    axis1 = dim1 if dim1 is not None else axis1
    axis2 = dim2 if dim2 is not None else axis2
    for a in (axis1, axis2):
        if not -x.ndim <= a < x.ndim:
            raise ValueError(f"diagonal: axis {a} is out of range for shape {x.shape}")
    axis1, axis2 = axis1 % x.ndim, axis2 % x.ndim
    if axis1 == axis2:
        raise ValueError(f"diagonal: axis1 and axis2 must differ, got {axis1} twice")
    return Diagonal.apply(x, offset=int(offset), axis1=axis1, axis2=axis2)
