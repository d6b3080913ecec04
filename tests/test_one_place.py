"""One rule, one place: P(PNEUMONIA) = softmax(logits)[:, PNEUMONIA] is written once in ``utils/``.

The scan reads every module's syntax tree (not its text, so a call split over lines or written as a method is
found too): a softmax — ``torch.softmax(z, 1)``, ``F.softmax(z, dim=1)``, ``z.softmax(1)`` — whose result has its
PNEUMONIA column taken (``[:, 1]``, ``[..., PNEUMONIA]``), directly or through a name it was assigned to in the same
function. Any such place outside :func:`utils.train.model.pneumonia_probability` is a second copy of the rule.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from utils.train.model import PNEUMONIA

UTILS = Path(__file__).resolve().parent.parent / "utils"
HOME = ("train/model.py", "pneumonia_probability")


def _is_softmax(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    return (isinstance(func, ast.Attribute) and func.attr == "softmax") or (
        isinstance(func, ast.Name) and func.id == "softmax")


def _takes_pneumonia_column(index: ast.AST) -> bool:
    """``[:, 1]`` / ``[..., 1]`` / ``[:, PNEUMONIA]`` (also ``model.PNEUMONIA``): the second axis at class 1."""
    if not (isinstance(index, ast.Tuple) and len(index.elts) == 2):
        return False
    first, col = index.elts
    whole = isinstance(first, ast.Slice) and first.lower is first.upper is first.step is None
    ellipsis = isinstance(first, ast.Constant) and first.value is Ellipsis
    named = (isinstance(col, ast.Name) and col.id == "PNEUMONIA") or (
        isinstance(col, ast.Attribute) and col.attr == "PNEUMONIA")
    return (whole or ellipsis) and (named or (isinstance(col, ast.Constant) and col.value == PNEUMONIA))


def pneumonia_softmaxes(source: str) -> list[tuple[str, int]]:
    """``(enclosing function, line)`` of every softmax whose PNEUMONIA column is taken in ``source``."""
    found: list[tuple[str, int]] = []

    def scan(scope: ast.AST, where: str) -> None:
        body = list(ast.walk(scope))
        names = {t.id for n in body if isinstance(n, ast.Assign) and _is_softmax(n.value)
                 for t in n.targets if isinstance(t, ast.Name)}
        for n in body:
            if isinstance(n, ast.Subscript) and _takes_pneumonia_column(n.slice) and (
                    _is_softmax(n.value) or (isinstance(n.value, ast.Name) and n.value.id in names)):
                found.append((where, n.lineno))

    tree = ast.parse(source)
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]
    inner = {id(m) for f in functions for m in ast.walk(f) if m is not f}
    for f in functions:
        if id(f) not in inner:  # outermost functions; nested ones are scanned with them
            scan(f, getattr(f, "name", "<lambda>"))
    top = ast.Module(body=[s for s in tree.body if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                       ast.ClassDef))], type_ignores=[])
    scan(top, "<module>")
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        for item in cls.body:
            if not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                scan(ast.Module(body=[item], type_ignores=[]), "<module>")
    return sorted(set(found), key=lambda x: x[1])


@pytest.mark.parametrize("source, expected", [
    ("def f(z):\n    return torch.softmax(z, dim=1)[:, 1]\n", [("f", 2)]),
    ("def f(z):\n    return F.softmax(z.float(), 1)[..., PNEUMONIA].numpy()\n", [("f", 2)]),
    ("def f(z):\n    p = (z\n         .softmax(1))\n    return p[:, model.PNEUMONIA]\n", [("f", 4)]),
    ("class C:\n    def g(self, z):\n        return z.softmax(dim=1)[:, 1]\n", [("g", 3)]),
    ("probs = torch.softmax(LOGITS, 1)[:, 1]\n", [("<module>", 1)]),
    ("def f(z):\n    return torch.softmax(z, 1)[:, 0]\n", []),  # P(NORMAL) is another number
    ("def f(z):\n    return z.softmax(0)[1]\n", []),  # one row's class 1: not the batched column
    ("def f(z):\n    return z[:, 1]\n", []),  # a column of something that is no softmax
])
def test_the_scan_finds_the_rule_however_it_is_written(source, expected):
    assert pneumonia_softmaxes(source) == expected


def test_p_pneumonia_is_computed_in_one_helper_in_utils():
    places = [(p.relative_to(UTILS).as_posix(), fn, line) for p in sorted(UTILS.rglob("*.py"))
              for fn, line in pneumonia_softmaxes(p.read_text(encoding="utf-8"))]
    assert [(path, fn) for path, fn, _ in places] == [HOME], (
        f"softmax(...)[:, PNEUMONIA] must be written only in utils/{HOME[0]}::{HOME[1]} — call it instead: {places}")
