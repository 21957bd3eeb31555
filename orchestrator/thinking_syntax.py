"""The student's own thinking syntax, where it is not <think> tags, and the config error for teaching those.

reasoning = "think_tags" with reasoning_form unset writes the reasoning as "<think>\\nR\\n</think>\\n\\n" at the
head of the answer. A student whose template writes thinking in another syntax would learn tags it never writes.
Two ways to know the student's syntax, at start-up:

- its template's source writes one of the known other syntaxes (OTHER_FORMS: `[THINK]`, Gemma 4's thought
  channel, `<seed:think>`, Cohere's) and never <think> tags (`template_thinking_form`);
- its template places an assistant turn's reasoning field itself, and a render shows where: outside any <think>
  tags (`probe_placed_syntax`: gpt-oss's analysis channel, Kimi K3's think tag written through a macro, which
  no source scan reads). The reasoning then sits outside the answer, so no reasoning_form written at the head
  of the content expresses it: the fix is reasoning = "template".
"""

from __future__ import annotations

import os.path
from collections.abc import Callable

from orchestrator.open_reasoning import CLOSE, OPEN, SENTINEL, THINK_FORM

#: thinking syntaxes other than <think> tags, as reasoning_form strings, that a chat template may write
OTHER_FORMS = (
    "[THINK]{reasoning}[/THINK]",  # Magistral, Ministral 3 reasoning
    "<|channel>thought\n{reasoning}<channel|>",  # Gemma 4
    "<seed:think>{reasoning}</seed:think>",  # Seed-OSS
    "<|START_THINKING|>{reasoning}<|END_THINKING|>",  # Cohere Command A Reasoning
)
#: the probe turn's answer (the reasoning is open_reasoning.SENTINEL)
ANSWER = "\u2063Zq7xANSWERx7qZ\u2063"


def template_thinking_form(template: str) -> str | None:
    """The thinking syntax a chat template's source writes, as a reasoning_form: one of OTHER_FORMS whose tags
    (whitespace stripped) are all in it, where it is the only one and the template never writes <think> tags;
    else None."""
    if OPEN in template or CLOSE in template:
        return None
    found = [f for f in OTHER_FORMS if all(tag.strip() in template for tag in f.split("{reasoning}"))]
    return found[0] if len(found) == 1 else None


def probe_placed_syntax(render: Callable[[list[dict]], str]) -> str | None:
    """Where the template places an assistant turn's reasoning field outside <think> tags: the turn's text up to
    its answer, "{reasoning}" where the reasoning goes (gpt-oss: '<|start|>assistant<|channel|>analysis<|message|>
    {reasoning}<|end|><|start|>assistant<|channel|>final<|message|>'). None where the template places no
    reasoning field before the answer, or places it between <think> and </think> (Qwen3, GLM, MiniMax), or
    raises. The turn's text is the render of [user, turn] past its common start with the render of [user]."""
    user = [{"role": "user", "content": "Hi"}]
    turn = {"role": "assistant", "content": ANSWER, "reasoning_content": SENTINEL, "thinking": SENTINEL}
    try:
        head, full = render(user), render([*user, turn])
    except Exception:  # noqa: BLE001 - a template that raises here shows no syntax we could name
        return None
    i, j = full.find(SENTINEL), full.find(ANSWER)
    if i < 0 or j < i:
        return None
    before, after = full[len(os.path.commonprefix([head, full])) : i], full[i + len(SENTINEL) : j]
    return None if OPEN in before and CLOSE in after else before + "{reasoning}" + after


class ThinkingSyntaxError(ValueError):
    """reasoning = "think_tags" would write <think> tags into a student whose template writes another syntax.
    `key`: the setting whose fix the message names first."""

    def __init__(self, message: str, key: str = "orchestrator.reconstruction.reasoning_form"):
        super().__init__(message)
        self.key = key

    def config_error(self) -> Exception:
        """The same, as the config error the CLI prints (distill.core.config.ConfigError), naming the key."""
        from distill.core.config import ConfigError, Problem

        return ConfigError("the student's chat template", [Problem(self.key, str(self))])


def check_default_form(
    own: str | None, policy: str, form: str | None, templated: bool, placed: Callable[[], str | None]
) -> None:
    """reasoning = "think_tags" with reasoning_form unset (<think> tags) for a student whose template writes
    another thinking syntax would teach a syntax the student does not use: a ThinkingSyntaxError (a ValueError)
    naming the fix. `own`: the syntax its source writes (template_thinking_form); `placed`: where a render shows
    it places the reasoning field outside <think> tags (probe_placed_syntax, asked only when needed). An explicit
    reasoning_form (<think> tags included) is the user's choice. `templated`: reasoning = "template" places the
    reasoning in the template's own form (its reasoning field or a thinking content part), the first fix to name."""
    if policy != "think_tags" or form is not None:
        return
    keep = f"to teach <think> tags anyway, set reasoning_form = {THINK_FORM!r}"
    if own is not None:
        first = 'set reasoning = "template" (the template writes the reasoning itself, in that form), or '
        raise ThinkingSyntaxError(
            'reasoning = "think_tags" writes the reasoning in <think> tags (reasoning_form is unset), but the '
            f"student's chat template writes thinking as {own!r} and never <think>: the student would learn a "
            f"syntax it does not use. Fix: {first if templated else ''}set orchestrator.reconstruction."
            f"reasoning_form = {own!r}; {keep}"
        )
    syntax = placed() if templated else None
    if syntax is not None:
        raise ThinkingSyntaxError(
            'reasoning = "think_tags" writes the reasoning in <think> tags at the head of the answer (reasoning_form '
            "is unset), but the student's chat template places an assistant turn's reasoning field itself, as "
            f"{syntax!r}, and never in <think>: the student would learn a syntax it does not use. Fix: set "
            'orchestrator.reconstruction.reasoning = "template" (the default: the template writes the reasoning in '
            f'its own syntax), or "drop"; {keep}',
            key="orchestrator.reconstruction.reasoning",
        )
