"""Teacher messages -> student tokens and loss mask, built turn by turn and verified.

How a conversation becomes samples (docs/reconstruction.md has the long version):

1. The messages are checked and normalised (roles, text-only content, tool-call
   arguments checked and passed in the shape the template expects - orchestrator/
   tool_args.py -, reasoning placed per policy).
2. For every trained turn k (an assistant message, by default) the student's chat
   template renders two strings: P_k, the history before the turn with the
   generation prompt (what the student sees at inference), and F_k, the history
   through the turn. The turn's text is F_k[len(P_k):]; the template's own constant
   end-of-conversation text (worked out once from a probe render, e.g. "\\n" after
   `<|im_end|>`) is cut off its end and what remains must end with the end-of-turn
   token and contain the teacher's content verbatim where the template puts it.
3. Turns are chained into one sample while the rendered text through turn k is a
   string prefix of the text before turn k+1 (the template does not rewrite
   history). Where it is not, the conversation is split into per-turn samples (each
   with its own full prompt) or rejected, per `on_history_rewrite`.
4. Each sample's text is cut into segments - the prompt, then alternately a
   trained turn and the untrained context between turns - and every segment is
   tokenised on its own, in one batch call to the fast tokenizer (segments after the
   prompt without a SentencePiece dummy prefix: orchestrator/segment_tokenize.py).
5. Self-check: decode(prompt + completion) must equal the rendered text and the
   decoded trained tokens must equal the trained text; else the sample is rejected.

P_k and F_k come from one or two renders per conversation when the template is
provably append-only (orchestrator/template.py), else from two renders per turn (a third
only when the content is not at the start of the turn's text); tokenising is linear
in the conversation's length (every character is tokenised once per sample).

The code is split by step; docs/reconstruction.md ("Code map") lists the modules.
orchestrator/reconstruct.py re-exports the public names for existing imports.
"""

from orchestrator.reconstruction.messages import KNOWN_ROLES, normalize_messages
from orchestrator.reconstruction.reasons import REJECTION_REASONS
from orchestrator.reconstruction.reconstructor import Reconstructor
from orchestrator.reconstruction.tokenize_jsonl import tokenize_file

__all__ = ["KNOWN_ROLES", "REJECTION_REASONS", "Reconstructor", "normalize_messages", "tokenize_file"]
