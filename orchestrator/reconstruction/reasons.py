"""Why a conversation (or one of its split samples) is rejected: every reason, and the
exception that carries one through reconstruction (docs/reconstruction.md,
"Rejection reasons", documents each)."""

from __future__ import annotations

#: Every reason a conversation (or one of its split samples) can be rejected for.
REJECTION_REASONS: dict[str, str] = {
    "invalid_message": "a message is not an object, has no role, or its content is not text/None/list",
    "unknown_role": "a role other than system, user, assistant, tool (developer is read as system)",
    "non_text_content": "a content part other than {'type': 'text'} (images, audio, ...)",
    "empty_assistant_turn": "an assistant message with no content and no tool calls",
    "invalid_tool_call": "a tool call that is not {'function': {'name': str, 'arguments': ...}}",
    "invalid_tool_arguments": "tool-call arguments that are not a JSON object (or a JSON string of one)",
    "no_trained_turn": "no message has a role in train_roles (or each one that has has weight 0)",
    "special_token_in_content": "special-token text (e.g. '<|im_end|>') inside content, with special_tokens_in_content=reject",
    "truncated": "the last assistant turn was cut off (finish_reason length, content_filter, error or abort), with truncated=drop",
    "template_error": "the student's chat template raised an error on this conversation",
    "template_mismatch": "the template's generation prompt is not a prefix of its rendering of the turn",
    "template_alters_content": "the template does not render the teacher's content verbatim (e.g. it trims it)",
    "reasoning_not_rendered": "reasoning=template, but the template did not render the turn's reasoning",
    "tool_calls_not_rendered": "the assistant turn has tool calls but the student's template does not render them "
    "(e.g. SmolLM2's), so the student would learn an empty turn",
    "tool_results_not_rendered": "a tool message before a trained turn, and the student's template renders no tool "
    "message (OLMo 2's drops them): the answer would be trained without the result it reads",
    "tools_not_rendered": "a trained turn calls a tool, and the student's template does not show the tool "
    "definitions passed as `tools` (DeepSeek V3's renders calls but no definitions, SmolLM3's reads xml_tools): the "
    "student would learn calls to tools it never sees; tools_in_system_prompt writes them",
    "missing_end_token": "the rendered turn does not end with the template's end-of-turn token",
    "history_rewrite": "the template rewrites earlier turns, with on_history_rewrite=reject",
    "overlong": "longer than max_seq_len with overlong=drop, or nothing trainable left after truncation",
    "no_trained_tokens": "the sample would train on zero tokens",
    "invalid_text": "text that is not valid Unicode (a lone surrogate, as a JSON escape of half an emoji gives), "
    "which no tokenizer can encode",
    "roundtrip_mismatch": "decoding the tokens does not give back the rendered text (self-check failed)",
    "invalid_json": "(tokenize_file) the input line is not valid JSON",
    "invalid_utf8": "(tokenize_file) the input line holds a byte sequence that is not UTF-8",
    "line_too_long": "(tokenize_file) the input line is longer than 64 MiB (read past, not loaded)",
    "invalid_line": "(tokenize_file) the input line is not an object with a 'messages' list",
    "partial_last_line": "(tokenize_file) the input's last line has no newline and is cut short "
    "(the writer stopped mid-line; replay names it the same)",
    "batch_error": "(tokenize_file) an OpenAI Batch API output line whose request failed (an error, or an "
    "HTTP status other than 200): no answer to build (replay names it the same)",
}


_R = "orchestrator.reconstruction."
#: The setting that lets the most common reasons through, for a run that produced no sample at all.
REJECTION_FIXES: dict[str, str] = {
    "overlong": f'raise trainer.seq_len (or {_R}max_seq_len), or set {_R}overlong = "truncate"',
    "reasoning_not_rendered": f'set {_R}reasoning = "think_tags" (or "drop")',
    "truncated": f'raise orchestrator.sampling.max_tokens, or set {_R}truncated = "keep"',
    "special_token_in_content": f'set {_R}special_tokens_in_content = "allow"',
    "history_rewrite": f'set {_R}on_history_rewrite = "split"',
    "no_trained_turn": f"check {_R}train_roles",
    "template_alters_content": f'set {_R}content_whitespace = "strip" (a template that trims content)',
    "tools_not_rendered": f"set {_R}tools_in_system_prompt to the layout the student reads tool definitions in",
    "tool_calls_not_rendered": f"set {_R}tool_calls_as_text to the form the student writes its calls in, or give "
    "the student a template that renders tool calls (student.chat_template)",
}


class Reject(Exception):
    def __init__(self, reason: str, detail: str):
        assert reason in REJECTION_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
