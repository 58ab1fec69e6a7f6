"""One named query of sql/queries: its SQL with ``$n`` placeholders, numbered in the order of
the parameter list its ``-- name:`` header declares. The typed ``__call__`` of each query is
generated (queries.py, by scripts/queries); a query added since runs untyped until then."""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self, TypeVar

from aiosql.types import SQLOperationType

T = TypeVar("T")

# A quoted string or identifier, a -- comment (all left alone), or a :name parameter (not ::).
TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|(?<![:\w]):([A-Za-z_]\w*)")


@dataclass(frozen=True, slots=True)
class Query:
    """A named query: ``sql`` takes its parameters as ``$1..$n`` in the order of ``params``."""

    name: str
    sql: str
    params: tuple[str, ...]
    operation: SQLOperationType
    doc: str

    @classmethod
    def of(cls, query: Query) -> Self:
        """The same query as its typed (generated) class."""
        return cls(query.name, query.sql, query.params, query.operation, query.doc)

    def args(self, values: dict[str, Any]) -> list[Any]:
        """The positional arguments for ``sql`` from keyword values."""
        try:
            return [values[p] for p in self.params]
        except KeyError as exc:
            raise TypeError(f"query {self.name} needs parameter {exc.args[0]!r}") from None


def number_parameters(name: str, sql: str, params: tuple[str, ...]) -> str:
    """``:name`` -> ``$n``, n being the name's place in the header's parameter list.

    A parameter the header does not declare, or one it declares and the SQL never uses, is
    an error in the .sql file: said here, at load time, rather than by PostgreSQL later.
    """
    used = set()

    def replace(match: re.Match[str]) -> str:
        word = match.group(1)
        if word is None:
            return match.group(0)
        if word not in params:
            raise ValueError(
                f"query {name} uses :{word}, which its -- name: header does not declare; "
                f"add it to the header's parameter list ({', '.join(params) or 'empty'})"
            )
        used.add(word)
        return f"${params.index(word) + 1}"

    numbered = TOKEN.sub(replace, sql)
    unused = [p for p in params if p not in used]
    if unused:
        raise ValueError(
            f"query {name} declares {unused} in its -- name: header but never uses them"
        )
    return numbered


class UntypedQuery(Query):
    """A query queries.py does not know yet (added to a .sql file since scripts/queries last
    ran): it runs, untyped, and mypy reports its use until queries.py is regenerated."""

    async def __call__(self, conn: Any, **values: Any) -> Any:
        args = self.args(values)
        op = self.operation
        if op is SQLOperationType.SELECT:
            return await conn.fetch(self.sql, *args)
        if op is SQLOperationType.SELECT_ONE:
            return await conn.fetchrow(self.sql, *args)
        if op is SQLOperationType.SELECT_VALUE:
            return await conn.fetchval(self.sql, *args)
        return await conn.execute(self.sql, *args)


def _declared(owner: object) -> dict[str, Any]:
    """The classes the annotations of a generated class (or its subclass) name, by attribute."""
    found: dict[str, Any] = {}
    for cls in reversed(type(owner).__mro__):
        scope = vars(sys.modules[cls.__module__])
        for name, kind in inspect.get_annotations(cls).items():
            if isinstance(scope.get(kind), type):  # a class name (queries.py's annotations are)
                found[name] = scope[kind]
    return found


class QueryGroup:
    """The queries of one .sql file as attributes; the generated subclass declares their types."""

    def __init__(self, loaded: Mapping[str, Query]) -> None:
        declared = _declared(self)
        for name, query in loaded.items():
            setattr(self, name, declared.get(name, UntypedQuery).of(query))


class QueryGroups:
    """Every file of sql/queries as an attribute; the generated subclass declares their types."""

    def __init__(self, loaded: Mapping[str, Mapping[str, Query]]) -> None:
        declared = _declared(self)
        for file, queries in loaded.items():
            setattr(self, file, declared.get(file, QueryGroup)(queries))


def required(value: T | None, what: str) -> T:
    """The result of a query that always returns one (a function's result, an aggregate)."""
    if value is None:
        raise RuntimeError(f"{what} returned nothing; is the schema OmniQ's?")
    return value
