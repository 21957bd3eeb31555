"""Teacher request kinds: what one request sends and how its answer is read; the transport
(orchestrator/transport.py) does the rest (endpoints, rate limits, retries, budgets).

A new kind is one module here implementing `transport.RequestKind` plus one line in KINDS.
"""

from __future__ import annotations

from orchestrator.kinds.chat import ChatKind
from orchestrator.kinds.score_echo import EchoSample, EchoScore, EchoTokenize
from orchestrator.kinds.score_sglang import SGLangSample, SGLangScore, SGLangTokenize
from orchestrator.kinds.score_types import ScorerKinds
from orchestrator.kinds.score_vllm import VLLMSample, VLLMScore, VLLMTokenize
from orchestrator.transport import RequestKind

#: kind name -> class (instantiated without arguments)
KINDS: dict[str, type] = {
    "chat": ChatKind,
}


#: `[scorer] type` -> its three request kinds (score, sample, tokenize); one line per scoring kind module
#: (orchestrator/kinds/score_<type>.py), filled as they land.
SCORERS: dict[str, ScorerKinds] = {
    "vllm": ScorerKinds(VLLMScore, VLLMSample, VLLMTokenize),
    "sglang": ScorerKinds(SGLangScore, SGLangSample, SGLangTokenize),
    "echo": ScorerKinds(EchoScore, EchoSample, EchoTokenize),
}


def get_kind(name: str) -> RequestKind:
    """A new instance of the kind registered as `name`; ValueError naming the known ones otherwise."""
    try:
        return KINDS[name]()
    except KeyError:
        raise ValueError(f"unknown teacher request kind {name!r}; known: {', '.join(sorted(KINDS))}") from None
