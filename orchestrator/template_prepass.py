"""Watched renders (template_tracked.py) of templates with pre-pass loops over messages,
and whose text after the main loop reads namespace attributes.

DeepSeek's templates (V3, V3.1, R1 and its distilled students) first loop over all
messages to gather the system prompt into a namespace, then loop over them again to
write the conversation, and after that loop read `ns.is_tool` to choose the generation
prompt. template_tracked.py's argument covers neither: the first loop reads every message,
and the text after the main loop depends on what the loop left in the namespace.

**Pre-pass loops.** A top-level `for ... in messages` loop before the main one (the last
such loop) that writes no text, is not filtered or recursive and has no else branch.
Jinja's scoping lets such a loop change the render's state only through namespace
attributes (a `set` inside a loop is local to it; the sandbox is immutable, so no list
or dict can be changed; a raised error fails the whole render, which is then not used).
Take the render of all n messages and of messages[:j]. The prefix's pre-pass runs the
iterations for messages 0..j-1 and stops; the full one runs the same iterations, then
those for j..n-1. They leave the same state when (a) everything the iterations for
messages below j read had an index below j (no look-ahead: `loop.last`, `loop.length`
and `messages[i + 1]` are recorded as reads, as in the main loop) and (b) no iteration
for a message at or past j wrote a namespace attribute. Both are recorded per render:
the loop runs over our iterator, and the start of every iteration closes the one before
(its largest index read; jinja's loop context starts them when the loop reads `loop`),
every namespace is one of ours that records a write with the iteration it happens in,
and a call after the loop restores the reads outside pre-passes. A prefix
that fails (a) or (b) is not proven (rendered instead).

**Namespace reads after the main loop.** The statements after the main loop may read
namespace attributes (`ns.is_tool`), only as `ns.<attribute>`. The state they read is,
for the render of messages[:j], the state at the moment the full render fetches message
j (the two renders ran the same code up to there). So every fetch snapshots the values
of those attributes, and after(g) is known for a prefix whose snapshot equals that of a
render whose after(g) was seen (prefixes.py keeps them by (g, snapshot)).
"""

from __future__ import annotations

import sys
from typing import Any

ALL = sys.maxsize  # "read" meaning: depends on how many messages there are
ITER_NAME = "distill_iter_0f0000"  # names unlikely to be a template's own variables
PRE_ITER = "distill_pre_iter_0f0000"
PRE_END = "distill_pre_end_0f0000"
_UNSET = object()  # an attribute a namespace does not have (in a snapshot)


class NotTracked(Exception):
    """An operation on the watched messages that could differ from a list's: the render fails
    (and each prefix is rendered instead)."""


def split_loops(tree) -> tuple[Any, list] | str:
    """(the main loop, the pre-pass loops before it), or why the template has none we can watch."""
    from jinja2 import nodes

    from orchestrator.template import _aliases

    names = {"messages", *_aliases(tree)}
    loops = [n for n in tree.find_all(nodes.For) if isinstance(n.iter, nodes.Name) and n.iter.name in names]
    top = {id(node) for node in tree.body}
    if not loops or any(id(loop) not in top for loop in loops):
        return "it does not have a top-level `for ... in messages` loop, and no other loop over messages"
    for loop in loops[:-1]:
        if loop.recursive or loop.test is not None or loop.else_:
            return "a loop over messages before its main one is recursive, filtered or has an else branch"
        if any(loop.find_all(nodes.Output)):
            return "a loop over messages before its main one writes text"
    return loops[-1], loops[:-1]


def _default_of(node) -> str | None:
    """X when `node` is `{% if not X is defined %}{% set X = <constant> %}{% endif %}`, else None."""
    from jinja2 import nodes

    if not (isinstance(node, nodes.If) and not node.elif_ and not node.else_ and isinstance(node.test, nodes.Not)):
        return None
    test, body = node.test.node, node.body
    if (
        isinstance(test, nodes.Test)
        and test.name == "defined"
        and isinstance(test.node, nodes.Name)
        and len(body) == 1
        and isinstance(body[0], nodes.Assign)
        and isinstance(body[0].target, nodes.Name)
        and body[0].target.name == test.node.name
        and isinstance(body[0].node, nodes.Const)
    ):
        return test.node.name
    return None


def default_only(tree) -> set[str]:
    """Names whose every assignment is `{% if not X is defined %}{% set X = <constant> %}{% endif %}`
    at the top level: their value is the keyword argument, or else that constant, in every
    render (add_generation_prompt, which we always pass; DeepSeek V3.1's `thinking`)."""
    from jinja2 import nodes

    defaults: dict[str, int] = {}
    for node in tree.body:
        if (name := _default_of(node)) is not None:
            defaults[name] = defaults.get(name, 0) + 1
    stores: dict[str, int] = {}
    for n in tree.find_all(nodes.Name):
        if n.ctx != "load":
            stores[n.name] = stores.get(n.name, 0) + 1
    return {name for name, k in defaults.items() if stores.get(name) == k}


def idiom_names(tree, names: set[str]) -> set[int]:
    """ids of the Name nodes of default_only's idiom for `names` (its test and its store)."""
    from jinja2 import nodes

    out: set[int] = set()
    for node in tree.body:
        if (name := _default_of(node)) is not None and name in names:
            out |= {id(n) for n in node.find_all(nodes.Name)}
    return out


def namespace_names(tree) -> set[str]:
    """Names that may hold a namespace: those assigned an attribute (`set ns.x`), assigned
    `namespace(...)`, or assigned one of these (an alias, which the loop changes as well)."""
    from jinja2 import nodes

    names = {n.name for n in tree.find_all(nodes.NSRef)}
    assigns = [a for a in tree.find_all(nodes.Assign) if isinstance(a.target, nodes.Name)]
    names |= {
        a.target.name
        for a in assigns
        if isinstance(a.node, nodes.Call) and isinstance(a.node.node, nodes.Name) and a.node.node.name == "namespace"
    }
    while True:
        more = {a.target.name for a in assigns if isinstance(a.node, nodes.Name) and a.node.name in names} - names
        if not more:
            return names
        names |= more


def after_attributes(after: list, namespaces: set[str]) -> tuple[str, ...] | str:
    """The namespace attributes the statements after the main loop read (sorted), or why
    they cannot be watched (a namespace used other than as `ns.<attribute>`)."""
    from jinja2 import nodes

    attrs: set[str] = set()
    read: set[int] = set()
    for node in after:
        for g in node.find_all(nodes.Getattr):
            if isinstance(g.node, nodes.Name) and g.node.name in namespaces:
                attrs.add(g.attr)
                read.add(id(g.node))
        for n in node.find_all(nodes.Name):
            if n.name in namespaces and id(n) not in read:
                return f"after its loop over messages it uses namespace {n.name!r} other than as {n.name}.<attribute>"
    return tuple(sorted(attrs))


def with_prepasses(tree, loops: list):
    """The tree with each pre-pass loop watched: its items from PRE_ITER (PreIter, which
    starts every iteration) and a PRE_END call right after it."""
    from jinja2 import nodes

    def call(name: str, args: list) -> Any:
        return nodes.Call(nodes.Name(name, "load"), args, [], None, None)

    for loop in loops:
        loop.iter = call(PRE_ITER, [loop.iter])
        i = next(i for i, node in enumerate(tree.body) if node is loop)
        tree.body.insert(i + 1, nodes.ExprStmt(call(PRE_END, [])))
    return tree


class PrePass:
    """One pre-pass loop of one render: the index of its first item, the largest index read
    in each iteration, and the largest message index of an iteration that wrote a namespace."""

    __slots__ = ("start", "k", "reads", "last_write", "outer")

    def __init__(self, start: int):
        self.start, self.k, self.reads, self.last_write, self.outer = start, -1, [], -1, -1


class PrePassWatch:
    """What a watched render (template_tracked._Tracker) records of its pre-pass loops and
    namespaces; the PRE_* functions the template calls."""

    max: int  # the tracker's largest index read so far

    def __init__(self, attrs: tuple[str, ...]):
        self.pre: list[PrePass] = []
        self.cur: PrePass | None = None  # the pre-pass running now
        self.namespaces: list[dict] = []  # the attribute dicts of the namespaces made
        self.attrs = attrs  # the namespace attributes after() reads: snapshot at every plain fetch
        self.states: list = []
        self.end_state: tuple | None = ()

    def pre_iter(self, view) -> PreIter:
        if getattr(view, "_t", None) is not self:  # template_tracked._View of this render
            raise NotTracked("a loop before the main one does not run over the messages")
        self.cur = PrePass(view._start)
        self.pre.append(self.cur)
        return PreIter(self, view._start)

    def pre_start(self) -> None:
        """A pre-pass iteration starts: close the one before (its largest read); this one reads its item."""
        rec = self.cur
        if rec is None:
            raise NotTracked("a pre-pass iteration outside its loop")
        if rec.k < 0:
            rec.outer = self.max
        else:
            rec.reads.append(self.max)
        rec.k += 1
        self.max = rec.start + rec.k

    def pre_end(self) -> None:
        """The pre-pass loop is over: from here on the reads are those outside it again."""
        rec, self.cur = self.cur, None
        if rec is not None and rec.k >= 0:
            rec.reads.append(self.max)
            self.max = rec.outer


class WatchedIter:
    """The items of a watched loop over messages (template_tracked._MainIter, PreIter): `t` the
    render's tracker, `i` the next index, `peeking` set while jinja's loop context looks ahead."""

    __slots__ = ("t", "i", "peeking")

    def __init__(self, t: Any, start: int):
        self.t, self.i, self.peeking = t, start, False

    def __iter__(self):
        return self


class PreIter(WatchedIter):
    """A pre-pass loop's items. A plain fetch starts an iteration, which reads its item
    (PrePassWatch.pre_start); a fetch while jinja peeks (loop.last, loop.nextitem,
    loop.length) is a read inside the current iteration, and running past the end while
    peeking depends on the count. When the loop reads `loop`, jinja's LoopContext hands out
    the items (a peeked one without fetching it again): it starts the iterations instead
    (`managed`, template_tracked.tracked_loop_context)."""

    __slots__ = ("managed",)

    def __init__(self, t: Any, start: int):
        super().__init__(t, start)
        self.managed = False

    def __next__(self):
        t, i = self.t, self.i
        if i >= t.n:
            if self.peeking:
                t.read(ALL)
            raise StopIteration
        self.i += 1
        if self.peeking:
            t.read(i)
        elif not self.managed:
            t.pre_start()
        return t.items[i]


_NAMESPACE: list = []  # the WatchedNamespace class, made once (jinja is imported lazily)


def watched_namespace(t: Any):
    """jinja's `namespace` for one watched render: its namespaces record every attribute
    written during a pre-pass iteration (with that iteration's message index), and are kept
    in `t.namespaces` for the snapshots."""
    if not _NAMESPACE:
        from jinja2.utils import Namespace

        class WatchedNamespace(Namespace):
            # one class for all renders (the sandbox remembers its checks per class); the
            # render's tracker is an instance attribute the template cannot read (a
            # namespace answers only its own attributes)
            def __setitem__(self, name: str, value: Any) -> None:
                rec = object.__getattribute__(self, "_distill_t").cur
                if rec is not None and rec.k >= 0:
                    rec.last_write = rec.start + rec.k
                Namespace.__setitem__(self, name, value)

        _NAMESPACE.append(WatchedNamespace)
    cls = _NAMESPACE[0]

    def make(*args: Any, **kwargs: Any) -> Any:
        ns = cls(*args, **kwargs)
        object.__setattr__(ns, "_distill_t", t)
        t.namespaces.append(ns._Namespace__attrs)  # its attributes, for the snapshots
        return ns

    return make


_PLAIN = frozenset((str, int, float, bool, type(None)))


def snapshot(namespaces: list, attrs: tuple[str, ...]) -> tuple | None:
    """The values of `attrs` in the attribute dicts of every namespace made so far (an
    attribute a namespace lacks is _UNSET); None when a value is not a plain str, number,
    bool or None (a list, or an object equal only to itself: not comparable across renders)."""
    unset = (_UNSET,) * len(attrs)
    if len(namespaces) == 1:
        state = tuple(map(namespaces[0].get, attrs, unset))
    else:
        state = tuple(v for d in namespaces for v in map(d.get, attrs, unset))
    for v in state:
        if type(v) not in _PLAIN and v is not _UNSET:
            return None
    return state


def proven_by_prepasses(records: list[PrePass], n: int) -> list[bool] | None:
    """For j in 0..n, whether every pre-pass leaves the render of messages[:j] in the state the
    full render is in after it (module docstring: (a) and (b)); None without pre-passes."""
    if not records:
        return None
    ok = [True] * (n + 1)
    for rec in records:
        seen, k = -1, 0
        for j in range(n + 1):
            while k < len(rec.reads) and rec.start + k < j:
                seen = max(seen, rec.reads[k])
                k += 1
            if seen >= j or rec.last_write >= j:
                ok[j] = False
    return ok


def why_not_tracked(tree) -> str | None:
    """None when watched renders (template_tracked.py) can prove prefixes of this template
    (a parsed jinja tree): a top-level main loop over messages (or an alias) with a plain
    target, no else/break/filter/recursion, and before it only pre-pass loops over them
    (split_loops); add_generation_prompt read only after the main loop (or tested with
    `is defined`); after it no macro call, and namespaces read only as ns.<attribute>;
    else the reason."""
    from jinja2 import nodes

    from orchestrator.template import _loop_use, _top_level_index
    from orchestrator.template_last import LAST_NAMES, last_units, unit_names

    if any(tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport, nodes.Block))):
        return "it extends, includes or imports other templates"
    loops = split_loops(tree)  # the main loop, and pre-pass loops before it (template_prepass.py)
    if isinstance(loops, str):
        return loops
    loop = loops[0]
    if loop.recursive or loop.test is not None or loop.else_ or any(loop.find_all(nodes.Break)):
        return "its loop over messages is recursive, filtered, can break or has an else branch"
    if any(n.name in (ITER_NAME, PRE_ITER, PRE_END, *LAST_NAMES) for n in tree.find_all(nodes.Name)):
        return "it uses the names of the watched render"
    if why := _loop_use(tree.body, None, None):  # `loop` outside a for loop
        return why
    after = tree.body[_top_level_index(tree.body, loop) + 1 :]
    after_names = {id(n) for node in after for n in node.find_all(nodes.Name)}
    # `{% if not add_generation_prompt is defined %}...`: always defined here, so never read for its value
    idiom = idiom_names(tree, default_only(tree) & {"add_generation_prompt"})
    # read inside a statement that reads loop.last only to choose text: a constant there (template_last.py)
    units = last_units(loop)
    idiom |= unit_names(units) if isinstance(units, list) else set()
    if any(
        n.name == "add_generation_prompt" and id(n) not in after_names and id(n) not in idiom
        for n in tree.find_all(nodes.Name)
    ):
        return "it reads add_generation_prompt before the end of its loop over messages"
    namespaces = namespace_names(tree)
    macros = {m.name for m in tree.find_all(nodes.Macro)}
    for node in after:
        if any(isinstance(c.node, nodes.Name) and c.node.name in macros for c in node.find_all(nodes.Call)):
            return "after its loop over messages it calls a macro"
    attrs = after_attributes(after, namespaces)  # read as ns.<attribute>: kept per state
    return attrs if isinstance(attrs, str) else None
