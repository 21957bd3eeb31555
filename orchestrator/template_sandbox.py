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
    return fast
