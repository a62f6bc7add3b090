"""Text in and out: chat prompts, forced plans, and results, from a tokenizer and its control tags.

Loads without the network (`TextCodec.load`), so a control plane can encode and decode cheaply.
User text never turns into control tags: message contents are tokenized with the tokenizer's own
model but without matching added tokens, so a prompt that contains ``<sync/>`` or ``<|mask|>``
reaches the model as the characters it holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .checkpoint_folder import load_tokenizer, read_config
from .errors import InvalidRequestError
from .result import GenerationResult, RoundResult, SpanResult, Usage, strip_tags
from .tags import TagProfile, TagVocabulary

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from .generation import RequestState

DEFAULT_SYSTEM = "You are a helpful assistant."


class TextCodec:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, profile: TagProfile, tags: TagVocabulary,
                 vocab_size: int | None = None, max_positions: int | None = None):
        self.tokenizer = tokenizer
        self.profile = profile
        self.tags = tags
        self.vocab_size = vocab_size  # the network's, which may exceed the tokenizer's
        self.max_positions = max_positions
        self._pieces: dict[tuple[str, ...], list[list[int]]] = {}

    @classmethod
    def load(cls, folder: str | Path) -> TextCodec:
        folder = Path(folder)
        config = read_config(folder)
        tokenizer = load_tokenizer(folder)
        profile = TagProfile.from_overrides(config.plandiff_tags)
        return cls(tokenizer, profile, TagVocabulary.from_tokenizer(tokenizer, profile), config.vocab_size,
                   config.max_position_embeddings)

    # ------------------------------------------------------------------ in

    def encode_text(self, text: str) -> list[int]:
        """Token ids of plain text: the tokenizer's normalizer, pre-tokenizer and model, but no
        added-token matching, so no tag can come out of it."""
        check_text(text)
        backend = self.tokenizer.backend_tokenizer
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        pieces = backend.pre_tokenizer.pre_tokenize_str(text) if backend.pre_tokenizer else [(text, None)]
        return [token.id for piece, _ in pieces for token in backend.model.tokenize(piece)]

    def encode_texts(self, texts: list[str]) -> list[list[int]]:
        """`encode_text` of many texts: one batch call of the tokenizer for those that hold no added
        token (the batch call would match it as a tag; without one, its ids are the same), and
        `encode_text` for the others. Training encodes millions of prompts."""
        for text in texts:
            check_text(text)
        backend = self.tokenizer.backend_tokenizer
        added = [token.content for token in backend.get_added_tokens_decoder().values()]
        normalize = backend.normalizer.normalize_str if backend.normalizer is not None else str

        def plain(text: str) -> bool:
            return not any(a in text for a in added) and not any(a in normalize(text) for a in added)

        encoded = backend.encode_batch(texts, add_special_tokens=False)
        return [e.ids if plain(text) else self.encode_text(text) for text, e in zip(texts, encoded)]

    def encode_prompt(self, prompt: str, system: str | None = DEFAULT_SYSTEM) -> list[int]:
        """The chat prompt as the checkpoints were trained on it (ChatML with a system message). The
        template's own tokens are matched as tags; the messages' contents are plain text."""
        if not prompt:
            raise InvalidRequestError("the prompt is empty", field="prompt")
        messages = ([("system", system)] if system else []) + [("user", prompt)]
        return self.encode_chat(messages)

    def encode_prompts(self, prompts: list[str], system: str | None = DEFAULT_SYSTEM) -> list[list[int]]:
        """`encode_prompt` of many prompts, their contents encoded in one batch (encode_texts)."""
        if not all(prompts):
            raise InvalidRequestError("the prompt is empty", field="prompt")
        if not getattr(self.tokenizer, "chat_template", None):
            return self.encode_texts([f"{system}\n{p}" if system else p for p in prompts])
        pieces = self._template_pieces(("system", "user") if system else ("user",))
        head = pieces[0] + self.encode_text(system) + pieces[1] if system else pieces[0]
        return [head + ids + pieces[-1] for ids in self.encode_texts(prompts)]

    def encode_chat(self, messages: list[tuple[str, str]]) -> list[int]:
        """A conversation of (role, content) pairs, rendered by the checkpoint's chat template with a
        generation prompt; a tokenizer without a template gets the contents joined by newlines."""
        if not getattr(self.tokenizer, "chat_template", None):
            return self.encode_text("\n".join(content for _, content in messages))
        roles = tuple(role for role, _ in messages)
        pieces = self._template_pieces(roles)
        ids: list[int] = []
        for piece, (_, content) in zip(pieces, messages):
            ids += piece + self.encode_text(content)
        return ids + pieces[-1]

    def _template_pieces(self, roles: tuple[str, ...]) -> list[list[int]]:
        """The chat template's token ids around each message (rendered once per sequence of roles with
        placeholder contents: the template's own text is the same whatever the contents, which stay
        plain text)."""
        if roles not in self._pieces:
            markers = [f"\x00{i}\x00" for i in range(len(roles))]
            rendered = self.tokenizer.apply_chat_template(
                [{"role": role, "content": marker} for role, marker in zip(roles, markers)],
                add_generation_prompt=True, tokenize=False,
            )
            pieces = []
            for marker in markers:
                before, rendered = rendered.split(marker, 1)
                pieces.append(self.tokenizer.encode(before, add_special_tokens=False))
            self._pieces[roles] = [*pieces, self.tokenizer.encode(rendered, add_special_tokens=False)]
        return self._pieces[roles]

    def encode_plan(self, plan: str) -> list[list[int]]:
        """A forced plan written as text ("<promise>-<topic>Intro 3</topic><sync/>…<|im_end|>"),
        split into rounds after each <sync/>."""
        check_text(plan, "plan")
        if not plan.strip():
            raise InvalidRequestError("the forced plan is empty", field="plan")
        rounds, current = [], []
        for token in self.tokenizer.encode(plan, add_special_tokens=False):
            current.append(token)
            if token == self.tags.sync:
                rounds.append(current)
                current = []
        return rounds + [current] if current else rounds

    # ------------------------------------------------------------------ out

    def text(self, generated: list[int]) -> str:
        """The answer's text from generated ids: tags and pads stripped (reference §2.4)."""
        return strip_tags(self.tokenizer.decode(generated, skip_special_tokens=False), self.profile)

    def result(self, state: RequestState) -> GenerationResult:
        decode = self.tokenizer.decode
        generated = state.tokens[state.prompt_length:]
        rounds = []
        for r in state.rounds:
            spans = []
            for s in r.spans:
                if s.start < 0:  # promised but never placed (the answer ran out of room)
                    continue
                content = state.tokens[s.start + 1: s.end - 1]
                spans.append(SpanResult(
                    round=s.round, index=s.index, topic=decode(list(s.topic_ids)).strip(), length=s.length,
                    clamped=s.clamped, retries=s.retries, token_ids=content,
                    text=decode([t for t in content if t != self.tags.pad]).strip(),
                ))
            plan_end = r.plan_end if r.plan_end >= 0 else len(state.tokens)
            plan_ids = state.tokens[r.plan_start:plan_end] if state.options.mode != "diffusion" else []
            rounds.append(RoundResult(r.index, plan_ids, r.stop, spans, r.plan_forwards, r.denoise_steps, r.replans))
        if state.options.mode == "diffusion":
            generated = _cut_at_end(generated, self.tags.end)
            text = self.text([t for t in generated if t != self.tags.pad])
        else:
            text = self.text(generated)
        usage = Usage(
            prompt_tokens=state.prompt_length,
            generated_tokens=len(generated),
            critical_path=state.forwards,
            plan_tokens=sum(len(r.plan_ids) for r in rounds),
            span_tokens=sum(len(s.token_ids) for r in rounds for s in r.spans),
            steps_per_round=[r.denoise_steps for r in rounds],
            retries=state.retries,
            replans=state.replans,
        )
        return GenerationResult(
            text=text, token_ids=generated, prompt_ids=state.tokens[: state.prompt_length], rounds=rounds,
            usage=usage, finish_reason=state.finish_reason, fallback=state.fallback,
        )


def check_text(text: str, field: str = "prompt") -> None:
    """Text must be valid Unicode that UTF-8 can hold: a lone surrogate (from bytes decoded with
    surrogateescape, or a broken JSON escape) cannot be tokenized."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidRequestError(f"{field} is not valid UTF-8 text: {err.reason} at character {err.start}",
                                  field=field) from None


def _cut_at_end(ids: list[int], ends: tuple[int, ...]) -> list[int]:
    for i, t in enumerate(ids):
        if t in ends:
            return ids[:i]
    return ids
