"""`plandiff bench attention`: the paged attention kernel's launch configurations timed on a device,
at the steps the engine runs (Qwen2.5-7B's heads: 28 query heads, 4 KV heads, d 128).

Each case is one layer's attention of a step: `requests` requests of `queries` query tokens over
`keys` keys each, read from a KV pool as the engine's holds them (blocks of 16 slots, scattered).
Spans' queries sit in 4 regions (sparse spans of one round) after a causal prefix; one-token
queries are causal. Each configuration is
captured in a CUDA graph of 20 calls (the launches' host cost is not the kernel's) and replayed;
the time is the median replay over 20. The floor: the larger of the keys' and values' bytes over the
copy rate and the q·k and p·v FLOPs of every (query, key) pair over the bf16 matmul rate, both
measured in the run (bench_floors.device_rates).
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys

CASES = {  # name: (requests, queries, keys)
    "plan-1": (1, 1, 400),
    "denoise-128": (1, 128, 520),
    "denoise-256": (1, 256, 640),
    "ar-64": (64, 1, 500),
    "denoise-64x128": (64, 128, 520),
}
HEADS, KV_HEADS, D = 28, 4, 128
CALLS = 20


def case_inputs(requests: int, queries: int, keys: int, device):
    """q, the pool and the layouts of one case (paged_attention's arguments), blocks of slots at random."""
    import torch

    from plandiff.model.kv_pool import BLOCK, slot_map
    from plandiff.model.layout import CAUSAL

    gen = torch.Generator(device="cpu").manual_seed(0)
    blocks = -(-keys // BLOCK)  # each request's keys in whole blocks, as the engine's pool holds them
    slots = requests * blocks * BLOCK
    pool_k = torch.randn(KV_HEADS, slots, D, generator=gen).to(device, torch.bfloat16)
    pool_v = torch.randn(KV_HEADS, slots, D, generator=gen).to(device, torch.bfloat16)
    q = torch.randn(HEADS, requests * queries, D, generator=gen).to(device, torch.bfloat16)
    order = torch.randperm(requests * blocks, generator=gen).view(requests, blocks)  # blocks scattered
    read = torch.stack([slot_map(row.tolist())[:keys] for row in order])
    key_region = torch.full((requests, keys), CAUSAL)
    positions = torch.arange(keys - queries, keys).expand(requests, queries)
    query_region = torch.full((requests, queries), CAUSAL)
    if queries > 1:  # four sparse spans at the end of the keys, the queries their slots
        span = torch.arange(queries) * 4 // queries
        key_region[:, keys - queries:] = span
        query_region[:] = span
    query = torch.stack((positions, query_region, torch.zeros_like(positions)))
    key_layout = torch.stack((key_region, torch.zeros_like(key_region)))
    lengths = torch.full((requests,), keys)
    return [t.to(device) for t in (q, pool_k, pool_v)] + [requests * queries] + [
        t.to(device) for t in (read, query, key_layout, lengths)] + [None]


def time_config(args, config, device) -> float:
    """Median seconds of one call of the kernel with `config`, from CUDA-graph replays."""
    import torch

    from plandiff.model.paged_attention import paged_attention

    for _ in range(2):  # compile, then warm
        paged_attention(*args, config=config)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS):
            paged_attention(*args, config=config)
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / CALLS)
    return statistics.median(times)


def run_bench_attention(device: str, cases: list[str], json_path: str | None = None) -> int:
    import torch

    from plandiff.model.paged_attention import KernelConfig, default_config

    from .bench_floors import device_rates

    if not device.startswith("cuda") or not torch.cuda.is_available():
        print("plandiff bench attention: needs a CUDA device (the kernel is Triton's)", file=sys.stderr)
        return 2
    device = torch.device(device)
    copy_rate, matmul_rate = device_rates(device, torch.bfloat16)
    configs = [KernelConfig(m, n, w, s) for m, n, w, s in itertools.product((16, 64, 128), (32, 64, 128),
                                                                             (4, 8), (2, 3))]
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}; copy {copy_rate / 1e12:.2f} TB/s, "
          f"bf16 matmul {matmul_rate / 1e12:.0f} TFLOP/s; µs per call of one layer")
    report = []
    for name in cases:
        requests, queries, keys = CASES[name]
        args = case_inputs(requests, queries, keys, device)
        default = default_config(queries, HEADS // KV_HEADS)
        floor = max(2 * KV_HEADS * keys * D * 2 * requests / copy_rate,
                    4 * HEADS * queries * keys * D * requests / matmul_rate)
        timed = {}
        for config in [default] + [c for c in configs if c != default]:
            print(f"bench attention: {name} {tuple(config)}", file=sys.stderr, flush=True)
            try:
                timed[config] = time_config(args, config, device)
            except Exception as error:  # a configuration the device cannot hold (shared memory)
                print(f"bench attention: {name} {tuple(config)} failed: {type(error).__name__}", file=sys.stderr)
        best = min(timed, key=timed.get)
        print(f"{name:16s} default {tuple(default)} {timed[default] * 1e6:8.1f}   best {tuple(best)} "
              f"{timed[best] * 1e6:8.1f}   floor {floor * 1e6:6.1f}")
        report.append({"case": name, "requests": requests, "queries": queries, "keys": keys, "floor_s": floor,
                       "default": list(default), "times_s": [[list(c), t] for c, t in timed.items()]})
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=1)
    return 0
