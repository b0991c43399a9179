"""1-D convolution (torch.nn.functional.conv1d), written as im2col + one contraction.

im2col gathers, for every output position t and kernel tap k, the input sample the tap reads,
cols[b, c, t, k] = xpad[b, c, t * stride + k * dilation], so the convolution (a correlation, as
in every deep-learning library: the kernel is not flipped) becomes one einsum with the weight.
The backward is the same two steps in reverse: dw contracts dout with cols (a correlation of x
with dout), and dx puts every dcols entry back on the sample it was read from (col2im, which is
the transposed convolution).
"""
from tinyllm import backend
from tinyllm.autograd.function import Function
from tinyllm.ops._util import as_float, operands
from tinyllm.ops.movement import Reshape


class Conv1d(Function):
    """out[b, o, t] = bias[o] + sum_{c, k} w[o, c, k] * xpad[b, c, t * stride + k * dilation]

    with xpad = x padded by (pad_left, pad_right) zeros on the time axis, and with groups G the
    sum over c running over the C_in / G input channels of o's group only.

    Backward, with cols[b, c, t, k] = xpad[b, c, t * stride + k * dilation] (im2col):
        dw[o, c, k] = sum_{b, t} dout[b, o, t] cols[b, c, t, k]       (x correlated with dout)
        dcols[b, c, t, k] = sum_o dout[b, o, t] w[o, c, k]
        dxpad[b, c, t * stride + k * dilation] += dcols[b, c, t, k]    (col2im: the transposed
        dx = dxpad without its padding                                  convolution)
        dbias[o] = sum_{b, t} dout[b, o, t]
    Shapes: x (B, C_in, T), w (C_out, C_in / G, K), bias (C_out,); out and dout (B, C_out,
    T_out), T_out = (T + pad_left + pad_right - dilation (K - 1) - 1) // stride + 1.
    """

    def forward(self, x, w, b=None, stride=1, padding=(0, 0), dilation=1, groups=1):
        xp = backend.get_array_module(x)
        B, C_in, T = x.shape
        C_out, Cg, K = w.shape
        G = groups
        xpad = xp.pad(x, ((0, 0), (0, 0), padding))                          # (B, C_in, Tp)
        T_out = (xpad.shape[2] - dilation * (K - 1) - 1) // stride + 1
        taps = stride * xp.arange(T_out)[:, None] + dilation * xp.arange(K)[None, :]
        cols = xpad[:, :, taps].reshape(B, G, Cg, T_out, K)                 # im2col
        wg = w.reshape(G, C_out // G, Cg, K)
        out = xp.einsum("bgctk,gock->bgot", cols, wg, optimize=True).reshape(B, C_out, T_out)
        self.cols, self.wg, self.x_shape, self.w_shape = cols, wg, x.shape, w.shape
        self.stride, self.padding, self.dilation, self.has_bias = stride, padding, dilation, \
            b is not None
        return out + b[:, None] if b is not None else out

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        B, C_in, T = self.x_shape
        G, Og, Cg, K = self.wg.shape
        T_out = dout.shape[2]
        dout_g = dout.reshape(B, G, Og, T_out)
        dx = dw = db = None
        if self.needs_input_grad[0]:
            dcols = xp.einsum("bgot,gock->bgctk", dout_g, self.wg, optimize=True)
            dcols = dcols.reshape(B, C_in, T_out, K)
            dxpad = xp.zeros((B, C_in, T + sum(self.padding)), dtype=dout.dtype)
            for k in range(K):            # tap k read samples k d, k d + s, ...: each once
                start = k * self.dilation
                dxpad[:, :, start:start + self.stride * (T_out - 1) + 1:self.stride] += \
                    dcols[:, :, :, k]
            dx = dxpad[:, :, self.padding[0]:self.padding[0] + T]
        if self.needs_input_grad[1]:
            dw = xp.einsum("bgot,bgctk->gock", dout_g, self.cols, optimize=True)
            dw = dw.reshape(self.w_shape)
        if self.has_bias:
            db = dout.sum(axis=(0, 2)) if self.needs_input_grad[2] else None
            return dx, dw, db
        return dx, dw


def _positive_int(name, value):
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"conv1d: {name} must be an int >= 1, got {value!r}")
    return value


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """1-D convolution as torch.nn.functional.conv1d: x (B, C_in, T) or unbatched (C_in, T),
    weight (C_out, C_in / groups, K), bias (C_out,) or None. ``padding``: an int (zeros on both
    ends), "valid" (0) or "same" (output length T; stride 1). For a causal convolution pad
    the left end yourself: ``conv1d(pad(x, pad=(K - 1, 0)), w)``."""
    x, weight = operands(as_float(x), weight)
    if bias is not None:
        weight, bias = operands(weight, bias)
    stride, dilation, groups = (_positive_int("stride", stride),
                                _positive_int("dilation", dilation),
                                _positive_int("groups", groups))
    if x.ndim not in (2, 3) or weight.ndim != 3:
        raise ValueError(f"conv1d: expected x (B, C_in, T) or (C_in, T) and weight (C_out, "
                         f"C_in / groups, K), got shapes {x.shape} and {weight.shape}")
    unbatched = x.ndim == 2
    if unbatched:
        x = Reshape.apply(x, shape=(1,) + x.shape)
    C_out, Cg, K = weight.shape
    if x.shape[1] != Cg * groups or C_out % groups:
        raise ValueError(f"conv1d: x has {x.shape[1]} channels and weight shape {weight.shape} "
                         f"with groups={groups}: need C_in = weight.shape[1] * groups and "
                         f"C_out divisible by groups")
    if bias is not None and bias.shape != (C_out,):
        raise ValueError(f"conv1d: bias must have shape (C_out,) = ({C_out},), got {bias.shape}")
    span = dilation * (K - 1)                          # how far the kernel reaches past t
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same":
        if stride != 1:
            raise ValueError("conv1d: padding='same' needs stride 1")
        padding = (span // 2, span - span // 2)
    elif isinstance(padding, (tuple, list)) and len(padding) == 1:
        padding = (int(padding[0]),) * 2
    elif isinstance(padding, int) and not isinstance(padding, bool) and padding >= 0:
        padding = (padding, padding)
    else:
        raise ValueError(f"conv1d: padding must be an int >= 0, 'valid' or 'same', got "
                         f"{padding!r}")
    if x.shape[2] + sum(padding) < span + 1:
        raise ValueError(f"conv1d: input length {x.shape[2]} with padding {padding} is shorter "
                         f"than the kernel's reach {span + 1} (K={K}, dilation={dilation})")
    args = (x, weight) if bias is None else (x, weight, bias)
    out = Conv1d.apply(*args, stride=stride, padding=padding, dilation=dilation, groups=groups)
    return Reshape.apply(out, shape=out.shape[1:]) if unbatched else out
