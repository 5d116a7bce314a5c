"""Text as next-token data for language models: byte-level tokens (UTF-8 bytes, a vocabulary of
256 ids, no tokenizer to train or download) cut into windows of `sequence_length` tokens; each
window's targets are the same window one token later.

`pydoc` is the documentation text that ships inside Python's standard library (`pydoc_data`:
the language reference topics `help()` shows, about 466 KB of English prose with code): real
text available offline on every machine. `textfile` reads a user's own UTF-8 file. The test
split is the text's last 10%, contiguous (no window of it overlaps a training window); the
validation split is carved from the training windows like every data set's (`held_out`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from maskednas.datasource.checks import DataError
from maskednas.datasource.sources import DATASETS, ImageData

VOCABULARY = 256  # byte-level
TEST_FRACTION = 0.1


@dataclass
class TokenData(ImageData):
    """Windows of token ids: x [N, sequence_length] int64, y the same shifted by one token."""

    @property
    def in_channels(self) -> int:
        return 1

    @property
    def image_size(self) -> int:
        """The sequence length (what a network's `input_size` is for a language model)."""
        return self.x_train.shape[1]

    def resized(self, size: int) -> "TokenData":
        raise DataError(f"{self.name} is text: data.resize applies to images only")

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return (), ()  # token ids are not normalised


def encode(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()


def decode(ids: torch.Tensor) -> str:
    return bytes(ids.to(torch.uint8).tolist()).decode("utf-8", errors="replace")


def windows(tokens: torch.Tensor, sequence_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Consecutive windows of `sequence_length` inputs and their next tokens (a window's last
    target is the next window's first input)."""
    n = (len(tokens) - 1) // sequence_length
    if n < 1:
        raise DataError(f"{len(tokens)} tokens cannot fill one window of {sequence_length}")
    used = tokens[:n * sequence_length + 1]
    return used[:-1].view(n, sequence_length), used[1:].view(n, sequence_length)


def token_data(name: str, text: str, sequence_length: int) -> TokenData:
    if sequence_length < 2:
        raise DataError(f"data.sequence_length must be at least 2, got {sequence_length}")
    tokens = encode(text)
    cut = int(len(tokens) * (1 - TEST_FRACTION))
    (x_train, y_train), (x_test, y_test) = (windows(t, sequence_length)
                                            for t in (tokens[:cut], tokens[cut:]))
    return TokenData(name, x_train, y_train, x_test, y_test, VOCABULARY)


@DATASETS.register()
def pydoc(sequence_length: int = 64, **_) -> TokenData:
    """Python's own documentation topics (`pydoc_data.topics`), in sorted topic order."""
    from pydoc_data.topics import topics
    return token_data("pydoc", "\n\n".join(topics[k] for k in sorted(topics)), sequence_length)


@DATASETS.register()
def textfile(path: str | None = None, sequence_length: int = 64, **_) -> TokenData:
    """A UTF-8 text file of the user's (data.path)."""
    if not path:
        raise ValueError("data.name=textfile needs data.path=<file.txt>")
    if not Path(path).is_file():
        raise FileNotFoundError(f"text file {path!r} does not exist")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text: {e}") from e
    return token_data(Path(path).stem, text, sequence_length)


__all__ = ["TokenData", "encode", "decode", "windows", "VOCABULARY"]
