"""The student's chat template: exact renders, and every prefix of a conversation
from one render where the template provably allows it.

Reconstruction needs the template's text for many prefixes of one conversation:
the history before each trained turn with the generation prompt (P_k) and the
history through it (F_k). Rendering each prefix costs a pass over the whole
history, so a conversation of K turns costs O(K^2) message renders.

A template is *append-only* when it has one top-level loop over `messages` whose
text for message i depends only on messages[0..i], text before the loop that
depends at most on messages[0], and text after it that depends only on
`add_generation_prompt` (and the other constant inputs). For such a template

    render(messages[:j], g) == before + body[0] + ... + body[j-1] + after(g)   (j >= 1)

where body[i] is what the loop emits for message i (empty for the leading messages a
loop over an alias `{% set X = messages[c:] %}` skips). `why_not_append_only` proves that shape from
the template's syntax tree (conservatively: anything it cannot prove, e.g.
`loop.last`, `messages|length`, `messages[-1]`, a look-ahead `messages[loop.index0 + 1]`,
a namespace read after the loop, makes the template not append-only), and
`render_parts` renders the template once with marker text emitted at the start of
every loop iteration and after the loop, giving `before`, every `body[i]` and `after`
at once. Reconstruction then gets every P_k / F_k from one render of the whole
conversation plus one render of its first prompt (which doubles as a check of the
derivation), and falls back to rendering each prefix when the template is not
append-only or the markers do not line up.

`{% generation %}` blocks (transformers' assistant-mask markers) are rendered as plain
blocks: their text is unchanged and we compute masks ourselves, so the per-block
bookkeeping call is skipped.
"""

from __future__ import annotations

from typing import Any

from orchestrator.template_sandbox import faster_sandbox
from orchestrator.template_tracked import cut_at_markers, tracked_template

_MARK = "\U000f0000"  # a plane-15 private-use character; each marker contains it once
START = _MARK + "\U000f0001"  # emitted at the start of every iteration of the messages loop
END = _MARK + "\U000f0002"  # emitted right after the messages loop

#: `loop` attributes that look at later items (the rest - index, first, previtem, ... - look back).
_LOOK_AHEAD = frozenset({"last", "length", "revindex", "revindex0", "nextitem"})


class ChatTemplate:
    """A chat template compiled in transformers' sandboxed jinja environment."""

    def __init__(self, source: str):
        self.source = source
        self.append_only = False
        self.why_not_append_only = self.why_not_tracked = "transformers' template compiler is not available"
        # The text after the loop (append-only or tracked templates) reads nothing but add_generation_prompt
        # and the constant keyword arguments: after(g) is the same for every conversation.
        self.after_is_constant = False
        self._marked = self.tracked = None  # tracked: template_tracked.TrackedTemplate, when not append-only
        self._skip = 0  # how many leading messages the loop may skip (messages_skipped)
        try:
            from transformers.utils.chat_template_utils import _compile_jinja_template
        except ImportError:  # pragma: no cover - depends on the transformers version
            self._plain = _PublicRender(source)
            return
        reference = _compile_jinja_template(source)  # raises on a broken template, as transformers does
        env = faster_sandbox(reference.environment)  # filters, globals, extensions, sandbox
        try:
            self._plain = _compile(env, _without_generation_calls(env.parse(source)))
        except Exception:  # noqa: BLE001 - our tree rewrite failed: render as transformers does
            self._plain = reference
        try:
            tree = _without_generation_calls(env.parse(source))
            why = why_not_append_only(tree)
            if why is None:
                after_is_constant = _after_is_constant(tree)
                self._skip = messages_skipped(tree)
                self._marked = _compile(env, _with_markers(tree))
                self.after_is_constant = after_is_constant
        except Exception as e:  # noqa: BLE001 - never block reconstruction; render each prefix
            why = f"the marked template could not be built ({type(e).__name__}: {e})"
            self._marked = None
            self.after_is_constant = False
        self.why_not_append_only = why or ""
        self.append_only = why is None
        self.tracked, self.why_not_tracked = tracked_template(env, source, _MARK, START, END) if why else (None, "")
        self.after_is_constant = self.tracked.after_is_constant if self.tracked else self.after_is_constant

    def render(self, messages: list[dict], tools: list[dict] | None, add_generation_prompt: bool, **kwargs: Any) -> str:
        """The template's text, exactly as transformers renders it."""
        return self._plain.render(
            messages=messages, tools=tools, documents=None, add_generation_prompt=add_generation_prompt, **kwargs
        )

    def render_parts(
        self, messages: list[dict], tools: list[dict] | None, add_generation_prompt: bool, **kwargs: Any
    ) -> tuple[str, list[str], str] | None:
        """(text before the loop, text of each message, text after the loop), or None
        when the template is not append-only or the markers do not line up (e.g. a
        message contains the marker character)."""
        if self._marked is None:
            return None
        if self._skip and _holds_mark(messages):
            return None  # a marker in the content could pass for a skipped message's
        text = self._marked.render(
            messages=messages, tools=tools, documents=None, add_generation_prompt=add_generation_prompt, **kwargs
        )
        marks, ends, (before, *bodies), after = cut_at_markers(text, _MARK, START, END)
        skipped = len(messages) + 1 - marks
        if not 0 <= skipped <= self._skip or ends != 1:
            return None
        # A skipped leading message (folded into the text before the loop) renders nothing
        # of its own: an empty body keeps body[i] the text of messages[i].
        return before, [""] * skipped + bodies, after


class _PublicRender:  # pragma: no cover - only when transformers moves its private compiler
    def __init__(self, source: str):
        self.source = source

    def render(self, messages, **kwargs):
        from transformers.utils.chat_template_utils import render_jinja_template

        kwargs.pop("documents", None)
        return render_jinja_template(conversations=[messages], chat_template=self.source, **kwargs)[0][0]


def _holds_mark(obj) -> bool:
    if isinstance(obj, str):
        return _MARK in obj
    if isinstance(obj, dict):
        return any(_holds_mark(k) or _holds_mark(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return any(_holds_mark(v) for v in obj)
    return False


def _compile(env, tree):
    # Globals as a plain dict, not jinja's ChainMap over env.globals: every render copies
    # them into its context, which for a ChainMap is a slow Python-level walk. The
    # environment's globals are complete once transformers has built it.
    return env.template_class.from_code(env, env.compile(tree), dict(env.make_globals(None)))


def _without_generation_calls(tree):
    """Replace `{% generation %}...{% endgeneration %}` call blocks by their body.

    Their output is the body's text; only the bookkeeping call goes. A block that
    assigns a variable is kept (inlining would change the variable's scope)."""
    from jinja2 import nodes

    def strip(body: list) -> list:
        out = []
        for node in body:
            call = node.call if isinstance(node, nodes.CallBlock) else None
            if (
                isinstance(call, nodes.Call)
                and isinstance(call.node, nodes.ExtensionAttribute)
                and call.node.name == "_generation_support"
                and not any(node.find_all((nodes.Assign, nodes.AssignBlock)))
            ):
                out.extend(strip(node.body))
                continue
            for field in ("body", "else_", "elif_"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    setattr(node, field, strip(children))
            out.append(node)
        return out

    tree.body = strip(tree.body)
    return tree


def _skip_of(node) -> int | None:
    """c when `node` is `messages` (c = 0) or `messages[c:]` with a constant c >= 0, else None."""
    from jinja2 import nodes

    if isinstance(node, nodes.Name) and node.name == "messages":
        return 0
    if (
        isinstance(node, nodes.Getitem)
        and isinstance(node.node, nodes.Name)
        and node.node.name == "messages"
        and isinstance(node.arg, nodes.Slice)
        and node.arg.stop is None
        and node.arg.step is None
    ):
        start = node.arg.start
        if start is None:
            return 0
        if isinstance(start, nodes.Const) and type(start.value) is int and start.value >= 0:
            return start.value
    return None


def _aliases(tree) -> dict[str, list]:
    """`{% set X = messages %}` / `{% set X = messages[c:] %}` assignments, by name."""
    from jinja2 import nodes

    out: dict[str, list] = {}
    for a in tree.find_all(nodes.Assign):
        if isinstance(a.target, nodes.Name) and _skip_of(a.node) is not None:
            out.setdefault(a.target.name, []).append(a)
    return out


def _messages_loop(tree):
    """The one for loop over `messages` or over an alias of it (see _aliases), else None."""
    from jinja2 import nodes

    names = {"messages", *_aliases(tree)}
    loops = [n for n in tree.find_all(nodes.For) if isinstance(n.iter, nodes.Name) and n.iter.name in names]
    return loops[0] if len(loops) == 1 else None


def _top_level_index(body: list, loop) -> int | None:
    """Where `loop` stands among the template's top-level statements (None: nested)."""
    return next((i for i, node in enumerate(body) if node is loop), None)


def _statements_before(body: list, loop) -> list:
    """The statements that run before the top-level `loop`, looking into if/elif/else
    branches only (not into loops or macros)."""
    from jinja2 import nodes

    out: list = []

    def walk(stmts: list) -> None:
        for node in stmts:
            out.append(node)
            if isinstance(node, nodes.If):
                walk(node.body)
                walk(node.elif_)
                walk(node.else_)

    i = _top_level_index(body, loop)
    walk(body[:i])
    return out


def messages_skipped(tree) -> int:
    """For an append-only template, the most leading messages its loop may skip: the
    largest c of `{% set X = messages[c:] %}` when the loop runs over such an alias
    (e.g. a system message folded into the first user turn), else 0."""
    loop = _messages_loop(tree)
    assigns = _aliases(tree).get(loop.iter.name, []) if loop is not None else []
    return max((_skip_of(a.node) for a in assigns), default=0)


# size: one ordered checklist, each check returning its reason; the first found wins, so the order is the spec
def why_not_append_only(tree) -> str | None:
    """None when the template (a parsed jinja tree) is provably append-only (module
    docstring), else the first reason found why not."""
    from jinja2 import nodes

    if any(tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport, nodes.Block))):
        return "it extends, includes or imports other templates"
    loop = _messages_loop(tree)
    if loop is None:
        return "it does not have exactly one `for ... in messages` loop"
    if _top_level_index(tree.body, loop) is None:
        return "its loop over messages is nested in another statement"
    if loop.recursive or loop.test is not None:
        return "its loop over messages is recursive or filtered"
    if loop.else_:  # a prefix with nothing to loop over (all skipped) would render it
        return "its loop over messages has an else branch"
    if any(loop.find_all(nodes.Break)):
        return "its loop over messages can break"
    aliases = _aliases(tree)
    if "messages" in aliases or any(n.name == "messages" and n.ctx != "load" for n in tree.find_all(nodes.Name)):
        return "it assigns to messages"
    alias = loop.iter.name if loop.iter.name != "messages" else None
    before = {id(node) for node in _statements_before(tree.body, loop)}
    alias_assigns = aliases.get(alias, []) if alias else []
    if any(id(a) not in before for a in alias_assigns):
        return f"it assigns {alias!r}, the messages it loops over, elsewhere than before the loop"
    allowed = {id(loop.iter)}  # the only read of the alias, and of messages besides these:
    allowed |= {id(a.node if isinstance(a.node, nodes.Name) else a.node.node) for a in alias_assigns}
    allowed |= {
        id(g.node)
        for g in tree.find_all(nodes.Getitem)  # messages[0], not alias[0]
        if isinstance(g.node, nodes.Name)
        and g.node.name == "messages"
        and isinstance(g.arg, nodes.Const)
        and g.arg.value == 0
    }
    alias_targets = {id(a.target) for a in alias_assigns}
    for name in tree.find_all(nodes.Name):
        if name.name == "messages" and id(name) not in allowed:
            return (
                "it uses `messages` other than as the loop's items or messages[0] "
                "(e.g. messages|length, messages[-1], messages[loop.index0 + 1])"
            )
        if alias and name.name == alias and id(name) not in allowed and id(name) not in alias_targets:
            return f"it uses {alias!r}, the messages it loops over, other than as the loop's items"
    why = _loop_use(tree.body, None, loop)
    if why:
        return why
    i = _top_level_index(tree.body, loop)
    after = tree.body[i + 1 :]
    after_names = {id(n) for node in after for n in node.find_all(nodes.Name)}
    if any(n.name == "add_generation_prompt" and id(n) not in after_names for n in tree.find_all(nodes.Name)):
        return "it reads add_generation_prompt before the end of its loop over messages"
    namespaces = {n.name for n in tree.find_all(nodes.NSRef)}
    macros = {m.name for m in tree.find_all(nodes.Macro)}
    for node in after:
        for n in node.find_all(nodes.Name):
            if n.name in namespaces:
                return f"after its loop over messages it reads namespace {n.name!r}, which the loop may change"
        for c in node.find_all(nodes.Call):
            if isinstance(c.node, nodes.Name) and c.node.name in macros:
                return f"after its loop over messages it calls macro {c.node.name!r}"
    return None


def _after_is_constant(tree, loop=None, allowed: set[str] | None = None) -> bool:
    """Whether the statements after the messages loop (`loop`, by default the only one) read
    only add_generation_prompt and names the template never assigns (the keyword arguments:
    bos_token, enable_thinking, ...) or `allowed` (template_tracked.py: namespaces, kept per
    state; names only given a constant default) - not messages, tools, documents, template
    variables - and call nothing (strftime_now would vary)."""
    from jinja2 import nodes

    i = _top_level_index(tree.body, loop if loop is not None else _messages_loop(tree))
    assigned = {n.name for n in tree.find_all(nodes.Name) if n.ctx != "load"}
    assigned |= {n.name for n in tree.find_all(nodes.NSRef)} | {m.name for m in tree.find_all(nodes.Macro)}
    varying = (assigned - (allowed or set())) | {"messages", "tools", "documents", "loop"}
    for node in tree.body[i + 1 :]:
        if any(
            node.find_all(
                (
                    nodes.Call,
                    nodes.CallBlock,
                    nodes.Macro,
                    nodes.For,
                    nodes.Assign,
                    nodes.AssignBlock,
                    nodes.FilterBlock,
                    nodes.With,
                    nodes.Scope,
                    nodes.OverlayScope,
                )
            )
        ):
            return False
        if isinstance(node, (nodes.For, nodes.Assign, nodes.AssignBlock, nodes.Macro, nodes.CallBlock)):
            return False
        if any(n.name in varying for n in node.find_all(nodes.Name)):
            return False
    return True


def _loop_use(body: list, innermost, messages_loop) -> str | None:
    """Check every use of `loop`: in the messages loop only look-back attributes; never
    outside a for loop (e.g. in a macro body, where it could be anything)."""
    from jinja2 import nodes

    def visit(node, inner) -> str | None:
        if isinstance(node, nodes.For):
            for child in (node.target, node.iter, node.test, *node.else_):
                if child is not None and (why := visit(child, inner)):
                    return why
            for child in node.body:
                if why := visit(child, node):
                    return why
            return None
        if isinstance(node, nodes.Macro):
            inner = None  # a macro body does not see the caller's loop
        if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name) and node.node.name == "loop":
            if inner is None:
                return "it uses `loop` outside a for loop"
            if inner is messages_loop and node.attr in _LOOK_AHEAD:
                return f"its loop over messages reads loop.{node.attr}, which looks at later messages"
            return None
        if isinstance(node, nodes.Name) and node.name == "loop":
            if inner is None or inner is messages_loop:
                return "it uses `loop` as a value (not loop.<attribute>)"
            return None
        for child in node.iter_child_nodes():
            if why := visit(child, inner):
                return why
        return None

    for node in body:
        if why := visit(node, innermost):
            return why
    return None


def _with_markers(tree):
    from jinja2 import nodes

    loop = _messages_loop(tree)
    loop.body.insert(0, nodes.Output([nodes.TemplateData(START)]))
    i = _top_level_index(tree.body, loop)
    tree.body.insert(i + 1, nodes.Output([nodes.TemplateData(END)]))
    return tree


__all__ = ["ChatTemplate", "why_not_append_only", "START", "END"]
