"""A small evaluator of CloudWatch metric math, enough for the expressions the AWS components render.

Semantics, per "Metric math syntax and functions" in the CloudWatch user guide (using-metric-math.html):
- A metric id stands for a time series: one value per period, or no datapoint in that period (None here).
- Arithmetic (+ - * /) and comparisons (> < >= <= == !=) apply per timestamp; a comparison gives 1 or 0.
  A timestamp where an operand has no datapoint has none in the result, and neither has a division by
  zero (CloudWatch drops it: a gap, not an infinity).
- `IF(condition, trueValue, falseValue)`: per timestamp, trueValue where the condition is non-zero,
  falseValue where it is 0; no datapoint where the condition has none (or where falseValue is omitted
  and the condition is false).
- `FILL(series, value)`: the series with every missing datapoint replaced by value.
- AND / OR / NOT: logical operators on 0/1 values. Scalars broadcast over the series.

The parser is a plain recursive descent over the operator precedence CloudWatch documents
(comparison < additive < multiplicative < unary): an expression it does not understand raises, so a
component that starts rendering another function fails its test instead of being evaluated wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

Series = list[float | None]

_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)|([A-Za-z_][A-Za-z0-9_]*)|(>=|<=|==|!=|[-+*/(),<>]))")


class MetricMathError(ValueError):
    pass


def tokenize(expression: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    expression = expression.rstrip()
    while pos < len(expression):
        match = _TOKEN.match(expression, pos)
        if not match:
            raise MetricMathError(f"cannot read {expression[pos:]!r}")
        number, name, op = match.groups()
        out.append(("num", number) if number else ("name", name) if name else ("op", op))
        pos = match.end()
    return out


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], series: Mapping[str, Series], length: int):
        self.tokens, self.i, self.series, self.length = tokens, 0, series, length

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (value is not None and token[1] != value):
            raise MetricMathError(f"expected {value or 'a token'}, got {token}")
        self.i += 1
        return token

    def parse(self) -> Series:
        result = self.logical()
        if self.peek() is not None:
            raise MetricMathError(f"unexpected {self.peek()}")
        return result

    def logical(self) -> Series:
        left = self.comparison()
        while self.peek() in (("name", "AND"), ("name", "OR")):
            op = self.take()[1]
            right = self.comparison()
            left = _zip(left, right, (lambda a, b: float(bool(a) and bool(b))) if op == "AND"
                        else (lambda a, b: float(bool(a) or bool(b))))
        return left

    def comparison(self) -> Series:
        left = self.additive()
        ops = {">": float.__gt__, "<": float.__lt__, ">=": float.__ge__, "<=": float.__le__,
               "==": float.__eq__, "!=": float.__ne__}
        while self.peek() is not None and self.peek()[0] == "op" and self.peek()[1] in ops:
            compare = ops[self.take()[1]]
            right = self.additive()
            left = _zip(left, right, lambda a, b, c=compare: 1.0 if c(float(a), float(b)) else 0.0)
        return left

    def additive(self) -> Series:
        left = self.multiplicative()
        while self.peek() in (("op", "+"), ("op", "-")):
            op = self.take()[1]
            right = self.multiplicative()
            left = _zip(left, right, (lambda a, b: a + b) if op == "+" else (lambda a, b: a - b))
        return left

    def multiplicative(self) -> Series:
        left = self.unary()
        while self.peek() in (("op", "*"), ("op", "/")):
            op = self.take()[1]
            right = self.unary()
            left = _zip(left, right, (lambda a, b: a * b) if op == "*" else (lambda a, b: None if b == 0 else a / b))
        return left

    def unary(self) -> Series:
        if self.peek() == ("op", "-"):
            self.take()
            return [None if v is None else -v for v in self.unary()]
        if self.peek() == ("name", "NOT"):
            self.take()
            return [None if v is None else float(not v) for v in self.unary()]
        return self.primary()

    def primary(self) -> Series:
        kind, value = self.take()
        if kind == "num":
            return [float(value)] * self.length
        if (kind, value) == ("op", "("):
            inner = self.logical()
            self.take(")")
            return inner
        if kind == "name" and self.peek() == ("op", "("):
            return self.call(value)
        if kind == "name":
            if value not in self.series:
                raise MetricMathError(f"unknown id {value!r}; known: {sorted(self.series)}")
            return list(self.series[value])
        raise MetricMathError(f"unexpected {value!r}")

    def call(self, function: str) -> Series:
        self.take("(")
        args = [self.logical()]
        while self.peek() == ("op", ","):
            self.take(",")
            args.append(self.logical())
        self.take(")")
        if function == "FILL":
            if len(args) != 2:
                raise MetricMathError("FILL takes (series, value)")
            series, fill = args
            return [f if v is None else v for v, f in zip(series, fill, strict=True)]
        if function == "IF":
            if len(args) not in (2, 3):
                raise MetricMathError("IF takes (condition, trueValue[, falseValue])")
            condition, true_value = args[0], args[1]
            false_value = args[2] if len(args) == 3 else [None] * self.length
            return [None if c is None else (t if c != 0 else f)
                    for c, t, f in zip(condition, true_value, false_value, strict=True)]
        raise MetricMathError(f"function {function} is not modelled here")


def _zip(left: Series, right: Series, op) -> Series:
    return [None if a is None or b is None else op(a, b) for a, b in zip(left, right, strict=True)]


def evaluate(expression: str, series: Mapping[str, Sequence[float | None]]) -> Series:
    lengths = {len(v) for v in series.values()}
    if len(lengths) != 1:
        raise MetricMathError(f"every series needs the same number of periods, got {lengths}")
    return _Parser(tokenize(expression), {k: list(v) for k, v in series.items()}, lengths.pop()).parse()


def evaluate_queries(queries: Sequence[Mapping], data: Mapping[str, Sequence[float | None]]) -> Series:
    """Evaluate a list of metric-data queries (the API's shape, snake_case or camelCase keys) as
    CloudWatch does: `data` maps each metric query's metric name to its series; expressions see the
    ids of the queries before them; the one query with return_data true is the result."""
    values: dict[str, Series] = {}
    returned = []
    for query in queries:
        expression = query.get("expression")
        if expression is None:
            stat = query.get("metric_stat") or query.get("metricStat")
            metric = stat["metric"] if stat else query["metric"]
            name = metric.get("metric_name") or metric.get("metricName")
            values[query["id"]] = list(data[name])
        else:
            values[query["id"]] = evaluate(expression, values)
        if query.get("return_data", query.get("returnData", True)):  # the API default is true
            returned.append(query["id"])
    if len(returned) != 1:
        raise MetricMathError(f"exactly one query must return data, got {returned}")
    return values[returned[0]]
