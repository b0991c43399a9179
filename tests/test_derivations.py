"""docs/derivations.md and the code kept in step (issue 7).

The page has one card per formula: the math, the derivation of its backward, links of the form
``path::Qualified.name`` to the function that implements it, and ``tests/...::test_name`` to the
test that checks it, and a doctest example. These tests fail when
- an op (a ``Function`` subclass in tinyllm.ops) has no card linking its forward or backward, or
  the card links a file other than the one that defines the op;
- a link names a file, module attribute or test function that does not exist;
- a ``-k case`` selector matches no case of tests/test_ops.py, or an ``(#anchor)`` no heading;
- a topic of the issue has no card, or a card lacks its math, shapes, code, test or example;
- an example's printed value is not what the code computes;
- ``Op.explain()`` does not print the op's docstring and the file the card links.
"""
import ast
import contextlib
import doctest
import importlib
import inspect
import io
import os
import pkgutil
import re

import numpy as np

import tinyllm
import tinyllm.ops
from tinyllm.autograd.function import Function

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "derivations.md")

# the formulas issue 7 names, each a card heading
TOPICS = [
    "Language-model chain rule",
    "Autoregressive objective",
    "Masked-LM objective",
    "Scaled dot-product attention",
    "Multi-head attention",
    "Softmax and its Jacobian",
    "Cross-entropy and its gradient p - y",
    "Sinusoidal positional encoding",
    "Residual connection and LayerNorm",
    "Backprop through matmul",
    "Adam and AdamW update",
    "Beam search with length and repetition penalties",
    "VAE loss",
]
NOT_CARDS = {"How to read a card", "Op index"}     # the page's other "## " sections
MIN_EXAMPLES = 150                                 # doctest examples; the page has ~200

CODE_LINK = re.compile(r"`(tinyllm/[\w/]+\.py)::([A-Za-z_][\w.]*)`")
TEST_LINK = re.compile(r"`(tests/[\w/]+\.py)::([A-Za-z_][\w.]*)`")
CASE_SELECTOR = re.compile(r"`-k (\w+)`")
ANCHOR = re.compile(r"\]\(#([^)\s]+)\)")


# ----------------------------------------------------------------------------------------------
# reading the page and the code

def _text():
    with open(DOC, encoding="utf-8") as f:
        return f.read()


def _sections(text):
    """[(heading, body)] for every "## " heading outside code fences."""
    sections, heading, body, fenced = [], None, [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("## "):
            if heading is not None:
                sections.append((heading, "\n".join(body)))
            heading, body = line[3:].strip(), []
        elif heading is not None:
            body.append(line)
    if heading is not None:
        sections.append((heading, "\n".join(body)))
    return sections


def _cards():
    return [(h, b) for h, b in _sections(_text()) if h not in NOT_CARDS]


def _ops():
    """Every Function subclass defined in a module of the tinyllm.ops package."""
    ops = []
    for info in pkgutil.iter_modules(tinyllm.ops.__path__):
        module = importlib.import_module(f"tinyllm.ops.{info.name}")
        for obj in vars(module).values():
            if (inspect.isclass(obj) and issubclass(obj, Function)
                    and obj.__module__ == module.__name__):
                ops.append(obj)
    return sorted(ops, key=lambda c: c.__name__)


def _relpath(path):
    return os.path.relpath(path, REPO).replace(os.sep, "/")


def _slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def _resolve(path, qualname):
    """The object ``qualname`` names in the module at ``path``; raises with the reason."""
    module_name = path[:-3].replace("/", ".")
    module_name = module_name.removesuffix(".__init__")
    obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _defined_in(obj):
    """The repo-relative file that defines ``obj``, or None if inspect cannot tell."""
    try:
        return _relpath(inspect.getsourcefile(inspect.unwrap(obj)))
    except TypeError:
        return None


def _test_functions(path):
    """Names of the test file's top-level functions and classes, and Class.method names."""
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names |= {f"{node.name}.{n.name}" for n in node.body
                      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return names


def _test_ops_cases():
    """The case names tests/test_ops.py runs: the first argument of every ``C("name", ...)`` in
    it and in the families tests/cases_*.py."""
    names = set()
    tests_dir = os.path.join(REPO, "tests")
    for fname in sorted(os.listdir(tests_dir)):
        if fname != "test_ops.py" and not (fname.startswith("cases_") and fname.endswith(".py")):
            continue
        with open(os.path.join(tests_dir, fname), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        names |= {node.args[0].value for node in ast.walk(tree)
                  if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id == "C" and node.args and isinstance(node.args[0], ast.Constant)}
    return names


# ----------------------------------------------------------------------------------------------
# the checks

def test_every_topic_of_the_issue_has_a_card():
    headings = [h for h, _ in _sections(_text())]
    missing = [t for t in TOPICS if t not in headings]
    assert not missing, f"docs/derivations.md has no '## ' card for: {missing}"


def test_every_card_has_math_shapes_code_test_and_example():
    problems = []
    for heading, body in _cards():
        needs = {
            "math (a **Math** paragraph)": "**Math" in body,
            "shapes (a **Shapes.** paragraph)": "**Shapes.**" in body,
            "a code link `tinyllm/...py::name`": CODE_LINK.search(body),
            "a test link `tests/...py::test_name`": TEST_LINK.search(body),
            "a doctest example (>>>)": ">>> " in body,
        }
        problems += [f"card '{heading}' lacks {what}" for what, ok in needs.items() if not ok]
    assert not problems, "\n".join(problems)


def test_every_op_has_a_card_that_links_it_in_its_own_file():
    """Each Function subclass of tinyllm.ops: a card links ``file::Op.forward`` or
    ``file::Op.backward``, with file the one that defines the op, and the op index lists it."""
    cards = _cards()
    index = dict(_sections(_text())).get("Op index", "")
    ops = _ops()
    assert len(ops) >= 40, f"found only {len(ops)} ops by introspection: {ops}"
    problems = []
    for cls in ops:
        name, want = cls.__name__, _relpath(inspect.getsourcefile(cls))
        methods = {f"{name}.forward", f"{name}.backward"}
        linked = [(heading, path) for heading, body in cards
                  for path, qualname in CODE_LINK.findall(body) if qualname in methods]
        if not linked:
            problems.append(f"{name} ({want}): no card links `{want}::{name}.backward` or "
                            f"`.forward`")
        for heading, path in linked:
            if path != want:
                problems.append(f"{name}: card '{heading}' links {path}, but the op is defined "
                                f"in {want}")
        if f"| {name} |" not in index or f"`{want}::{name}.backward`" not in index:
            problems.append(f"{name}: missing from the Op index table (a row `| {name} |` with "
                            f"`{want}::{name}.backward`)")
    assert not problems, "\n".join(problems)


def test_every_code_link_resolves_to_an_object_defined_in_that_file():
    links = sorted(set(CODE_LINK.findall(_text())))
    assert len(links) >= 60, f"only {len(links)} code links found: is the link format intact?"
    broken = []
    for path, qualname in links:
        link = f"{path}::{qualname}"
        if not os.path.isfile(os.path.join(REPO, path)):
            broken.append(f"{link}: no file {path}")
            continue
        try:
            obj = _resolve(path, qualname)
        except (ImportError, AttributeError) as e:
            broken.append(f"{link}: {type(e).__name__}: {e}")
            continue
        where = _defined_in(obj)
        if where is not None and where != path:
            broken.append(f"{link}: {qualname} is defined in {where}, not in {path}")
    assert not broken, "broken code links in docs/derivations.md:\n" + "\n".join(broken)


def test_every_test_link_names_an_existing_test():
    links = sorted(set(TEST_LINK.findall(_text())))
    assert len(links) >= 25, f"only {len(links)} test links found: is the link format intact?"
    broken = []
    for path, name in links:
        if not os.path.isfile(os.path.join(REPO, path)):
            broken.append(f"{path}::{name}: no file {path}")
        elif name not in _test_functions(path):
            broken.append(f"{path}::{name}: no function {name} in {path}")
    assert not broken, "broken test links in docs/derivations.md:\n" + "\n".join(broken)


def test_every_case_selector_matches_a_case_of_test_ops():
    """``-k word`` runs the cases of tests/test_ops.py whose name contains ``word``."""
    cases = _test_ops_cases()
    assert len(cases) >= 50, f"parsed only {len(cases)} cases from tests/test_ops.py"
    selectors = set(CASE_SELECTOR.findall(_text()))
    assert selectors, "no `-k case` selectors found in docs/derivations.md"
    unmatched = sorted(k for k in selectors if not any(k in case for case in cases))
    assert not unmatched, f"`-k` selectors that match no case of tests/test_ops.py: {unmatched}"


def test_every_anchor_names_a_heading():
    slugs = {_slug(h) for h, _ in _sections(_text())}
    broken = sorted(set(ANCHOR.findall(_text())) - slugs)
    assert not broken, f"links to anchors that no heading has: {broken}"


def test_every_example_prints_what_the_code_computes():
    """Run the page as one doctest (the examples share one namespace, top to bottom)."""
    tinyllm.set_backend("numpy")
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            result = doctest.testfile(DOC, module_relative=False, report=True,
                                      optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    finally:
        tinyllm.set_default_dtype(np.float32)                 # the page sets float64
    assert result.failed == 0, f"{result.failed} doctest examples failed:\n{out.getvalue()}"
    assert result.attempted >= MIN_EXAMPLES, (
        f"only {result.attempted} doctest examples ran (expected >= {MIN_EXAMPLES}): are the "
        f"'>>> ' prompts intact?")


def test_explain_prints_the_docstring_and_the_file_the_card_links():
    """``Op.explain()`` is the short card: the op's docstring, and forward/backward file:line.
    The page's card for the op must link that same file."""
    text = _text()
    problems = []
    for cls in _ops():
        doc = inspect.cleandoc(cls.__doc__ or "")
        if not doc:
            problems.append(f"{cls.__name__}: no docstring, so explain() prints no math")
            continue
        printed = cls.explain(file=io.StringIO())
        want = _relpath(inspect.getsourcefile(cls))
        if doc not in printed:
            problems.append(f"{cls.__name__}.explain() does not contain the docstring")
        if f"{want}:" not in printed:
            problems.append(f"{cls.__name__}.explain() does not name {want}:<line>")
        if f"`{want}::{cls.__name__}." not in text:
            problems.append(f"{cls.__name__}: the page never links {want}::{cls.__name__}.*")
    assert not problems, "\n".join(problems)
