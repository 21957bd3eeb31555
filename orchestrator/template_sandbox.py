"""The sandbox's attribute check, remembered per (type, name) for the objects templates use.

Chat templates render in transformers' jinja `ImmutableSandboxedEnvironment`: every
attribute access (`loop.index0`, `ns.multi_step_tool`, `content.split(...)`) goes
through its `is_safe_attribute(obj, attr, value)`, a walk of isinstance checks (some
against abstract base classes) that took ~45% of the profile of Qwen3's renders. For the
sandbox classes jinja ships the answer depends on the class of `obj` and on `attr` alone:
`value` is not read, and `is_internal_attribute` / `modifies_known_mutable` test `obj`
only with isinstance (which looks at `type(obj)` and `obj.__class__`) and the name. So for
objects whose `__class__` is their type - str, dict, list (the data we pass), and jinja's
loop contexts and namespaces (including transformers' and template_tracked.py's
subclasses; a namespace answers `__class__` with its real class) unless a class in their
MRO redefines `__class__` - the sandbox's own first answer for a (type, name) is kept and
reused; any other object gets the full check every time. Nothing is decided differently.
(`collections.abc` registration could in principle turn one of these types into a mutable
mapping or sequence later; nothing in this process does.) The environment is an overlay
of transformers' (`Environment.overlay`), so transformers' own renders are untouched.
"""

from __future__ import annotations

from typing import Any


def faster_sandbox(env: Any) -> Any:
    """An overlay of `env` whose attribute check remembers its answers (see above); `env`
    itself when its class's check is not one of jinja's own."""
    try:
        from jinja2.runtime import LoopContext
        from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEnvironment
        from jinja2.utils import Namespace
    except ImportError:  # pragma: no cover - transformers needs jinja2
        return env
    check = type(env).is_safe_attribute
    if check not in (ImmutableSandboxedEnvironment.is_safe_attribute, SandboxedEnvironment.is_safe_attribute):
        return env  # a check we have not read: keep it as it is
    fast = env.overlay()
    kept_types: dict[type, bool] = {str: True, dict: True, list: True}
    known: dict[tuple[type, str], bool] = {}

    def keeps(t: type) -> bool:
        if t not in kept_types:
            kept_types[t] = issubclass(t, (LoopContext, Namespace)) and all(
                "__class__" not in vars(k) for k in t.__mro__[:-1]
            )
        return kept_types[t]

    def is_safe_attribute(obj: Any, attr: str, value: Any) -> bool:
        t = type(obj)
        if not keeps(t):
            return check(fast, obj, attr, value)
        key = (t, attr)
        safe = known.get(key)
        if safe is None:
            safe = known[key] = check(fast, obj, attr, value)
        return safe

    fast.is_safe_attribute = is_safe_attribute
    if type(env).getattr is SandboxedEnvironment.getattr:
        fast.getattr = _dict_first_getattr(fast)
    return fast


def _dict_first_getattr(fast: Any) -> Any:
    """The sandbox's `getattr` (what `message.role` compiles to), with the answer for a
    plain dict and a name no dict has as an attribute given without raising.

    jinja's first tries `getattr(obj, name)` and, on AttributeError, returns `obj[name]`
    (undefined on a missing key). For an object whose type is exactly `dict` the
    attributes are those of dict's classes, `dir(dict)` (no instance dictionary, no
    `__getattr__`), so for any other name that getattr raises AttributeError and the
    answer is `obj[name]` (dict has no `__missing__`), or undefined: the same answer,
    without the exception jinja raises and catches on every `message.role` of a
    template (plain renders of 400 bench conversations: SmolLM2's 14.2 -> 6.1 ms, Llama
    3.1's 18.4 -> 11.7 ms). Anything else goes to jinja's own getattr."""
    from jinja2.sandbox import SandboxedEnvironment

    dict_names = frozenset(dir(dict))
    sandbox_getattr = SandboxedEnvironment.getattr

    def getattr(obj: Any, attribute: str) -> Any:
        if type(obj) is dict and type(attribute) is str and attribute not in dict_names:
            try:
                return obj[attribute]
            except (TypeError, LookupError):  # as jinja's
                return fast.undefined(obj=obj, name=attribute)
        return sandbox_getattr(fast, obj, attribute)

    return getattr
