"""The value language of an expectation: ``value`` is a number or an arithmetic expression
(``+ - * /``, parentheses, ``min()``, ``max()``) over :data:`NAMES`.

The scenario model checks an expression when the file is read (:func:`check_expression`);
:mod:`chaos.expect` evaluates it over a run (:func:`evaluate_expression`).
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from typing import Protocol

__all__ = ["NAMES", "check_expression", "evaluate_expression", "uses_baseline"]


class HasValue(Protocol):
    """An expectation, as far as its value is concerned (the model's ``Expectation``)."""

    value: float | str

NAMES = ("rate", "users", "duration", "fault_duration", "baseline")
_BINOPS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_FUNCS: dict[str, Callable[..., float]] = {"min": min, "max": max}


def _names_in(tree: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id not in _FUNCS}


def check_expression(text: str) -> None:
    """Raise ValueError unless ``text`` is an arithmetic expression over :data:`NAMES`."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ValueError(f"{text!r} is not an arithmetic expression") from None
    for node in ast.walk(tree):
        allowed = (
            ast.Expression,
            ast.BinOp,
            ast.UnaryOp,
            ast.USub,
            ast.UAdd,
            ast.Constant,
            ast.Name,
            ast.Load,
            ast.Call,
            *_BINOPS,
        )
        if not isinstance(node, allowed):
            raise ValueError(
                f"{text!r}: only numbers, {', '.join(NAMES)}, + - * / and min()/max() are allowed"
            )
        if isinstance(node, ast.Constant) and not isinstance(node.value, int | float):
            raise ValueError(f"{text!r}: {node.value!r} is not a number")
        if isinstance(node, ast.Call) and not (
            isinstance(node.func, ast.Name) and node.func.id in _FUNCS
        ):
            raise ValueError(f"{text!r}: only min() and max() can be called")
    unknown = _names_in(tree) - set(NAMES)
    if unknown:
        raise ValueError(
            f"{text!r}: unknown name {sorted(unknown)[0]!r}; known: {', '.join(NAMES)}"
        )


def evaluate_expression(text: str, names: Mapping[str, float]) -> float:
    tree = ast.parse(text, mode="eval")

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            return float(node.value)
        if isinstance(node, ast.Name):
            return names[node.id]
        if isinstance(node, ast.UnaryOp):
            return -ev(node.operand) if isinstance(node.op, ast.USub) else ev(node.operand)
        if isinstance(node, ast.BinOp):
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name)
            return _FUNCS[node.func.id](*(ev(a) for a in node.args))
        raise ValueError(f"cannot evaluate {ast.dump(node)}")

    return ev(tree)


def uses_baseline(expectation: HasValue) -> bool:
    return isinstance(expectation.value, str) and "baseline" in _names_in(
        ast.parse(expectation.value, mode="eval")
    )
