"""A space's cost as a polynomial in its channel widths and op weights, evaluated in a few
tensor ops.

Every cost formula is a low-degree polynomial: a conv costs k*k*c_in*c_out*h*w, and each op's
cost is scaled by its op (or keep) weight. Running a space's own cost formulas once on symbols
gives the monomials and their coefficients; the penalty then evaluates the polynomial as one
gather, one product and one matrix-vector product per step, instead of a Python walk over every
layer that dispatches thousands of tiny ops (benchmarks/cost_ops.py counts them).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from numbers import Number

import torch

from maskednas.ops.cost import Cost

Monomial = tuple[int, ...]  # sorted variable indices; () is the constant term


class Symbol:
    """A polynomial over numbered variables, closed under +, -, * and division by a number."""

    __slots__ = ("terms",)

    def __init__(self, terms: dict[Monomial, float]) -> None:
        self.terms = terms

    @classmethod
    def variable(cls, index: int) -> "Symbol":
        return cls({(index,): 1.0})

    def _lift(self, other) -> "Symbol":
        if isinstance(other, Symbol):
            return other
        if isinstance(other, Number) and not isinstance(other, bool):
            return Symbol({(): float(other)} if other else {})
        raise TypeError(f"a cost formula combined a width with {type(other).__name__}, which "
                        f"a polynomial cannot represent")

    def __add__(self, other) -> "Symbol":
        terms = dict(self.terms)
        for m, c in self._lift(other).terms.items():
            terms[m] = terms.get(m, 0.0) + c
        return Symbol(terms)

    __radd__ = __add__

    def __neg__(self) -> "Symbol":
        return Symbol({m: -c for m, c in self.terms.items()})

    def __sub__(self, other) -> "Symbol":
        return self + -self._lift(other)

    def __rsub__(self, other) -> "Symbol":
        return -self + other

    def __mul__(self, other) -> "Symbol":
        terms: dict[Monomial, float] = {}
        for m1, c1 in self.terms.items():
            for m2, c2 in self._lift(other).terms.items():
                m = tuple(sorted(m1 + m2))
                terms[m] = terms.get(m, 0.0) + c1 * c2
        return Symbol(terms)

    __rmul__ = __mul__

    def _branched(self, *args):
        raise TypeError("a cost formula branched on a width or an op weight (a comparison or a "
                        "truth test): a polynomial cannot represent it")

    __bool__ = __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _branched
    __hash__ = None

    def __truediv__(self, other) -> "Symbol":
        if not isinstance(other, Number) or isinstance(other, bool):
            raise TypeError("a cost formula divided by a width: not a polynomial")
        return self * (1.0 / other)


class SymbolVector:
    """Op weights of one choice, as symbols (indexable and iterable like the tensor they stand for)."""

    def __init__(self, symbols: list[Symbol]) -> None:
        self.symbols = symbols

    def __getitem__(self, i: int) -> Symbol:
        return self.symbols[i]

    def __iter__(self):
        return iter(self.symbols)

    def __len__(self) -> int:
        return len(self.symbols)


class WidthVector(Mapping):
    """Group widths held as one tensor (what the estimators produce in a few ops); reads like a
    dict of 0-d tensors, and the polynomial takes the vector whole."""

    def __init__(self, names: tuple[str, ...], vector: torch.Tensor) -> None:
        self.names, self.vector = names, vector
        self._at = {n: i for i, n in enumerate(names)}

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.vector[self._at[name]]

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


class CostPolynomial:
    """MACs and params of a space as polynomials in (1, widths of `groups` (name -> full width),
    op weights of `choices` (name -> op count) flattened); `__call__` evaluates them in float64
    (exact to 2^53)."""

    def __init__(self, formula: Callable[[Mapping, Mapping], Cost], groups: Mapping[str, int],
                 choices: Mapping[str, int]) -> None:
        self.groups, self.choices = list(groups), dict(choices)
        self.defaults = dict(groups)  # a group's width when a call leaves it out: its full width
        self.names = tuple(self.groups)
        self.variables = 1 + len(self.groups) + sum(self.choices.values())
        index = iter(range(1, self.variables))
        widths = {g: Symbol.variable(next(index)) for g in self.groups}
        weights = {k: SymbolVector([Symbol.variable(next(index)) for _ in range(n)])
                   for k, n in self.choices.items()}
        cost = formula(weights, widths)
        macs, params = (v if isinstance(v, Symbol) else Symbol({}) + v for v in (cost.macs, cost.params))
        monomials = sorted(set(macs.terms) | set(params.terms), key=lambda m: (len(m), m))
        degree = max((len(m) for m in monomials), default=0)
        # each monomial as `degree` variable indices, padded with the constant (index 0)
        self.index = torch.tensor([list(m) + [0] * (degree - len(m)) for m in monomials],
                                  dtype=torch.long).reshape(len(monomials), degree)
        self.coefficients = torch.tensor([[p.terms.get(m, 0.0) for m in monomials] for p in (macs, params)],
                                         dtype=torch.float64)
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, weights: Mapping, widths: Mapping) -> Cost:
        """The cost at these op weights (tensors) and widths (ints, floats or tensors, one per
        group; all groups)."""
        device = next((v.device for v in itertools.chain(weights.values(), widths.values())
                       if torch.is_tensor(v)), torch.device("cpu"))
        if device not in self._on:
            self._on[device] = (self.index.to(device), self.coefficients.to(device))
        index, coefficients = self._on[device]
        if isinstance(widths, WidthVector) and widths.names == self.names:
            width_values = widths.vector.to(torch.float64)
        else:
            width_values = stacked([widths[g] if g in widths else self.defaults[g] for g in self.groups],
                                    device)
        values = torch.cat([torch.ones(1, dtype=torch.float64, device=device), width_values,
                            stacked([weights[k] for k in self.choices], device)])
        wrong = [k for k, n in self.choices.items() if weights[k].shape[-1] != n]  # shapes: no sync
        if wrong or values.shape[0] != self.variables:
            raise ValueError(f"the cost polynomial takes {self.choices} op weights per choice and "
                             f"{len(self.groups)} widths; {wrong[:3] or 'the widths'} differ")
        factors = values[index]
        products = factors[:, 0] if factors.shape[1] else torch.ones(len(factors), dtype=torch.float64, device=device)
        for i in range(1, factors.shape[1]):  # not .prod(): its backward checks for zeros on the host
            products = products * factors[:, i]
        macs, params = coefficients @ products
        return Cost(macs, params)


def stacked(values: list, device) -> torch.Tensor:
    """One float64 vector of these numbers or tensors (scalars or vectors), in few ops."""
    if not values:
        return torch.zeros(0, dtype=torch.float64, device=device)
    if all(torch.is_tensor(v) for v in values):
        if len({(v.dtype, v.dim()) for v in values}) == 1:
            joined = torch.stack(values) if values[0].dim() == 0 else torch.cat(values)
            return joined.to(torch.float64).reshape(-1)
        return torch.cat([v.to(torch.float64).reshape(-1) for v in values])
    if not any(torch.is_tensor(v) for v in values):
        return torch.tensor(values, dtype=torch.float64, device=device).reshape(-1)
    return torch.cat([torch.as_tensor(v, dtype=torch.float64, device=device).reshape(-1) for v in values])
