"""Tokenizers for student families whose real tokenizer no package here ships (no tests here).

Each is a real tokenizer built by tests/support/tokenizer_builds.py (or SmolLM2's) with
the family's turn tokens added as special tokens, so the family's real chat template
(tests/templates/) renders and tokenises as it does with the real vocabulary's special
tokens: the reconstruction logic only sees text, special tokens and ids. Which base each
family uses is in docs/reconstruction.md ("Student families").
"""

from __future__ import annotations

from pathlib import Path

TEMPLATES = Path(__file__).parent.parent / "templates"

# Gemma 4's turn, channel and tool tokens (its gemma4 and gemma4_interleaved templates)
GEMMA4_TOKENS = [
    "<|turn>",
    "<turn|>",
    "<|channel>",
    "<channel|>",
    "<|think|>",
    "<|tool>",
    "<tool|>",
    "<|tool_call>",
    "<tool_call|>",
    "<|tool_response>",
    "<tool_response|>",
    '<|"|>',
]

#: family -> (base tokenizer, template, special tokens, eos, bos, plain added tokens)
STANDINS: dict[str, tuple[str, str, list[str], str | None, str | None, list[str]]] = {
    # Phi-4: tiktoken cl100k + ChatML with <|im_sep|>; base: Qwen's byte-level BPE (has <|im_start|>/<|im_end|>)
    "phi4": ("qwen", "phi4", ["<|im_sep|>"], "<|im_end|>", None, []),
    # Phi-4-mini: o200k + <|system|> <|user|> <|assistant|> <|end|> <|tool|> <|/tool|>, eos <|endoftext|>
    "phi4_mini": (
        "qwen",
        "phi4_mini",
        ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|tool|>", "<|/tool|>"],
        "<|endoftext|>",
        None,
        [],
    ),
    # Gemma 3: Gemma's SentencePiece vocabulary (no package ships it); base: SmolLM2, as the Gemma 2 row
    "gemma3": ("smollm2", "gemma3", ["<start_of_turn>", "<end_of_turn>"], None, "<bos>", []),
    # SmolLM3: Llama 3's 128k vocabulary with <|im_start|>/<|im_end|> in reserved slots; base: Llama 3.2's
    "smollm3": ("llama3", "smollm3", ["<|im_start|>", "<|im_end|>", "<think>", "</think>"], "<|im_end|>", None, []),
    # Granite 3.x: a 49k byte-level BPE + role tokens; base: SmolLM2's 49k byte-level BPE
    "granite3_3": (
        "smollm2",
        "granite3_3",
        ["<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>", "<|tool_call|>"],
        "<|end_of_text|>",
        None,
        [],
    ),
    # Granite 4.0: a 100k byte-level BPE (no package ships it) with the role tokens of Granite 3.3; calls written
    # as <tool_call> JSON blocks; base: Qwen's byte-level BPE, whose <tool_call> tags are plain added tokens too
    "granite4": (
        "qwen",
        "granite4",
        ["<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>"],
        "<|end_of_text|>",
        None,
        [],
    ),
    # EXAONE 4.0 (LG AI): a 102k byte-level BPE (no package ships it) with [|role|] tokens and [|endofturn|]
    # (eos); base: Qwen's byte-level BPE, whose <think> and <tool_call> tags are added tokens as EXAONE's
    "exaone4": (
        "qwen",
        "exaone4",
        ["[|system|]", "[|user|]", "[|assistant|]", "[|tool|]", "[|endofturn|]"],
        "[|endofturn|]",
        None,
        [],
    ),
    # Hermes 3: Llama 3.1's vocabulary with ChatML tokens in reserved slots; base: Llama 3.2's
    "hermes3_tool_use": (
        "llama3",
        "hermes3_tool_use",
        ["<|im_start|>", "<|im_end|>"],
        "<|im_end|>",
        None,
        ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"],
    ),
    # Llama 4: a 200k byte-level BPE + <|header_start|> <|header_end|> <|eot|> <|python_start|> <|python_end|>;
    # base: Llama 3.2's (same <|begin_of_text|>)
    "llama4": (
        "llama3",
        "llama4",
        ["<|header_start|>", "<|header_end|>", "<|eot|>", "<|python_start|>", "<|python_end|>"],
        "<|eot|>",
        None,
        [],
    ),
    # OLMo 2 Instruct / Tulu 3: role tags are text, turns end with eos <|endoftext|>; base: Qwen's byte-level BPE
    "olmo2_tulu": ("qwen", "olmo2_tulu", [], "<|endoftext|>", None, []),
    # gpt-oss: o200k_harmony; base: Qwen's byte-level BPE with the harmony tokens added, eos <|return|>
    "gpt_oss": (
        "qwen",
        "gpt_oss",
        ["<|start|>", "<|message|>", "<|channel|>", "<|end|>", "<|return|>", "<|call|>", "<|constrain|>"],
        "<|return|>",
        None,
        [],
    ),
    # GLM-4.6: a 151k byte-level BPE with [gMASK] <sop> and role tokens; base: Qwen's (has <think>, <tool_call>)
    "glm4_6": (
        "qwen",
        "glm4_6",
        ["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"],
        "<|endoftext|>",
        None,
        [],
    ),
    # GLM-4-9B-Chat: GLM-4.6's tokens (the same 151k vocabulary family); its template writes `<|{{ role }}|>`
    "glm4_9b_chat": (
        "qwen",
        "glm4_9b_chat",
        ["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"],
        "<|endoftext|>",
        None,
        [],
    ),
    # Mistral Small 3.x: tekken; the real Mistral-Nemo tekken (its control tokens include [SYSTEM_PROMPT])
    "mistral_small_3_1": ("nemo", "mistral_small_3_1", [], None, None, []),
    # Ministral 3 (Reasoning 2512): a tekken vocabulary whose control tokens include [THINK] [/THINK] [ARGS] (its
    # tekken file is not shipped by a package); base: the real Mistral-Nemo tekken, with those three added
    "ministral3_reasoning": ("nemo", "ministral3_reasoning", ["[THINK]", "[/THINK]", "[ARGS]"], None, None, []),
    # Gemma 2: Gemma's SentencePiece vocabulary (no package ships it); base: SmolLM2, bos <bos>
    "gemma2": ("smollm2", "gemma2", ["<start_of_turn>", "<end_of_turn>"], None, "<bos>", []),
    # LFM2 (Liquid AI): a 65k byte-level BPE, ChatML turns, bos <|startoftext|>, tool list and tool response
    # tokens (its template renders no tool_calls field: calls are text in content); base: Qwen's
    "lfm2": (
        "qwen",
        "lfm2",
        [
            "<|startoftext|>",
            "<|tool_list_start|>",
            "<|tool_list_end|>",
            "<|tool_call_start|>",
            "<|tool_call_end|>",
            "<|tool_response_start|>",
            "<|tool_response_end|>",
        ],
        "<|im_end|>",
        "<|startoftext|>",
        [],
    ),
    # LFM2.5 (Liquid AI): LFM2's tokens and <think>/</think>; its template renders tool calls (Pythonic) and
    # `thinking`; base: Qwen's byte-level BPE, as LFM2's row
    "lfm2_5": (
        "qwen",
        "lfm2_5",
        ["<|startoftext|>", "<|tool_call_start|>", "<|tool_call_end|>", "<think>", "</think>"],
        "<|im_end|>",
        "<|startoftext|>",
        [],
    ),
    # NVIDIA Nemotron Nano 2: Nemotron-H's 131k vocabulary, tekken-derived, whose control tokens <SPECIAL_10>,
    # <SPECIAL_11>, <SPECIAL_12> mark system, user/assistant and the end of a turn; base: Mistral-Nemo's tekken
    "nemotron_nano_2": (
        "nemo",
        "nemotron_nano_2",
        ["<SPECIAL_10>", "<SPECIAL_11>", "<SPECIAL_12>", "<think>", "</think>"],
        "<SPECIAL_12>",
        None,
        [],
    ),
    # Gemma 4: Gemma's vocabulary (no package ships it) with its turn, channel and tool tokens; base: SmolLM2,
    # as the Gemma 2 and 3 rows
    "gemma4": (
        "smollm2",
        "gemma4",
        GEMMA4_TOKENS,
        None,
        "<bos>",
        [],
    ),
    # Gemma 4 31B's interleaved template: the same tokens
    "gemma4_interleaved": (
        "smollm2",
        "gemma4_interleaved",
        GEMMA4_TOKENS,
        None,
        "<bos>",
        [],
    ),
    # ServiceNow Apriel 1.5 15B Thinker (Pixtral-12B based: tekken; whether its role and <|end|> tokens are special
    # in the real vocabulary was not checked): <|system|> <|user|> <|assistant|> <|end|> <|tool_result|>
    # <|content|>, eos </s>; base: Mistral-Nemo's tekken
    "apriel1_5": (
        "nemo",
        "apriel1_5",
        ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|tool_result|>", "<|content|>"],
        "</s>",
        "<s>",
        [],
    ),
    # Cohere Command R7B (and Aya Expanse): a 256k byte-level BPE whose turn tokens end an answer
    # <|END_RESPONSE|><|END_OF_TURN_TOKEN|> (eos the second); base: Qwen's byte-level BPE
    "command_r7b": (
        "qwen",
        "command_r7b",
        [
            "<BOS_TOKEN>",
            "<|START_OF_TURN_TOKEN|>",
            "<|END_OF_TURN_TOKEN|>",
            "<|USER_TOKEN|>",
            "<|CHATBOT_TOKEN|>",
            "<|SYSTEM_TOKEN|>",
            "<|START_RESPONSE|>",
            "<|END_RESPONSE|>",
            "<|START_THINKING|>",
            "<|END_THINKING|>",
            "<|START_ACTION|>",
            "<|END_ACTION|>",
            "<|START_TOOL_RESULT|>",
            "<|END_TOOL_RESULT|>",
        ],
        "<|END_OF_TURN_TOKEN|>",
        "<BOS_TOKEN>",
        [],
    ),
    # GigaChat3 (10B-A1.8B): role names as text, each followed by <|role_sep|> and ended by <|message_sep|>
    # (its eos); no package ships its vocabulary; base: Qwen's byte-level BPE, bos <s>
    "gigachat3": ("qwen", "gigachat3", ["<|role_sep|>", "<|message_sep|>"], "<|message_sep|>", "<s>", []),
    # GigaChat3.5: GigaChat3's turns, the last assistant turn of a render ending with the eos instead of
    # "<|message_sep|>\n\n"; reasoning = true opens "<think>" in the generation prompt; same base as GigaChat3
    "gigachat3_5": ("qwen", "gigachat3_5", ["<|role_sep|>", "<|message_sep|>"], "<|message_sep|>", "<s>", []),
    # Seed-OSS (ByteDance): <seed:bos>ROLE\n ... <seed:eos> turns, thinking in <seed:think>...</seed:think>, calls in
    # <seed:tool_call>; no package ships its vocabulary; base: Qwen's byte-level BPE
    "seed_oss": (
        "qwen",
        "seed_oss",
        ["<seed:bos>", "<seed:eos>", "<seed:think>", "</seed:think>", "<seed:tool_call>", "</seed:tool_call>"],
        "<seed:eos>",
        "<seed:bos>",
        [],
    ),
    # Kimi-K2-Instruct (Moonshot AI): Kimi-K2-Thinking's role tokens and eos, and the media tokens of its template
    "kimi_k2": (
        "qwen",
        "kimi_k2",
        [
            "<|im_system|>",
            "<|im_user|>",
            "<|im_assistant|>",
            "<|im_middle|>",
            "<|media_start|>",
            "<|media_content|>",
            "<|media_pad|>",
            "<|media_end|>",
        ],
        "<|im_end|>",
        None,
        [],
    ),
    # Kimi K3 (Moonshot AI): every message is a tag, "<|open|>message role=...<|sep|>" ... "<|close|>message<|sep|>",
    # then <|end_of_msg|>; its vocabulary is not shipped: Qwen's byte-level BPE with those four as special tokens
    # (assumed special in Kimi's own vocabulary, as its role tokens are in K2's), <|end_of_msg|> the eos
    "kimi_k3": ("qwen", "kimi_k3", ["<|open|>", "<|close|>", "<|sep|>"], "<|end_of_msg|>", None, []),
    # Kimi-K2-Thinking (Moonshot AI): a 160k tiktoken-style BPE with <|im_user|> <|im_assistant|> <|im_system|>
    # <|im_middle|> <|im_end|> (eos) and tool-call section tokens (no package ships it); base: Qwen's byte-level
    # BPE (its <think> </think> are added tokens, as Kimi's are)
    "kimi_k2_thinking": (
        "qwen",
        "kimi_k2_thinking",
        [
            "<|im_system|>",
            "<|im_user|>",
            "<|im_assistant|>",
            "<|im_middle|>",
            "<|tool_calls_section_begin|>",
            "<|tool_calls_section_end|>",
            "<|tool_call_begin|>",
            "<|tool_call_argument_begin|>",
            "<|tool_call_end|>",
        ],
        "<|im_end|>",
        None,
        [],
    ),
    # MiniMax-M2: a 200k byte-level BPE whose turns are "]~b]ROLE\n" ... "[e~[" (eos), bos "]~!b[", calls in
    # <minimax:tool_call> (no package ships it); base: Qwen's byte-level BPE
    "minimax_m2": (
        "qwen",
        "minimax_m2",
        ["]~!b[", "]~b]", "[e~[", "<minimax:tool_call>", "</minimax:tool_call>"],
        "[e~[",
        "]~!b[",
        [],
    ),
    # Step-3.7-Flash (StepFun): ChatML turns, a "<think>\n" generation prompt, Qwen3-Coder-style XML calls (its
    # vocabulary is in no package); base: Qwen's byte-level BPE, eos <|im_end|>
    "stepfun3_7": ("qwen", "stepfun3_7", [], "<|im_end|>", None, []),
    # OLMo 3 Think (Ai2): the dolma2 tokenizer (cl100k-based, 100k) with <|im_start|>/<|im_end|> (no package ships
    # it); base: Qwen's byte-level BPE, eos <|im_end|> (what the template's last-turn eos_token is taken to be)
    "olmo3_think": ("qwen", "olmo3_think", [], "<|im_end|>", None, []),
    # ERNIE 4.5 (Baidu; 0.3B, the 21B-A3B MoE): a 103k SentencePiece vocabulary (no package ships it) with no dummy
    # prefix after its leading <|begin_of_sentence|>; plain-text "User: " / "Assistant: " turns ended by
    # <|end_of_sentence|>; base: Mistral v0.1's SentencePiece with the "first" prefix rule (none after a special token)
    "ernie4_5": (
        "mistral_sp_metaspace",
        "ernie4_5",
        ["<|begin_of_sentence|>", "<|end_of_sentence|>"],
        "</s>",
        None,
        [],
    ),
    # Phi-3.5: Llama 2's SentencePiece (no package ships it); base: Mistral v0.1's, the same kind
    "phi3_5": (
        "mistral_sp",
        "phi3_5",
        ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        "<|endoftext|>",
        None,
        [],
    ),
}


def standin(family: str):
    """A fresh tokenizer for `family` with its real chat template (see STANDINS)."""
    base, template, specials, eos, bos, plain = STANDINS[family]
    if base == "smollm2":
        from distill.core.student import load_tokenizer, tokenizer_only_dir

        tok = load_tokenizer(tokenizer_only_dir())
    else:
        from support import tokenizer_builds

        tok = tokenizer_builds.load(base)
    tok.chat_template = (TEMPLATES / f"{template}.jinja").read_text(encoding="utf-8")
    extra: dict = {"additional_special_tokens": specials} if specials else {}
    if eos:
        extra["eos_token"] = eos
    if bos:
        extra["bos_token"] = bos
    if extra:
        tok.add_special_tokens(extra)
    if plain:
        tok.add_tokens(plain)
    return tok


def standin_or_skip(family: str):
    """standin(family) in a test: a base tokenizer that cannot be built (no package, no registry)
    skips the test with the reason, and fails it in CI (tokenizer_builds.unavailable)."""
    from support import tokenizer_builds

    try:
        return standin(family)
    except Exception as e:  # noqa: BLE001 - say why
        tokenizer_builds.unavailable(f"test tokenizer for {family!r}", e)
