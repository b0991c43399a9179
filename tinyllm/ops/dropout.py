"""Dropout (Srivastava et al. 2014), "inverted": scaled at training time, identity at eval."""
from tinyllm import backend
from tinyllm.autograd.function import Function
from tinyllm.ops._util import as_float


class Dropout(Function):
    """y = x * m / (1 - p), with m_i ~ Bernoulli(1 - p) drawn once per forward.

    Dividing by the keep probability keeps E[y] = x, so evaluation needs no rescaling.
    dx = dout * m / (1 - p): the same mask and scale (y is linear in x for a fixed mask).
    """

    deterministic = False                                      # a new mask per forward

    def forward(self, x, p=0.5, generator=None):
        u = generator.random(x.shape)                          # uniform [0, 1), x's shape
        if backend.get_array_module(u) is not backend.get_array_module(x):
            u = backend.to_device(u, backend.device_of(x))     # a NumPy generator, GPU x
        keep = u >= p                                          # True with probability 1 - p
        self.scale = keep.astype(x.dtype) / (1.0 - p) if p < 1 else keep.astype(x.dtype)
        return x * self.scale

    def backward(self, dout):
        return dout * self.scale


def dropout(x, p=0.5, training=True, generator=None):
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p) when ``training``.

    Masks come from ``generator`` (a NumPy Generator, also for GPU tensors, or one from
    ``backend.get_generator``) or the global one seeded by ``tinyllm.manual_seed``, so seeded
    runs repeat exactly. With ``training=False`` or p == 0
    this returns x itself.
    """
    x = as_float(x)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: probability p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    gen = generator if generator is not None else backend.get_generator(x.device)
    return Dropout.apply(x, p=float(p), generator=gen)
