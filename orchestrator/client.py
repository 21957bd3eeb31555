"""The teacher client for chat completions: the transport (orchestrator/transport.py) with the chat kind
(orchestrator/kinds/chat.py). Kept as the import place of the names callers and tests use.

    client = TeacherClient(base_urls, model, api_key, concurrency=..., retry=RetryPolicy(...))
    resp = await client.complete(messages, tools, args, extra_body, want=n, gate=gate)   # TeacherResponse
"""

from __future__ import annotations

from typing import Any

from orchestrator.kinds.chat import (  # noqa: F401
    ChatKind,
    ChatRequest,
    Choice,
    TeacherResponse,
    parse_choices,
    parse_completion,
    to_response,
)
from orchestrator.limits import (  # noqa: F401
    MAX_RETRY_AFTER,
    RetryPolicy,
    TokenBucket,
    parse_retry_after,
)
from orchestrator.transport import (  # noqa: F401
    RETRYABLE_STATUS,
    ClientStats,
    Endpoint,
    Gate,
    NonRetryableError,
    ResponseError,
    StopRequested,
    TeacherError,
    Transport,
    error_message,
)

_CHAT = ChatKind()


class TeacherClient(Transport):
    """A Transport that sends chat requests: `complete()` is `request(ChatKind(), ChatRequest(...))`."""

    async def complete(
        self,
        messages: list[dict],
        tools: list[dict] | None,
        args: dict[str, Any],
        extra_body: dict[str, Any] | None = None,
        *,
        want: int = 1,
        est_prompt: float | None = 0.0,
        est_completion: float = 0.0,
        gate: Gate | None = None,
    ) -> TeacherResponse:
        """One logical request (n = args.get("n", 1)), retried until it succeeds or fails for good.

        `gate.reserve(est_prompt, est_completion)` is awaited before every HTTP attempt
        (budgets, stop signals; it raises StopRequested to refuse) and
        `gate.settle(est_prompt, est_completion, usage_or_None)` is called after it.
        `est_prompt=None`: estimated from the messages (kinds/chat.py).
        """
        req = ChatRequest(
            messages, tools, args, extra_body, want=want, est_prompt=est_prompt, est_completion=est_completion
        )
        return to_response(await self.request(_CHAT, req, gate=gate), req)
