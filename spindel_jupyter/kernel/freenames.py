"""Which names a cell body reads without binding them.

Code sent to run on another kernel can only see what it binds itself, what is
passed along with it and what already exists over there; :func:`free_names`
lists the names that must come from outside. The analysis is lexical, like the
compiler's scope analysis: a name bound anywhere at the cell's top level counts
as bound for the whole cell, whatever the order of statements.

A cell runs as module-level code, where ``x += 1``, ``del x`` and a bare
annotation ``x: int`` do not give ``x`` a value: the first two read a name that
must already exist and the third binds nothing. So a name bound at top level
only in those ways is free. Inside a function they make the name local, as
Python does, and it is not free there.

Names every kernel already has are never free: ``dir(builtins)`` (less ``_``,
which only an interactive prompt puts there), the module dunders ``__name__``,
``__doc__`` and ``__builtins__``, and IPython's ``get_ipython`` and ``display``.
``__file__`` is not among them: a kernel has none. Annotations count as reads
where Python evaluates them, so not under ``from __future__ import annotations``
nor on a function's own variables. Python 3.12 type parameters are not modelled.
"""

from __future__ import annotations

import ast
import builtins
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

ALWAYS_DEFINED = (frozenset(dir(builtins)) - {"_"}) | {
    "__name__",
    "__doc__",
    "__builtins__",
    "get_ipython",
    "display",
}
"""Names every kernel namespace has: the builtins, module dunders and IPython's helpers."""


@dataclass(eq=False)
class _Scope:
    """One namespace: what it binds, reads and declares, before resolution."""

    kind: str  # "module", "class", "function" (also lambdas) or "comprehension"
    parent: _Scope | None
    bound: set[str] = field(default_factory=set)
    reread: set[str] = field(default_factory=set)  # targets of ``+=`` and ``del``
    reads: set[str] = field(default_factory=set)
    globals: set[str] = field(default_factory=set)
    nonlocals: set[str] = field(default_factory=set)

    def binds(self, name: str) -> bool:
        """Whether `name` is local here, not counting global or nonlocal declarations."""
        return name in self.bound or (self.kind != "class" and name in self.reread)


class _Collector(ast.NodeVisitor):
    """Builds the scope tree of a module, recording each name where it is used."""

    def __init__(self, lazy_annotations: bool) -> None:
        self.scope = _Scope("module", None)
        self.scopes = [self.scope]
        self.lazy_annotations = lazy_annotations

    def _annotation(self, node: ast.AST | None) -> None:
        if node is not None and not self.lazy_annotations:
            self.visit(node)

    def _visit_in(self, scope: _Scope, nodes: Iterable[ast.AST | None]) -> None:
        outer, self.scope = self.scope, scope
        for node in nodes:
            if node is not None:
                self.visit(node)
        self.scope = outer

    def _new(self, kind: str) -> _Scope:
        scope = _Scope(kind, self.scope)
        self.scopes.append(scope)
        return scope

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.scope.reads.add(node.id)
        elif isinstance(node.ctx, ast.Store):
            self.scope.bound.add(node.id)
        else:
            self.scope.reread.add(node.id)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):
            self.scope.reread.add(node.target.id)
        else:
            self.visit(node.target)
        self.visit(node.value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if isinstance(node.target, ast.Name) and node.value is None:
            if self.scope.kind == "function" and node.simple:  # ``(x): int`` leaves x alone
                self.scope.bound.add(node.target.id)
        else:
            self.visit(node.target)
        if self.scope.kind != "function":  # a function's own variable annotations are never evaluated
            self._annotation(node.annotation)
        if node.value is not None:
            self.visit(node.value)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        target = self.scope
        while target.kind == "comprehension":
            assert target.parent is not None
            target = target.parent
        target.bound.add(node.target.id)
        self.visit(node.value)

    def visit_Global(self, node: ast.Global) -> None:
        self.scope.globals.update(node.names)

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        self.scope.nonlocals.update(node.names)

    def visit_Import(self, node: ast.Import) -> None:
        self.scope.bound.update(a.asname or a.name.partition(".")[0] for a in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self.scope.bound.update(a.asname or a.name for a in node.names if a.name != "*")

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.scope.bound.add(node.name)
        self.generic_visit(node)

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        if node.name:
            self.scope.bound.add(node.name)
        self.generic_visit(node)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        if node.name:
            self.scope.bound.add(node.name)

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        if node.rest:
            self.scope.bound.add(node.rest)
        self.generic_visit(node)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        """Defaults, annotations and decorators run here; the body runs in a new scope."""
        args = node.args
        params = [*args.posonlyargs, *args.args, args.vararg, *args.kwonlyargs, args.kwarg]
        outside: list[ast.AST | None] = [*args.defaults, *args.kw_defaults]
        if not isinstance(node, ast.Lambda):
            outside += node.decorator_list
            for annotation in [*(p.annotation for p in params if p), node.returns]:
                self._annotation(annotation)
            self.scope.bound.add(node.name)
        self._visit_in(self.scope, outside)
        inner = self._new("function")
        inner.bound.update(p.arg for p in params if p)
        self._visit_in(inner, node.body if isinstance(node.body, list) else [node.body])

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._visit_in(self.scope, [*node.decorator_list, *node.bases, *node.keywords])
        self.scope.bound.add(node.name)
        self._visit_in(self._new("class"), node.body)

    def _comprehension(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp) -> None:
        """The first iterable runs here; targets, conditions and the rest run in a new scope."""
        first, *more = node.generators
        self.visit(first.iter)
        inside: list[ast.AST] = [first.target, *first.ifs]
        for gen in more:
            inside += [gen.iter, gen.target, *gen.ifs]
        inside += [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
        self._visit_in(self._new("comprehension"), inside)

    visit_ListComp = visit_SetComp = visit_GeneratorExp = visit_DictComp = _comprehension


def _reaches_module(scope: _Scope, name: str) -> bool:
    """Whether reading `name` in `scope` looks it up in the cell's (module) namespace."""
    at: _Scope | None = scope
    while at is not None:
        if name in at.globals or at.kind == "module":
            return True
        if name in at.nonlocals or at.binds(name):
            return False
        at = at.parent
        while at is not None and at.kind == "class":
            # Class bodies are invisible to nested scopes, except for the implicit ``__class__``.
            if name == "__class__":
                return False
            at = at.parent
    return True


def free_names(source: str) -> set[str]:
    """Names `source` (a cell body, IPython magics already removed) reads but never binds, builtins excluded.

    Top-level ``await``, ``async for`` and ``async with`` are accepted as in a
    notebook cell; invalid code raises :class:`SyntaxError`.
    """
    with warnings.catch_warnings():  # the kernel warns when it runs the code; analysis stays quiet
        warnings.simplefilter("ignore")
        tree = ast.parse(source, "<cell>")
        # Parsing alone misses scope errors such as a misplaced ``nonlocal``; compiling finds them.
        compile(tree, "<cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    future = {
        a.name
        for s in tree.body
        if isinstance(s, ast.ImportFrom) and s.module == "__future__"
        for a in s.names
    }
    collector = _Collector(lazy_annotations="annotations" in future)
    collector.visit(tree)
    defined: set[str] = set()
    read: set[str] = set()
    for scope in collector.scopes:
        defined.update(n for n in scope.bound if scope.kind == "module" or n in scope.globals)
        # At module level, or under ``global``, ``x += 1`` and ``del x`` read a name that must exist.
        reread = {n for n in scope.reread if scope.kind in ("module", "class") or n in scope.globals}
        read.update(n for n in scope.reads | reread if _reaches_module(scope, n))
    return read - defined - ALWAYS_DEFINED
