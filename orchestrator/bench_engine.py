"""`plandiff bench engine`: the batched engine against the device's floors, measured in one run.

Floors: measured in the same run (bench_floors.py: weight bytes over the copy rate, FLOPs over the
matmul rate in the network's dtype, bf16 on the GPU).

Sections: (1) batch-1 steps (planning, denoising with the plan's live tokens, a 256-token
denoising step); (2) batch-1 end to end, PD against plandiff's own autoregressive mode on the same
answer length; (3) a batched PD denoising step of many requests; (4) requests at several
concurrencies through the orchestrator on one in-process worker: aggregate tokens/s, p50/p99
latency (bench_concurrency.py); (5) what the KV pool holds. `--shape qwen2.5-7b` builds a Qwen2.5-7B-shaped Dream network
with random weights directly on the device (no checkpoint on disk); the head's rows for the tags and
specials are zero, so a random planner never ends an answer early and forced plans decide the rest.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time

from .bench_floors import floors, roofline, sync

# Each shape with its tokenizer layout (random_checkpoint.py): the 7B shape has Dream's 152,064-row
# vocabulary (its head is part of what a step costs); "small", a CPU run's, the compact 272 rows
# (with Dream's, the CPU's logits and decisions at 64 requests took gigabytes and most of the time).
SHAPES = {
    "qwen2.5-7b": ("dream", dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                 num_attention_heads=28, num_key_value_heads=4, rope_theta=1e6)),
    "small": ("compact", dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
                              num_key_value_heads=2)),
}


def say(message: str) -> None:
    """Progress on stderr (a run takes minutes; the table and JSON come at the end, on stdout)."""
    print(f"bench engine: {message}", file=sys.stderr, flush=True)


def random_runtime(shape: str, device: str, dtype: str):
    """A ModelRuntime of random weights of `shape` made on `device` (byte tokenizer)."""
    import torch

    from plandiff.model.loading import Checkpoint
    from plandiff.model.network import DreamNetwork
    from plandiff.model.random_checkpoint import build_tokenizer, tiny_config
    from plandiff.model.runtime import ModelRuntime
    from plandiff.model.tags import TagProfile, TagVocabulary

    layout, sizes = SHAPES[shape]
    config = tiny_config(layout, max_position_embeddings=32768, torch_dtype=dtype, **sizes)
    torch_dtype = getattr(torch, dtype)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)
    try:
        with torch.device(device):
            network = DreamNetwork(config)
    finally:
        torch.set_default_dtype(previous)
    tokenizer = build_tokenizer(layout)
    with torch.no_grad():  # the specials and tags are the vocabulary's last rows in both layouts
        network.lm_head.weight[tokenizer.convert_tokens_to_ids("<|endoftext|>"):] = 0
    network.rotary = type(network.rotary)(config.head_dim, config.rope_theta).to(device)
    network.eval()
    profile = TagProfile.from_overrides(config.plandiff_tags)
    return ModelRuntime(Checkpoint(config, network, tokenizer, profile, TagVocabulary.from_tokenizer(tokenizer, profile)))


def forced_plan(spans: int, slots: int) -> str:
    return "".join(f"<promise>-<topic>s{i} {slots}</topic>" for i in range(spans)) + "<|im_end|>"


def step_log(engine, device) -> list[dict]:
    """Drive the engine to the end, timing every step (device synchronized around it)."""
    log = []
    while engine.has_work():
        sync(device)
        start = time.perf_counter()
        engine.step()
        sync(device)
        seconds = time.perf_counter() - start
        phases = {phase for _, phase, _ in engine.last_step}
        log.append({
            "seconds": seconds, "requests": len(engine.last_step),
            "tokens": sum(len(f.positions) for _, _, f in engine.last_step),
            "logit_rows": sum(len(f.logit_positions) for _, _, f in engine.last_step),
            "phase": "mixed" if len(phases) > 1 else next(iter(phases)).value,
        })
    return log


def profile_denoising_step(engine, states, device, after: int) -> None:
    """Print where one denoising step of `states` goes on the device, kernel by kernel: the states are
    added to the engine and stepped until each is denoising, `after` steps into its round; one step
    is profiled, then they are driven to their end."""
    from torch.profiler import ProfilerActivity, profile

    from plandiff.model.generation import Phase

    for i, state in enumerate(states):
        engine.add(f"profiled-{i}", state)
    while not all(s.phase is Phase.DENOISE and s.round.denoise_steps >= after for s in states):
        engine.step()
    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        engine.step()
        sync(device)
    print(f"one denoising step of {len(states)} request{'s' if len(states) > 1 else ''}:")
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25))
    step_log(engine, device)


def new_state(runtime, prompt_ids, options, plan=None):
    return runtime.new_state(prompt_ids, options, runtime.encode_plan(plan) if plan else None)


def run_bench_engine(model: str | None, shape: str, device: str, dtype: str, prompt_tokens: int, spans: int,
                     slots: int, concurrency: list[int], json_path: str | None = None, profile: bool = False,
                     cuda_graphs: bool = True, compile: bool = False, attention: str = "auto") -> int:
    import torch

    from plandiff.model import GenerationOptions
    from plandiff.model.kv_pool import BLOCK
    from plandiff.model.runtime import ModelRuntime
    from plandiff.workers.engine import Engine

    from .bench_concurrency import sweep

    if device == "cpu":
        torch.set_num_threads(1)  # a shared 2-core machine: two threads contend with anything else running
    if model:
        runtime = ModelRuntime.load(model, dtype=dtype, device=device)
    else:
        runtime = random_runtime(shape, device, dtype)
    network = runtime.network
    dev = network.device
    report: dict = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                    "torch": torch.__version__, "shape": model or shape, "dtype": str(network.dtype)}
    report["floors"] = f = floors(network)
    ordinary = [t for t in range(100, min(5100, network.config.vocab_size)) if t not in runtime.tags.structural]
    prompt = [ordinary[(i * 37) % len(ordinary)] for i in range(prompt_tokens)]  # any vocabulary, no tags
    plan = forced_plan(spans, slots)
    pd = GenerationOptions(length_scale=1, max_new_tokens=spans * (slots + 12) + 16, top_k=50)
    runner = runtime.runner
    runner.cuda_graphs = cuda_graphs and dev.type == "cuda"
    if compile:
        network.compile_packed()
    network.attention = attention
    report["compiled"], report["attention"] = compile, attention
    engine = Engine(runner)

    def drive(states):
        for i, state in enumerate(states):
            engine.add(str(i), state)
        return step_log(engine, dev)

    say(f"{report['device']}, {report['shape']}: warming up")
    # warm-up (kernels, allocator, the CUDA graphs and compilations of both modes' step shapes, so
    # that no timed run pays a one-time capture)
    drive([new_state(runtime, prompt, pd, plan)])
    drive([new_state(runtime, prompt, pd.replace(mode="autoregressive"))])

    # (1) batch-1 steps
    say("batch-1 steps")
    log = drive([new_state(runtime, prompt, pd, plan)])
    plan_steps = [s for s in log[1:] if s["phase"] == "plan"]
    denoise_steps = [s for s in log if s["phase"] == "denoise"]
    wide = drive([new_state(runtime, prompt, pd.replace(max_new_tokens=8 * (slots + 12) + 16), forced_plan(8, slots))])
    wide_steps = [s for s in wide if s["phase"] == "denoise"]

    def summary(steps):
        if not steps:
            return None
        mid = statistics.median(s["seconds"] for s in steps)
        tokens = round(statistics.median(s["tokens"] for s in steps))
        rows = round(statistics.median(s["logit_rows"] for s in steps))
        floor = roofline(f, tokens, rows)
        return {"median_s": mid, "tokens": tokens, "logit_rows": rows, **floor, "x_floor": mid / floor["floor_s"],
                "x_compute_floor": mid / floor["compute_floor_s"], "steps": len(steps)}

    # the network's forward alone (host packing + device), a planning forward after the prefill
    state = new_state(runtime, prompt, pd, plan)
    seq = runner.admit(state)
    runner.step([seq])
    forward = state.schedule()
    graphs = runner.cuda_graphs
    forward_only = {}
    for name, use in (("plan_forward_only_eager", False), ("plan_forward_only", graphs)):
        runner.cuda_graphs = use
        times = []
        for _ in range(20):
            sync(dev)
            start = time.perf_counter()
            runner.forward([seq], [forward])
            sync(dev)
            times.append(time.perf_counter() - start)
        row = forward_only[name] = {"median_s": statistics.median(times[2:]), "tokens": 1, "logit_rows": 1,
                                    **roofline(f, 1, 1)}
        row["x_floor"] = row["median_s"] / row["floor_s"]
        row["x_compute_floor"] = row["median_s"] / row["compute_floor_s"]
    runner.cuda_graphs = graphs and runner.graph_error is None
    if profile:  # where an eager one-token forward's time goes
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as profiler

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        eager, runner.cuda_graphs = runner.cuda_graphs, False
        with profiler(activities=activities) as prof:
            for _ in range(5):
                runner.forward([seq], [forward])
                sync(dev)
        runner.cuda_graphs = eager
        averages = prof.key_averages()
        print(averages.table(sort_by="self_cpu_time_total", row_limit=15))
        if dev.type == "cuda":
            print(averages.table(sort_by="self_cuda_time_total", row_limit=10))
    runner.release(seq)
    if profile and dev.type == "cuda":  # a batch-1 denoising step as it runs (graphs as configured)
        profile_denoising_step(engine, [new_state(runtime, prompt, pd, plan)], dev, after=2)
    report["batch1_steps"] = {**forward_only, "prefill": summary(log[:1]), "plan": summary(plan_steps),
                              "denoise": summary(denoise_steps), "denoise_wide": summary(wide_steps)}

    def ahead_wall(state) -> dict:
        """Seconds of one request driven as a worker drives it (Engine.run: the next step launched
        while one is in flight where it can be; on CUDA), not waited for in between; how many of
        its steps went ahead, and how many of those were void."""
        sync(dev)
        before = engine.steps_ahead, engine.dropped_ahead
        start = time.perf_counter()
        engine.run({"ahead": state})
        sync(dev)
        return {"ahead_seconds": time.perf_counter() - start, "steps_ahead": engine.steps_ahead - before[0],
                "void_ahead": engine.dropped_ahead - before[1]}

    say("batch 1 end to end, PD and AR")
    # (2) batch-1 end to end: PD (steps_ratio 1.0, 0.5) vs the AR mode on the same answer length;
    # `seconds` sums the steps, each waited for; `ahead_seconds` is the wall time with steps ahead
    e2e = {}
    for name, options in [("pd_1.0", pd), ("pd_0.5", pd.replace(steps_ratio=0.5))]:
        log = drive([state := new_state(runtime, prompt, options, plan)])
        e2e[name] = {"seconds": sum(s["seconds"] for s in log), "critical_path": state.forwards,
                     "generated": len(state.tokens) - len(prompt),
                     **ahead_wall(new_state(runtime, prompt, options, plan))}
    answer = e2e["pd_1.0"]["generated"]
    ar = pd.replace(mode="autoregressive", max_new_tokens=answer)
    log = drive([state := new_state(runtime, prompt, ar)])
    e2e["ar"] = {"seconds": sum(s["seconds"] for s in log), "critical_path": state.forwards,
                 "generated": len(state.tokens) - len(prompt),
                 "median_decode_step_s": statistics.median(s["seconds"] for s in log[1:]),
                 **ahead_wall(new_state(runtime, prompt, ar))}
    e2e["ar"]["x_floor_per_token"] = e2e["ar"]["median_decode_step_s"] / roofline(f, 1, 1)["floor_s"]
    for name in ("pd_1.0", "pd_0.5"):
        row = e2e[name]
        row["critical_path_ratio"] = e2e["ar"]["critical_path"] / row["critical_path"]
        for kind in ("", "ahead_"):
            row[f"{kind}speedup_vs_ar"] = e2e["ar"][f"{kind}seconds"] / row[f"{kind}seconds"]
            row[f"{kind}share_of_ratio"] = row[f"{kind}speedup_vs_ar"] / row["critical_path_ratio"]
    report["batch1_end_to_end"] = e2e

    # (3) a batched PD denoising step: the largest concurrency, all requests denoising together
    many = max(concurrency)
    say(f"a denoising step of {many} requests, and the phases of a step")
    log = drive([new_state(runtime, prompt, pd, plan) for _ in range(many)])
    full = [s for s in log if s["phase"] == "denoise" and s["requests"] == many]
    report["batched_denoise"] = {"requests": many, **(summary(full) or {})}

    if profile and dev.type == "cuda":  # where a batched denoising step's device time goes, kernel by kernel
        profile_denoising_step(engine, [new_state(runtime, prompt, pd, plan) for _ in range(many)], dev, after=0)

    # (3b) where a step's time goes, batch 1 and batched: host phases, and the device's share (AR's
    # decode steps; PD's denoising steps of all its requests, where its time goes)
    report["step_phases"] = {}
    for mode, options, forced in (("ar", pd.replace(mode="autoregressive", max_new_tokens=40), None),
                                  ("pd_denoise", pd, plan)):
        for n in sorted({1, many}):
            runner.timings = []
            log = drive([new_state(runtime, prompt, options, forced) for _ in range(n)])
            timed = [t for t, s in zip(runner.timings, log) if s["requests"] == n
                     and (s["phase"] == "denoise" if forced else s["tokens"] == n)]  # AR: not the prefill
            runner.timings = None
            report["step_phases"][f"{mode}_{n}"] = {
                "requests": n, "steps": len(timed),
                **{f"{phase}_ms": statistics.median(t.get(phase, 0.0) for t in timed) * 1e3
                   for phase in ("schedule", "pack", "device", "decide", "advance")}}

    # (4) through the orchestrator, one in-process worker
    report["concurrency"] = asyncio.run(sweep(runtime, prompt, plan, pd, ar, concurrency, say))
    if 1 in concurrency:  # the AR mode as served: its steps launched ahead (Engine.launch_ahead), the prefill in
        alone = report["concurrency"]["ar_1"]
        e2e["ar"]["served_s_per_forward"] = alone["wall_s"] / alone["forwards"]
        e2e["ar"]["served_x_floor"] = e2e["ar"]["served_s_per_forward"] / roofline(f, 1, 1)["floor_s"]

    captured = runner._graphs.graphs if runner._graphs is not None else {}
    report["cuda_graphs"] = {"used": runner.cuda_graphs, "error": runner.graph_error,
                             "captured": [[s.count, s.width, s.length] for s in captured]}
    # (5) the KV pool
    pool = runner.pool
    report["kv_pool"] = {"bytes": pool.nbytes() if dev.type == "cuda" else None, "positions": pool.max_blocks * BLOCK,
                         "requests_of_2048_tokens": pool.max_blocks * BLOCK // 2048}
    print_table(report)
    text = json.dumps(report, indent=2)
    if json_path:
        with open(json_path, "w") as out:
            out.write(text + "\n")
    print(text)
    return 0


def print_table(r: dict) -> None:
    f = r["floors"]
    print(f"device {r['device']}, torch {r['torch']}, {r['shape']} {r['dtype']}: "
          f"{f['parameters'] / 1e9:.3g} B parameters; copy {f['copy_rate_bytes_per_s'] / 1e12:.3g} TB/s, "
          f"matmul {f['matmul_flops_per_s'] / 1e12:.3g} TFLOP/s; weight floor "
          f"{roofline(f, 1, 1)['weight_floor_s'] * 1e3:.2f} ms")
    print(f"{'step':28s} {'tokens':>6s} {'median ms':>9s} {'floor ms':>8s} {'× floor':>7s} {'× compute':>9s}")
    rows = [(f"batch 1 {k}", v) for k, v in r["batch1_steps"].items()] + [
        (f"batched denoise ×{r['batched_denoise']['requests']}", r["batched_denoise"])]
    for name, s in rows:
        if s and "median_s" in s:
            print(f"{name:28s} {s['tokens']:6d} {s['median_s'] * 1e3:9.2f} {s['floor_s'] * 1e3:8.2f} "
                  f"{s['x_floor']:7.2f} {s['x_compute_floor']:9.2f}")
    e = r["batch1_end_to_end"]
    print(f"{'end to end, batch 1':28s} {'wall s':>7s} {'crit. path':>10s} {'speed-up':>8s} {'of ratio':>8s}  "
          f"with steps ahead: {'wall s':>7s} {'speed-up':>8s} {'of ratio':>8s} {'ahead':>5s} {'void':>4s}")
    for name, s in e.items():
        print(f"{name:28s} {s['seconds']:7.3f} {s['critical_path']:10d} {s.get('speedup_vs_ar', 1):8.2f} "
              f"{s.get('share_of_ratio', 1):8.2f}  {'':17s} {s['ahead_seconds']:7.3f} "
              f"{s.get('ahead_speedup_vs_ar', 1):8.2f} {s.get('ahead_share_of_ratio', 1):8.2f} "
              f"{s['steps_ahead']:5d} {s['void_ahead']:4d}")
    print(f"AR decode step {e['ar']['median_decode_step_s'] * 1e3:.2f} ms = {e['ar']['x_floor_per_token']:.2f} × floor")
    if "served_s_per_forward" in e["ar"]:
        print(f"AR through the orchestrator, batch 1 (steps launched ahead, the prefill included): "
              f"{e['ar']['served_s_per_forward'] * 1e3:.2f} ms a forward = {e['ar']['served_x_floor']:.2f} × floor")
    phases = ("schedule", "pack", "device", "decide", "advance")
    print(f"{'step phases (median ms)':24s} {'steps':>5s} " + " ".join(f"{p:>8s}" for p in phases))
    for name, s in r["step_phases"].items():
        print(f"{name:24s} {s['steps']:5d} " + " ".join(f"{s[p + '_ms']:8.2f}" for p in phases))
    print(f"{'orchestrator':14s} {'conc.':>5s} {'tok/s':>8s} {'× c=1':>6s} {'p50 s':>7s} {'p99 s':>7s} {'forwards':>8s} "
          f"{'wall s':>7s} {'engine s':>8s} {'captures':>8s}  step parts, median ms: launch, others' turn, finish, deliver")
    for key, s in r["concurrency"].items():
        if isinstance(s, dict):
            print(f"{s['mode']:14s} {s['concurrency']:5d} {s['tokens_per_s']:8.1f} {s['x_batch1']:6.2f} "
                  f"{s['p50_s']:7.3f} {s['p99_s']:7.3f} {s['forwards']:8d} {s['wall_s']:7.3f} {s['engine_s']:8.3f} "
                  f"{s.get('graphs_captured', 0):3d} {s.get('capture_s', 0.0):4.2f}  {s['launch_ms']:6.2f} "
                  f"{s['others_ms']:6.2f} {s['finish_ms']:6.2f} {s['deliver_ms']:6.2f}")
    print(f"AR's aggregate throughput overtakes PD's at concurrency {r['concurrency']['ar_overtakes_pd_at']}")
    print(f"CUDA graphs (small steps): used {r['cuda_graphs']['used']}, error {r['cuda_graphs']['error']}")
    print(f"KV pool: {r['kv_pool']['positions']} positions = {r['kv_pool']['requests_of_2048_tokens']} requests "
          "of 2,048 tokens")
