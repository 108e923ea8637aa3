"""Tokenized chunks: the flat token ids of a chunk's rows and their batch plan, shared by models with one
tokenizer; what counts as a blank text, and where a long text may be cut before tokenizing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from batchsent.model.classifier import Classifier


@dataclass
class EncodedChunk:
    """A chunk of texts tokenized once, with its batch plan.

    Token ids of the non-blank rows are stored flat (``offsets`` marks where each row
    starts) so a padded batch is built with array indexing, not a loop per row.
    """

    size: int
    rows: np.ndarray
    lengths: np.ndarray
    offsets: np.ndarray
    flat_ids: np.ndarray
    flat_type_ids: np.ndarray | None
    truncated: np.ndarray
    blank: np.ndarray
    batches: list[np.ndarray]
    owners: np.ndarray | None = None
    copies: tuple[np.ndarray, np.ndarray] | None = None  # (rows, the earlier row with the same text)
    hypotheses: int = 0  # zero-shot: sequences per row, one per candidate label, row by row

    def only(self, wanted: np.ndarray) -> EncodedChunk:
        """This chunk's tokens for the rows ``wanted`` (a mask over the chunk's rows) only, not yet planned:
        how models that share a tokenizer share one tokenization while each scores the rows it needs."""
        keep = wanted[self.rows]
        positions = np.arange(len(self.lengths))
        if self.owners is not None:
            positions = self.owners
        elif self.hypotheses:
            positions = positions // self.hypotheses
        kept = keep[positions]
        renumbered = np.cumsum(keep) - 1
        copies = None
        if self.copies is not None:
            both = wanted[self.copies[0]] & wanted[self.copies[1]]
            copies = (self.copies[0][both], self.copies[1][both]) if both.any() else None
        return EncodedChunk(
            self.size,
            self.rows[keep],
            self.lengths[kept],
            np.append(self.offsets[:-1][kept], 0),
            self.flat_ids,
            self.flat_type_ids,
            self.truncated & wanted,
            self.blank | ~wanted,
            [],
            None if self.owners is None else renumbered[self.owners[kept]],
            copies,
            self.hypotheses,
        )


def encode_each(
    classifiers: Sequence[Classifier], inputs: Sequence[tuple[Sequence[str | None], Sequence[str | None] | None]]
) -> list[EncodedChunk]:
    """Each classifier's ``encode`` of its own ``(texts, pairs)`` (rows of one chunk; None where it scores nothing).

    Classifiers with an equal ``encoding_key`` (the same tokenizer and truncation) share one tokenization
    of the rows any of them needs; each then plans its own batches over its own rows.
    """
    groups: dict[tuple, list[int]] = {}
    for position, classifier in enumerate(classifiers):
        groups.setdefault(classifier.encoding_key, []).append(position)
    chunks: list[EncodedChunk] = [None] * len(classifiers)  # type: ignore[list-item]
    for group in groups.values():
        if len(group) == 1:
            chunks[group[0]] = classifiers[group[0]].encode(*inputs[group[0]])
            continue
        size = len(inputs[group[0]][0])
        texts: list[str | None] = [None] * size
        pairs: list[str | None] | None = None if inputs[group[0]][1] is None else [None] * size
        needs = {}
        for position in group:
            own_texts, own_pairs = inputs[position]
            needs[position] = np.fromiter((text is not None for text in own_texts), dtype=bool, count=size)
            for row in np.flatnonzero(needs[position]).tolist():
                texts[row] = own_texts[row]
                if pairs is not None:
                    pairs[row] = own_pairs[row]  # type: ignore[index]
        tokens = classifiers[group[0]].tokenized(texts, pairs)
        for position in group:
            chunks[position] = classifiers[position].planned(tokens.only(needs[position]))
    return chunks


def copied_tokenizer(tokenizer: Any) -> Any:
    """A private copy of a ``tokenizers.Tokenizer``; ``to_str`` leaves out ``encode_special_tokens``
    (a tokenizer config's ``split_special_tokens``), so it is carried over here."""
    copy = type(tokenizer).from_str(tokenizer.to_str())
    copy.encode_special_tokens = tokenizer.encode_special_tokens
    return copy


CUT_CHARS_PER_TOKEN = 64  # a truncated row keeps max_length tokens; a token rarely spans more characters than this
CUT_MARGIN_TOKENS = 64  # tokens a cut text must still have past the kept ones for the cut to change nothing kept


def cut_at_space(text: str, limit: int) -> str:
    """``text``'s first ``limit`` characters, ended at the last whitespace in them (the whole prefix if none)."""
    head = text[:limit]
    end = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"))
    return head[:end] if end > limit // 2 else head


def first_occurrences(texts: list, rows: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """The rows whose text (or (text, pair)) appears for the first time, and (row, first row) pairs for repeats."""
    first: dict[str, int] = {}
    for row in rows.tolist():
        first.setdefault(texts[row], row)
    if len(first) == len(rows):
        return rows, None
    unique = np.fromiter(first.values(), dtype=np.int64, count=len(first))
    repeats = np.setdiff1d(rows, unique, assume_unique=True)
    sources = np.fromiter((first[texts[row]] for row in repeats.tolist()), dtype=np.int64, count=len(repeats))
    return unique, (repeats, sources)


def is_blank(text: Any) -> bool:
    """A null, NaN, empty or whitespace-only text: no prediction (the one definition, shared with reuse)."""
    if text is None:
        return True
    if isinstance(text, str):
        return not text.strip()
    if isinstance(text, float) and text != text:  # NaN, as pandas marks a missing value
        return True
    raise TypeError(f"texts must be strings or None, got {type(text).__name__}")
