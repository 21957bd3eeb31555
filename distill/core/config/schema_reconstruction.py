"""Run configuration schema: `[orchestrator.reconstruction]`, how teacher messages become the student's
tokens and loss mask (orchestrator/reconstruct.py; docs/reconstruction.md, Policies)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .strict import Strict


class Reconstruction(Strict):
    """How teacher messages become student tokens and a loss mask."""

    # Roles whose turns are trained (their content, tool calls and end-of-turn token).
    train_roles: list[str] = ["assistant"]
    # When the template rewrites earlier turns (turn k's render is not a prefix of
    # turn k+1's): "split" into per-turn samples, or "reject" the conversation.
    on_history_rewrite: Literal["split", "reject"] = "split"
    # Teacher reasoning (reasoning_content / reasoning): "template" passes it to the
    # template's own field (or, for a template that reads a thinking content part instead - Mistral's
    # [THINK] - writes it as that part renders), "think_tags" wraps it in <think>...</think> (or reasoning_form) in content,
    # "drop" discards it. A <think>...</think> block inside content is reasoning too:
    # "drop" removes it, "template" moves it to the field where the template places it.
    reasoning: Literal["template", "think_tags", "drop"] = "template"
    # With reasoning = "think_tags": how the student writes its reasoning before the answer, "{reasoning}"
    # where the reasoning goes (unset: "<think>\n{reasoning}\n</think>\n\n"). Gemma 4 in thinking mode:
    # "<|channel>thought\n{reasoning}<channel|>". Where the template drops such a block from every turn it
    # renders (Gemma 4's does), the turn is trained as the block then the rest of the turn as rendered,
    # once the template is shown to drop exactly this block (docs/reconstruction.md, Policies). Unset, for a
    # student whose template writes another known syntax ([THINK], Gemma 4's channel, <seed:think>,
    # <|START_THINKING|>) and never <think>: a config error naming that form (set <think> tags explicitly to keep them);
    # likewise where the template places the reasoning field outside <think> tags (gpt-oss, Kimi K3): use "template".
    reasoning_form: str | None = None
    # An answer cut off (finish_reason "length", "content_filter", "error" or "abort"): "drop" the
    # sample, or "keep" it without an end token.
    truncated: Literal["drop", "keep"] = "drop"
    # Longer than max_seq_len: "drop", or "truncate" the completion (no end token added).
    overlong: Literal["drop", "truncate"] = "drop"
    # Longest sample in tokens; defaults to trainer.seq_len (see resolve()).
    max_seq_len: int | None = Field(None, ge=8)
    # Special-token text (e.g. "<|im_end|>") inside message content: "reject" the
    # conversation, or "allow" (it is tokenised as the special token, as inference servers do).
    special_tokens_in_content: Literal["reject", "allow"] = "reject"
    # Passed to the student's chat template (e.g. {enable_thinking = true}); a key the
    # template never reads is a config error (it would change nothing).
    chat_template_kwargs: dict[str, Any] = {}
    # A leading system (or developer) message: "keep" it (templates that cannot express one, e.g.
    # Gemma 2's, reject the conversation), or "merge_into_first_user": its text, a blank
    # line, then the first user message's text, as one user message.
    system_prompt: Literal["keep", "merge_into_first_user"] = "keep"
    # Whitespace around each message's text: "keep" it as sent (a template that trims it, e.g.
    # Llama 3's and Gemma's trim filter, then rejects the turn: the student would learn other text),
    # or "strip" it before rendering, so that such templates train the text as they write it.
    content_whitespace: Literal["keep", "strip"] = "keep"
    # Tool calls for a student whose template renders no `tool_calls` (it writes its calls as text in the
    # answer: SmolLM3, Granite 3.3, LFM2): unset, such turns are rejected (tool_calls_not_rendered);
    # set, each turn's calls are written after its content (a newline between) in this form, and trained as
    # text. "{call}": one call as JSON {"name": ..., "arguments": {...}}, the form repeated per call, a
    # newline between; "{calls}": the JSON list of all the turn's calls. "{content}" at the form's end puts
    # the calls before the turn's text, at its start after it with nothing between but what the form says.
    # SmolLM3 (Hermes style): "<tool_call>\n{call}\n</tool_call>"; Granite 3.3: "<|tool_call|>{calls}";
    # LFM2 (its turns open with the call): "<|tool_call_start|>{calls}<|tool_call_end|>{content}". Refused
    # for a template that renders tool calls itself. The template must show the conversation's tool
    # definitions too, else tools_not_rendered (SmolLM3 reads them from xml_tools: chat_template_kwargs; or
    # tools_in_system_prompt).
    tool_calls_as_text: str | None = None
    # Tool definitions for a student whose template shows none of those passed as `tools` (DeepSeek V3/V3.1/R1
    # render calls and expect the definitions in the system prompt; SmolLM3 reads xml_tools): unset, a
    # conversation that gives tools and trains a call is rejected (tools_not_rendered); set, the definitions are
    # written as text in this form after the system message's text, a blank line between (a new system message
    # where there is none; before the first user message's text with system_prompt = "merge_into_first_user").
    # "{tools}": every definition in tool_definition_form, a newline between. DeepSeek V3.1's model card:
    # "## Tools\nYou have access to the following tools:\n\n{tools}\nIMPORTANT: ALWAYS adhere to ..." with
    # tool_definition_form = "### {name}\nDescription: {description}\n\nParameters: {parameters}\n". Refused for
    # a template that shows the definitions itself.
    tools_in_system_prompt: str | None = None
    # One definition in tools_in_system_prompt's {tools}: "{tool}" (its JSON, as the request lists it),
    # "{name}", "{description}", "{parameters}" (the JSON schema).
    tool_definition_form: str = "{tool}"
    # The text of an assistant turn that also calls tools, for a student whose template cannot show both
    # (Llama 3.x renders such a turn as its call alone; DeepSeek V3/R1 render calls only in a turn without
    # text): "keep" it, so that such a turn is rejected (template_alters_content, tool_calls_not_rendered),
    # or "drop" it and train the calls alone (counted in stats["tool_call_text_dropped"]). Templates that
    # render both keep the text either way.
    text_with_tool_calls: Literal["keep", "drop"] = "keep"

    @field_validator("reasoning_form")
    @classmethod
    def _one_reasoning_placeholder(cls, v: str | None) -> str | None:
        if v is not None and not (v.count("{reasoning}") == 1 and not v.startswith("{reasoning}")):
            raise ValueError(
                f"{v!r} must hold {{reasoning}} (where the reasoning goes) once, after the text that opens the "
                'block. Fix: e.g. "<think>\\n{reasoning}\\n</think>\\n\\n", or Gemma 4\'s '
                '"<|channel>thought\\n{reasoning}<channel|>" (as TOML writes them)'
            )
        return v

    @model_validator(mode="after")
    def _form_with_think_tags(self) -> Reconstruction:
        if self.reasoning_form is not None and self.reasoning != "think_tags":
            raise ValueError(
                f'reasoning_form is used only with reasoning = "think_tags" (reasoning is {self.reasoning!r}). '
                'Fix: set reasoning = "think_tags", or remove reasoning_form'
            )
        return self

    @field_validator("tools_in_system_prompt")
    @classmethod
    def _one_tools_placeholder(cls, v: str | None) -> str | None:
        if v is not None and v.count("{tools}") != 1:
            raise ValueError(
                f"{v!r} must hold {{tools}} (where the definitions go) once. Fix: e.g. "
                '"# Tools\\nYou may call these functions:\\n{tools}" (as TOML writes it)'
            )
        return v

    @field_validator("tool_definition_form")
    @classmethod
    def _a_definition_placeholder(cls, v: str) -> str:
        if not any(f"{{{k}}}" in v for k in ("tool", "name", "description", "parameters")):
            raise ValueError(
                f"{v!r} holds none of {{tool}}, {{name}}, {{description}}, {{parameters}}: every tool would be "
                'written the same. Fix: e.g. "{tool}" (its JSON), or "### {name}\\n{description}\\n{parameters}"'
            )
        return v

    @model_validator(mode="after")
    def _definition_form_with_tools(self) -> Reconstruction:
        if self.tool_definition_form != "{tool}" and self.tools_in_system_prompt is None:
            raise ValueError(
                "tool_definition_form is used only with tools_in_system_prompt (unset). Fix: set "
                'tools_in_system_prompt, e.g. "# Tools\\n{tools}", or remove tool_definition_form'
            )
        return self

    @field_validator("tool_calls_as_text")
    @classmethod
    def _one_call_placeholder(cls, v: str | None) -> str | None:
        if v is not None and ("{call}" in v) == ("{calls}" in v):
            raise ValueError(
                f"{v!r} must hold exactly one of {{call}} (one call as JSON, the form repeated per call) and "
                '{calls} (the JSON list of all calls). Fix: e.g. "<tool_call>\n{call}\n</tool_call>"'
            )
        if (
            v is not None
            and "{content}" in v
            and not (v.count("{content}") == 1 and (v.startswith("{content}") or v.endswith("{content}")))
        ):
            raise ValueError(
                f"{v!r}: {{content}} (where the turn's text goes) may appear once, at the form's start or end. "
                'Fix: e.g. "<|tool_call_start|>{calls}<|tool_call_end|>{content}" for calls before the text'
            )
        return v
