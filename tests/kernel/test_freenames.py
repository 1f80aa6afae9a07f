"""Free-name analysis of cell bodies: each snippet with the exact names it needs from outside."""

from __future__ import annotations

import textwrap
import warnings

import pytest

from spindel_jupyter.kernel.freenames import free_names

CASES = [
    # Plain reads and bindings.
    ("read", "y = x + 1", {"x"}),
    ("order-ignored", "print(x)\nx = 1", set()),
    ("tuple-unpack", "a, (b, *c) = data\nprint(a, b, c)", {"data"}),
    ("attribute-and-subscript-targets", "obj.attr = 1\nitems[k] = v", {"obj", "items", "k", "v"}),
    ("chained-assign", "a = b = c\nprint(a, b)", {"c"}),
    # Builtins and kernel-provided names.
    ("builtins", "print(len(range(3)), Exception, __name__, __doc__)", set()),
    ("ipython-helpers", "display(get_ipython())", set()),
    ("dunder-file-is-free", "print(__file__)", {"__file__"}),
    ("shadowed-builtin", "def len(x):\n    return 0\nlen([])", set()),
    # Augmented assignment, annotations and del at cell level.
    ("augassign-only", "x += 1", {"x"}),
    ("augassign-after-binding", "x = 0\nx += step", {"step"}),
    ("augassign-attribute", "counter.n += 1", {"counter"}),
    ("annotated-assign", "x: int = 1\nprint(x)", set()),
    ("annotated-assign-reads-annotation", "x: Model = make()", {"Model", "make"}),
    ("bare-annotation-binds-nothing", "x: int\nprint(x)", {"x"}),
    ("parenthesized-annotation-binds-nothing", "def f():\n    (g): int\n    return g", {"g"}),
    (
        "future-annotations-unevaluated",
        "from __future__ import annotations\ndef f(a: A) -> R:\n    b: B = a",
        set(),
    ),
    ("del-only", "del x", {"x"}),
    ("del-after-binding", "x = 1\ndel x", set()),
    ("del-subscript", "del d[k]", {"d", "k"}),
    # Loops, with, imports.
    ("for-target", "for i in items:\n    total = i", {"items"}),
    ("for-else", "for i in xs:\n    pass\nelse:\n    print(i, j)", {"xs", "j"}),
    ("with-as", "with open(path) as f, lock:\n    f.read()", {"path", "lock"}),
    ("import-dotted", "import os.path\nimport numpy as np\nos.path.join(np.pi, sys)", {"sys"}),
    ("from-import-as", "from m import x as y, z\nprint(x, y, z)", {"x"}),
    ("star-import-binds-nothing", "from m import *\nprint(x)", {"x"}),
    # Functions: bodies, parameters, defaults, annotations, decorators.
    ("def-binds-name", "def f(a, /, b, *args, c, **kw):\n    return a + b + c + g\nf(1)", {"g"}),
    ("nested-reads-cell-binding", "def f():\n    return data\ndata = 1", set()),
    ("nested-reads-unbound", "def f():\n    return missing", {"missing"}),
    ("function-local", "def f():\n    tmp = 1\n    return tmp\nprint(tmp)", {"tmp"}),
    ("function-augassign-is-local", "def f():\n    n += 1", set()),
    ("function-del-is-local", "def f():\n    del n", set()),
    ("function-local-annotation-unevaluated", "def f():\n    x: Foo = 1\n    return x", set()),
    ("defaults-evaluated-outside", "def f(a=dflt, *, b=kdflt):\n    return a", {"dflt", "kdflt"}),
    ("default-sees-param-not", "def f(a, b=a):\n    pass", {"a"}),
    ("annotations-evaluated-outside", "def f(a: A, *r: R, **k: K) -> Ret:\n    pass", {"A", "R", "K", "Ret"}),
    ("decorators", "@deco\n@mod.wrap(arg)\ndef f():\n    pass", {"deco", "mod", "arg"}),
    ("recursion", "def fact(n):\n    return 1 if n < 2 else n * fact(n - 1)", set()),
    (
        "closure-over-enclosing-function",
        "def outer():\n    v = 1\n    def inner():\n        return v + w\n    return inner",
        {"w"},
    ),
    ("async-def", "async def f():\n    async for x in src:\n        await x", {"src"}),
    # Lambdas.
    ("lambda-params", "f = lambda a, b=dflt: a + b + c", {"dflt", "c"}),
    ("lambda-varargs", "g = lambda *a, **k: (a, k, n)", {"n"}),
    # Global and nonlocal.
    ("global-binds-cell-name", "def setup():\n    global cfg\n    cfg = 1\nprint(cfg)", set()),
    ("global-read-unbound", "def f():\n    global g\n    return g", {"g"}),
    ("global-augassign", "def f():\n    global counter\n    counter += 1", {"counter"}),
    (
        "global-shadows-enclosing",
        "def f():\n    x = 1\n    def g():\n        global x\n        return x",
        {"x"},
    ),
    (
        "nonlocal",
        "def f():\n    x = 0\n    def g():\n        nonlocal x\n        x += 1\n    return g",
        set(),
    ),
    ("toplevel-global-statement", "global x\nx = 1", set()),
    # Classes.
    ("class-binds-name", "class C(Base, metaclass=Meta):\n    pass\nC()", {"Base", "Meta"}),
    ("class-body-reads", "class C:\n    a = 1\n    b = a + other", {"other"}),
    ("class-body-invisible-to-methods", "class C:\n    a = 1\n    def m(self):\n        return a", {"a"}),
    (
        "method-defaults-see-class-body",
        "class C:\n    k = 1\n    def m(self, x=k) -> T:\n        return x",
        {"T"},
    ),
    ("class-decorator", "@dataclass\nclass P:\n    x: int = 0", {"dataclass"}),
    ("class-bare-annotation-binds-nothing", "class C:\n    x: int\n    y = x", {"x"}),
    ("class-augassign-reads-outside", "class C:\n    n += 1", {"n"}),
    ("class-body-comprehension", "class C:\n    y = 1\n    zs = [y for _ in range(3)]", {"y"}),
    ("class-comprehension-first-iterable", "class C:\n    xs = [1]\n    ys = [x for x in xs]", set()),
    ("super-and-dunder-class", "class C(B):\n    def m(self):\n        return super().m(), __class__", {"B"}),
    # Comprehensions and generator expressions.
    ("listcomp-target-local", "squares = [i * i for i in nums]\nprint(i)", {"nums", "i"}),
    ("listcomp-condition", "[x for x in xs if x > limit]", {"xs", "limit"}),
    ("nested-generators", "[(a, b) for a in rows for b in a if b]", {"rows"}),
    ("dictcomp", "{k: v * f for k, v in d.items()}", {"d", "f"}),
    ("setcomp-genexp", "{x for x in s}\nsum(y for y in t)", {"s", "t"}),
    ("comprehension-reads-cell-binding", "n = 3\n[n * x for x in range(n)]", set()),
    ("nested-comprehension", "[[c for c in row] for row in grid]", {"grid"}),
    ("async-comprehension", "[x async for x in aiter_src()]", {"aiter_src"}),
    # Walrus.
    ("walrus", "if (m := match(s)):\n    print(m)", {"match", "s"}),
    ("walrus-in-comprehension-binds-outside", "[y := f(x) for x in xs]\nprint(y, x)", {"f", "xs", "x"}),
    (
        "walrus-in-nested-function-comp",
        "def g():\n    [z := 1 for _ in r]\n    return z\nprint(z)",
        {"r", "z"},
    ),
    # f-strings.
    ("fstring", 'f"{name!r:>{width}} {obj.attr}"', {"name", "width", "obj"}),
    ("fstring-in-function", 'def f(a):\n    return f"{a}{b}"', {"b"}),
    # try/except.
    (
        "except-as",
        "try:\n    risky()\nexcept (ValueError, MyErr) as e:\n    print(e)\nfinally:\n    done()",
        {"risky", "MyErr", "done"},
    ),
    ("except-star", "try:\n    pass\nexcept* OSError as eg:\n    print(eg)", set()),
    # match statements.
    ("match-capture", "match cmd:\n    case x:\n        print(x)", {"cmd"}),
    ("match-class-keyword", "match p:\n    case Point(x=a, y=0):\n        print(a)", {"p", "Point"}),
    ("match-sequence-star", "match seq:\n    case [first, *rest]:\n        print(first, rest)", {"seq"}),
    ("match-mapping-rest", 'match d:\n    case {"k": v, **rest}:\n        print(v, rest)', {"d"}),
    ("match-wildcard-and-value", "match c:\n    case Color.RED | _:\n        pass", {"c", "Color"}),
    (
        "match-as-and-guard",
        "match v:\n    case [1, 2] as pair if ok(pair):\n        print(pair)",
        {"v", "ok"},
    ),
    # Top-level await and async statements.
    ("toplevel-await", "result = await fetch(url)", {"fetch", "url"}),
    ("toplevel-async-for", "async for row in stream:\n    print(row)", {"stream"}),
    ("toplevel-async-with", "async with session() as s:\n    await s.get(u)", {"session", "u"}),
    ("toplevel-await-in-comprehension", "[await g(x) for x in xs]", {"g", "xs"}),
]


@pytest.mark.parametrize(("source", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_free_names(source: str, expected: set[str]) -> None:
    assert free_names(source) == expected


def test_indented_source_from_dedent() -> None:
    source = textwrap.dedent(
        """
        def area(r):
            return pi * r ** 2
        print(area(radius))
        """
    )
    assert free_names(source) == {"pi", "radius"}


@pytest.mark.parametrize(
    ("source", "lineno"),
    [("x = (1,\ny = 2 +", 1), ("a = 1\nb = = 2", 2), ("def f():\n    nonlocal q", 2), ("nonlocal z", 1)],
    ids=["unclosed-paren", "bad-assign", "nonlocal-without-binding", "nonlocal-at-top-level"],
)
def test_syntax_errors_raise_syntax_error(source: str, lineno: int) -> None:
    with pytest.raises(SyntaxError) as info:
        free_names(source)
    assert info.value.lineno == lineno
    assert info.value.msg


def test_analysis_does_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert free_names('ok = x is 1\npattern = "\\d"') == {"x"}
