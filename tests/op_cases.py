"""The declarative op-test harness's pieces: ``Case``, ``C`` and the input makers.

tests/test_ops.py runs four checks on every case (forward float64 and float32 against a NumPy
reference, backward by float64 gradcheck, float32 grads against float64). Its own CASES list
holds the first ops; each further family of ops keeps its cases in a module
``tests/cases_<family>.py`` that defines ``CASES = [C(...), ...]`` with the makers below, and
``extra_cases()`` gathers them, so adding a family touches no shared list.
"""
import importlib
import pkgutil

import numpy as np

import tests


# ----------------------------------------------------------------------------------------------
# input makers: rng -> array

def normal(*shape):
    return lambda rng: rng.standard_normal(shape)


def positive(*shape):
    return lambda rng: rng.uniform(0.5, 2.0, shape)


def away_from_zero(*shape):
    """Magnitudes in [0.2, 2] with random signs (keeps finite differences off kinks)."""
    return lambda rng: rng.uniform(0.2, 2.0, shape) * rng.choice([-1.0, 1.0], shape)


def distinct(*shape):
    """A random permutation of spread-out values: no ties for max."""
    n = int(np.prod(shape))
    return lambda rng: (rng.permutation(n).astype(np.float64) * 0.1 + 0.01).reshape(shape)


def ints(high, *shape):
    return lambda rng: rng.integers(0, high, shape)


def const(value):
    return lambda rng: np.asarray(value)


class Case:
    def __init__(self, name, fn, ref, inputs, tol64=1e-10, tol32=2e-5):
        self.name, self.fn, self.ref, self.inputs = name, fn, ref, inputs
        self.tol64, self.tol32 = tol64, tol32

    def arrays(self, seed=0):
        rng = np.random.default_rng(seed)
        return [make(rng) for make in self.inputs]

    def __repr__(self):
        return self.name


def C(name, fn, ref, *inputs, **kw):
    return Case(name, fn, ref, list(inputs), **kw)


def extra_cases():
    """Every ``CASES`` list of the modules tests/cases_*.py, in name order."""
    out = []
    for info in sorted(pkgutil.iter_modules(tests.__path__), key=lambda m: m.name):
        if info.name.startswith("cases_"):
            out += importlib.import_module(f"tests.{info.name}").CASES
    return out
