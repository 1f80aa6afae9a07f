"""Convergent values: the join laws, delivery in any order, the wire, and each type's own rules."""

from __future__ import annotations

import datetime as dt
import inspect
import textwrap
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import reduce
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spindel_jupyter.core import crdt, wire
from spindel_jupyter.core.clock import HybridClock
from spindel_jupyter.core.crdt import GSet, LWWMap, ORSet, PNCounter
from tests.custom_crdt import MaxRegister

# -- random histories on several replicas --------------------------------------------

ELEMENTS = st.sampled_from(["a", "b", "c", 0, 1, (1, "x"), frozenset({2})])
KEYS = st.sampled_from(["k", "l", 3, (0, 1)])
VALUES = st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=2), st.tuples(st.integers(0, 2)))


@dataclass(frozen=True)
class Kind:
    """A convergent type and the mutations a random history may make with it."""

    cls: Callable[[], Any]
    operation: st.SearchStrategy[tuple[Any, ...]]  # (method name, *arguments)


KINDS = {
    "gset": Kind(GSet, st.tuples(st.just("add"), ELEMENTS)),
    "orset": Kind(ORSet, st.tuples(st.sampled_from(["add", "remove"]), ELEMENTS)),
    "pncounter": Kind(PNCounter, st.tuples(st.sampled_from(["increment", "decrement"]), st.integers(0, 3))),
    "lwwmap": Kind(
        LWWMap, st.one_of(st.tuples(st.just("set"), KEYS, VALUES), st.tuples(st.just("delete"), KEYS))
    ),
    "maxregister": Kind(MaxRegister, st.tuples(st.just("set"), st.integers(-5, 5))),
}

every_kind = pytest.mark.parametrize("kind", KINDS.values(), ids=list(KINDS))


def steps(kind: Kind) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    """A history: replicas mutate, publish their pending delta, receive deltas, merge each other."""
    return st.lists(
        st.one_of(
            st.tuples(st.just("mutate"), st.integers(0, 3), kind.operation),
            st.tuples(st.just("publish"), st.integers(0, 3)),
            st.tuples(st.just("receive"), st.integers(0, 3), st.integers(0, 99)),
            st.tuples(st.just("merge"), st.integers(0, 3), st.integers(0, 3)),
        ),
        max_size=25,
    )


@dataclass
class Run:
    replicas: list[Any]  # every replica's final value, nothing left pending
    deltas: list[Any]  # every delta published, in order


def simulate(kind: Kind, count: int, history: list[tuple[Any, ...]]) -> Run:
    replicas = [kind.cls() for _ in range(count)]
    deltas: list[Any] = []

    def publish(i: int) -> None:
        delta = replicas[i].delta()
        if delta is not None:
            deltas.append(delta)
            replicas[i] = replicas[i].clear_delta()

    for step in history:
        i = step[1] % count
        if step[0] == "mutate":
            name, *args = step[2]
            with crdt.replica(f"r{i}"):
                replicas[i] = getattr(replicas[i], name)(*args)
        elif step[0] == "publish":
            publish(i)
        elif step[0] == "receive" and deltas:
            replicas[i] = replicas[i].apply_delta(deltas[step[2] % len(deltas)])
        elif step[0] == "merge":
            replicas[i] = replicas[i].merge(replicas[step[2] % count])
    for i in range(count):
        publish(i)
    return Run(replicas, deltas)


def runs(kind: Kind, low: int = 2, high: int = 4) -> st.SearchStrategy[Run]:
    """The outcome of a random history on ``low`` to ``high`` replicas."""
    return st.builds(simulate, st.just(kind), st.integers(low, high), steps(kind))


def merge_all(values: list[Any]) -> Any:
    return reduce(lambda a, b: a.merge(b), values)


def apply_all(value: Any, deltas: list[Any]) -> Any:
    for delta in deltas:
        once = value.apply_delta(delta)
        assert once.apply_delta(delta) is once  # a delta applied twice changes nothing
        value = once
    return value


PROPERTY = settings(max_examples=150, deadline=None)


def canonical(value: Any) -> Any:
    """``value.state()`` with what comes in no particular order made a set or a map."""
    state = value.state()
    if isinstance(value, GSet):
        return frozenset(state)
    if isinstance(value, ORSet):
        return entries_of(state), state["vv"], state["cloud"]
    return state


def entries_of(state: dict[str, Any]) -> dict[Any, frozenset[tuple[str, int]]]:
    """An ORSet state's columns as element -> its dots."""
    counts = state["counts"] or [1] * len(state["elements"])
    dots = list(zip(state["dots"][::2], state["dots"][1::2], strict=True))
    out, start = {}, 0
    for element, n in zip(state["elements"], counts, strict=True):
        out[element] = frozenset(dots[start : start + n])
        start += n
    return out


@every_kind
@PROPERTY
@given(data=st.data())
def test_join_is_commutative_associative_and_idempotent(kind: Kind, data: st.DataObject) -> None:
    run = data.draw(runs(kind, low=3))
    pool = run.replicas + run.deltas
    a, b, c = (data.draw(st.sampled_from(pool)) for _ in range(3))
    assert canonical(a.merge(b)) == canonical(b.merge(a))
    assert canonical(a.merge(b).merge(c)) == canonical(a.merge(b.merge(c)))
    assert a.merge(a) is a
    joined = a.merge(b)
    assert joined.merge(a) is joined
    assert joined.merge(b) is joined


@every_kind
@PROPERTY
@given(data=st.data())
def test_deltas_in_any_order_with_duplicates_converge(kind: Kind, data: st.DataObject) -> None:
    run = data.draw(runs(kind))
    expected = canonical(merge_all(run.replicas))
    repeats = data.draw(st.lists(st.sampled_from(run.deltas), max_size=10)) if run.deltas else []
    delivery = data.draw(st.permutations(run.deltas + repeats))
    assert canonical(apply_all(kind.cls(), delivery)) == expected
    for value in run.replicas:
        assert canonical(apply_all(value, data.draw(st.permutations(delivery)))) == expected


@every_kind
@PROPERTY
@given(data=st.data())
def test_state_round_trips_directly_and_through_the_wire(kind: Kind, data: st.DataObject) -> None:
    run = data.draw(runs(kind))
    for value in run.replicas + run.deltas:
        cls = crdt.type_for(value.type_name)
        assert cls is type(value)
        for data_ in (value.state(), wire.decode(wire.encode(value.state()))):
            rebuilt = cls.from_state(data_)
            assert canonical(rebuilt) == canonical(value)
            assert rebuilt.delta() is None
            assert rebuilt.merge(value) is rebuilt
        carried = wire.decode(wire.encode({"value": value}))["value"]  # a CRDT inside a value
        assert type(carried) is cls and canonical(carried) == canonical(value)
        assert carried.delta() is None


# -- the wire form ---------------------------------------------------------------------

PLAIN = {  # the built-in kinds, with elements, keys and values msgpack packs as they are
    "gset": Kind(GSet, st.tuples(st.just("add"), st.sampled_from(["a", "b", 0, 1]))),
    "orset": Kind(ORSet, st.tuples(st.sampled_from(["add", "remove"]), st.sampled_from(["a", "b", 0, 1]))),
    "pncounter": KINDS["pncounter"],
    "lwwmap": Kind(
        LWWMap,
        st.one_of(
            st.tuples(st.just("set"), st.sampled_from(["k", 3]), st.none() | st.integers(-3, 3) | st.text()),
            st.tuples(st.just("delete"), st.sampled_from(["k", 3])),
        ),
    ),
}


@pytest.mark.parametrize("kind", PLAIN.values(), ids=list(PLAIN))
@PROPERTY
@given(data=st.data())
def test_states_of_plain_elements_are_packed_by_msgpack_as_they_are(kind: Kind, data: st.DataObject) -> None:
    """No tuple or set in a built-in type's own structure: no extension type, nothing to nest."""
    run = data.draw(runs(kind))
    for value in run.replicas + run.deltas:
        packed = msgpack.packb(value.state(), strict_types=True, use_bin_type=True)  # no default: native
        assert packed == wire.encode(value.state())
        assert canonical(type(value).from_state(msgpack.unpackb(packed, strict_map_key=False))) == canonical(
            value
        )


def old_state(value: Any) -> Any:
    """``value``'s state in the form topic files held before states were natively packable."""
    state = value.state()
    if isinstance(value, GSet):
        return frozenset(state)
    if isinstance(value, ORSet):
        return {
            "entries": entries_of(state),
            "vv": state["vv"],
            "cloud": frozenset(zip(state["cloud"][::2], state["cloud"][1::2], strict=True)),
        }
    if isinstance(value, PNCounter):
        return {writer: tuple(counts) for writer, counts in state.items()}
    if isinstance(value, LWWMap):
        return {key: (tuple(stamp), live, v) for key, (stamp, live, v) in state.items()}
    return state


@every_kind
@PROPERTY
@given(data=st.data())
def test_states_in_the_former_form_still_load(kind: Kind, data: st.DataObject) -> None:
    run = data.draw(runs(kind))
    for value in run.replicas + run.deltas:
        stored = wire.decode(wire.encode(old_state(value)))
        assert canonical(type(value).from_state(stored)) == canonical(value)


def test_rare_elements_keep_their_exact_types_on_the_wire() -> None:
    moment = dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone.utc)
    elements = [(1, "x"), frozenset({2}), moment, Decimal("1.5"), b"raw", ((1, 2), 3), 7, "s"]
    value = ORSet(elements).remove(7)
    back = ORSet.from_state(wire.decode(wire.encode(value.state())))
    assert {(type(e), e) for e in back} == {(type(e), e) for e in value}
    table = LWWMap({(0, 1): (1, 2), "when": moment, "array": np.arange(3)})
    again = wire.decode(wire.encode(table))
    assert again[(0, 1)] == (1, 2) and type(again[(0, 1)]) is tuple and again["when"] == moment
    assert again["array"].tolist() == [0, 1, 2]


def test_an_element_with_several_dots_lists_them_sorted() -> None:
    with crdt.replica("b"):
        b = ORSet(["x"])
    with crdt.replica("a"):
        a = ORSet(["x"])
    for joined in (a.merge(b), b.merge(a)):
        state = joined.state()
        assert state["elements"] == ["x"] and state["dots"] == ["a", 1, "b", 1] and state["counts"] == [2]
        assert ORSet.from_state(state).state() == state


MODELS: dict[str, tuple[Any, Callable[[Any, tuple[Any, ...]], Any]]] = {
    "gset": (set(), lambda m, op: m | {op[1]}),
    "orset": (set(), lambda m, op: m | {op[1]} if op[0] == "add" else m - {op[1]}),
    "pncounter": (0, lambda m, op: m + op[1] if op[0] == "increment" else m - op[1]),
    "lwwmap": (
        {},
        lambda m, op: {**m, op[1]: op[2]} if op[0] == "set" else {k: v for k, v in m.items() if k != op[1]},
    ),
}


@pytest.mark.parametrize("name", list(MODELS))
@PROPERTY
@given(data=st.data())
def test_one_replica_reads_like_the_plain_python_value(name: str, data: st.DataObject) -> None:
    initial, step = MODELS[name]
    value, model = KINDS[name].cls(), initial
    for op in data.draw(st.lists(KINDS[name].operation, max_size=20)):
        value, model = getattr(value, op[0])(*op[1:]), step(model, op)
        assert value == model
    assert type(value).from_state(value.state()) == model


# -- the protocol's rules, type by type ----------------------------------------------


@pytest.mark.parametrize(
    ("empty", "mutate"),
    [
        (GSet, lambda v: v.add("x")),
        (ORSet, lambda v: v.add("x")),
        (PNCounter, lambda v: v.increment(2)),
        (LWWMap, lambda v: v.set("k", 1)),
    ],
    ids=["gset", "orset", "pncounter", "lwwmap"],
)
def test_pending_delta_rules(empty: Callable[[], Any], mutate: Callable[[Any], Any]) -> None:
    fresh = empty()
    assert fresh.delta() is None
    assert fresh.clear_delta() is fresh
    changed = mutate(fresh)
    assert changed is not fresh
    assert fresh.state() == empty().state()  # the original is untouched
    delta = changed.delta()
    assert type(delta) is type(changed)
    assert delta.delta() is None
    cleared = changed.clear_delta()
    assert cleared.delta() is None
    assert cleared.state() == changed.state()
    # Received changes are joined but never become pending again.
    received = fresh.apply_delta(delta)
    assert received.delta() is None
    assert received.state() == changed.state()
    assert received.apply_delta(delta) is received
    assert changed.apply_delta(delta) is changed
    # A value's own pending delta survives what it receives.
    with crdt.replica("other"):
        local = mutate(mutate(empty()))
    assert local.merge(changed).delta().state() == local.delta().state()


@PROPERTY
@given(data=st.data())
def test_orset_joins_touching_only_what_the_other_can_change_equal_full_joins(data: st.DataObject) -> None:
    run = data.draw(runs(KINDS["orset"], low=2))
    pool = run.replicas + run.deltas
    for _ in range(10):
        a, b = data.draw(st.sampled_from(pool)), data.draw(st.sampled_from(pool))
        full = a._join_all(b)
        touching = [a._join_touching(b, a._affected_by(b))]
        if b._only_adds():  # then only the elements it names can change
            touching.append(a._join_touching(b, b._entries))
        for small in touching:
            assert (small is None) == (full is None)
            if small is not None and full is not None:
                assert canonical(small) == canonical(full)
                rebuilt = {dot: x for x, dots in small._entries.items() for dot in crdt._pairs(dots)}
                assert dict(small._owners()) == rebuilt  # the dot index stays true to the entries


@PROPERTY
@given(data=st.data())
def test_deltas_of_adds_are_told_apart_from_those_that_remove(data: st.DataObject) -> None:
    run = data.draw(runs(KINDS["orset"], low=2))
    for delta in run.deltas:
        held = {dot for dots in delta._entries.values() for dot in crdt._pairs(dots)}
        assert delta._only_adds() == (held == set(delta._context.dots()))


CONTEXTS = st.builds(
    crdt._Context,
    st.dictionaries(st.sampled_from("abc"), st.integers(1, 4)),
    st.frozensets(st.tuples(st.sampled_from("abc"), st.integers(1, 7)), max_size=8),
)


@PROPERTY
@given(CONTEXTS, CONTEXTS)
def test_joining_two_causal_contexts_equals_making_their_union_afresh(a: Any, b: Any) -> None:
    """The join works from the smaller side only; it must give what normalizing the whole union gives."""
    tops = {w: max(a.vv.get(w, 0), b.vv.get(w, 0)) for w in a.vv.keys() | b.vv.keys()}
    union = crdt._Context(tops, a.cloud | b.cloud)
    assert a.join(b) == union == b.join(a)
    assert all(seq > union.vv.get(writer, 0) for writer, seq in union.cloud)  # nothing a top holds
    assert not any(
        (writer, union.vv.get(writer, 0) + 1) in union.cloud for writer, _ in union.cloud
    )  # no run


def test_applying_a_small_delta_to_a_large_orset_looks_at_the_delta_only(monkeypatch: Any) -> None:
    large = ORSet(range(5000)).clear_delta()
    other = large.add("new").remove(17)
    delta = other.delta()
    assert delta is not None
    large.apply_delta(ORSet([0]))  # builds the dot index once
    looked_at: list[Any] = []
    surviving = crdt._surviving

    def counting(mine: Any, theirs: Any, *contexts: Any) -> Any:
        looked_at.append((mine, theirs))
        return surviving(mine, theirs, *contexts)

    monkeypatch.setattr(crdt, "_surviving", counting)
    joined = large.apply_delta(delta)
    assert "new" in joined and 17 not in joined and len(joined) == 5000
    assert len(looked_at) == 2  # the elements "new" and 17


LARGE = 20_000

#: name -> (a large value, a local change to it, a one-element delta from another replica)
SMALL_CHANGES: dict[str, tuple[Callable[[], Any], Callable[[Any], Any], Callable[[], Any]]] = {
    "orset": (
        lambda: ORSet(range(LARGE)),
        lambda v: v.add("x").remove(7),
        lambda: ORSet().add("new").delta(),
    ),
    "gset": (lambda: GSet(range(LARGE)), lambda v: v.add("x"), lambda: GSet().add("new").delta()),
    "lwwmap": (
        lambda: LWWMap({i: i for i in range(LARGE)}),
        lambda v: v.set("x", 1).delete(7),
        lambda: LWWMap().set("new", 1).delta(),
    ),
}


@pytest.mark.parametrize("name", list(SMALL_CHANGES))
def test_a_small_change_to_a_large_value_allocates_in_proportion_to_the_change(name: str) -> None:
    """Values are persistent maps: a change shares the unchanged part instead of copying it."""
    large_value, change, small_delta = SMALL_CHANGES[name]
    with crdt.replica("other"):
        delta = small_delta()
    value = large_value().clear_delta()
    value.apply_delta(delta)  # builds what a value indexes on first use
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        changed = change(value)
        joined = value.apply_delta(delta)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert "x" in changed and "new" in joined and len(joined) >= LARGE
    assert peak < 64 * 1024, f"{peak} bytes for a change of one element to {LARGE}"


def test_merging_different_types_is_refused() -> None:
    with pytest.raises(TypeError, match="cannot merge GSet into ORSet"):
        ORSet().merge(GSet())  # type: ignore[arg-type]


def test_values_are_immutable() -> None:
    value = ORSet(["a"])
    with pytest.raises(AttributeError):
        value.extra = 1  # type: ignore[attr-defined]
    value.add("b")
    value.remove("a")
    assert value == {"a"}


def test_gset_reads_like_a_frozenset() -> None:
    value = GSet(["a"]).add("b")
    assert value == {"a", "b"} == frozenset({"a", "b"}) == GSet(["b", "a"])
    assert "a" in value and "z" not in value
    assert len(value) == 2
    assert sorted(value) == ["a", "b"]
    assert value.add("a") is value
    assert value | {"c"} == {"a", "b", "c"}
    assert type(value | {"c"}) is frozenset
    assert hash(value) == hash(frozenset({"a", "b"}))
    assert repr(GSet()) == "GSet()"
    assert repr(GSet(["a"])) == "GSet({'a'})"
    with pytest.raises(TypeError):
        value.add(["unhashable"])  # type: ignore[arg-type]


def test_orset_reads_like_a_frozenset() -> None:
    value = ORSet(["a", "b", "c"]).remove("c")
    assert value == {"a", "b"} == GSet(["a", "b"])
    assert value != {"a"}
    assert repr(value) == "ORSet({'a', 'b'})"
    assert repr(ORSet()) == "ORSet()"
    assert value & {"a", "z"} == {"a"}
    assert hash(value) == hash(frozenset({"a", "b"}))
    assert value.remove("absent") is value
    with pytest.raises(TypeError):
        value.add({"unhashable"})  # type: ignore[arg-type]


def test_orset_concurrent_add_and_remove_keeps_the_element() -> None:
    with crdt.replica("a"):
        a = ORSet(["x"])
    with crdt.replica("b"):
        b = ORSet().apply_delta(a.delta())
    a = a.clear_delta()
    with crdt.replica("a"):
        removed = a.remove("x")
    with crdt.replica("b"):
        added = b.add("x")
    for first, second in [(removed, added), (added, removed)]:
        assert first.merge(second) == {"x"}
    assert ORSet().apply_delta(removed.delta()).apply_delta(added.delta()) == {"x"}
    assert ORSet().apply_delta(added.delta()).apply_delta(removed.delta()) == {"x"}


def test_orset_remove_after_an_observed_add_removes() -> None:
    with crdt.replica("a"):
        a = ORSet(["x", "y"])
    with crdt.replica("b"):
        b = ORSet().apply_delta(a.delta()).remove("x")
    assert a.apply_delta(b.delta()) == {"y"}
    assert ORSet().apply_delta(b.delta()).apply_delta(a.delta()) == {"y"}  # even when it arrives first


def test_orset_re_adding_after_a_remove_works() -> None:
    with crdt.replica("a"):
        value = ORSet(["x"]).remove("x").add("x")
    assert value == {"x"}
    with crdt.replica("b"):
        other = ORSet().apply_delta(value.delta()).remove("x")
    with crdt.replica("a"):
        again = value.merge(other).add("x")
    assert again == {"x"}
    assert other.apply_delta(again.delta()) == {"x"}


def test_orset_keeps_no_tombstones() -> None:
    with crdt.replica("a"):
        value = ORSet(["x", "y", "z"]).remove("x").remove("z")
    state = value.state()
    assert state["elements"] == ["y"] and state["counts"] == []
    assert state["cloud"] == []
    assert list(state["vv"].values()) == [3]  # the context is one number per writer


def test_forks_of_one_value_do_not_erase_each_other() -> None:
    # Values are immutable, so one value can be changed twice; both changes must count.
    base = ORSet(["x"]).clear_delta()
    assert base.add("y").merge(base.add("z")) == {"x", "y", "z"}
    assert ORSet(["y"]).merge(ORSet(["z"])) == {"y", "z"}
    assert base.add("y").merge(base.remove("x")) == {"y"}
    fork = base.add("z")
    assert base.add("y").state()["cloud"] == fork.state()["cloud"] == []  # contexts stay compact
    counter = PNCounter().increment(5)
    assert counter.increment().merge(counter.increment()) == 7
    assert counter.increment().merge(counter.decrement(2)) == 4
    assert PNCounter().increment(2).merge(PNCounter().increment(3)) == 5


def test_a_cleared_copy_and_its_original_are_forks_too() -> None:
    published = ORSet(["x"])
    cleared = published.clear_delta()
    assert published.add("y").merge(cleared.add("z")) == {"x", "y", "z"}


def test_pncounter_counts() -> None:
    value = PNCounter().increment().increment(5).decrement(2)
    assert value.value == 4
    assert int(value) == 4
    assert value == 4 and value != 5
    assert value == PNCounter().increment(4)
    assert hash(value) == hash(4)
    assert repr(value) == "PNCounter(value=4)"
    assert value.increment(0) is value and value.decrement(0) is value
    assert PNCounter().decrement(3) == -3


@pytest.mark.parametrize("n", [-1, 1.5, True, "1", None])
def test_pncounter_refuses_other_amounts(n: Any) -> None:
    with pytest.raises(ValueError, match="int >= 0"):
        PNCounter().increment(n)
    with pytest.raises(ValueError, match="int >= 0"):
        PNCounter().decrement(n)


def test_lwwmap_reads_like_a_mapping() -> None:
    value = LWWMap({"a": 1, "b": 2}).set("c", 3).delete("a")
    assert value == {"b": 2, "c": 3}
    assert dict(value) == {"b": 2, "c": 3}
    assert len(value) == 2
    assert "a" not in value and "b" in value
    assert value.get("a") is None
    with pytest.raises(KeyError):
        value["a"]
    assert value["c"] == 3
    assert sorted(value.items()) == [("b", 2), ("c", 3)]
    assert repr(value) == "LWWMap({'b': 2, 'c': 3})"
    assert repr(LWWMap()) == "LWWMap()"
    assert value.delete("a") is value


def test_lwwmap_later_set_wins_in_any_delivery_order() -> None:
    with crdt.replica("a"):
        a = LWWMap().set("k", "first")
    with crdt.replica("b"):
        b = LWWMap().set("k", "second")
    for order in ([a.delta(), b.delta()], [b.delta(), a.delta()]):
        assert apply_all(LWWMap(), order) == {"k": "second"}
    assert a.apply_delta(b.delta()) == {"k": "second"}
    assert b.apply_delta(a.delta()) is b


def test_lwwmap_a_write_after_seeing_another_wins_even_with_a_slow_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(crdt, "_clock", HybridClock("a", wall=lambda: 10_000))
    a = LWWMap().set("k", "from a, fast clock")
    monkeypatch.setattr(crdt, "_clock", HybridClock("b", wall=lambda: 5))
    b = LWWMap().apply_delta(a.delta()).set("k", "from b, after seeing a")
    assert a.apply_delta(b.delta()) == {"k": "from b, after seeing a"}


def test_lwwmap_delete_beats_a_concurrent_older_set() -> None:
    with crdt.replica("a"):
        base = LWWMap({"k": 0}).clear_delta()
        older = base.set("k", 1)
    with crdt.replica("b"):
        deleted = base.delete("k")
    for first, second in [(older, deleted), (deleted, older)]:
        merged = first.merge(second)
        assert merged == {}
        assert merged.state()["k"][1:] == [False, None]  # the tombstone stays
    with crdt.replica("a"):
        newer = older.merge(deleted).set("k", 2)
    assert deleted.apply_delta(newer.delta()) == {"k": 2}


def test_lwwmap_ties_are_broken_the_same_everywhere() -> None:
    from_a = LWWMap.from_state({"k": ((5, 0, "a"), True, "from a")})
    from_b = LWWMap.from_state({"k": ((5, 0, "b"), True, "from b")})
    assert from_a.merge(from_b) == from_b.merge(from_a) == {"k": "from b"}
    # Equal stamps only come from two replicas sharing a name; the winner is still the same for both.
    same_1 = LWWMap.from_state({"k": ((5, 0, "a"), True, 1)})
    same_2 = LWWMap.from_state({"k": ((5, 0, "a"), True, 2)})
    assert same_1.merge(same_2).state() == same_2.merge(same_1).state()


def test_lwwmap_from_state_moves_the_clock_past_received_stamps() -> None:
    future = crdt._clock.now()[0] + 10**6
    received = LWWMap.from_state({"k": ((future, 0, "far"), True, "old")})
    assert received.set("k", "new") == {"k": "new"}


@pytest.mark.parametrize(
    ("cls", "data"),
    [
        (GSet, None),
        (GSet, {"a": 1}),
        (GSet, [["unhashable"]]),
        (ORSet, []),
        (ORSet, {"entries": {}, "vv": {}}),
        (ORSet, {"entries": [], "vv": {}, "cloud": []}),
        (ORSet, {"entries": {}, "vv": {"a": -1}, "cloud": []}),
        (ORSet, {"entries": {}, "vv": {1: 1}, "cloud": []}),
        (ORSet, {"entries": {}, "vv": {}, "cloud": "a1"}),
        (ORSet, {"entries": {}, "vv": {}, "cloud": [("a", 0)]}),
        (ORSet, {"entries": {}, "vv": {}, "cloud": [("a", True)]}),
        (ORSet, {"entries": {}, "vv": {}, "cloud": [("a", 1, 2)]}),
        (ORSet, {"entries": {"x": []}, "vv": {"a": 1}, "cloud": []}),
        (ORSet, {"entries": {"x": [("a", "1")]}, "vv": {"a": 1}, "cloud": []}),
        (ORSet, {"entries": {"x": [("a", 2)]}, "vv": {"a": 1}, "cloud": []}),
        (ORSet, {"entries": {"x": ["a", 2]}, "vv": {"a": 1}, "cloud": []}),
        (ORSet, {"entries": {"x": ["a", 1, "b"]}, "vv": {"a": 1}, "cloud": []}),
        (ORSet, {"entries": {"x": ["a", 0]}, "vv": {"a": 1}, "cloud": []}),
        (ORSet, {"entries": {"x": ["a", 1, 5, 1]}, "vv": {"a": 1}, "cloud": []}),
        (ORSet, {"entries": {"x": "a1"}, "vv": {"a": 1}, "cloud": []}),
        (ORSet, {"entries": {}, "vv": {}, "cloud": ["a", 0]}),
        (ORSet, {"elements": ["x"], "dots": ["a", 1], "vv": {"a": 1}, "cloud": []}),
        (ORSet, {"elements": "x", "dots": ["a", 1], "counts": [], "vv": {"a": 1}, "cloud": []}),
        (ORSet, {"elements": ["x"], "dots": ["a", 2], "counts": [], "vv": {"a": 1}, "cloud": []}),
        (ORSet, {"elements": ["x"], "dots": ["a", 1, "b"], "counts": [], "vv": {"a": 1}, "cloud": []}),
        (ORSet, {"elements": ["x"], "dots": ["a", 0], "counts": [], "vv": {"a": 1}, "cloud": []}),
        (ORSet, {"elements": ["x"], "dots": ["a", True], "counts": [], "vv": {"a": 1}, "cloud": []}),
        (ORSet, {"elements": ["x"], "dots": [1, 1], "counts": [], "vv": {"a": 1}, "cloud": []}),
        (ORSet, {"elements": ["x", "y"], "dots": ["a", 1], "counts": [], "vv": {"a": 1}, "cloud": []}),
        (ORSet, {"elements": ["x"], "dots": ["a", 1, "a", 2], "counts": [1], "vv": {"a": 2}, "cloud": []}),
        (ORSet, {"elements": ["x"], "dots": ["a", 1], "counts": [0], "vv": {"a": 1}, "cloud": []}),
        (
            ORSet,
            {"elements": ["x", "x"], "dots": ["a", 1, "a", 2], "counts": [], "vv": {"a": 2}, "cloud": []},
        ),
        (ORSet, {"elements": [["x"]], "dots": ["a", 1], "counts": [], "vv": {"a": 1}, "cloud": []}),
        (
            ORSet,
            {"elements": ["x", "y"], "dots": ["a", 1, "a", 1], "counts": [], "vv": {"a": 1}, "cloud": []},
        ),
        (ORSet, {"elements": [], "dots": [], "counts": [], "vv": {}, "cloud": ["a"]}),
        (PNCounter, []),
        (PNCounter, {"a": 1}),
        (PNCounter, {"a": (1,)}),
        (PNCounter, {"a": (-1, 0)}),
        (PNCounter, {"a": (True, 0)}),
        (PNCounter, {1: (1, 0)}),
        (LWWMap, []),
        (LWWMap, {"k": (1, True, 1)}),
        (LWWMap, {"k": ((1, 2), True, 1)}),
        (LWWMap, {"k": ((1, 0, "a"), "yes", 1)}),
        (LWWMap, {"k": ((1, 0, "a"), True)}),
        (LWWMap, {"k": ((1, 0, "a"), False, "left over")}),
        (MaxRegister, "big"),
    ],
)
def test_malformed_state_is_refused_with_a_clear_message(cls: Any, data: Any) -> None:
    with pytest.raises(ValueError, match=cls.type_name):
        cls.from_state(data)


def test_replica_sets_the_writer_for_a_block() -> None:
    own = crdt.current_replica()
    with crdt.replica("alice"):
        assert crdt.current_replica() == "alice"
        with crdt.replica("bob"):
            assert crdt.current_replica() == "bob"
        assert crdt.current_replica() == "alice"
    assert crdt.current_replica() == own
    with pytest.raises(ValueError, match="replica name"), crdt.replica("a#1"):
        pass


def test_lwwmap_stamps_name_the_replica() -> None:
    with crdt.replica("alice"):
        value = LWWMap().set("k", 1)
    assert value.state()["k"][0][2] == "alice"


# -- the registry and a custom type ----------------------------------------------------


def test_the_built_in_types_are_registered() -> None:
    for cls in (GSet, ORSet, PNCounter, LWWMap):
        assert crdt.type_for(cls.type_name) is cls
        assert crdt.is_convergent(cls())
    assert [GSet.type_name, ORSet.type_name, PNCounter.type_name, LWWMap.type_name] == [
        "gset",
        "orset",
        "pncounter",
        "lwwmap",
    ]
    assert not crdt.is_convergent({"a"})
    assert not crdt.is_convergent(None)


def test_type_for_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match=r"no convergent type is named 'nope'; known types: .*gset"):
        crdt.type_for("nope")


def test_register_checks_the_hooks() -> None:
    class NoName:
        pass

    class Partial:
        type_name = "partial"

        def merge(self, other: Partial) -> Partial:
            return self

    with pytest.raises(TypeError, match="type_name"):
        crdt.register(NoName)
    with pytest.raises(TypeError, match="delta, clear_delta, apply_delta, state, from_state"):
        crdt.register(Partial)


def test_register_refuses_a_taken_name_but_accepts_a_redefinition() -> None:
    class Impostor(MaxRegister):
        type_name = "orset"

    with pytest.raises(ValueError, match=r"'orset' is taken by spindel_jupyter\.core\.crdt\.ORSet"):
        crdt.register(Impostor)
    namespace: dict[str, Any] = {"__name__": MaxRegister.__module__}
    exec(  # re-running the notebook cell that defines the class
        "from spindel_jupyter import crdt\n@crdt.register\nclass MaxRegister(base):\n    pass\n",
        {**namespace, "base": MaxRegister},
        namespace,
    )
    try:
        assert crdt.type_for("maxregister") is namespace["MaxRegister"]
    finally:
        crdt.register(MaxRegister)


def test_a_subclass_of_a_registered_type_is_not_convergent_by_itself() -> None:
    class Special(ORSet[str]):
        pass

    assert not crdt.is_convergent(Special())


def test_max_register_round_trips_through_the_registry() -> None:
    with crdt.replica("a"):
        a = MaxRegister().set(3).set(1)
    with crdt.replica("b"):
        b = MaxRegister().set(7)
    assert crdt.is_convergent(a)
    assert a.value == 3
    sent = wire.encode(b.delta().state())
    received = crdt.type_for(b.type_name).from_state(wire.decode(sent))
    merged = a.apply_delta(received)
    assert merged.value == 7
    assert merged.apply_delta(received) is merged
    assert b.apply_delta(a.delta()) is b
    assert MaxRegister().delta() is None


def test_the_documented_example_is_the_tested_one() -> None:
    assert crdt.__doc__ is not None
    assert textwrap.indent(inspect.getsource(MaxRegister), "    ") in crdt.__doc__
