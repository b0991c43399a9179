"""Shape ops: squeeze / unsqueeze / flatten / unflatten (reshapes), expand, tile and
repeat_interleave, flip, roll, pad, chunk.

The reshapes are ``Reshape`` (movement.py) with a computed shape: no new backward. The others
copy or reorder elements; their backward sends each output element's gradient to the input
element it was copied from, and where one input element was copied several times (expand,
tile, repeat_interleave) the copies' gradients add up.

NumPy's argument names are the default; PyTorch's are accepted too: ``dim=`` for ``axis=``,
``dims=`` for flip/roll's axes, ``start_dim``/``end_dim`` for flatten.
"""
import numpy as np

from tinyllm import backend
from tinyllm.autograd.function import Function, unbroadcast
from tinyllm.autograd.tensor import Tensor
from tinyllm.ops._util import as_tensor, normalize_axes
from tinyllm.ops.movement import Reshape, split


class Expand(Function):
    """out = x broadcast to ``shape`` (NumPy's broadcast_to, PyTorch's expand): no copy.

    An element of x on a size-1 (or new leading) axis is read by every position along it, so
    dx = dout summed over those axes (``unbroadcast``), the same rule as a broadcasting add.
    Shapes: x (...), out ``shape``, dx like x.
    """

    def forward(self, x, shape=None):
        self.in_shape = x.shape
        return backend.get_array_module(x).broadcast_to(x, shape)

    def backward(self, dout):
        return unbroadcast(dout, self.in_shape)


class Tile(Function):
    """out = x repeated ``reps[i]`` times along axis i, block after block (np.tile, PyTorch's
    ``repeat``): out[r * n + j] = x[j] on an axis of length n.

    dx = dout viewed as (r0, n0, r1, n1, ...) and summed over every r axis: each x element
    receives the gradients of its r0 * r1 * ... copies.
    Shapes: x padded with leading 1s to len(reps) axes (n0, n1, ...); out (r0 n0, r1 n1, ...).
    """

    def forward(self, x, reps=None):
        self.in_shape, self.reps = x.shape, reps
        return backend.get_array_module(x).tile(x, reps)

    def backward(self, dout):
        n = (1,) * (len(self.reps) - len(self.in_shape)) + self.in_shape
        pairs = [d for r, m in zip(self.reps, n) for d in (r, m)]        # (r0, n0, r1, n1, ...)
        dx = dout.reshape(pairs).sum(axis=tuple(range(0, 2 * len(n), 2)))
        return dx.reshape(self.in_shape)


class RepeatInterleave(Function):
    """out = each element of x repeated in place along ``axis`` (np.repeat, PyTorch's
    repeat_interleave): [a, b] with repeats 2 -> [a, a, b, b]; repeats [1, 3] -> [a, b, b, b].

    Output position p reads x[idx[p]], idx = repeat(arange(n), repeats), so
    dx[i] = sum of dout[p] over the positions p with idx[p] == i (a scatter-add along axis).
    Shapes: x (..., n, ...); out (..., sum(repeats), ...) on ``axis``; dx like x.
    """

    def forward(self, x, repeats=None, axis=0):
        xp = backend.get_array_module(x)
        self.in_shape, self.axis = x.shape, axis
        self.idx = xp.repeat(xp.arange(x.shape[axis]), repeats)          # (sum(repeats),)
        return xp.repeat(x, repeats, axis=axis)

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        dx = xp.zeros(self.in_shape, dtype=dout.dtype)
        backend.scatter_add(xp.moveaxis(dx, self.axis, 0), self.idx,    # a view into dx
                            xp.moveaxis(dout, self.axis, 0))
        return dx


class Flip(Function):
    """out = x with the order of elements reversed along ``axes``.   dx = dout flipped back
    (flipping is its own inverse).   Shapes: out, dx like x."""

    def forward(self, x, axes=None):
        self.axes = axes
        return backend.get_array_module(x).flip(x, axis=axes)

    def backward(self, dout):
        return backend.get_array_module(dout).flip(dout, axis=self.axes)


class Roll(Function):
    """out = x shifted cyclically by ``shifts`` along ``axes``: out[(i + s) mod n] = x[i].

    dx = dout rolled by -shifts (the inverse shift).   Shapes: out, dx like x.
    """

    def forward(self, x, shifts=None, axes=None):
        self.shifts, self.axes = shifts, axes
        return backend.get_array_module(x).roll(x, shifts, axis=axes)

    def backward(self, dout):
        back = tuple(-s for s in self.shifts)
        return backend.get_array_module(dout).roll(dout, back, axis=self.axes)


class Pad(Function):
    """out = x with ``pad_width[i] = (before, after)`` elements added on both ends of axis i.

    mode "constant": the new elements are ``value``; out[before:before + n] = x, so dx is the
    middle slice of dout (the padding does not depend on x).
    Other modes copy x's own elements outward, along each axis by an index map
    idx = np.pad(arange(n), (before, after), mode), e.g. reflect with (2, 1) on n = 3:
    idx = [2, 1, 0, 1, 2, 1]; out = x gathered at idx, axis by axis, so dx = dout
    scatter-added back at idx (an element copied k times gets k gradients), axis by axis.
    Shapes: x (n0, n1, ...); out (before0 + n0 + after0, ...); dx like x.
    """

    def forward(self, x, pad_width=None, mode="constant", value=0.0):
        xp = backend.get_array_module(x)
        self.in_shape, self.pad_width, self.mode = x.shape, pad_width, mode
        if mode == "constant":
            return xp.pad(x, pad_width, mode="constant", constant_values=value)
        self.idx = [backend.to_device(np.pad(np.arange(n), pw, mode=mode), backend.device_of(x))
                    for n, pw in zip(x.shape, pad_width)]
        for axis, idx in enumerate(self.idx):
            x = xp.take(x, idx, axis=axis)
        return x

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        if self.mode == "constant":
            return dout[tuple(slice(b, b + n) for n, (b, _) in zip(self.in_shape, self.pad_width))]
        dx = dout
        for axis, idx in enumerate(self.idx):
            gathered = xp.zeros(dx.shape[:axis] + (self.in_shape[axis],) + dx.shape[axis + 1:],
                                dtype=dout.dtype)
            backend.scatter_add(xp.moveaxis(gathered, axis, 0), idx, xp.moveaxis(dx, axis, 0))
            dx = gathered
        return dx


# ----------------------------------------------------------------------------------------------
# functional forms

def _pick(op, numpy_value, torch_value, numpy_name, torch_name, default=None):
    """The argument given under its NumPy name or its PyTorch name (not both)."""
    if numpy_value is not None and torch_value is not None:
        raise TypeError(f"{op}: got both {numpy_name}= and {torch_name}= (they are the same "
                        f"argument); pass one")
    return numpy_value if numpy_value is not None else (
        torch_value if torch_value is not None else default)


def _axis(op, axis, ndim):
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{op}: axis must be an int, got {axis!r}")
    if not -max(ndim, 1) <= axis < max(ndim, 1):
        raise ValueError(f"{op}: axis {axis} is out of range for a tensor with {ndim} dims")
    return int(axis) % max(ndim, 1)


def squeeze(x, axis=None, *, dim=None):
    """x without size-1 axes: all of them (``axis=None``), or the ones named (int or tuple).

    NumPy semantics under ``axis=``: naming an axis whose size is not 1 is an error. PyTorch's
    under ``dim=``: such an axis is left alone.
    """
    x = as_tensor(x)
    named = _pick("squeeze", axis, dim, "axis", "dim")
    axes = normalize_axes(named, max(x.ndim, 1), "squeeze")       # a 0-d x takes 0 and -1
    if x.ndim == 0:                                   # axis 0 of a 0-d tensor: nothing to do
        return Reshape.apply(x, shape=())
    if named is not None and dim is None:
        wide = [a for a in axes if x.shape[a] != 1]
        if wide:
            raise ValueError(f"squeeze: axis {wide[0]} has size {x.shape[wide[0]]}, not 1 "
                             f"(shape {x.shape}); dim= skips such axes, as PyTorch")
    shape = tuple(n for i, n in enumerate(x.shape) if not (i in axes and n == 1))
    return Reshape.apply(x, shape=shape)


def unsqueeze(x, axis=None, *, dim=None):
    """x with new size-1 axes at ``axis`` (an int or a tuple, positions in the result)."""
    x = as_tensor(x)
    axis = _pick("unsqueeze", axis, dim, "axis", "dim")
    if axis is None:
        raise TypeError("unsqueeze: missing the axis (axis= or dim=) where the new axis goes")
    ndim = x.ndim + (len(axis) if isinstance(axis, (tuple, list)) else 1)
    axes = normalize_axes(tuple(axis) if isinstance(axis, list) else axis, ndim, "unsqueeze")
    rest = iter(x.shape)
    return Reshape.apply(x, shape=tuple(1 if i in axes else next(rest) for i in range(ndim)))


expand_dims = unsqueeze


def flatten(x, start_axis=0, end_axis=-1, *, start_dim=None, end_dim=None):
    """x with axes ``start_axis .. end_axis`` (inclusive) merged into one, as torch.flatten;
    a 0-d x becomes shape (1,)."""
    x = as_tensor(x)
    start = _pick("flatten", None if start_axis == 0 else start_axis, start_dim, "start_axis",
                  "start_dim", 0)
    end = _pick("flatten", None if end_axis == -1 else end_axis, end_dim, "end_axis", "end_dim",
                -1)
    if x.ndim == 0:
        return Reshape.apply(x, shape=(1,))
    start, end = _axis("flatten", start, x.ndim), _axis("flatten", end, x.ndim)
    if start > end:
        raise ValueError(f"flatten: start axis {start} comes after end axis {end} "
                         f"(shape {x.shape})")
    merged = int(np.prod(x.shape[start:end + 1]))
    return Reshape.apply(x, shape=x.shape[:start] + (merged,) + x.shape[end + 1:])


def unflatten(x, axis=None, sizes=None, *, dim=None):
    """x with ``axis`` (PyTorch's ``dim=``) split into ``sizes`` (one entry may be -1), as
    torch.unflatten."""
    x = as_tensor(x)
    axis = _pick("unflatten", axis, dim, "axis", "dim")
    if axis is None or sizes is None:
        raise TypeError("unflatten: needs the axis (axis= or dim=) and the sizes")
    axis = _axis("unflatten", axis, x.ndim)
    sizes = tuple(int(s) for s in sizes)
    known = int(np.prod([s for s in sizes if s != -1]))
    n = x.shape[axis]
    if sizes.count(-1) > 1 or (-1 in sizes and (known == 0 or n % known)) or (
            -1 not in sizes and known != n):
        raise ValueError(f"unflatten: sizes {sizes} do not multiply to the length {n} of axis "
                         f"{axis} (shape {x.shape})")
    sizes = tuple(n // known if s == -1 else s for s in sizes)
    return Reshape.apply(x, shape=x.shape[:axis] + sizes + x.shape[axis + 1:])


def broadcast_to(x, shape):
    """x broadcast to ``shape`` (NumPy's rules: size-1 and missing leading axes stretch); a size
    of -1 keeps that axis's size, as torch.broadcast_to (see ``expand``)."""
    x = as_tensor(x)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(n) for n in shape)
    if -1 in shape:
        return expand(x, shape)
    if len(shape) < x.ndim or any(n != m and n != 1 for n, m in
                                  zip(x.shape[::-1], shape[::-1])):
        raise ValueError(f"broadcast_to: cannot broadcast shape {x.shape} to {shape}")
    return Expand.apply(x, shape=shape)


def expand(x, *sizes):
    """PyTorch's expand: ``broadcast_to`` where a size of -1 keeps that axis's size."""
    x = as_tensor(x)
    if len(sizes) == 1 and not isinstance(sizes[0], (int, np.integer)):
        sizes = tuple(sizes[0])
    lead = len(sizes) - x.ndim
    if lead < 0:
        raise ValueError(f"expand: {len(sizes)} sizes {sizes} for a tensor with {x.ndim} dims "
                         f"(shape {x.shape}): give at least one size per axis")
    if any(s == -1 for s in sizes[:lead]):
        raise ValueError(f"expand: -1 is not allowed for a new leading axis (sizes {sizes})")
    shape = tuple(x.shape[i - lead] if s == -1 else int(s) for i, s in enumerate(sizes))
    return broadcast_to(x, shape)


def tile(x, reps=None, *, dims=None):
    """x repeated ``reps[i]`` times along each axis, as np.tile (and PyTorch's ``repeat``);
    torch.tile's ``dims=`` is accepted for ``reps``."""
    x = as_tensor(x)
    reps = _pick("tile", reps, dims, "reps", "dims")
    if reps is None:
        raise TypeError("tile: missing the repetitions (reps= or dims=)")
    reps = (reps,) if isinstance(reps, (int, np.integer)) else tuple(int(r) for r in reps)
    if any(r < 0 for r in reps):
        raise ValueError(f"tile: repetitions must be >= 0, got {reps}")
    reps = (1,) * (x.ndim - len(reps)) + reps              # np.tile pads reps with leading 1s
    return Tile.apply(x, reps=reps)


def repeat(x, *sizes):
    """PyTorch's ``Tensor.repeat(*sizes)``: np.tile semantics (not np.repeat; that is
    ``repeat_interleave``)."""
    if len(sizes) == 1 and not isinstance(sizes[0], (int, np.integer)):
        sizes = tuple(sizes[0])
    return tile(x, sizes)


def repeat_interleave(x, repeats, axis=None, *, dim=None):
    """Each element repeated in place (np.repeat): ``repeats`` an int or one count per element
    along ``axis``; ``axis=None`` works on the flattened x."""
    x = as_tensor(x)
    axis = _pick("repeat_interleave", axis, dim, "axis", "dim")
    if axis is None:
        x, axis = flatten(x), 0
    axis = _axis("repeat_interleave", axis, x.ndim)
    if isinstance(repeats, Tensor):
        repeats = repeats.data
    reps = np.asarray(backend.asnumpy(repeats))
    if reps.dtype.kind not in "iu" or reps.ndim > 1 or (reps.ndim == 1 and reps.size not in (
            1, x.shape[axis])) or (reps < 0).any():
        raise ValueError(f"repeat_interleave: repeats must be an int >= 0 or one count >= 0 per "
                         f"element of axis {axis} (length {x.shape[axis]}), got {repeats!r}")
    # host ints (CuPy's repeat takes no device array); one count is the same as an int
    reps = int(reps.reshape(())) if reps.size == 1 else [int(r) for r in reps]
    return RepeatInterleave.apply(x, repeats=reps, axis=axis)


def _axes_tuple(op, axes, ndim):
    if axes is None:
        return None
    single = isinstance(axes, (int, np.integer))
    axes = (axes,) if single else tuple(axes)
    return tuple(_axis(op, a, ndim) for a in axes)


def flip(x, axis=None, *, dims=None):
    """x reversed along ``axis`` (int or tuple; None: every axis), as np.flip / torch.flip."""
    x = as_tensor(x)
    axes = _axes_tuple("flip", _pick("flip", axis, dims, "axis", "dims"), x.ndim)
    if axes is None or x.ndim == 0:                     # a 0-d x has nothing to reverse
        axes = tuple(range(x.ndim))
    return Flip.apply(x, axes=axes)


def roll(x, shifts, axis=None, *, dims=None):
    """x shifted cyclically: ``shifts`` (int or tuple) along ``axis`` (int or tuple of the same
    length); ``axis=None`` rolls the flattened x and keeps its shape (np.roll, torch.roll)."""
    x = as_tensor(x)
    axes = _axes_tuple("roll", _pick("roll", axis, dims, "axis", "dims"), x.ndim)
    shifts = (shifts,) if isinstance(shifts, (int, np.integer)) else tuple(shifts)
    if axes is None:
        if len(shifts) != 1:
            raise ValueError(f"roll: {len(shifts)} shifts {shifts} need as many axes; without "
                             f"an axis x is rolled flat by one shift")
        return Reshape.apply(Roll.apply(flatten(x), shifts=shifts, axes=(0,)), shape=x.shape)
    if len(shifts) != len(axes):
        raise ValueError(f"roll: shifts {shifts} and axes {axes} must have the same length")
    return Roll.apply(x, shifts=tuple(int(s) for s in shifts), axes=axes)


def chunk(x, chunks, axis=0, *, dim=None):
    """x split along ``axis`` into ``chunks`` parts of ceil(n / chunks) elements, the last one
    smaller, as torch.chunk (so there may be fewer than ``chunks`` parts). Each is a slice."""
    x = as_tensor(x)
    axis = _axis("chunk", _pick("chunk", None if axis == 0 else axis, dim, "axis", "dim", 0),
                 x.ndim)
    if isinstance(chunks, bool) or not isinstance(chunks, (int, np.integer)) or chunks < 1:
        raise ValueError(f"chunk: chunks must be an int >= 1, got {chunks!r}")
    n = x.shape[axis]
    size = max(-(-n // int(chunks)), 1)
    return split(x, list(range(size, n, size)), axis=axis)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "symmetric": "symmetric",
              "edge": "edge", "replicate": "edge", "wrap": "wrap", "circular": "wrap"}


def pad(x, pad_width=None, mode="constant", value=0.0, *, pad=None, constant_values=None):
    """x padded, with NumPy's ``pad_width`` by default, PyTorch's flat ``pad=`` on request.

    ``pad_width`` (NumPy, the default): an int (every side of every axis), one (before, after)
    pair for every axis, or one pair per axis, first axis first: ``pad(x, ((0, 0), (1, 2)))``.
    ``pad=`` (torch.nn.functional.pad): a flat tuple starting from the LAST axis,
    (last_before, last_after, second_last_before, ...): ``pad(x, pad=(1, 2))`` is the same call.
    mode: "constant" (with ``value``; NumPy's ``constant_values`` is accepted), "reflect",
    "symmetric", "edge" / "replicate", "wrap" / "circular" (NumPy's and PyTorch's names).
    """
    x = as_tensor(x)
    if (pad_width is None) == (pad is None):
        raise TypeError("pad: give pad_width (NumPy's per-axis pairs) or pad= (PyTorch's flat "
                        "last-axis-first tuple), exactly one")
    if mode not in _PAD_MODES:
        raise ValueError(f"pad: mode must be one of {sorted(_PAD_MODES)}, got {mode!r}")
    if constant_values is not None:
        value = constant_values
    if pad is not None:
        flat = tuple(int(p) for p in pad)
        if len(flat) % 2 or len(flat) // 2 > x.ndim:
            raise ValueError(f"pad: pad= needs an even number of entries, at most 2 per axis "
                             f"(last axis first), got {pad!r} for shape {x.shape}")
        pairs = [flat[i:i + 2] for i in range(0, len(flat), 2)][::-1]
        widths = [(0, 0)] * (x.ndim - len(pairs)) + pairs
    else:
        try:
            widths = np.broadcast_to(np.asarray(pad_width, dtype=np.int64), (x.ndim, 2))
        except ValueError:
            raise ValueError(f"pad: pad_width {pad_width!r} is not an int, a (before, after) "
                             f"pair or one pair per axis of shape {x.shape}; for PyTorch's flat "
                             f"last-axis-first form use pad=") from None
    widths = tuple((int(b), int(a)) for b, a in widths)
    if any(w < 0 for pair in widths for w in pair):
        raise ValueError(f"pad: widths must be >= 0, got {widths}")
    mode = _PAD_MODES[mode]
    if mode != "constant" and any(n == 0 and pair != (0, 0) for n, pair in zip(x.shape, widths)):
        raise ValueError(f"pad: mode {mode!r} cannot pad an empty axis (shape {x.shape})")
    return Pad.apply(x, pad_width=widths, mode=mode, value=value)
