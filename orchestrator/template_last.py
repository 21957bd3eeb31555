"""Watched renders of templates that write something else for the last message.

Many templates read `loop.last` in their main loop over messages only to choose text:
OLMo 2 / Tulu 3 end a non-final assistant turn with a newline, and they, Granite 3.3 and
others write the generation prompt inside the loop, `{% if loop.last and
add_generation_prompt %}`. For a watched render (template_tracked.py) `loop.last` is a
look-ahead at the next message, so no prefix but the whole conversation was proven, and
reading add_generation_prompt inside the loop refused watched renders altogether: every
prefix was rendered (quadratic in the turns).

Such a statement is a *last unit*: an `if` whose test (or an `elif`'s) reads `loop.last`,
or an output that reads it, made of nothing but `if`, `for` and output statements (no
assignment, no macro, only calls known to have no effect). A last unit can change nothing
but the text: every variable, namespace and later read is the same whichever branch it
takes. The watched template renders each last unit four times, with `loop.last` and
`add_generation_prompt` replaced by the constants (False, False), (False, True), (True,
False), (True, True), between markers, in place of the statement. Add_generation_prompt
may then be read inside the loop only within last units.

The argument. In render(messages[:j], g) iteration i < j-1 has `loop.last` false and
iteration j-1 true; all else runs as in the watched render of the whole conversation up
to the fetch of message j (the proof of template_tracked.py, whose reads now leave out
the look-ahead that the constants replace). The statements outside last units write the
same text in both, so

    render(messages[:j], g) == head[:ends[j-1]] + last_g(j-1) + after(g)

where head is the text before the loop and every iteration's text with the (False, g)
units, and last_g(i) is iteration i's text with the (True, g) units. Only renders where
the (False, False) and (False, True) units agree are used (one head for both g).
Reads a (False, *) unit makes in iteration i are only in renders of messages[:j] with
j > i+1, so they are counted from the next fetch on; the (True, *) units' reads at once.
A unit that may read messages by index (may_read) has a call at each boundary, which
switches the tracker's read mode; the others (OLMo's, Granite's) are separated by marker
text alone, which costs nothing to render. The number of units rendered is then not known
in advance, and the boundaries carry a random nonce (last_markers), so that no input can
pass for a unit.

Forcing `loop.last` may take a branch the real render never takes. A `raise_exception`
inside a copy marks that copy unknown instead of raising: a prefix that needs it is
rendered, which raises, if it must, as the template does. The (False, *) copies of a unit
that may read messages are skipped in the whole conversation's last iteration (known from
the loop's index and the count, which is not a read: no prefix render uses those copies),
so that e.g. `loop.nextitem.role` under `not loop.last` cannot fail there. Any other error
in a copy makes the watched render fail, and every prefix is rendered, as before.
"""

from __future__ import annotations

from typing import Any

VARIANT_NAME = "__distill_last_variant"  # called at each boundary of a last unit's copies
POISON_NAME = "__distill_last_raise"  # replaces raise_exception inside the copies
NOT_LAST_NAME = "__distill_not_last"  # whether an iteration is not the last one: the (False, *) copies run
LAST_NAMES = (VARIANT_NAME, POISON_NAME, NOT_LAST_NAME)
VARIANTS = ((False, False), (False, True), (True, False), (True, True))
# Calls a last unit may make: functions and methods with no effect on any state.
SAFE_FUNCTIONS = frozenset({"raise_exception", "strftime_now", "range", "dict"})
SAFE_METHODS = frozenset(
    "strip lstrip rstrip split rsplit splitlines startswith endswith replace lower upper title capitalize "
    "items keys values get join format count find rfind index removeprefix removesuffix".split()
)


def _is_loop_last(node) -> bool:
    from jinja2 import nodes

    return (
        isinstance(node, nodes.Getattr)
        and node.attr == "last"
        and isinstance(node.node, nodes.Name)
        and node.node.name == "loop"
    )


def reads_last(node) -> bool:
    """Whether `node` reads the enclosing loop's `loop.last` (not inside a nested loop's body,
    where `loop` is that loop's)."""
    from jinja2 import nodes

    if _is_loop_last(node):
        return True
    if isinstance(node, nodes.For):
        return any(reads_last(x) for x in (node.iter, node.test) if x is not None)
    if isinstance(node, nodes.Macro):
        return False
    return any(reads_last(c) for c in node.iter_child_nodes())


def _output_only(node) -> bool:
    """Whether `node` can change nothing but the text it writes."""
    from jinja2 import nodes

    stmts = [node, *node.find_all(nodes.Stmt)]
    if not all(isinstance(s, (nodes.If, nodes.Output, nodes.For)) for s in stmts):
        return False
    for call in node.find_all(nodes.Call):
        f = call.node
        if isinstance(f, nodes.Name) and f.name in SAFE_FUNCTIONS:
            continue
        if isinstance(f, nodes.Getattr) and f.attr in SAFE_METHODS:
            continue
        return False
    return True


def last_units(loop) -> list[tuple[list, int]] | str:
    """The last units of the main loop's body, as (statement list, index), outermost first;
    or why `loop.last` is read elsewhere (then it stays a watched look-ahead)."""
    units: list[tuple[list, int]] = []
    why = _scan(loop.body, units)
    return why if why is not None else units


def _scan(stmts: list, units: list) -> str | None:
    from jinja2 import nodes

    for k, node in enumerate(stmts):
        if not reads_last(node):
            continue
        if isinstance(node, nodes.If) and not any(reads_last(t) for t in (node.test, *(e.test for e in node.elif_))):
            for body in (node.body, *(e.body for e in node.elif_), node.else_):
                if why := _scan(body, units):
                    return why
            continue
        if not isinstance(node, (nodes.If, nodes.Output)) or not _output_only(node):
            return f"it reads loop.last in a statement that does more than write text (line {node.lineno})"
        units.append((stmts, k))
    return None


def unit_names(units: list[tuple[list, int]]) -> set[int]:
    """ids of the Name nodes inside the units (add_generation_prompt may be read there)."""
    from jinja2 import nodes

    return {id(n) for stmts, k in units for n in stmts[k].find_all(nodes.Name)}


def _copy(node, last: bool, g: bool, outer: bool = True):
    """`node` with the loop's `loop.last` and add_generation_prompt replaced by constants and
    raise_exception by POISON_NAME (`outer`: not inside a nested loop's body)."""
    from jinja2 import nodes

    if outer and _is_loop_last(node):
        return nodes.Const(last, lineno=node.lineno)
    if isinstance(node, nodes.Name) and node.ctx == "load":
        if node.name == "add_generation_prompt":
            return nodes.Const(g, lineno=node.lineno)
        if node.name == "raise_exception":
            return nodes.Name(POISON_NAME, "load", lineno=node.lineno)
    new = object.__new__(type(node))
    for a in node.attributes:
        setattr(new, a, getattr(node, a, None))
    for f in node.fields:
        inner = outer and not (isinstance(node, nodes.For) and f in ("body", "else_"))
        v = getattr(node, f)
        if isinstance(v, list):
            v = [_copy(x, last, g, inner) if isinstance(x, nodes.Node) else x for x in v]
        elif isinstance(v, nodes.Node):
            v = _copy(v, last, g, inner)
        setattr(new, f, v)
    return new


PEEKS = frozenset({"nextitem", "length", "revindex", "revindex0"})  # loop attributes that read ahead


def assigned_names(tree) -> set[str]:
    """Every name the template assigns (set, set-block and for targets)."""
    from jinja2 import nodes

    return {
        n.name
        for node in tree.find_all((nodes.Assign, nodes.AssignBlock, nodes.For))
        for n in (node.target, *node.target.find_all(nodes.Name))
        if isinstance(n, nodes.Name)
    }


def may_read(node, item: str, assigned: set[str]) -> bool:
    """Whether a last unit may read messages by index: it names `messages` or a variable
    the template assigns (which may hold them) other than the main loop's item `item`, or
    reads ahead through `loop`. Only such a unit needs its copies' reads told apart, by a
    call at each boundary (several microseconds each in the sandbox); the others are
    separated by plain marker text."""
    from jinja2 import nodes

    for n in node.find_all((nodes.Name, nodes.Getattr)):
        if isinstance(n, nodes.Getattr):
            if isinstance(n.node, nodes.Name) and n.node.name == "loop" and n.attr in PEEKS:
                return True
        elif n.name == "messages" or (n.name in assigned and n.name != item):
            return True
    return False


def with_last_variants(units: list[tuple[list, int]], item: str, assigned: set[str], markers: tuple) -> None:
    """Replace each last unit (in place) by its four copies between boundaries: VARIANT_NAME
    calls where the unit may read messages (may_read), else the marker texts themselves."""
    from jinja2 import nodes

    def boundary(k: int, lineno: int, call: bool):
        if call:
            text: Any = nodes.Call(nodes.Name(VARIANT_NAME, "load"), [nodes.Const(k)], [], None, None)
        else:
            text = nodes.TemplateData(boundary_marker(markers, k))
        return nodes.Output([text]).set_lineno(lineno)

    def when_not_last(node):  # in the whole conversation's last iteration (False, *) is in no render
        index0 = nodes.Getattr(nodes.Name("loop", "load"), "index0", "load")
        test = nodes.Call(nodes.Name(NOT_LAST_NAME, "load"), [index0], [], None, None)
        return nodes.If(test, [node], [], []).set_lineno(node.lineno)

    for stmts, k in reversed(units):  # later statements of a list first: the earlier indices stay
        node = stmts[k]
        call = may_read(node, item, assigned)
        # without add_generation_prompt the copy for g true is the one for g false: not rendered again
        same = not any(n.name == "add_generation_prompt" for n in node.find_all(nodes.Name))
        out = []
        for b, (last, g) in enumerate(VARIANTS):
            if g and same:
                copy = nodes.Output([nodes.TemplateData(markers[4])])
            else:
                copy = _copy(node, last, g)
                copy = copy if last or not call else when_not_last(copy)
            out += [boundary(b, node.lineno, call), copy]
        stmts[k : k + 1] = [*out, boundary(len(VARIANTS), node.lineno, call)]


def boundary_marker(markers: tuple, b: int) -> str:
    """The marker at boundary b of a last unit's copies: VOPEN, VSEP (3), VCLOSE."""
    return markers[0] if b == 0 else markers[2] if b == len(VARIANTS) else markers[1]


class LastUnitsWatch:
    """The tracker's side (a mixin of template_tracked._Tracker): VARIANT_NAME's marker
    texts and the read mode of each copy, NOT_LAST_NAME, POISON_NAME."""

    max: int
    pending = -1  # the largest index a (False, *) copy read in this iteration
    markers: tuple[str, ...] = ()  # VOPEN, VSEP, VCLOSE, POISON, SAME (last_markers); () without last units
    n: int  # the messages
    loop_start = 0  # the main loop's first message index

    def not_last(self, index0: int) -> bool:
        """Whether the main loop's iteration `index0` is not its last, without reading ahead:
        the (False, *) copies are skipped where forcing loop.last false could fail (e.g.
        `loop.nextitem.role`) and no render uses them."""
        return self.loop_start + index0 < self.n - 1

    def variant(self, b: int) -> str:
        if b == 0:
            self.read = self._read_later  # type: ignore[method-assign]
        elif b == 2:
            del self.read  # the (True, *) copies' reads count at once
        return boundary_marker(self.markers, b)

    def _read_later(self, i: int) -> None:
        if i > self.pending:
            self.pending = i

    def raise_marker(self, *_: Any) -> str:
        return self.markers[3]

    def merge_pending(self) -> None:
        """At a plain fetch: the reads of the last iteration's (False, *) copies count from here on."""
        if self.pending > self.max:
            self.max = self.pending
        self.pending = -1


def last_markers(mark: str) -> tuple[str, str, str, str, str]:
    """VOPEN, VSEP, VCLOSE: the template's marker character (plane-15 private use), one of
    its own and a random nonce drawn once per compiled template, so that no input can hold
    a whole unit's boundaries, and a stray marker character in the text fails the count
    (cut_variants); POISON: one character of the same plane, not the marker's (a copy holds
    no marker character), which in an input makes a copy or the render unknown, never wrong;
    SAME: another and the nonce, the whole text of a copy that is the one before it
    (with_last_variants; no input can make a copy's text equal to it)."""
    import secrets

    nonce = secrets.token_hex(8)
    vopen, vsep, vclose = (mark + chr(0xF0003 + k) + nonce for k in range(3))
    return vopen, vsep, vclose, chr(0xF0006), chr(0xF0007) + nonce


def cut_variants(text: str, markers: tuple[str, ...], start: str, end: str, iterations: int):
    """(pieces, lasts, after) of a render with last units: `pieces` the text before the loop
    and each iteration's text with the (False, g) copies, `lasts` per iteration its text with
    the (True, False) and (True, True) copies (None where such a copy raised), `after` the
    text after the loop; None when the markers do not line up or the (False, *) copies
    differ. The marker character may stay only in the iteration markers: a unit holding
    it elsewhere (an input that holds it) is not matched, so its boundaries stay and fail
    the count. One split over the whole text before the loop gives every unit's copies."""
    poison = markers[3]
    cut = text.rfind(end)  # the text after the loop is short: found from the end (a stray one fails the count)
    head, after = text[: max(cut, 0)], text[cut + len(end) :]
    if cut < 0 or start[0] in after or poison in after:
        return None
    parts = _units_re(markers).split(head)  # text, then each unit's four copies, then text, ...
    texts, same = parts[0::5], markers[4]
    got = [parts[k::5] for k in (1, 2, 3, 4)]
    for k in (1, 3):  # a copy for g true that is the one for g false
        got[k] = [y if x == same else x for x, y in zip(got[k], got[k - 1])]
    copies = [_interleave(texts, x) for x in got]
    nl = copies[0]
    # only the iteration markers may be left: every unit's five boundaries were matched
    if nl.count(start[0]) != iterations or nl.count(start) != iterations or poison in nl:
        return None
    if copies[1] != nl:  # add_generation_prompt read where the turn is not last
        return None
    lasts = [copies[2].split(start), copies[3].split(start)]
    for side in lasts:
        if any(poison in x for x in side):
            side[:] = [None if poison in x else x for x in side]
    return nl.split(start), list(zip(lasts[0][1:], lasts[1][1:])), after


def _interleave(texts: list[str], copies: list[str]) -> str:
    """texts[0] + copies[0] + texts[1] + ... + texts[-1], joined once."""
    out = [""] * (len(texts) + len(copies))
    out[0::2], out[1::2] = texts, copies
    return "".join(out)


_UNITS_RE: dict[tuple, Any] = {}


def _units_re(markers: tuple[str, ...]):
    """A last unit's five boundaries and its four copies in groups 1-4 (copies hold no boundary)."""
    if markers not in _UNITS_RE:
        import re

        vopen, vsep, vclose = (re.escape(m) for m in markers[:3])
        copy = f"([^{re.escape(markers[0][0])}]*)"  # the POISON marker is another character
        _UNITS_RE[markers] = re.compile(vopen + vsep.join([copy] * 4) + vclose, re.DOTALL)
    return _UNITS_RE[markers]
