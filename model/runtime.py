"""One loaded checkpoint, and the single-request driver of the generation state machine (through
the model runner's step, the one the workers' engine uses for many requests)."""

from __future__ import annotations

from pathlib import Path

from .codec import DEFAULT_SYSTEM, TextCodec
from .generation import LogitsProcessor, Phase, RequestState
from .loading import Checkpoint, load_checkpoint
from .kv_pool import KVPool
from .model_runner import ModelRunner
from .options import GenerationOptions
from .result import GenerationResult


class ModelRuntime:
    """A checkpoint ready to generate: network, tokenizer and control tags."""

    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint = checkpoint
        self.network = checkpoint.network
        self.tokenizer = checkpoint.tokenizer
        self.tags = checkpoint.tags
        self.codec = TextCodec(checkpoint.tokenizer, checkpoint.profile, checkpoint.tags,
                               checkpoint.config.vocab_size, checkpoint.config.max_position_embeddings)
        self._runner: ModelRunner | None = None
        self.device_share = 1.0  # the share of the device this runtime's KV pool may take (KVPool.for_network)

    @classmethod
    def load(cls, folder: str | Path, dtype: str | None = None, device: str = "cpu",
             device_share: float = 1.0) -> ModelRuntime:
        runtime = cls(load_checkpoint(folder, dtype=dtype, device=device))
        runtime.device_share = device_share
        return runtime

    # ------------------------------------------------------------------ prompts and plans

    def encode_prompt(self, prompt: str, system: str | None = DEFAULT_SYSTEM) -> list[int]:
        return self.codec.encode_prompt(prompt, system)

    def encode_plan(self, plan: str) -> list[list[int]]:
        return self.codec.encode_plan(plan)

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
            vocab_size=self.checkpoint.config.vocab_size,
            dense_default=self.checkpoint.config.disable_block_sparsity,
            plan=plan, logits_processor=logits_processor,
        )

    @property
    def runner(self) -> ModelRunner:
        """The model runner (and its KV pool) of this runtime, made on first use."""
        if self._runner is None:
            self._runner = ModelRunner(self.network, KVPool.for_network(self.network, device_share=self.device_share))
        return self._runner

    def run(self, state: RequestState) -> RequestState:
        """Drive one request to the end, alone: the model runner's step, one request per step."""
        seq = self.runner.admit(state)
        if seq is None:
            raise RuntimeError("the KV pool is held by other requests; drive concurrent requests through an engine")
        try:
            step = self.runner.launch([seq])
            while True:  # the next token's step launched ahead where it can be (ModelRunner.launch_ahead)
                ahead = self.runner.launch_ahead(step)
                error, = self.runner.finish(step)
                if error is not None:
                    raise error
                if state.phase is Phase.DONE:
                    break
                if ahead is not None and self.runner.void_ahead(ahead):
                    self.runner.finish(ahead)  # nothing to advance; waited for, so its step buffer is free
                    ahead = None
                step = ahead or self.runner.launch([seq])
        finally:
            self.runner.release(seq)
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

    def result(self, state: RequestState) -> GenerationResult:
        return self.codec.result(state)
