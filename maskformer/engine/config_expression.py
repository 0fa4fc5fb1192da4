"""
Evaluating the expressions of the published configs' ``!!python/object/apply:eval`` tags without
running code.

The published release writes e.g. ``MIN_SIZE_TRAIN: !!python/object/apply:eval
["[int(x * 0.1 * 512) for x in range(5, 21)]"]``. :func:`evaluate_expression` walks the
expression's ``ast`` and admits only literals, tuples and lists, arithmetic on numbers, the calls
``int``/``float``/``round``/``range`` and list comprehensions; the only names are comprehension
variables. Sizes are bounded (range lengths, exponents, integer magnitudes, and the total number
of evaluation steps), so a hostile expression is refused instead of exhausting time or memory.
"""

import ast
import math
import operator
from typing import Any, Callable, Dict

__all__ = ["UnsafeExpressionError", "evaluate_expression"]

MAX_STEPS = 100_000  # evaluated nodes, comprehension iterations included
MAX_ITEMS = 10_000  # length of a range or list
MAX_INT_BITS = 256  # magnitude of an integer result
MAX_EXPONENT = 256


class UnsafeExpressionError(ValueError):
    """The expression uses something outside the admitted subset, or exceeds a size bound."""


_BINARY: Dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: Dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _to_int(value=0, *rest):
    if rest or not (_is_number(value) or isinstance(value, str)):
        raise UnsafeExpressionError("int() takes one number or string")
    return int(value)


def _to_float(value=0.0, *rest):
    if rest or not (_is_number(value) or isinstance(value, str)):
        raise UnsafeExpressionError("float() takes one number or string")
    return float(value)


def _round(value, *digits):
    if not _is_number(value) or len(digits) > 1 or not all(_is_number(d) for d in digits):
        raise UnsafeExpressionError("round() takes a number and optionally a number of digits")
    if digits and abs(digits[0]) > MAX_EXPONENT:
        raise UnsafeExpressionError(f"round() digits beyond {MAX_EXPONENT}")
    return round(value, *digits)


def _range(*args):
    if not 1 <= len(args) <= 3 or not all(isinstance(a, int) and _is_number(a) for a in args):
        raise UnsafeExpressionError("range() takes one to three integers")
    values = range(*args)
    if len(values) > MAX_ITEMS:
        raise UnsafeExpressionError(f"range() of {len(values)} items (at most {MAX_ITEMS})")
    return list(values)


_CALLS = {"int": _to_int, "float": _to_float, "round": _round, "range": _range}


class _Evaluator:
    """One evaluation: its comprehension variables and its remaining step budget."""

    def __init__(self):
        self.steps = 0
        self.variables: Dict[str, Any] = {}

    def eval(self, node: ast.AST):
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise UnsafeExpressionError(f"more than {MAX_STEPS} evaluation steps")
        method = getattr(self, f"eval_{type(node).__name__}", None)
        if method is None:
            raise UnsafeExpressionError(f"{_describe(node)} is not allowed")
        value = method(node)
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise UnsafeExpressionError(f"an integer of more than {MAX_INT_BITS} bits")
        return value

    def eval_Expression(self, node: ast.Expression):
        return self.eval(node.body)

    def eval_Constant(self, node: ast.Constant):
        if not (node.value is None or isinstance(node.value, (bool, int, float, str))):
            raise UnsafeExpressionError(f"the literal {node.value!r} is not allowed")
        return node.value

    def eval_Tuple(self, node: ast.Tuple):
        return tuple(self._items(node.elts))

    def eval_List(self, node: ast.List):
        return self._items(node.elts)

    def _items(self, elements):
        if any(isinstance(e, ast.Starred) for e in elements):
            raise UnsafeExpressionError("unpacking (*) is not allowed")
        return [self.eval(e) for e in elements]

    def eval_Name(self, node: ast.Name):
        if node.id not in self.variables:
            raise UnsafeExpressionError(
                f"the name {node.id!r} is not allowed (only comprehension variables)"
            )
        return self.variables[node.id]

    def eval_UnaryOp(self, node: ast.UnaryOp):
        op = _UNARY.get(type(node.op))
        operand = self.eval(node.operand)
        if op is None or not _is_number(operand):
            raise UnsafeExpressionError(f"{_describe(node)} is not allowed")
        return op(operand)

    def eval_BinOp(self, node: ast.BinOp):
        op = _BINARY.get(type(node.op))
        left, right = self.eval(node.left), self.eval(node.right)
        if op is None or not (_is_number(left) and _is_number(right)):
            raise UnsafeExpressionError(
                f"{_describe(node)} is not allowed (arithmetic on numbers only)"
            )
        if op is operator.pow and isinstance(right, int):
            # bound before computing: 9 ** 9 ** 9 would take minutes and gigabytes
            bits = max(abs(left), 1).bit_length() if isinstance(left, int) else 1
            if abs(right) > MAX_EXPONENT or bits * abs(right) > MAX_INT_BITS:
                raise UnsafeExpressionError(f"the power {left!r} ** {right!r} is too large")
        try:
            result = op(left, right)
        except (ArithmeticError, ValueError) as e:
            raise UnsafeExpressionError(f"{_describe(node)} fails: {e}") from e
        if isinstance(result, complex) or (isinstance(result, float) and math.isnan(result)):
            raise UnsafeExpressionError(f"{_describe(node)} is not a real number")
        return result

    def eval_Call(self, node: ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in _CALLS or node.keywords:
            raise UnsafeExpressionError(
                f"{_describe(node)} is not allowed (only int, float, round and range, "
                f"with positional arguments)"
            )
        args = self._items(node.args)
        try:
            return _CALLS[name](*args)
        except UnsafeExpressionError:
            raise
        except (ArithmeticError, ValueError, TypeError) as e:
            raise UnsafeExpressionError(f"{name}() fails: {e}") from e

    def eval_ListComp(self, node: ast.ListComp):
        saved = dict(self.variables)
        result = []
        try:
            self._generate(node.generators, node.elt, result)
        finally:
            self.variables = saved
        return result

    def _generate(self, generators, element, result):
        if not generators:
            if len(result) >= MAX_ITEMS:
                raise UnsafeExpressionError(f"a list of more than {MAX_ITEMS} items")
            result.append(self.eval(element))
            return
        generator, rest = generators[0], generators[1:]
        if generator.ifs or generator.is_async or not isinstance(generator.target, ast.Name):
            raise UnsafeExpressionError(
                "only comprehensions 'for NAME in ITERABLE' without conditions are allowed"
            )
        values = self.eval(generator.iter)
        if not isinstance(values, (list, tuple)):
            raise UnsafeExpressionError("a comprehension must iterate over a list, tuple or range")
        for value in values:
            self.variables[generator.target.id] = value
            self._generate(rest, element, result)


def _describe(node: ast.AST) -> str:
    kind = type(node).__name__
    try:
        return f"{kind} {ast.unparse(node)!r}"
    except Exception:  # an unparsable fragment: its kind is enough
        return kind


def evaluate_expression(expression: str):
    """
    Value of ``expression`` (the text of a published config's eval tag), e.g.
    ``"[int(x * 0.1 * 512) for x in range(5, 21)]"`` -> ``[256, 307, ..., 1024]``.

    Raises:
        UnsafeExpressionError: the expression is not Python, uses anything outside the admitted
            subset (names, attributes, other calls, lambdas, ...), exceeds a size bound or nests
            too deeply.
    """
    if not isinstance(expression, str):
        raise UnsafeExpressionError(f"the expression must be a string, not {expression!r}")
    try:  # the parser and the evaluator recurse as deep as the expression nests
        try:
            tree = ast.parse(expression.strip(), mode="eval")
        except (SyntaxError, ValueError) as e:
            raise UnsafeExpressionError(f"not a Python expression ({e})") from e
        return _Evaluator().eval(tree)
    except (RecursionError, MemoryError) as e:
        raise UnsafeExpressionError("an expression nested too deeply") from e
