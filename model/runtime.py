"""One loaded checkpoint, and the single-request driver of the generation state machine."""

from __future__ import annotations

from pathlib import Path

import torch

from .generation import Forward, LogitsProcessor, Phase, RequestState
from .loading import Checkpoint, load_checkpoint
from .network import KVCache
from .options import GenerationOptions
from .layout import mask_rows
from .result import GenerationResult, RoundResult, SpanResult, Usage, strip_tags

DEFAULT_SYSTEM = "You are a helpful assistant."


class ModelRuntime:
    """A checkpoint ready to generate: network, tokenizer and control tags."""

    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint = checkpoint
        self.network = checkpoint.network
        self.tokenizer = checkpoint.tokenizer
        self.tags = checkpoint.tags

    @classmethod
    def load(cls, folder: str | Path, dtype: str | None = None, device: str = "cpu") -> ModelRuntime:
        return cls(load_checkpoint(folder, dtype=dtype, device=device))

    # ------------------------------------------------------------------ prompts and plans

    def encode_prompt(self, prompt: str, system: str | None = DEFAULT_SYSTEM) -> list[int]:
        """The chat prompt as the checkpoints were trained on it: ChatML with a system message."""
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        return self.tokenizer.encode(prompt, add_special_tokens=False)

    def encode_plan(self, plan: str) -> list[list[int]]:
        """A forced plan written as text ("<promise>-<topic>Intro 3</topic><sync/>…<|im_end|>"),
        split into rounds after each <sync/>."""
        ids = self.tokenizer.encode(plan, add_special_tokens=False)
        rounds, current = [], []
        for token in ids:
            current.append(token)
            if token == self.tags.sync:
                rounds.append(current)
                current = []
        if current:
            rounds.append(current)
        return rounds

    # ------------------------------------------------------------------ running

    def new_state(
        self,
        prompt_ids: list[int],
        options: GenerationOptions | None = None,
        plan: list[list[int]] | None = None,
        logits_processor: LogitsProcessor | None = None,
    ) -> RequestState:
        return RequestState(
            prompt_ids, options or GenerationOptions(), self.tags,
            max_positions=self.checkpoint.config.max_position_embeddings,
            dense_default=self.checkpoint.config.disable_block_sparsity,
            plan=plan, logits_processor=logits_processor,
        )

    def forward(self, state: RequestState, forward: Forward, cache: KVCache) -> torch.Tensor:
        """Run one scheduled forward of `state`; return the logits of its logit positions."""
        device = self.network.device
        positions = torch.tensor(forward.positions, device=device)
        ids = torch.tensor([state.tokens[p] for p in forward.positions], device=device)
        mask = mask_rows(state.layout, positions, forward.key_length)
        hidden = self.network(ids, positions, mask, cache)
        row = {p: i for i, p in enumerate(forward.positions)}
        rows = torch.tensor([row[p] for p in forward.logit_positions], device=device, dtype=torch.long)
        return self.network.logits(hidden[rows]).cpu()

    def run(self, state: RequestState) -> RequestState:
        """Drive one request to the end, alone."""
        cache = self.network.new_cache(len(state.tokens) + 64)
        while state.phase is not Phase.DONE:
            forward = state.schedule()
            if forward.fresh_cache:
                cache = self.network.new_cache(forward.key_length)
            state.advance(forward, self.forward(state, forward, cache))
        return state

    def generate(
        self,
        prompt: str | list[int],
        options: GenerationOptions | None = None,
        plan: str | list[list[int]] | None = None,
        logits_processor: LogitsProcessor | None = None,
    ) -> GenerationResult:
        """Generate an answer. `prompt` is user text (wrapped in the chat template) or token ids;
        `plan` forces the planner's tokens (text or ids per round); the engine fills the spans."""
        prompt_ids = self.encode_prompt(prompt) if isinstance(prompt, str) else list(prompt)
        if isinstance(plan, str):
            plan = self.encode_plan(plan)
        state = self.run(self.new_state(prompt_ids, options, plan, logits_processor))
        return self.result(state)

    # ------------------------------------------------------------------ results

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
                    clamped=s.clamped, token_ids=content,
                    text=decode([t for t in content if t != self.tags.pad]).strip(),
                ))
            plan_end = r.plan_end if r.plan_end >= 0 else len(state.tokens)
            plan_ids = state.tokens[r.plan_start:plan_end] if state.options.mode != "diffusion" else []
            rounds.append(RoundResult(r.index, plan_ids, r.stop, spans, r.plan_forwards, r.denoise_steps))
        span_tokens = sum(len(s.token_ids) for r in rounds for s in r.spans)
        if state.options.mode == "diffusion":
            generated = _cut_at_end(generated, self.tags.end)
            text = decode([t for t in generated if t != self.tags.pad], skip_special_tokens=False)
        else:
            text = decode(generated, skip_special_tokens=False)
        usage = Usage(
            prompt_tokens=state.prompt_length,
            generated_tokens=len(generated),
            forward_passes=state.forwards,
            plan_tokens=sum(len(r.plan_ids) for r in rounds),
            span_tokens=span_tokens,
            steps_per_round=[r.denoise_steps for r in rounds],
        )
        return GenerationResult(
            text=strip_tags(text, self.checkpoint.profile),
            token_ids=generated,
            prompt_ids=state.tokens[: state.prompt_length],
            rounds=rounds,
            usage=usage,
            finish_reason=state.finish_reason,
            fallback=state.fallback,
        )


def _cut_at_end(ids: list[int], ends: tuple[int, ...]) -> list[int]:
    for i, t in enumerate(ids):
        if t in ends:
            return ids[:i]
    return ids
