"""Cohort filters: a small, safe expression language over the metadata columns.

Examples::

    age >= 60 and sex == 'F'
    diagnoses contains 'fibrillation'          # case-insensitive substring
    has_code(dx_codes, '164889003')            # whole code in a comma/space separated list
    labels contains 'AF'                       # list<string> column: an element equals 'AF'
    sex in ('F', 'M') and not (age < 18)
    qtc_ms > 470 or age is null

The text is parsed with Python's ``ast`` (after two token rewrites: the infix ``contains`` and
``null``/``NULL`` for None; ``AND``/``OR``/``NOT``/``IN``/``IS`` are accepted in upper case and a
single ``=`` means ``==``). Only these node types are evaluated: BoolOp (and/or), UnaryOp (not,
unary minus on numbers), Compare (== != < <= > >= in, not in, is None, is not None), Name (a
column), Constant (str/int/float/bool/None), List/Tuple of constants, and Call of the functions
in ``FUNCTIONS``. Anything else (attribute access, subscripts, lambdas, comprehensions, any
other call) is rejected with :class:`WhereExpressionError` before anything is evaluated.

The result is a boolean numpy mask over the table rows. Comparisons with nulls (and NaN) follow
SQL: they are unknown, and unknown rows are not selected.
"""
from __future__ import annotations

import ast
import io
import tokenize

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ecgbatch.index.errors import UnknownColumnError, WhereExpressionError

MAX_EXPRESSION_CHARS = 4_000
MAX_DEPTH = 64

_COMPARE = {
    ast.Eq: pc.equal,
    ast.NotEq: pc.not_equal,
    ast.Lt: pc.less,
    ast.LtE: pc.less_equal,
    ast.Gt: pc.greater,
    ast.GtE: pc.greater_equal,
}


def _code_pattern(code: str) -> str:
    import re

    return r"(^|[,;|\s])" + re.escape(code) + r"($|[,;|\s])"


def _is_string_list(value) -> bool:
    t = getattr(value, "type", None)
    return (
        isinstance(value, (pa.Array, pa.ChunkedArray))
        and (pa.types.is_list(t) or pa.types.is_large_list(t))
        and (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type))
    )


def _list_has(col, item: str):
    """Per row: does the list hold an element equal to ``item``? (null list -> null)"""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    flat = pc.list_flatten(arr)
    parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
    hit = pc.fill_null(pc.equal(flat, item), False).to_numpy(zero_copy_only=False)
    out = np.zeros(len(arr), bool)
    out[parents[hit]] = True
    return pa.array(out, mask=pc.is_null(arr).to_numpy(zero_copy_only=False))


def _fn_contains(col, needle):
    if _is_string_list(col):  # list<string> column (e.g. labels): element membership
        return _list_has(col, _str_const(needle, "contains"))
    return pc.match_substring(_strings(col, "contains"), _str_const(needle, "contains"), ignore_case=True)


def _fn_startswith(col, prefix):
    return pc.starts_with(_strings(col, "startswith"), _str_const(prefix, "startswith"))


def _fn_endswith(col, suffix):
    return pc.ends_with(_strings(col, "endswith"), _str_const(suffix, "endswith"))


def _fn_has_code(col, code):
    if _is_string_list(col):
        return _list_has(col, _str_const(code, "has_code"))
    return pc.match_substring_regex(
        _strings(col, "has_code"), _code_pattern(_str_const(code, "has_code"))
    )


def _fn_lower(col):
    return pc.utf8_lower(_strings(col, "lower"))


def _fn_isnull(col):
    return _is_null(col)


def _fn_notnull(col):
    return pc.invert(_is_null(col))


FUNCTIONS = {
    "contains": _fn_contains,
    "startswith": _fn_startswith,
    "endswith": _fn_endswith,
    "has_code": _fn_has_code,
    "lower": _fn_lower,
    "isnull": _fn_isnull,
    "notnull": _fn_notnull,
}


def _strings(value, fn: str):
    if isinstance(value, (pa.Array, pa.ChunkedArray)) and (
        pa.types.is_string(value.type) or pa.types.is_large_string(value.type)
    ):
        return value
    if isinstance(value, (pa.Array, pa.ChunkedArray)) and pa.types.is_null(value.type):
        return value.cast(pa.string())
    raise WhereExpressionError(f"{fn}() needs a string column, got {_describe(value)}")


def _str_const(value, fn: str) -> str:
    if isinstance(value, pa.Scalar) and pa.types.is_string(value.type) and value.is_valid:
        return value.as_py()
    raise WhereExpressionError(f"{fn}() needs a string literal, got {_describe(value)}")


def _is_null(value):
    if isinstance(value, (pa.Array, pa.ChunkedArray)):
        if pa.types.is_floating(value.type):
            return pc.is_null(value, nan_is_null=True)
        return pc.is_null(value)
    raise WhereExpressionError(f"'is null' needs a column, got {_describe(value)}")


def _describe(value) -> str:
    if isinstance(value, pa.Scalar):
        return repr(value.as_py())
    if isinstance(value, (pa.Array, pa.ChunkedArray)):
        return f"a column of type {value.type}"
    return repr(value)


def _rewrite(expr: str) -> str:
    """Token-level rewrites that make the SQL-ish spellings valid Python (strings untouched)."""
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(expr).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError) as e:
        raise WhereExpressionError(f"cannot parse where-expression {expr!r}: {e}") from None
    out = []
    for i, tok in enumerate(toks):
        ttype, s = tok.type, tok.string
        if ttype == tokenize.OP and s == "@":
            raise WhereExpressionError(f"operator '@' is not allowed in where-expression {expr!r}")
        if ttype == tokenize.NAME:
            if s == "contains":
                # infix `a contains 'x'` becomes `a @ 'x'`; a call `contains(a, 'x')` stays.
                nxt = toks[i + 1] if i + 1 < len(toks) else None
                if not (nxt and nxt.type == tokenize.OP and nxt.string == "("):
                    out.append((tokenize.OP, "@"))
                    continue
            if s in ("null", "NULL"):
                out.append((tokenize.NAME, "None"))
                continue
            if s in ("AND", "OR", "NOT", "IN", "IS"):
                out.append((tokenize.NAME, s.lower()))
                continue
        if ttype == tokenize.OP and s == "=":
            out.append((tokenize.OP, "=="))
            continue
        out.append((ttype, s))
    return tokenize.untokenize(out)


def parse_where(expr: str) -> ast.Expression:
    """Parse and validate a where-expression; returns the checked AST (nothing evaluated)."""
    if not isinstance(expr, str):
        raise WhereExpressionError(f"where must be a string, got {type(expr).__name__}")
    if not expr.strip():
        raise WhereExpressionError("where-expression is empty")
    if len(expr) > MAX_EXPRESSION_CHARS:
        raise WhereExpressionError(
            f"where-expression is {len(expr)} characters long, the limit is {MAX_EXPRESSION_CHARS}"
        )
    src = _rewrite(expr).strip()
    try:
        tree = ast.parse(src, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise WhereExpressionError(f"cannot parse where-expression {expr!r}: {e}") from None
    _check(tree.body, expr, 0)
    return tree


def _check(node: ast.AST, expr: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise WhereExpressionError(f"where-expression nests deeper than {MAX_DEPTH}: {expr!r}")

    def bad(what: str):
        raise WhereExpressionError(f"{what} is not allowed in where-expression {expr!r}")

    if isinstance(node, ast.BoolOp):
        if not isinstance(node.op, (ast.And, ast.Or)):
            bad(type(node.op).__name__)
        for v in node.values:
            _check(v, expr, depth + 1)
    elif isinstance(node, ast.UnaryOp):
        if isinstance(node.op, ast.Not):
            _check(node.operand, expr, depth + 1)
        elif isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) and isinstance(
            node.operand.value, (int, float)
        ) and not isinstance(node.operand.value, bool):
            pass
        else:
            bad(f"unary operator {type(node.op).__name__}")
    elif isinstance(node, ast.BinOp):
        if not isinstance(node.op, ast.MatMult):  # MatMult is the rewritten infix `contains`
            bad(f"arithmetic ({type(node.op).__name__})")
        _check(node.left, expr, depth + 1)
        _check(node.right, expr, depth + 1)
    elif isinstance(node, ast.Compare):
        for op, right in zip(node.ops, node.comparators):
            if isinstance(op, (ast.Is, ast.IsNot)):
                if not (isinstance(right, ast.Constant) and right.value is None):
                    bad("'is' with anything but null/None")
            elif isinstance(op, (ast.In, ast.NotIn)):
                if not isinstance(right, (ast.List, ast.Tuple)):
                    bad("'in' with anything but a list/tuple of literals")
            elif type(op) not in _COMPARE:
                bad(f"comparison {type(op).__name__}")
        for v in [node.left, *node.comparators]:
            _check(v, expr, depth + 1)
    elif isinstance(node, ast.Name):
        if node.id.startswith("_"):
            bad(f"name {node.id!r}")
    elif isinstance(node, ast.Constant):
        if not (node.value is None or isinstance(node.value, (str, int, float, bool))):
            bad(f"constant {node.value!r}")
    elif isinstance(node, (ast.List, ast.Tuple)):
        for e in node.elts:
            ok = isinstance(e, ast.Constant) and (
                e.value is None or isinstance(e.value, (str, int, float, bool))
            )
            neg = isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.USub)
            if not ok and not neg:
                bad("a list element that is not a literal")
            if neg:
                _check(e, expr, depth + 1)
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            name = node.func.id if isinstance(node.func, ast.Name) else type(node.func).__name__
            raise WhereExpressionError(
                f"call of {name!r} is not allowed in where-expression {expr!r}; allowed "
                f"functions: {', '.join(sorted(FUNCTIONS))}"
            )
        if node.keywords:
            bad("keyword arguments")
        for a in node.args:
            if isinstance(a, ast.Starred):
                bad("*arguments")
            _check(a, expr, depth + 1)
    else:
        bad(type(node).__name__)


class _Evaluator:
    def __init__(self, table: pa.Table, expr: str):
        self.table = table
        self.expr = expr

    def eval(self, node: ast.AST):
        if isinstance(node, ast.BoolOp):
            vals = [self.cond(v) for v in node.values]
            f = pc.and_kleene if isinstance(node.op, ast.And) else pc.or_kleene
            out = vals[0]
            for v in vals[1:]:
                out = f(out, v)
            return out
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                return pc.invert(self.cond(node.operand))
            return pa.scalar(-node.operand.value)
        if isinstance(node, ast.BinOp):  # infix contains
            return _fn_contains(self.eval(node.left), self.eval(node.right))
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Name):
            if node.id in ("true", "True"):
                return pa.scalar(True)
            if node.id in ("false", "False"):
                return pa.scalar(False)
            if node.id not in self.table.column_names:
                raise UnknownColumnError(node.id, self.table.column_names)
            return self.table.column(node.id)
        if isinstance(node, ast.Constant):
            return pa.scalar(node.value)
        if isinstance(node, ast.Call):
            args = [self.eval(a) for a in node.args]
            fn = FUNCTIONS[node.func.id]
            try:
                return fn(*args)
            except TypeError:
                raise WhereExpressionError(
                    f"{node.func.id}() got {len(args)} arguments in {self.expr!r}"
                ) from None
        raise WhereExpressionError(f"cannot evaluate {type(node).__name__}")  # unreachable

    def cond(self, node: ast.AST):
        v = self.eval(node)
        t = v.type
        if not pa.types.is_boolean(t):
            raise WhereExpressionError(
                f"{ast.unparse(node)!r} is not a condition ({_describe(v)}); compare it, e.g. "
                f"{ast.unparse(node)} == ..."
            )
        return v

    def compare(self, node: ast.Compare):
        out = None
        left_node = node.left
        for op, right_node in zip(node.ops, node.comparators):
            left = self.eval(left_node)
            if isinstance(op, (ast.Is, ast.IsNot)):
                r = _is_null(left)
                r = r if isinstance(op, ast.Is) else pc.invert(r)
            elif isinstance(op, (ast.In, ast.NotIn)):
                r = self.isin(left, right_node, negate=isinstance(op, ast.NotIn))
            else:
                right = self.eval(right_node)
                try:
                    r = _COMPARE[type(op)](left, right)
                except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError) as e:
                    raise WhereExpressionError(
                        f"cannot compare {_describe(left)} with {_describe(right)} in "
                        f"{self.expr!r}: {e}"
                    ) from None
            out = r if out is None else pc.and_kleene(out, r)
            left_node = right_node
        return out

    def isin(self, left, right_node, negate: bool):
        if not isinstance(left, (pa.Array, pa.ChunkedArray)):
            raise WhereExpressionError(f"'in' needs a column on the left in {self.expr!r}")
        values = [self.eval(e).as_py() for e in right_node.elts]
        try:
            value_set = pa.array(values).cast(left.type) if values else pa.array([], left.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            raise WhereExpressionError(
                f"'in' list {values!r} does not match column type {left.type}: {e}"
            ) from None
        r = pc.is_in(left, value_set=value_set, skip_nulls=True)
        if negate:
            r = pc.and_kleene(pc.invert(r), pc.invert(_is_null(left)))
        return r


def where_mask(table: pa.Table, where: str | None) -> np.ndarray:
    """Boolean mask [len(table)] of the rows that satisfy ``where`` (all rows for None)."""
    n = table.num_rows
    if where is None:
        return np.ones(n, bool)
    tree = parse_where(where)
    ev = _Evaluator(table, where)
    v = ev.cond(tree.body)
    if isinstance(v, pa.Scalar):  # a constant condition such as `True`
        return np.full(n, bool(v.as_py()) if v.is_valid else False)
    v = pc.fill_null(v, False)
    if isinstance(v, pa.ChunkedArray):
        v = v.combine_chunks() if v.num_chunks else pa.array([], pa.bool_())
    return np.asarray(v.to_numpy(zero_copy_only=False), dtype=bool)
