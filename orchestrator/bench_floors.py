"""The floors a benchmark measures steps against, measured on the device itself (not taken from a
data sheet): the copy rate (bytes read + written by a large device copy) and the rate of a large
matmul in the network's dtype. The weight-read floor of a forward is the weight bytes over the copy
rate; the compute floor of a step is 2 × parameters × tokens (plus the head's rows) over the matmul
rate; a step's roofline is the larger of the two. `plandiff bench engine` and `bench attention`."""

from __future__ import annotations

import time


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_rates(device, dtype) -> tuple[float, float]:
    """This device's copy rate (bytes read + written per second by a large copy) and the rate of a
    large matmul in `dtype` (FLOP/s)."""
    import torch

    size = (1 << 30) if device.type == "cuda" else (1 << 26)
    src = torch.empty(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    n = 256 if device.type == "cuda" else 32
    a = torch.randn(n * 32, n * 32, device=device, dtype=dtype)
    b = torch.randn_like(a)

    def best(fn, reps=10):
        fn()
        sync(device)
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - start)
        return min(times)

    copy = best(lambda: dst.copy_(src))
    matmul = best(lambda: a @ b)
    return 2 * size / copy, 2 * (n * 32) ** 3 / matmul


def floors(network) -> dict:
    """The device's rates (device_rates, in the network's dtype) and the weight bytes they give
    floors for."""
    params = sum(p.numel() for p in network.parameters())
    embed = network.model.embed_tokens.weight.numel()
    head = network.lm_head.weight.numel()
    weight_bytes = sum(p.numel() * p.element_size() for p in network.parameters()) - embed * network.dtype.itemsize
    copy_rate, matmul_rate = device_rates(network.device, network.dtype)
    return {
        "parameters": params, "matmul_parameters": params - embed - head, "head_parameters": head,
        "weight_bytes_read_per_forward": weight_bytes,  # every matrix but the embedding (rows are gathered)
        "copy_rate_bytes_per_s": copy_rate, "matmul_flops_per_s": matmul_rate,
    }


def roofline(f: dict, tokens: int, logit_rows: int) -> dict:
    weight = f["weight_bytes_read_per_forward"] / f["copy_rate_bytes_per_s"]
    compute = 2 * (f["matmul_parameters"] * tokens + f["head_parameters"] * logit_rows) / f["matmul_flops_per_s"]
    return {"weight_floor_s": weight, "compute_floor_s": compute, "floor_s": max(weight, compute)}
