"""Training rows delivered in chunks while the model trains (model/training/rows.py)."""

import pytest
import torch

from plandiff.model.training.objective import IGNORE, Packed
from plandiff.model.training.rows import LENGTH_STEP, Rows

PAD = 0


def chunk(first: int, n: int, width: int, lengths: torch.Tensor | None = None) -> Packed:
    """Rows first…first+n−1 of a stream; row i holds the token i+1 over its length (1 + i % width,
    unless given)."""
    ids = torch.arange(first, first + n)
    lengths = 1 + ids % width if lengths is None else lengths
    tokens = torch.where(torch.arange(width) < lengths[:, None], ids[:, None] + 1, PAD).int()
    return Packed(tokens, torch.full_like(tokens, IGNORE), torch.zeros_like(tokens), torch.zeros_like(tokens),
                  torch.zeros_like(tokens, dtype=torch.bool), lengths)


def stream(sizes: list[int], widths: list[int] | None = None, delivered: list | None = None):
    first = 0
    for k, n in enumerate(sizes):
        if delivered is not None:
            delivered.append(k)
        yield chunk(first, n, (widths or [7] * len(sizes))[k])
        first += n


def take(rows: Rows, size: int, picker: torch.Generator) -> list[int]:
    data, index, length = rows.batch(size, picker)
    assert int(data.lengths[index].max()) <= length <= data.tokens.shape[1]
    return (data.tokens[index, 0] - 1).tolist()


def test_the_first_pass_takes_rows_in_stream_order_across_chunks_of_any_width():
    rows = Rows(stream([5, 3, 9, 4], widths=[4, 9, 6, 3]), PAD, "cpu", keep=False)
    picker = torch.Generator().manual_seed(0)
    batches = [take(rows, 4, picker) for _ in range(5)]
    assert batches == [list(range(s * 4, s * 4 + 4)) for s in range(5)]
    assert rows.rows == 21
    with pytest.raises(RuntimeError, match="ran out after 21 rows"):
        take(rows, 4, picker)  # one row left: not a batch, and nothing kept for another pass


def test_a_chunk_is_only_asked_for_when_the_rows_so_far_are_used():
    delivered = []
    rows = Rows(stream([6, 6, 6], delivered=delivered), PAD, "cpu")
    picker = torch.Generator()
    take(rows, 4, picker)
    assert delivered == [0]
    take(rows, 4, picker)  # rows 4–7: needs the second chunk
    assert delivered == [0, 1]
    take(rows, 4, picker)
    assert delivered == [0, 1]


def test_skipping_k_batches_gives_the_batches_after_step_k():
    """A model adapted from a checkpoint at step k, skipping k × B rows, trains on the batches its
    twin trained on after step k, whatever the chunking."""
    picker = torch.Generator()
    twin = Rows(stream([10, 10, 10]), PAD, "cpu")
    twin_batches = [take(twin, 3, picker) for _ in range(9)]
    adapted = Rows(stream([10, 10, 10]), PAD, "cpu", skip=4 * 3)
    assert [take(adapted, 3, picker) for _ in range(5)] == twin_batches[4:]


def test_later_passes_shuffle_every_row_kept():
    rows = Rows(stream([4, 3]), PAD, "cpu")
    picker = torch.Generator().manual_seed(1)
    first = take(rows, 3, picker) + take(rows, 3, picker)
    assert first == list(range(6))
    shuffled = take(rows, 3, picker) + take(rows, 3, picker)
    assert len(set(shuffled)) == 6 and set(shuffled) <= set(range(7)) and shuffled != list(range(6))


def test_no_rows_is_a_clear_error():
    with pytest.raises(RuntimeError, match="no training rows"):
        Rows(iter([]), PAD, "cpu").batch(2, torch.Generator())


def test_a_skipping_stream_continues_where_the_other_left_off(monkeypatch):
    """The recipe's shard arithmetic: skipping 13 examples of a stream of shards gives rows 13… of
    the stream that skips none (shards of 10 here; 10,000 in a run)."""
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from plandiff.model.checkpoint_folder import load_tokenizer
    from plandiff.model.training import recipe
    from plandiff.model.training.trainer import TrainConfig

    monkeypatch.setattr(recipe, "SHARD", 10)
    tokenizer = load_tokenizer(Path("model/demo/ar"))
    config = TrainConfig(mode="autoregressive")

    def stream_rows(pool, skip: int, train: int) -> list[list[int]]:
        skipped, chunks = recipe.training_chunks(pool, recipe.DataConfig(train=train, skip=skip), config, tokenizer)
        rows, out = Rows(chunks, PAD, "cpu", skip=skipped, keep=False), []
        for _ in range(train // 4):
            data, index, _ = rows.batch(4, torch.Generator())
            out += [row[:n] for row, n in zip(data.tokens[index].tolist(), data.lengths[index].tolist())]
        return out

    with ThreadPoolExecutor(2) as pool:
        assert stream_rows(pool, 13, 20) == stream_rows(pool, 0, 36)[13:33]


def test_batches_grouped_by_length_take_every_row_once_and_pad_less():
    """Each window of `group` batches is sorted by length: its batches' lengths do not overlap, every
    row is used once a pass, the padded tokens fall against batches taken in stream order, and a
    grouped batch is padded to a multiple of LENGTH_STEP (few shapes for the compiled step)."""
    lengths = torch.randint(1, 300, (80,), generator=torch.Generator().manual_seed(0))

    def padded(group: int) -> tuple[list[list[int]], int]:
        rows = Rows(iter([chunk(0, 40, 300, lengths[:40]), chunk(40, 40, 300, lengths[40:])]), PAD, "cpu",
                    keep=False, group=group)
        out, tokens, picker = [], 0, torch.Generator().manual_seed(0)
        for _ in range(16):
            data, index, length = rows.batch(5, picker)
            out.append((data.tokens[index, 0] - 1).tolist())
            tokens += length * 5
            assert length == int(data.lengths[index].max()) or group > 1 and (
                length % LENGTH_STEP == 0 or length == data.tokens.shape[1])  # rounded up, within the data
        return out, tokens

    grouped, grouped_tokens = padded(4)
    plain, plain_tokens = padded(1)
    assert sorted(r for b in grouped for r in b) == list(range(80))
    for w in range(4):  # the stream's rows 20w … 20w + 19
        window = grouped[4 * w:4 * w + 4]
        assert sorted(r for b in window for r in b) == list(range(20 * w, 20 * w + 20))
        ranges = sorted((int(lengths[b].min()), int(lengths[b].max())) for b in window)
        assert all(high <= low for (_, high), (low, _) in zip(ranges, ranges[1:]))
    assert grouped != plain and grouped_tokens < 0.8 * plain_tokens


def test_grouped_batches_after_a_skip_of_whole_windows_are_the_twin_s():
    picker = torch.Generator()
    twin = Rows(stream([10, 10, 10]), PAD, "cpu", group=2)
    twin_batches = [take(twin, 3, picker) for _ in range(10)]
    adapted = Rows(stream([10, 10, 10]), PAD, "cpu", skip=4 * 3, group=2)
    assert [take(adapted, 3, picker) for _ in range(6)] == twin_batches[4:]


def test_later_passes_group_by_length_too():
    rows = Rows(stream([6, 6]), PAD, "cpu", group=2)
    picker = torch.Generator().manual_seed(3)
    passes = [[take(rows, 3, picker) for _ in range(4)] for _ in range(3)]
    for batches in passes:
        assert sorted(r for b in batches for r in b) == list(range(12))
