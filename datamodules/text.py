"""Text corpora for autoregressive families: `captions`, `python_source`, `text_file`.

Each corpus is a list of documents per split. `setup()` trains the tokenizer on the training
documents (byte-level BPE or characters, `zoo.tokenizers`), joins each split's documents with the
`<|endoftext|>` separator into one token stream and cuts it into windows of `block_size + 1`
tokens: batches are `{"tokens": (B, block_size + 1) int64}`, the model predicting tokens[:, 1:]
from tokens[:, :-1]. The datamodule exposes `tokenizer` and `vocab_size` (its tokenizer's actual
size, which `zoo.fit` passes to the model) and `texts(split)`, the documents themselves.
"""

from __future__ import annotations

import sys
import sysconfig
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.data import ZooDataModule
from zoo.errors import DataError
from zoo.tokenizers import KINDS, TextTokenizer, encode_texts, train_tokenizer

from ._images import derived_seed, stable_split

SPLITS = ("train", "val", "test")


class TokenWindows(Dataset):
    """Consecutive, non-overlapping windows of `block_size + 1` tokens of one stream (the last token of a
    window is the first of the next)."""

    def __init__(self, stream: torch.Tensor, block_size: int) -> None:
        self.stream, self.block_size = stream, block_size

    def __len__(self) -> int:
        return (len(self.stream) - 1) // self.block_size

    def __getitem__(self, index: int) -> dict[str, Any]:
        start = index * self.block_size
        return {"tokens": self.stream[start : start + self.block_size + 1]}


class TextDataModule(ZooDataModule):
    """Base of the text corpora: subclasses implement `_documents()` -> {split: [document, ...]}.

    Args:
        tokenizer: bpe (byte-level BPE) or char (one token per character), trained on the training split.
        bpe_vocab_size: most tokens of the BPE tokenizer, at least 257 (unused with char).
        block_size: context in tokens (windows of block_size + 1); zoo.fit links model.block_size to it.
    """

    modality = "text"

    def __init__(
        self,
        tokenizer: str = "bpe",
        bpe_vocab_size: int = 512,
        block_size: int = 128,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        if tokenizer not in KINDS:
            raise DataError(f"unknown tokenizer {tokenizer!r}: use one of {', '.join(KINDS)}")
        if block_size < 1:
            raise DataError(f"block_size must be at least 1, got {block_size}")
        self.tokenizer_kind = tokenizer
        self.bpe_vocab_size = bpe_vocab_size
        self.block_size = block_size

    def _documents(self) -> dict[str, list[str]]:
        raise NotImplementedError

    @cached_property
    def documents(self) -> dict[str, list[str]]:
        docs = self._documents()
        for split in SPLITS:
            if not docs.get(split):
                raise DataError(f"{type(self).__name__}: the {split} split has no documents")
        return docs

    def texts(self, split: str) -> list[str]:
        """The documents of a split ("train", "val" or "test")."""
        return self.documents[split]

    @cached_property
    def tokenizer(self) -> TextTokenizer:
        """Trained on the training documents on first use (deterministic for the same corpus)."""
        return train_tokenizer(self.documents["train"], self.tokenizer_kind, self.bpe_vocab_size)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def stream(self, split: str) -> torch.Tensor:
        """A split's documents, each followed by `<|endoftext|>`, as one int64 token stream (the stream
        starts with the separator too, so the first document is predicted from it as all others are)."""
        eos = self.tokenizer.eos_id
        ids = [eos]
        for tokens in encode_texts(self.tokenizer, self.documents[split]):
            ids += tokens
            ids.append(eos)
        return torch.tensor(ids, dtype=torch.long)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        sets = []
        for split in SPLITS:
            windows = TokenWindows(self.stream(split), self.block_size)
            if len(windows) == 0:
                raise DataError(
                    f"{type(self).__name__}: the {split} split has {len(windows.stream)} tokens, fewer than one "
                    f"window of block_size + 1 = {self.block_size + 1}; use a smaller --data.block_size or more text"
                )
            sets.append(windows)
        self.train_set, self.val_set, self.test_set = sets


class CaptionsDataModule(TextDataModule):
    """Sentences of the `shapes` caption grammar ("a red circle left of a small blue square"), one
    document each: a corpus whose generated text can be checked (`parse_caption`, the `grammar`
    metric). Objects per sentence are drawn uniformly from min_objects..max_objects, colours, shapes
    and sizes uniformly, positions uniformly over the canvas (they decide the relation words).
    Deterministic for a seed; the splits use independent streams of it.

    Args:
        min_objects: fewest objects a sentence names, at least 1.
        max_objects: most objects a sentence names, at least min_objects.
        num_train: training sentences.
        num_val: validation sentences.
        num_test: test sentences.
        seed: seed the sentences are drawn from, and of the training order.
    """

    def __init__(
        self,
        min_objects: int = 1,
        max_objects: int = 3,
        num_train: int = 20000,
        num_val: int = 1000,
        num_test: int = 1000,
        tokenizer: str = "char",
        bpe_vocab_size: int = 512,
        block_size: int = 64,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(tokenizer, bpe_vocab_size, block_size, batch_size, num_workers, seed)
        self.save_hyperparameters()
        if not 1 <= min_objects <= max_objects:
            raise DataError(f"need 1 <= min_objects <= max_objects, got {min_objects} and {max_objects}")
        self.min_objects, self.max_objects = min_objects, max_objects
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}

    def _documents(self) -> dict[str, list[str]]:
        from zoo.datamodules.shapes import COLOR_NAMES, SHAPE_NAMES, SIZE_NAMES, ShapeObject, caption_for

        docs = {}
        for index, split in enumerate(SPLITS):
            rng = np.random.default_rng(derived_seed(self.seed, 7, index))
            captions = []
            for _ in range(self.sizes[split]):
                count = int(rng.integers(self.min_objects, self.max_objects + 1))
                objects = [
                    ShapeObject(
                        shape=int(rng.integers(len(SHAPE_NAMES))),
                        color=int(rng.integers(len(COLOR_NAMES))),
                        size=int(rng.integers(len(SIZE_NAMES))),
                        cx=float(rng.uniform(0, 1)),
                        cy=float(rng.uniform(0, 1)),
                        scale=1.0,
                        angle=0.0,
                    )
                    for _ in range(count)
                ]
                captions.append(caption_for(objects))
            docs[split] = captions
        return docs


def read_text_file(path: Path) -> str:
    """A file's UTF-8 text, with a clear error for binary or undecodable files."""
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise DataError(f"{path} looks binary (it has NUL bytes): give UTF-8 text files")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path} is not UTF-8 text ({err.reason} at byte {err.start}): convert it, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8.txt`"
        ) from err


class PythonSourceDataModule(TextDataModule):
    """The Python standard library's own source files on this machine, one document per file, split by
    file (a hash of its path: about `val_fraction` / `test_fraction` of files each). Test suites and
    site-packages are left out. `python_version` records which standard library it was.

    Args:
        root: a folder of .py files to read instead; null: this Python's standard library.
        val_fraction: about this fraction of the files (by a hash of the path) is for validation.
        test_fraction: about this fraction of the files is for testing; above 0, or the test split is empty.
    """

    def __init__(
        self,
        root: str | None = None,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        tokenizer: str = "bpe",
        bpe_vocab_size: int = 2048,
        block_size: int = 256,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(tokenizer, bpe_vocab_size, block_size, batch_size, num_workers, seed)
        self.save_hyperparameters()
        self.root = Path(root) if root else Path(sysconfig.get_paths()["stdlib"])
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.python_version = ".".join(map(str, sys.version_info[:3]))

    def files(self) -> list[Path]:
        if not self.root.is_dir():
            raise DataError(f"python_source: {self.root} is not a folder of Python files")
        skip = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
        files = sorted(
            p for p in self.root.rglob("*.py") if not skip & set(p.relative_to(self.root).parts[:-1])
        )
        if not files:
            raise DataError(f"python_source: no .py files under {self.root}")
        return files

    def _documents(self) -> dict[str, list[str]]:
        docs: dict[str, list[str]] = {split: [] for split in SPLITS}
        for path in self.files():
            try:
                text = read_text_file(path)
            except ValueError:
                continue  # the standard library has a few deliberately undecodable test files
            key = path.relative_to(self.root).as_posix()
            docs[stable_split(key, self.val_fraction, self.test_fraction)].append(text)
        return docs


class TextFileDataModule(TextDataModule):
    """Any UTF-8 text: one file (split by position: the first 1 - val - test of it trains), or a folder
    (every file under it, split by file when it has at least 10 files, else each file by position).
    `python -m zoo.fit --model gpt --data text_file --data.path book.txt`.

    Args:
        path: a UTF-8 text file, or a folder of them (required).
        val_fraction: fraction for validation: of the files, or of each file's text after its training part.
        test_fraction: fraction for testing: of the files, or the end of each file; above 0.
    """

    def __init__(
        self,
        path: str = "",
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        tokenizer: str = "bpe",
        bpe_vocab_size: int = 1024,
        block_size: int = 128,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(tokenizer, bpe_vocab_size, block_size, batch_size, num_workers, seed)
        self.save_hyperparameters()
        if not path:
            raise DataError("text_file needs a file or folder: --data.path book.txt")
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"text_file: {self.path} does not exist")
        self.val_fraction, self.test_fraction = val_fraction, test_fraction

    def _documents(self) -> dict[str, list[str]]:
        files = [self.path] if self.path.is_file() else sorted(p for p in self.path.rglob("*") if p.is_file())
        texts = {p: read_text_file(p) for p in files}
        texts = {p: t for p, t in texts.items() if t.strip()}
        if not texts:
            raise DataError(f"text_file: {self.path} has no text (empty files only)")
        docs: dict[str, list[str]] = {split: [] for split in SPLITS}
        if len(texts) >= 10:
            for p, text in texts.items():
                docs[
                    stable_split(p.relative_to(self.path).as_posix(), self.val_fraction, self.test_fraction)
                ].append(text)
            if all(docs.values()):
                return docs
            docs = {split: [] for split in SPLITS}
        for text in texts.values():
            train_end = int(len(text) * (1 - self.val_fraction - self.test_fraction))
            val_end = int(len(text) * (1 - self.test_fraction))
            for split, part in zip(
                SPLITS, (text[:train_end], text[train_end:val_end], text[val_end:]), strict=True
            ):
                if part:
                    docs[split].append(part)
        return docs
