"""Tokenizer wrapper: encode, decode, chat templates, stop ids, and incremental detokenization.

Two sources: an HF model directory (tokenizer files + ``generation_config.json``) or a GGUF
file, whose metadata carries a byte-level BPE vocabulary, its merges, the pre-tokenizer name,
token types and the chat template; from those we build an equivalent ``tokenizers.Tokenizer``.
``load_tokenizer`` is what the model loader calls for either (models/loaders/load.py).

transformers takes a second to import, and reads its verbosity then: it is imported when a
tokenizer is built, after the process settings are in place (engine/environment.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as RustTokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from models.loaders.gguf_loader import GGUFModel, TokenizerParts

Message = dict[str, Any]

# llama.cpp's token types (tokenizer.ggml.token_type).
_CONTROL, _USER_DEFINED = 3, 4

# Split regexes of the HF tokenizers that GGUF's tokenizer.ggml.pre names stand for.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SUPPORTED_PRE_TOKENIZERS = ("gpt2", "llama-bpe", "qwen2", "smollm")


class Tokenizer:
    """A HF tokenizer plus the generation-time facts the engine needs (stop ids, bos)."""

    def __init__(
        self, hf: PreTrainedTokenizerBase, eos_token_ids: Iterable[int], bos_token_id: int | None
    ) -> None:
        self.hf = hf
        self.eos_token_ids: frozenset[int] = frozenset(int(i) for i in eos_token_ids)
        self.bos_token_id: int | None = bos_token_id

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """An HF model directory; stop ids are the tokenizer's eos plus generation_config.json's."""
        from transformers import AutoTokenizer

        path = Path(path)
        hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        generation = _read_json(path / "generation_config.json")
        eos = _as_ids(generation.get("eos_token_id"))
        if hf.eos_token_id is not None:
            eos.append(hf.eos_token_id)
        bos = generation.get("bos_token_id", hf.bos_token_id)
        return cls(hf, eos, bos)

    @classmethod
    def from_gguf(cls, gguf_model: GGUFModel) -> Tokenizer:
        """Builds the tokenizer a GGUF file describes (byte-level BPE, ``tokenizer.ggml.model == "gpt2"``)."""
        from transformers import PreTrainedTokenizerFast

        parts = gguf_model.tokenizer_parts
        backend = _byte_level_bpe(parts, str(gguf_model.path))

        def token(i: int | None) -> str | None:
            return parts.tokens[i] if i is not None and 0 <= i < len(parts.tokens) else None

        hf = PreTrainedTokenizerFast(
            tokenizer_object=backend,
            bos_token=token(parts.bos_token_id),
            eos_token=token(parts.eos_token_id),
            pad_token=token(parts.pad_token_id),
            unk_token=token(parts.unk_token_id),
            chat_template=parts.chat_template,
            clean_up_tokenization_spaces=False,
        )
        eos = [i for i in (parts.eos_token_id, parts.eot_token_id, parts.eom_token_id) if i is not None]
        return cls(hf, eos, parts.bos_token_id)

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def pad_token_id(self) -> int | None:
        return self.hf.pad_token_id

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        # No clean-up of spaces: it is not concatenative, so incremental output would drift.
        text = self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)
        return cast(str, text)  # one list of ids: one string

    def decode_each(self, ids: Sequence[int]) -> list[str]:
        """Each id's own text (special tokens included), in one call: logprob alternatives."""
        return list(self.backend.decode_batch([[int(i)] for i in ids], skip_special_tokens=False))

    @property
    def backend(self) -> RustTokenizer:
        return self.hf.backend_tokenizer

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return list(self.hf.convert_ids_to_tokens(list(ids)))

    def apply_chat_template(
        self,
        messages: Sequence[Message],
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Renders a conversation to prompt text (encode it with ``add_special_tokens=False``)."""
        if chat_template is None and not self.hf.chat_template:
            raise ValueError("this tokenizer has no chat template; pass chat_template=")
        text = self.hf.apply_chat_template(
            list(messages),
            add_generation_prompt=add_generation_prompt,
            chat_template=chat_template,
            tokenize=False,
            **kwargs,
        )
        return cast(str, text)  # one conversation, tokenize=False: one string


def load_tokenizer(source: Path | GGUFModel) -> Tokenizer:
    """The tokenizer of an HF model directory or a GGUF file (a path, or the file already read)."""
    if not isinstance(source, Path):
        return Tokenizer.from_gguf(source)
    if source.suffix == ".gguf":
        from models.loaders.gguf_loader import read_gguf

        return Tokenizer.from_gguf(read_gguf(source))
    return Tokenizer.from_dir(source)


class IncrementalDetokenizer:
    """Turns a stream of generated ids into text deltas, holding back incomplete characters.

    ``tokenizers.decoders.DecodeStream`` does the per-token work in Rust (about 10x cheaper
    than decoding a window in Python per token); it emits nothing while a multi-byte
    character is incomplete. This class keeps a small window of ids for ``flush``: the ids
    whose text went out last ([:_read], the context) and those still held back, so that a
    tail left incomplete at the end comes out as U+FFFD, as ``decode`` gives it.
    """

    _PROMPT_CONTEXT = 5  # prompt ids decoded along with the first output, for leading spaces

    def __init__(
        self, tokenizer: Tokenizer, prompt_ids: Sequence[int], skip_special_tokens: bool = True
    ) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = list(prompt_ids[max(0, len(prompt_ids) - self._PROMPT_CONTEXT) :])
        self._read = len(self._ids)
        self._stream = decoders.DecodeStream(list(self._ids), skip_special_tokens=skip_special_tokens)
        self._pieces: list[str] = []

    @property
    def text(self) -> str:
        """All text emitted so far."""
        return "".join(self._pieces)

    def add(self, token_ids: Sequence[int]) -> str:
        """Appends generated ids; returns the newly completed text (possibly empty)."""
        backend = self._tokenizer.backend
        chunks = []
        for token in token_ids:
            self._ids.append(token)
            chunk = self._stream.step(backend, token)
            if chunk is not None:
                chunks.append(chunk)
                del self._ids[: len(self._ids) - self._PROMPT_CONTEXT]  # the window: context only
                self._read = len(self._ids)
        delta = "".join(chunks)
        self._pieces.append(delta)
        return delta

    def flush(self) -> str:
        """Emits whatever is held back (at the end of generation), incomplete characters as U+FFFD."""
        if self._read == len(self._ids):
            return ""
        context = self._tokenizer.decode(self._ids[: self._read], self._skip)
        delta = self._tokenizer.decode(self._ids, self._skip)[len(context) :]
        del self._ids[: self._read]
        self._read = len(self._ids)
        self._pieces.append(delta)
        return delta


def _byte_level_bpe(parts: TokenizerParts, source: str) -> RustTokenizer:
    if parts.model != "gpt2":
        raise ValueError(
            f"{source}: tokenizer.ggml.model {parts.model!r} is not supported; "
            "supported: 'gpt2' (byte-level BPE)"
        )
    if not parts.tokens or not parts.merges:
        raise ValueError(f"{source}: GGUF has no tokenizer vocabulary or merges")
    types = parts.token_types or [1] * len(parts.tokens)
    added = {_CONTROL, _USER_DEFINED}
    # Ordinary tokens must be in byte-level spelling for BPE to reach them; added tokens are
    # matched as raw text, so they keep their own spelling.
    vocab = {
        (tok if kind in added else _byte_level_spelling(tok)): i
        for i, (tok, kind) in enumerate(zip(parts.tokens, types, strict=True))
    }
    merges = cast(list[tuple[str, str]], [tuple(m.split(" ", 1)) for m in parts.merges])  # "left right" lines
    tk = RustTokenizer(
        models.BPE(vocab=vocab, merges=merges, ignore_merges=parts.pre == "llama-bpe")
    )
    if parts.pre == "qwen2":
        tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = _pre_tokenizer(parts.pre, source)
    tk.decoder = decoders.ByteLevel()
    typed = list(zip(parts.tokens, types, strict=True))
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in typed if k == _CONTROL])
    tk.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in typed if k == _USER_DEFINED])
    template = _special_template(parts)
    if template is not None:
        tk.post_processor = template
    return tk


def _pre_tokenizer(pre: str | None, source: str) -> pre_tokenizers.PreTokenizer:
    if pre == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        # SmolLM's merges were learned on single digits, then GPT-2's split.
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    if pre in ("llama-bpe", "qwen2"):
        split = _LLAMA3_SPLIT if pre == "llama-bpe" else _QWEN2_SPLIT
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    raise ValueError(
        f"{source}: tokenizer.ggml.pre {pre!r} is not supported; "
        f"supported: {', '.join(SUPPORTED_PRE_TOKENIZERS)}"
    )


def _special_template(parts: TokenizerParts) -> processors.TemplateProcessing | None:
    """Adds bos/eos around encoded text when the GGUF asks for it."""
    specials: list[tuple[str, int]] = []
    single = "$A"
    if parts.add_bos and parts.bos_token_id is not None:
        specials.append((parts.tokens[parts.bos_token_id], parts.bos_token_id))
        single = f"{specials[-1][0]} {single}"
    if parts.add_eos and parts.eos_token_id is not None:
        specials.append((parts.tokens[parts.eos_token_id], parts.eos_token_id))
        single = f"{single} {specials[-1][0]}"
    if not specials:
        return None
    return processors.TemplateProcessing(single=single, pair=f"{single} {single.replace('$A', '$B')}",
                                         special_tokens=list(dict.fromkeys(specials)))


def _gpt2_byte_chars() -> list[str]:
    """GPT-2's byte -> printable character table used by byte-level BPE vocabularies."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    chars: list[str] = []
    shifted = 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + shifted))
            shifted += 1
    return chars


_BYTE_CHARS = _gpt2_byte_chars()
_BYTE_ALPHABET = frozenset(_BYTE_CHARS)


def _byte_level_spelling(token: str) -> str:
    if _BYTE_ALPHABET.issuperset(token):
        return token
    return "".join(_BYTE_CHARS[b] for b in token.encode("utf-8"))


def _as_ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}
