"""The model's vocabulary as llguidance sees it, read from the GGUF file.

llama.cpp enforces a grammar with llguidance over the model's tokens, and some grammars that
compile fail only once tokens are matched against them (a lexer or parser limit): llama.cpp then
logs the error and goes on unconstrained. With the same vocabulary, ``_structured`` can run the
grammar here first, and check an answer against it afterwards. xllamacpp does not expose the
vocabulary, so it is read from the file's metadata (the header only: ~0.1 s, no weights).

Why not llama.cpp's own reader (PyPI ``gguf``, 0.19.0): measured here on the bundled model, it
took 5.8-6.1 s and +150 MiB against 0.5 s, for it parses every metadata array (the 48,900 BPE
merges too) into numpy memmap slices up front; that on every model server start. The part read
here is GGUF's documented key/value header, and only the four tokenizer keys are kept.
"""

from __future__ import annotations

import logging
import struct
from functools import cache
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("streamfaas.llm")

# GGUF metadata value types: the fixed-size ones by their struct format, 8 string, 9 array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_KEYS = frozenset(
    {
        "tokenizer.ggml.model",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
    }
)
# llama.cpp's token types: control tokens are llguidance's special tokens, byte tokens (SPM's
# <0x0A>) stand for one byte.
_CONTROL, _BYTE = 3, 6


@cache
def _read_vocabulary(path: Path) -> tuple[list[bytes], list[int], Any] | None:
    """The tokens' bytes, their types and the end token, or None (logged) when the file's
    tokenizer is not one read here."""
    try:
        meta = _read_metadata(path, _KEYS)
        tokens = _token_bytes(meta)
    except (OSError, ValueError, KeyError, struct.error, UnicodeDecodeError) as exc:
        log.warning("cannot read the vocabulary of %s (%s): schemas are only checked to compile", path.name, exc)
        return None
    if tokens is None:
        log.warning(
            "%s has a %r tokenizer: schemas are only checked to compile",
            path.name,
            meta.get("tokenizer.ggml.model"),
        )
        return None
    eos = meta.get("tokenizer.ggml.eot_token_id", meta.get("tokenizer.ggml.eos_token_id"))
    return tokens, meta["tokenizer.ggml.token_type"], eos


def longest_token(path: Path) -> int | None:
    """How many bytes of text the model's longest token stands for (special tokens written
    out, as ``<|im_end|>``), or None when the vocabulary cannot be read: no token covers more,
    so a text of N bytes is at least N / this many tokens."""
    vocabulary = _read_vocabulary(path)
    if vocabulary is None:
        return None
    return max((len(token) for token in vocabulary[0]), default=None)


@cache
def load_tokenizer(path: Path) -> Any:
    """llguidance's ``LLTokenizer`` for a GGUF model, or None (the grammar is then only checked
    to compile) when llguidance is missing or the file's tokenizer is not one read here."""
    try:
        from llguidance import LLTokenizer, TokenizerWrapper
    except ImportError:
        return None
    vocabulary = _read_vocabulary(path)
    if vocabulary is None:
        return None
    tokens, types, eos = vocabulary
    if not isinstance(eos, int) or not 0 <= eos < len(tokens):
        return None
    return LLTokenizer(TokenizerWrapper(_Vocabulary(tokens, types, eos)))


class _Vocabulary:
    """What llguidance's ``TokenizerWrapper`` needs: the tokens' bytes and a tokenizer. The
    tokenizer is greedy (longest known token first): llguidance matches bytes, so any spelling
    of a text in tokens is matched the same."""

    def __init__(self, tokens: list[bytes], types: list[int], eos: int) -> None:
        self.special_token_ids = [i for i, kind in enumerate(types) if kind == _CONTROL]
        # llguidance's mark for a special token: it can only be matched as a whole.
        self.tokens = [b"\xff" + t if kind == _CONTROL else t for t, kind in zip(tokens, types, strict=True)]
        self.eos_token_id = eos
        self.bos_token_id = None
        self._ids: dict[bytes, int] = {}
        for index, (token, kind) in enumerate(zip(tokens, types, strict=True)):
            if kind != _CONTROL and token:
                self._ids.setdefault(token, index)
        self._longest = max((len(t) for t in self._ids), default=1)

    def __call__(self, text: bytes | str) -> list[int]:
        data = text.encode() if isinstance(text, str) else text
        ids, start = [], 0
        while start < len(data):
            for end in range(min(len(data), start + self._longest), start, -1):
                found = self._ids.get(data[start:end])
                if found is not None:
                    ids.append(found)
                    start = end
                    break
            else:
                start += 1  # a byte no token spells: skipped
        return ids


def _token_bytes(meta: dict[str, Any]) -> list[bytes] | None:
    model = meta["tokenizer.ggml.model"]
    texts: list[bytes] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta["tokenizer.ggml.token_type"]
    if len(texts) != len(types):
        raise ValueError("token and token type counts differ")
    if model == b"gpt2":  # byte-level BPE: each byte is written as one printable character
        byte_of = {char: byte for byte, char in _bytes_to_unicode().items()}
        tokens = []
        for raw, kind in zip(texts, types, strict=True):
            text = raw.decode()
            # An added token (user-defined) may be written as plain text instead.
            plain = kind == _CONTROL or any(c not in byte_of for c in text)
            tokens.append(raw if plain else bytes(byte_of[c] for c in text))
        return tokens
    if model == b"llama":  # SentencePiece: "▁" is a space, <0xAB> one byte
        return [
            bytes([int(raw[3:5], 16)])
            if kind == _BYTE
            else raw if kind == _CONTROL else raw.replace("▁".encode(), b" ")
            for raw, kind in zip(texts, types, strict=True)
        ]
    return None


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table of byte → the character that stands for it in a token's text."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def _read_metadata(path: Path, wanted: frozenset[str]) -> dict[str, Any]:
    """The ``wanted`` keys of a GGUF file's metadata (strings as bytes); others are skipped."""
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError("not a GGUF file")
        version = _unpack(f, "I")
        if version < 2:
            raise ValueError(f"GGUF version {version} is not supported")
        _unpack(f, "Q")  # tensor count
        count = _unpack(f, "Q")
        found: dict[str, Any] = {}
        for _ in range(count):
            key = _string(f).decode()
            value = _value(f, _unpack(f, "I"), keep=key in wanted)
            if key in wanted:
                found[key] = value
            if len(found) == len(wanted):
                break
        return found


def _unpack(f: IO[bytes], fmt: str) -> Any:
    size = struct.calcsize("<" + fmt)
    data = f.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF metadata")
    return struct.unpack("<" + fmt, data)[0]


def _string(f: IO[bytes]) -> bytes:
    size = _unpack(f, "Q")
    data = f.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF metadata")
    return data


def _value(f: IO[bytes], kind: int, *, keep: bool) -> Any:
    if kind in _SCALARS:
        return _unpack(f, _SCALARS[kind])
    if kind == _STRING:
        return _string(f)
    if kind == _ARRAY:
        item_kind, size = _unpack(f, "I"), _unpack(f, "Q")
        if not keep and item_kind in _SCALARS:
            f.seek(size * struct.calcsize("<" + _SCALARS[item_kind]), 1)
            return None
        return [_value(f, item_kind, keep=keep) for _ in range(size)]
    raise ValueError(f"unknown GGUF metadata type {kind}")
