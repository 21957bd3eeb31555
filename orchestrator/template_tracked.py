"""Prefix renders for templates that are not provably append-only, proven per render.

orchestrator/template.py proves from the syntax tree alone that a template's text for
messages[:j] is the text of the whole conversation cut after message j-1, plus the text
after the loop. Most real templates fail that proof for reasons that, for a given
conversation, often do not matter: Llama 3.1 reads `messages[0]` and loops over
`messages[1:]` (a system message), Qwen2.5 looks at the next message only inside
the branch for tool messages, templates read `loop.last` only for some roles. This
module proves the same equality for one render at a time, by watching what the
render reads.

The template is compiled with two changes (same sandboxed environment, no template
text changed): the main `{% for message in messages %}` loop runs over a watched
iterator, and each iteration starts by calling a cut function that emits a marker;
a marker is also emitted right after the loop. `messages` is passed as a watched
sequence: every item read records the item's index; anything that depends on how many
messages there are (`messages|length`, `messages[-1]`, iterating to the end,
`messages[::-1]`, `loop.length`, ...) records "all of them". The loop's own look-ahead
(`loop.last`, `loop.nextitem`: jinja peeks the next item) records that item's index.
Every other operation either behaves exactly as on a list or raises, and a raising
render falls back to rendering each prefix.

The argument. A render is a deterministic function of its inputs. Take the render of
all n messages and of messages[:j] (j < n). Up to the moment the main loop fetches
message j, both run the same code on the same inputs, as long as nothing read so far
differs between the two: that is, every index read was < j and nothing depended on the
count. At that moment the full render fetches message j (and emits marker j, the
first thing the iteration does), while the prefix render finds the loop exhausted and
runs the statements after the loop. So

    render(messages[:j], g) == (full text up to marker j) + after(g)

whenever (1) the reads before the main loop's plain fetch of message j were all of
indices < j (`Cut.max_before`; a fetch that jinja made earlier, as a peek, does not
count as plain, so a body that looked ahead makes the next prefix unprovable), and (2)
after(g), the text of the statements after the loop, is the same for every prefix:
they read no namespace and call no macro (checked on the syntax tree, as for
append-only templates: nothing the loop changed reaches them), the state set before
the loop is the same (by (1)), and every message index they read is below the
smallest j used (checked on the renders that show after(False) and after(True)).
Prefixes that fail (1) are rendered as before; prefix n is the full render itself.
Loops over messages before the main one (pre-passes) and namespace attributes read
after it are watched too: template_prepass.py.
"""

from __future__ import annotations

from typing import Any

from orchestrator.template_last import (
    NOT_LAST_NAME,
    POISON_NAME,
    VARIANT_NAME,
    LastUnitsWatch,
    assigned_names,
    cut_variants,
    last_markers,
    last_units,
    with_last_variants,
)
from orchestrator.template_prepass import (
    ALL,
    ITER_NAME,
    NotTracked,
    PRE_END,
    PRE_ITER,
    PreIter,
    PrePassWatch,
    WatchedIter,
    after_attributes,
    default_only,
    namespace_names,
    proven_by_prepasses,
    snapshot,
    split_loops,
    watched_namespace,
    why_not_tracked,
    with_prepasses,
)
from orchestrator.tracked_parts import TrackedParts, cut_at_markers


class _Tracker(PrePassWatch, LastUnitsWatch):
    """What one render read, and where the main loop's iterations started."""

    def __init__(self, items: list, attrs: tuple[str, ...] = ()):
        self.items = items
        self.n = len(items)
        self.max = -1  # the largest index read so far (ALL: the count)
        self.cuts: list[tuple[int, int]] = []  # per iteration: (index, max read before its plain fetch)
        self.max_at_end: int | None = None
        PrePassWatch.__init__(self, attrs)

    def read(self, i: int) -> None:
        if i > self.max:
            self.max = i

    def main(self, view) -> _MainIter:
        if not isinstance(view, _View) or view._t is not self:
            raise NotTracked("the main loop does not run over the messages")
        self.loop_start = view._start
        return (_VariantIter if self.markers else _MainIter)(self, view._start)


class _MainIter(WatchedIter):
    """The main loop's items. A plain fetch (the loop moving on) is immediately followed by
    the iteration's marker, so it records the iteration's cut; a fetch while jinja peeks
    (loop.last, loop.nextitem, loop.length) is a read inside the previous iteration, and
    the iteration it fetches proves no prefix."""

    __slots__ = ()

    def __next__(self):
        t, i = self.t, self.i
        if i >= t.n:
            if self.peeking:
                t.read(ALL)
            elif t.max_at_end is None:  # the loop ends: from here on, the reads of after()
                t.max_at_end, t.max = t.max, -1
                if t.attrs:
                    t.end_state = snapshot(t.namespaces, t.attrs)
            raise StopIteration
        self.i += 1
        t.cuts.append((i, ALL if self.peeking else t.max))
        if t.attrs:
            t.states.append(None if self.peeking else snapshot(t.namespaces, t.attrs))
        if i > t.max:  # t.read(i), inline: once per message of every watched render
            t.max = i
        return t.items[i]


class _VariantIter(_MainIter):
    """The main loop's items where the loop body has last units (template_last.py): after a
    fetch, the reads of the iteration before in (False, *) copies count."""

    __slots__ = ()

    def __next__(self):
        item = _MainIter.__next__(self)  # at the end: those reads are in no prefix but the whole
        self.t.merge_pending()
        return item


class _View:
    """messages[start:], watched (see the module docstring)."""

    __slots__ = ("_t", "_start")
    __hash__ = None  # type: ignore[assignment] - as a list's

    def __init__(self, t: _Tracker, start: int):
        self._t, self._start = t, start

    def __len__(self) -> int:
        self._t.read(ALL)
        return max(0, self._t.n - self._start)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __getitem__(self, k):
        t = self._t
        if isinstance(k, slice):
            if k.stop is None and k.step is None and (k.start is None or (type(k.start) is int and k.start >= 0)):
                return _View(t, self._start + (k.start or 0))
            t.read(ALL)
            return t.items[self._start :][k]
        if type(k) is not int:
            raise NotTracked(f"messages[{k!r}]")
        if k < 0:
            t.read(ALL)
            return t.items[self._start :][k]
        i = self._start + k
        t.read(i)
        return t.items[i]  # IndexError past the end, as a list's

    def __iter__(self):
        t = self._t
        for i in range(self._start, t.n):
            t.read(i)
            yield t.items[i]
        t.read(ALL)

    def __reversed__(self):
        self._t.read(ALL)
        return reversed(self._t.items[self._start :])

    def __contains__(self, x) -> bool:
        self._t.read(ALL)
        return x in self._t.items[self._start :]

    def _refuse(self, *_: Any) -> Any:
        raise NotTracked("an operation on messages that is not watched")

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _refuse  # type: ignore[assignment]
    __add__ = __radd__ = __mul__ = __rmul__ = __str__ = __repr__ = __format__ = _refuse  # type: ignore[assignment]


def tracked_loop_context(base):
    """jinja's LoopContext whose look-ahead (loop.last, loop.nextitem, loop.length, ...)
    on the main loop and pre-pass loops is recorded as reading the items it looks at, and
    which starts every iteration of a pre-pass loop (template_prepass.PreIter)."""

    class TrackedLoopContext(base):
        def __new__(cls, iterable: Any, *args: Any, **kwargs: Any):
            # a pre-pass loop's context starts its iterations; other loops keep jinja's __next__
            return object.__new__(PrePassLoopContext if isinstance(iterable, PreIter) else cls)

        def _peek_next(self):
            it = self._iterator
            if not isinstance(it, WatchedIter):
                return super()._peek_next()
            it.peeking = True
            try:
                return super()._peek_next()
            finally:
                it.peeking = False

        @property
        def length(self):
            it = self._iterator
            if not isinstance(it, WatchedIter):
                return base.length.fget(self)
            it.t.read(ALL)
            it.peeking = True
            try:
                return base.length.fget(self)
            finally:
                it.peeking = False

    class PrePassLoopContext(TrackedLoopContext):
        def __init__(self, iterable: Any, *args: Any, **kwargs: Any):
            super().__init__(iterable, *args, **kwargs)
            iterable.managed = True
            self._pre = iterable

        def __next__(self):
            out = super().__next__()  # a peeked item comes without a fetch
            self._pre.t.pre_start()
            return out

    return TrackedLoopContext


def with_cuts(tree, loop, start: str, end: str):
    """The tree with the watched main loop: its items from the ITER_NAME function, the
    `start` marker first in every iteration, the `end` marker right after the loop."""
    from jinja2 import nodes

    loop.iter = nodes.Call(nodes.Name(ITER_NAME, "load"), [loop.iter], [], None, None)
    loop.body.insert(0, nodes.Output([nodes.TemplateData(start)]))
    i = next(i for i, node in enumerate(tree.body) if node is loop)
    tree.body.insert(i + 1, nodes.Output([nodes.TemplateData(end)]))
    return tree


def render_tracked(
    template, mark: str, start: str, end: str, messages, watch: tuple = (False, False, (), ()), **kwargs
) -> TrackedParts | None:
    """The watched render of `messages` (see the module docstring), or None when the
    markers do not line up (e.g. a message holds the marker character). `watch`: (whether
    the template has pre-pass loops, whether it makes namespaces, the namespace
    attributes after() reads: template_prepass.py; the last units' markers, or (): template_last.py)."""
    prepasses, namespaces, attrs, variants = watch
    t = _Tracker(list(messages), attrs)
    kwargs[ITER_NAME] = t.main
    if variants:
        t.markers = variants
        kwargs.update({VARIANT_NAME: t.variant, POISON_NAME: t.raise_marker, NOT_LAST_NAME: t.not_last})
    if prepasses:
        kwargs.update({PRE_ITER: t.pre_iter, PRE_END: t.pre_end})
    if namespaces:
        kwargs["namespace"] = watched_namespace(t)
    text = template.render(messages=_View(t, 0), **kwargs)
    if t.max_at_end is None:
        return None
    lasts = None
    if variants:
        cut = cut_variants(text, variants, start, end, len(t.cuts))
        if cut is None:
            return None
        pieces, lasts, after = cut
    else:
        marks, ends_found, pieces, after = cut_at_markers(text, mark, start, end)
        if marks != len(t.cuts) + 1 or ends_found != 1:
            return None
    ends, pos = [], len(pieces[0])
    for p in pieces[1:]:
        ends.append(pos)
        pos += len(p)
    ends.append(pos)
    return TrackedParts(
        "".join(pieces),
        ends,
        [r for r, _ in t.cuts],
        [m for _, m in t.cuts],
        after,
        t.max,
        t.n,
        t.states if attrs else None,
        t.end_state,
        proven_by_prepasses(t.pre, t.n),
        lasts,
    )


class TrackedTemplate:
    """The template compiled for watched renders (module docstring)."""

    def __init__(self, env, tree, mark: str, start: str, end: str):

        from jinja2 import nodes

        from orchestrator.template import _after_is_constant, _compile, _top_level_index

        loop, pre = split_loops(tree)
        namespaces = namespace_names(tree)
        attrs = after_attributes(tree.body[_top_level_index(tree.body, loop) + 1 :], namespaces)
        # after(g) reads nothing but g, the constant keyword arguments (as for append-only
        # templates) and the namespace attributes `attrs`: the same for every conversation with
        # the same values of those, so after(g) can be learnt once per such state
        self.after_is_constant = _after_is_constant(tree, loop, namespaces | default_only(tree))
        units = last_units(loop)  # statements that read loop.last only to choose text: template_last.py
        variants = last_markers(mark) if isinstance(units, list) and units else ()
        if variants:
            item = loop.target.name if isinstance(loop.target, nodes.Name) else ""
            with_last_variants(units, item, assigned_names(tree), variants)  # type: ignore[arg-type]
        self.watch = (bool(pre), bool(namespaces), attrs, variants)
        tree = with_cuts(with_prepasses(tree, pre), loop, start, end)
        tree.set_environment(env)
        self._template = _compile(env, tree)
        namespace = self._template.root_render_func.__globals__  # this template's own module
        namespace["LoopContext"] = tracked_loop_context(namespace["LoopContext"])
        self._marks = (mark, start, end)

    def render(self, messages, tools, add_generation_prompt: bool, **kwargs: Any) -> TrackedParts | None:
        kwargs.update(tools=tools, documents=None, add_generation_prompt=add_generation_prompt)
        return render_tracked(self._template, *self._marks, messages, self.watch, **kwargs)


def tracked_template(env, source: str, mark: str, start: str, end: str) -> tuple[TrackedTemplate | None, str]:
    """(the template for watched renders, "") or (None, why not)."""
    from orchestrator.template import _without_generation_calls

    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        tree = _without_generation_calls(env.parse(source))
        why = why_not_tracked(tree)
        if why is None and split_loops(tree)[1] and not isinstance(env, ImmutableSandboxedEnvironment):
            why = "it has a loop over messages before its main one, and lists may change in this environment"
        return (TrackedTemplate(env, tree, mark, start, end), "") if why is None else (None, why)
    except Exception as e:  # noqa: BLE001 - never block reconstruction; render each prefix
        return None, f"the watched template could not be built ({type(e).__name__}: {e})"
