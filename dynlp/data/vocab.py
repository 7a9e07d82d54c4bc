"""Token <-> index vocabularies with counts, UNK word dropout and JSON persistence.

Owns Vocab. Imports numpy and the standard library only; it must not import anything
from dynlp outside dynlp.data.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from dynlp.data.files import write_text_atomic

PAD = "<pad>"
UNK = "<unk>"
FORMAT = "dynlp-vocab"
FORMAT_VERSION = 1


class Vocab:
    """A fixed mapping between tokens and indices 0..len-1.

    Order: the ``specials`` first (in the given order), then tokens by descending
    count, ties broken by the token string, so the same data always gives the same
    indices. ``<pad>`` and ``<unk>`` are recognised among the specials (``pad_index``,
    ``unk_index``); with ``specials=()`` (label vocabularies) unknown tokens raise KeyError.
    ``min_count`` drops rarer tokens; ``max_size`` caps the number of non-special entries.
    Counts are kept for the tokens in the vocabulary (specials count their occurrences
    in the data, usually 0).
    """

    def __init__(
        self,
        tokens: Iterable[str] = (),
        *,
        min_count: int = 1,
        specials: Sequence[str] = (PAD, UNK),
        max_size: int | None = None,
    ) -> None:
        if isinstance(tokens, str):
            raise TypeError("tokens must be an iterable of strings, not one string")
        if len(set(specials)) != len(specials):
            raise ValueError(f"duplicate specials: {list(specials)}")
        counts = Counter(tokens)
        regular = [
            (token, count) for token, count in counts.items()
            if count >= min_count and token not in specials
        ]
        regular.sort(key=lambda item: (-item[1], item[0]))
        if max_size is not None:
            regular = regular[:max_size]
        ordered = [(token, counts.get(token, 0)) for token in specials] + regular
        self._set(ordered, tuple(specials))

    def _set(self, ordered: list[tuple[str, int]], specials: tuple[str, ...]) -> None:
        self._tokens = [token for token, _ in ordered]
        self._counts = [count for _, count in ordered]
        self._index = {token: index for index, token in enumerate(self._tokens)}
        if len(self._index) != len(self._tokens):
            raise ValueError("duplicate tokens in vocabulary")
        self.specials = specials
        self.unk_index: int | None = self._index.get(UNK) if UNK in specials else None
        self.pad_index: int | None = self._index.get(PAD) if PAD in specials else None

    @classmethod
    def build(
        cls,
        sequences: Iterable[Iterable[str]],
        min_count: int = 1,
        specials: Sequence[str] = (PAD, UNK),
        max_size: int | None = None,
    ) -> Vocab:
        """Build from sequences of tokens (e.g. the forms of every sentence)."""
        tokens = (token for sequence in sequences for token in sequence)
        return cls(tokens, min_count=min_count, specials=specials, max_size=max_size)

    @classmethod
    def characters(
        cls,
        words: Iterable[str],
        min_count: int = 1,
        specials: Sequence[str] = (PAD, UNK),
        max_size: int | None = None,
    ) -> Vocab:
        """A character vocabulary from words (each word contributes its characters).

        Add boundary markers through ``specials``, e.g. ``("<pad>", "<unk>", "<w>", "</w>")``.
        """
        characters = (character for word in words for character in word)
        return cls(characters, min_count=min_count, specials=specials, max_size=max_size)

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._tokens)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)}, specials={list(self.specials)})"

    @property
    def tokens(self) -> list[str]:
        """All entries in index order (a copy)."""
        return list(self._tokens)

    def index(self, token: str) -> int:
        """The index of token; unknown tokens map to ``unk_index`` (KeyError without UNK)."""
        index = self._index.get(token)
        if index is not None:
            return index
        if self.unk_index is None:
            raise KeyError(f"{token!r} is not in the vocabulary (which has no {UNK})")
        return self.unk_index

    def indices(self, tokens: Iterable[str]) -> list[int]:
        return [self.index(token) for token in tokens]

    def token(self, index: int) -> str:
        if not 0 <= index < len(self._tokens):
            raise IndexError(f"index {index} out of range 0..{len(self._tokens) - 1}")
        return self._tokens[index]

    def count(self, token: str) -> int:
        """How often token was seen when building (0 for tokens not in the vocabulary)."""
        index = self._index.get(token)
        return 0 if index is None else self._counts[index]

    def index_with_dropout(
        self, token: str, rng: np.random.Generator, alpha: float = 0.25
    ) -> int:
        """Index of token, replaced by UNK with probability alpha / (alpha + count(token)).

        The word-dropout scheme of Kiperwasser and Goldberg (2016): rare words are often
        replaced, so the UNK embedding gets trained. Unknown tokens always give UNK.
        """
        if self.unk_index is None:
            raise ValueError(f"word dropout needs {UNK} among the specials")
        index = self._index.get(token)
        if index is None:
            return self.unk_index
        count = self._counts[index]
        if rng.random() < alpha / (alpha + count):
            return self.unk_index
        return index

    def indices_with_dropout(
        self, tokens: Sequence[str], rng: np.random.Generator, alpha: float = 0.25
    ) -> list[int]:
        """``index_with_dropout`` for each token (one random draw per token)."""
        return [self.index_with_dropout(token, rng, alpha) for token in tokens]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description that ``from_dict`` turns back into an equal Vocab."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "specials": list(self.specials),
            "tokens": list(self._tokens),
            "counts": list(self._counts),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Vocab:
        """The Vocab of a `to_dict` description; ValueError for anything else (fields of the
        wrong type, counts that are not non-negative integers, duplicates)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a vocabulary is a dictionary, not a {type(data).__name__}")
        if data.get("format") != FORMAT or data.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"not a {FORMAT} version {FORMAT_VERSION} dictionary "
                f"(format={data.get('format')!r}, version={data.get('version')!r})"
            )
        tokens, counts, specials = (data.get(key) for key in ("tokens", "counts", "specials"))
        for key, value in (("tokens", tokens), ("specials", specials)):
            if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
                raise ValueError(f"vocabulary {key}: not a list of strings")
        if not isinstance(counts, list) or not all(
                type(c) is int and c >= 0 for c in counts):
            raise ValueError("vocabulary counts: not a list of non-negative integers")
        specials = tuple(specials)
        if len(tokens) != len(counts) or tuple(tokens[:len(specials)]) != specials:
            raise ValueError("inconsistent vocabulary dictionary")
        vocab = cls.__new__(cls)
        vocab._set(list(zip(tokens, counts)), specials)
        return vocab

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as JSON (UTF-8), whole or not at all."""
        write_text_atomic(path, json.dumps(self.to_dict(), ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocab:
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))
