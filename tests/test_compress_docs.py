"""docs/compression.md kept in step with the code: its examples run as a doctest, and every
``path::name`` link names a function or test that exists."""
import contextlib
import doctest
import importlib
import io
import os
import re

import numpy as np

import tinyllm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "compression.md")
LINK = re.compile(r"`((?:tinyllm|tests)/[\w/]+\.py)::([A-Za-z_][\w.]*)`")
CARDS = ["Distillation loss and its gradient", "Pruning with masks",
         "int8 symmetric quantization"]


def _text():
    with open(DOC, encoding="utf-8") as f:
        return f.read()


def test_cards_are_there():
    headings = re.findall(r"^## (.+)$", _text(), flags=re.M)
    assert headings == CARDS


def test_links_name_existing_code_and_tests():
    links = LINK.findall(_text())
    assert len(links) >= 20
    for path, name in links:
        assert os.path.isfile(os.path.join(REPO, path)), path
        module = importlib.import_module(path[:-3].replace("/", "."))
        obj = module
        for part in name.split("."):
            assert hasattr(obj, part), f"{path}::{name}"
            obj = getattr(obj, part)


def test_examples_run():
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            result = doctest.testfile(DOC, module_relative=False, report=True,
                                      optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    finally:
        tinyllm.set_default_dtype(np.float32)                   # the page sets float64
    assert result.failed == 0, out.getvalue()
    assert result.attempted >= 20
