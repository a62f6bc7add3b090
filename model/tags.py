"""The control-tag vocabulary (reference §2.1), resolved from a tokenizer by tag string.

No token id is hard-coded: a profile names the tag strings, and the tokenizer says their ids. The
profile of the released checkpoints is the default; a checkpoint overrides any entry through the
``plandiff_tags`` key of its config.json, e.g. ``{"sync": "<join/>", "span_length_unit": 1}``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import cached_property
from typing import Any

from .errors import CheckpointError


@dataclass(frozen=True)
class TagProfile:
    """Tag strings and plan conventions of a checkpoint family."""

    promise_open: str = "<promise>-<topic>"
    promise_close: str = "</topic>"
    span_open: str = "<async>"
    span_close: str = "</async>"
    sync: str = "<sync/>"
    pad: str = "[PAD]"
    mask: str = "<|mask|>"
    # Tokens that end the last planning round. The reference stops only on <|im_end|>; it keeps
    # planning after <|endoftext|> until max_length (reference §7.9), so we stop on both.
    end: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>")
    # Slots per unit of the promised length number: "3" means 30 slots in the released checkpoints.
    span_length_unit: int = 10

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any] | None) -> TagProfile:
        profile = cls()
        if not overrides:
            return profile
        names = {f.name for f in fields(cls)}
        unknown = set(overrides) - names
        if unknown:
            raise CheckpointError(f"unknown plandiff_tags keys {sorted(unknown)}; known: {sorted(names)}")
        values = dict(overrides)
        if "end" in values:
            values["end"] = tuple([values["end"]] if isinstance(values["end"], str) else values["end"])
        return replace(profile, **values)


@dataclass(frozen=True)
class TagVocabulary:
    """Token ids of the control tags and the length digits."""

    promise_open: int
    promise_close: int
    span_open: int
    span_close: int
    sync: int
    pad: int
    mask: int
    end: tuple[int, ...]
    digits: tuple[int, ...]  # ids of "0".."9"
    span_length_unit: int

    @classmethod
    def from_tokenizer(cls, tokenizer, profile: TagProfile | None = None) -> TagVocabulary:
        profile = profile or TagProfile()
        vocab = tokenizer.get_vocab()

        def resolve(name: str, text: str) -> int:
            if text not in vocab:
                raise CheckpointError(
                    f"the tokenizer has no token {text!r} for the {name} tag; set plandiff_tags.{name} "
                    "in config.json if this checkpoint spells it differently"
                )
            return vocab[text]

        digits = []
        for d in range(10):
            ids = tokenizer.encode(str(d), add_special_tokens=False)
            if len(ids) != 1:
                raise CheckpointError(f"digit {d} is not a single token ({ids}); span lengths cannot be read")
            digits.append(ids[0])
        ends = tuple(vocab[t] for t in profile.end if t in vocab)
        if not ends:
            raise CheckpointError(f"the tokenizer has none of the end tokens {profile.end}")
        return cls(
            promise_open=resolve("promise_open", profile.promise_open),
            promise_close=resolve("promise_close", profile.promise_close),
            span_open=resolve("span_open", profile.span_open),
            span_close=resolve("span_close", profile.span_close),
            sync=resolve("sync", profile.sync),
            pad=resolve("pad", profile.pad),
            mask=resolve("mask", profile.mask),
            end=ends,
            digits=tuple(digits),
            span_length_unit=profile.span_length_unit,
        )

    @cached_property
    def structural(self) -> frozenset[int]:
        """Ids that are never ordinary text: every tag, the mask and the end tokens."""
        return frozenset(
            (self.promise_open, self.promise_close, self.span_open, self.span_close,
             self.sync, self.pad, self.mask, *self.end)
        )

    @cached_property
    def not_text(self) -> tuple[int, ...]:
        """The ids a token of plain text may not be: the structural ones but the end tokens (read
        at every step of every autoregressive request)."""
        return tuple(sorted(self.structural - set(self.end)))

    def digit_value(self, token: int) -> int | None:
        try:
            return self.digits.index(token)
        except ValueError:
            return None
