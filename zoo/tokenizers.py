"""Tokenizers of the text families: character-level and byte-level BPE, both saved inside checkpoints.

Both put the document separator `<|endoftext|>` at id 0 (GPT-2's convention, which also makes it
the padding id): documents are joined with it for training, and generation starts from it and
stops at it. `to_state()` gives a JSON-safe dict that `tokenizer_from_state` turns back into the
tokenizer, so a checkpoint needs nothing else to decode its samples.

    tokenizer = train_tokenizer(texts, kind="bpe", vocab_size=512)     # or kind="char"
    ids = tokenizer.encode("a red circle")
    text = tokenizer.decode(ids)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

EOS = "<|endoftext|>"
UNK = "<unk>"
KINDS = ("bpe", "char")


class TextTokenizer(Protocol):
    kind: str
    eos_id: int

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def to_state(self) -> dict[str, Any]: ...


class CharTokenizer:
    """One token per character seen in training, plus `<|endoftext|>` (0) and `<unk>` (1) for the rest."""

    kind = "char"
    eos_id = 0
    unk_id = 1

    def __init__(self, chars: Sequence[str]) -> None:
        self.chars = list(chars)
        self.index = {c: i + 2 for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        if not chars:
            raise ValueError("no text to build a character vocabulary from")
        return cls(sorted(chars))

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 2

    def encode(self, text: str) -> list[int]:
        return [self.index.get(c, self.unk_id) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        size = len(self.chars) + 2
        return "".join(
            self.chars[i - 2] if 2 <= i < size else ("" if i == self.eos_id else "\ufffd") for i in ids
        )

    def to_state(self) -> dict[str, Any]:
        return {"kind": self.kind, "chars": "".join(self.chars)}


class BPETokenizer:
    """Byte-level BPE (GPT-2's scheme) trained with the `tokenizers` library: any string encodes,
    including characters never seen in training."""

    kind = "bpe"
    eos_id = 0

    def __init__(self, tokenizer: Any) -> None:
        if tokenizer.token_to_id(EOS) != 0:
            raise ValueError(f"not a zoo BPE tokenizer: {EOS} must be id 0")
        self.tokenizer = tokenizer

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 512) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(alphabet) + 1:
            raise ValueError(
                f"a byte-level BPE vocabulary needs at least {len(alphabet) + 1} tokens, got {vocab_size}"
            )
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=alphabet, show_progress=False
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def to_state(self) -> dict[str, Any]:
        return {"kind": self.kind, "json": self.tokenizer.to_str()}


def train_tokenizer(texts: Sequence[str], kind: str = "bpe", vocab_size: int = 512) -> TextTokenizer:
    """A tokenizer of `kind` ("bpe" or "char") learned from `texts` (deterministic for the same texts)."""
    if kind == "char":
        return CharTokenizer.train(texts)
    if kind == "bpe":
        return BPETokenizer.train(texts, vocab_size)
    raise ValueError(f"unknown tokenizer {kind!r}: use one of {', '.join(KINDS)}")


def tokenizer_from_state(state: dict[str, Any]) -> TextTokenizer:
    kind = state.get("kind")
    if kind == "char":
        return CharTokenizer(list(state["chars"]))
    if kind == "bpe":
        from tokenizers import Tokenizer

        return BPETokenizer(Tokenizer.from_str(state["json"]))
    raise ValueError(f"unknown tokenizer kind {kind!r} in the checkpoint; known: {', '.join(KINDS)}")


def encode_texts(tokenizer: TextTokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Encode many texts (in parallel for BPE)."""
    batch = getattr(tokenizer, "encode_batch", None)
    return batch(texts) if batch is not None else [tokenizer.encode(t) for t in texts]
