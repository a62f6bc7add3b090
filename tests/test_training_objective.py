"""The hybrid training objective: the training layout is the inference layout, labels skip scaffolds,
slots are noised and predicted through the logit shift, and a few steps of training learn."""

import torch

from plandiff.model import GenerationOptions
from plandiff.model.generation import Phase
from plandiff.model.layout import allowed
from plandiff.model.network import DreamNetwork
from plandiff.model.random_checkpoint import tiny_config
from plandiff.model.training.objective import (
    IGNORE, autoregressive_sequence, concat, diffusion_sequence, loss, make_batch, pack, planned_sequence,
)

PLAN = "<promise>-<topic>alpha 3</topic><promise>-<topic>beta 1</topic><sync/><promise>-<topic>gamma 1</topic><|im_end|>"
ANSWER = ("<promise>-<topic>alpha 3</topic><promise>-<topic>beta 1</topic><async>Alpha is first and fine.</async>"
          "<async>Beta.</async><sync/><promise>-<topic>gamma 1</topic><async>Done.</async>")


def encode(runtime, text):
    return runtime.tokenizer.encode(text, add_special_tokens=False)


def matrix(layout):
    region, epoch = layout.tensors()
    positions = torch.arange(len(region))
    return allowed(positions, region, epoch, positions, region, epoch)


def test_training_layout_is_the_inference_layout(compact):
    prompt = compact.encode_prompt("x")
    for dense in (False, True):
        state = compact.new_state(prompt, GenerationOptions(dense=dense), compact.encode_plan(PLAN))
        compact.run(state)
        assert state.phase is Phase.DONE
        sequence = planned_sequence(prompt, encode(compact, ANSWER), compact.tags.end[0], compact.tags, dense=dense)
        # inference never appends the final end token; everything before it has the same shape
        assert len(sequence.tokens) == len(state.tokens) + 1
        assert torch.equal(matrix(sequence.layout)[:-1, :-1], matrix(state.layout))


def test_labels_and_padding(compact):
    tags, prompt = compact.tags, compact.encode_prompt("x")
    s = planned_sequence(prompt, encode(compact, ANSWER), tags.end[0], tags)
    # each span is padded to its promised slots: 30, 10, 10
    opens = [i for i, t in enumerate(s.tokens) if t == tags.span_open]
    closes = [i for i, t in enumerate(s.tokens) if t == tags.span_close]
    assert [c - o - 1 for o, c in zip(opens, closes)] == [30, 10, 10]
    assert len(s.slots) == 50 and all(s.layout.region[p] >= 0 for p in s.slots)
    # the last plan token of each round predicts the round's stop token, across the scaffold
    first_close = s.tokens.index(tags.promise_close, s.tokens.index(tags.promise_close) + 1)
    assert s.ar_labels[first_close] == tags.sync
    last_close = max(i for i, t in enumerate(s.tokens) if t == tags.promise_close)
    assert s.ar_labels[last_close] == tags.end[0]
    assert all(s.ar_labels[p] == IGNORE for p in s.slots)
    assert s.ar_labels[len(prompt) - 1] == tags.promise_open and s.ar_labels[0] == IGNORE


def test_noise_and_targets(compact):
    tags = compact.tags
    s = planned_sequence(compact.encode_prompt("x"), encode(compact, ANSWER), tags.end[0], tags)
    batch = make_batch(pack([s, s], tags.pad), torch.arange(2), tags.mask, torch.Generator().manual_seed(0))
    masked = batch.targets != IGNORE
    assert masked.any()
    assert (batch.input_ids[masked] == tags.mask).all()
    clean = torch.tensor(s.tokens)
    assert torch.equal(batch.targets[0][masked[0]], clean[masked[0]])
    assert not set(torch.nonzero(masked[0]).flatten().tolist()) - set(s.slots)  # only slots are noised


def test_chunks_packed_apart_and_joined_equal_one_pack(compact):
    """Worker processes pack chunks of different widths; joined, they are the pack of all rows."""
    tags, prompt = compact.tags, compact.encode_prompt("x")
    sequences = [planned_sequence(prompt, encode(compact, ANSWER), tags.end[0], tags),
                 autoregressive_sequence(prompt, encode(compact, "Short."), tags.end[0]),
                 diffusion_sequence(prompt, encode(compact, "Hi."), tags.end[0], tags.pad, 8),
                 autoregressive_sequence(prompt, encode(compact, "A little longer than short."), tags.end[0])]
    whole = pack(sequences, tags.pad)
    joined = concat([pack(sequences[:1], tags.pad), pack(sequences[1:3], tags.pad), pack(sequences[3:], tags.pad)],
                    tags.pad)
    for name in ("tokens", "ar_labels", "region", "epoch", "maskable", "lengths"):
        assert torch.equal(getattr(whole, name), getattr(joined, name)), name


def test_packed_rows_hold_each_sequence_then_padding(compact):
    """pack lays every column out from one flat list: each row holds its sequence, then padding."""
    from plandiff.model.training.objective import _PAD_EPOCH, _PAD_REGION, IGNORE

    tags = compact.tags
    sequences = [autoregressive_sequence(compact.encode_prompt("y"), encode(compact, "Done."), tags.end[0]),
                 planned_sequence(compact.encode_prompt("x"), encode(compact, ANSWER), tags.end[0], tags)]
    packed = pack(sequences, tags.pad)
    width = max(len(s.tokens) for s in sequences)
    for row, s in enumerate(sequences):
        n = len(s.tokens)
        assert packed.lengths[row] == n
        assert packed.tokens[row].tolist() == s.tokens + [tags.pad] * (width - n)
        assert packed.ar_labels[row].tolist() == s.ar_labels + [IGNORE] * (width - n)
        assert packed.region[row].tolist() == s.layout.region + list(range(_PAD_REGION + n, _PAD_REGION + width))
        assert packed.epoch[row].tolist() == s.layout.epoch + [_PAD_EPOCH] * (width - n)
        assert packed.maskable[row].nonzero().flatten().tolist() == sorted(s.slots)
    assert packed.maskable[1].any() and not packed.maskable[0].any()


def test_batch_masks_are_the_layouts_and_hide_padding(compact):
    tags = compact.tags
    long = planned_sequence(compact.encode_prompt("x"), encode(compact, ANSWER), tags.end[0], tags)
    short = autoregressive_sequence(compact.encode_prompt("y"), encode(compact, "Done."), tags.end[0])
    batch = make_batch(pack([short, long], tags.pad), torch.tensor([0, 1]), tags.mask, torch.Generator())
    for row, s in enumerate((short, long)):
        n = len(s.tokens)
        positions = torch.arange(n)
        assert torch.equal(batch.mask[row, :n, :n], allowed(positions, *s.layout.tensors(), positions, *s.layout.tensors()))
        assert not batch.mask[row, :n, n:].any()  # real queries never see padding
        assert batch.mask[row, n:, n:].diagonal().all()  # a padding query sees at least itself
    assert batch.input_ids.shape == (2, len(long.tokens))


def test_a_few_steps_learn_each_mode(compact):
    tags = compact.tags
    torch.manual_seed(0)
    network = DreamNetwork(tiny_config("compact"))
    prompt, answer = compact.encode_prompt("x"), encode(compact, ANSWER)
    plain = encode(compact, "Alpha is first and fine. Beta. Done.")
    sequences = {
        "planned": planned_sequence(prompt, answer, tags.end[0], tags),
        "autoregressive": autoregressive_sequence(prompt, plain, tags.end[0]),
        "diffusion": diffusion_sequence(prompt, plain, tags.end[0], tags.pad, 24),
    }
    for mode, sequence in sequences.items():
        optimizer = torch.optim.AdamW(network.parameters(), lr=3e-3)
        generator = torch.Generator().manual_seed(1)
        data = pack([sequence], tags.pad)
        losses = []
        for _ in range(30):
            batch = make_batch(data, torch.zeros(4, dtype=torch.long), tags.mask, generator)
            value, stats = loss(network, batch)
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            losses.append(float(stats["loss"]))
        assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, (mode, losses)
