"""Text in and out: chat prompts, forced plans, and results, from a tokenizer and its control tags.

Loads without the network (`TextCodec.load`), so a control plane can encode and decode cheaply.
User text never turns into control tags: message contents are tokenized with the tokenizer's own
model but without matching added tokens, so a prompt that contains ``<sync/>`` or ``<|mask|>``
reaches the model as the characters it holds.
"""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerBase

from .generation import RequestState
from .loading import load_tokenizer, read_config
from .result import GenerationResult, RoundResult, SpanResult, Usage, strip_tags
from .tags import TagProfile, TagVocabulary

DEFAULT_SYSTEM = "You are a helpful assistant."


class TextCodec:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, profile: TagProfile, tags: TagVocabulary):
        self.tokenizer = tokenizer
        self.profile = profile
        self.tags = tags
        self._pieces: dict[bool, list[list[int]]] = {}

    @classmethod
    def load(cls, folder: str | Path) -> TextCodec:
        folder = Path(folder)
        config = read_config(folder)
        tokenizer = load_tokenizer(folder)
        profile = TagProfile.from_overrides(config.plandiff_tags)
        return cls(tokenizer, profile, TagVocabulary.from_tokenizer(tokenizer, profile))

    # ------------------------------------------------------------------ in

    def encode_text(self, text: str) -> list[int]:
        """Token ids of plain text: the tokenizer's normalizer, pre-tokenizer and model, but no
        added-token matching, so no tag can come out of it."""
        backend = self.tokenizer.backend_tokenizer
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        pieces = backend.pre_tokenizer.pre_tokenize_str(text) if backend.pre_tokenizer else [(text, None)]
        return [token.id for piece, _ in pieces for token in backend.model.tokenize(piece)]

    def encode_prompt(self, prompt: str, system: str | None = DEFAULT_SYSTEM) -> list[int]:
        """The chat prompt as the checkpoints were trained on it (ChatML with a system message). The
        template's own tokens are matched as tags; the messages' contents are plain text."""
        if not getattr(self.tokenizer, "chat_template", None):
            return self.encode_text(prompt)
        contents = ([system] if system else []) + [prompt]
        pieces = self._template_pieces(bool(system))
        ids: list[int] = []
        for piece, content in zip(pieces, contents):
            ids += piece + self.encode_text(content)
        return ids + pieces[-1]

    def _template_pieces(self, with_system: bool) -> list[list[int]]:
        """The chat template's token ids around each message (rendered once with placeholder
        contents: the template is the same for every prompt, the contents are plain text)."""
        if with_system not in self._pieces:
            roles = (["system"] if with_system else []) + ["user"]
            markers = [f"\x00{i}\x00" for i in range(len(roles))]
            rendered = self.tokenizer.apply_chat_template(
                [{"role": role, "content": marker} for role, marker in zip(roles, markers)],
                add_generation_prompt=True, tokenize=False,
            )
            pieces = []
            for marker in markers:
                before, rendered = rendered.split(marker, 1)
                pieces.append(self.tokenizer.encode(before, add_special_tokens=False))
            self._pieces[with_system] = [*pieces, self.tokenizer.encode(rendered, add_special_tokens=False)]
        return self._pieces[with_system]

    def encode_plan(self, plan: str) -> list[list[int]]:
        """A forced plan written as text ("<promise>-<topic>Intro 3</topic><sync/>…<|im_end|>"),
        split into rounds after each <sync/>."""
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
            rounds.append(RoundResult(r.index, plan_ids, r.stop, spans, r.plan_forwards, r.denoise_steps))
        if state.options.mode == "diffusion":
            generated = _cut_at_end(generated, self.tags.end)
            text = self.text([t for t in generated if t != self.tags.pad])
        else:
            text = self.text(generated)
        usage = Usage(
            prompt_tokens=state.prompt_length,
            generated_tokens=len(generated),
            forward_passes=state.forwards,
            plan_tokens=sum(len(r.plan_ids) for r in rounds),
            span_tokens=sum(len(s.token_ids) for r in rounds for s in r.spans),
            steps_per_round=[r.denoise_steps for r in rounds],
            retries=state.retries,
        )
        return GenerationResult(
            text=text, token_ids=generated, prompt_ids=state.tokens[: state.prompt_length], rounds=rounds,
            usage=usage, finish_reason=state.finish_reason, fallback=state.fallback,
        )


def _cut_at_end(ids: list[int], ends: tuple[int, ...]) -> list[int]:
    for i, t in enumerate(ids):
        if t in ends:
            return ids[:i]
    return ids
