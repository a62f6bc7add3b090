"""`plandiff bench …`: the benchmark commands' flags and dispatch (docs/performance.md)."""

from __future__ import annotations

import json
import sys

from plandiff.model.errors import InvalidRequestError
from plandiff.model.options import GenerationOptions
from plandiff.workers.logs import configure_logging

from .cli_common import DEMO_MODEL, add_model_arguments, settings_from, torch_device_name
from .flags import add_flags, given


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (see docs/performance.md)")
    what = p.add_subparsers(dest="bench", required=True)
    o = what.add_parser("overhead", help="orchestrator + executor vs driving the state machine directly")
    add_model_arguments(o)
    o.add_argument("--requests", type=int, default=8)
    o.add_argument("--executors", default="local,ray", help="comma-separated: local, ray")
    v = what.add_parser("overflow", help="span-overflow policies on forced overflows: recovered share, extra forwards")
    add_model_arguments(v)
    add_flags(v, GenerationOptions, skip={"on_overflow"})
    v.add_argument("--examples", type=int, default=200, help="test prompts of the synthetic task")
    v.add_argument("--policies", default="accept,retry,replan", help="comma-separated: accept, retry, replan")
    b = what.add_parser("serve", help="N concurrent streams against a running `plandiff serve`: TTFT, end-to-end, "
                                       "errors, tokens/s")
    b.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default: http://127.0.0.1:8000)")
    b.add_argument("--concurrency", type=int, default=4, help="streams at once")
    b.add_argument("--requests", type=int, default=32, help="requests in all (after one warm-up request)")
    b.add_argument("--prompt", default=None, help="the prompt of every request (default: a demo-task prompt)")
    b.add_argument("--api-key", default=None, help="default: $PLANDIFF_API_KEY")
    b.add_argument("--timeout", type=float, default=600.0, help="seconds a stream may stall")
    b.add_argument("--warmup", type=int, default=1, help="untimed requests first")
    add_flags(b, GenerationOptions)
    c = what.add_parser("batch", help="plandiff batch throughput with 1 and N CPU worker actors on the demo task's "
                                       "test prompts (docs/performance.md)")
    from .batch.settings import BatchSettings

    c.add_argument("--config", help="YAML preset of settings (see configs/)")
    add_flags(c, BatchSettings, skip={"system", "executor", "workers", "device"})
    c.add_argument("--examples", type=int, default=1000, help="test prompts of the synthetic task")
    c.add_argument("--worker-counts", default="1,2", help="comma-separated worker counts, one run each")
    c.add_argument("--folder", default="bench-batch", help="where the prompts, results and summaries go")
    e = what.add_parser("engine", help="the batched engine against the device's floors: batch-1 steps, PD vs AR, "
                                        "batched steps, concurrency through the orchestrator, KV pool (table + JSON)")
    e.add_argument("--model", default=None, help="checkpoint folder (default: random weights of --shape, built "
                                                 "on the device)")
    e.add_argument("--shape", choices=["qwen2.5-7b", "small"], default="small",
                   help="random weights: Qwen2.5-7B's shape and vocabulary, or small (4 layers, a 272-token "
                        "vocabulary: a CPU run)")
    e.add_argument("--device", default="cpu")
    e.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on the CPU (whose bf16 "
                                                  "matmuls are slow)")
    e.add_argument("--prompt-tokens", type=int, default=369)
    e.add_argument("--spans", type=int, default=4, help="spans of the forced plan")
    e.add_argument("--slots", type=int, default=30, help="slots per span")
    e.add_argument("--concurrency", default="1,8,32,64", help="comma-separated concurrencies")
    e.add_argument("--json", default=None, help="also write the JSON report here")
    e.add_argument("--profile", action="store_true", help="print where an eager one-token forward's time goes "
                                                          "and (CUDA) a batched denoising step's, kernel by kernel")
    e.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="run every step eagerly (by default small steps replay CUDA graphs: model/step_graphs.py)")
    e.add_argument("--attention", choices=["auto", "paged", "sdpa"], default="auto",
                   help="packed forwards' attention: the paged Triton kernel (auto: on CUDA) or SDPA over "
                        "gathered keys")
    e.add_argument("--compile", action="store_true", help="compile the parts of a packed forward around "
                                                          "attention (torch.compile; CUDA)")
    a = what.add_parser("attention", help="the paged attention kernel's launch configurations at the engine's "
                                           "steps, against their floors (CUDA)")
    a.add_argument("--device", default="cuda")
    a.add_argument("--cases", default="plan-1,denoise-128,denoise-256,ar-64,denoise-64x128",
                   help="comma-separated, of: plan-1, denoise-128, denoise-256, ar-64, denoise-64x128")
    a.add_argument("--json", default=None, help="also write every configuration's time here")
    t = what.add_parser("train-step", help="one training step of a checkpoint's network, eager and compiled")
    t.add_argument("--model", default=str(DEMO_MODEL), help="checkpoint folder (default: the demo model)")
    t.add_argument("--mode", choices=["planned", "autoregressive", "diffusion"], default="planned")
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--steps", type=int, default=50, help="timed steps per variant")
    t.add_argument("--warmup", type=int, default=10, help="untimed steps first (compiling happens there)")
    t.add_argument("--variants", default="eager,compiled", help="comma-separated: eager, compiled")
    t.add_argument("--device", default=None, help="default: cuda if available")
    t.add_argument("--group-by-length", type=int, default=1, help="batches whose rows are sorted by length "
                                                                  "together, as a recipe's group_by_length draws them")


def run_bench(args) -> int:
    if args.bench == "serve":
        from .bench_serve import DEFAULT_PROMPT, run_bench_serve

        if args.concurrency < 1 or args.requests < 1 or args.warmup < 0:
            raise InvalidRequestError("--concurrency and --requests must be ≥ 1, --warmup ≥ 0")
        options = given(args, GenerationOptions)
        GenerationOptions(**options)
        return run_bench_serve(args.url, args.concurrency, args.requests, args.prompt or DEFAULT_PROMPT,
                               args.api_key, options, args.timeout, args.warmup)
    if args.bench == "batch":
        from .batch.settings import BatchSettings
        from .bench_batch import run_bench_batch

        counts = [int(n) for n in args.worker_counts.split(",") if n.strip().isdigit()]
        if args.examples < 1 or not counts or min(counts) < 1:
            raise InvalidRequestError("--examples ≥ 1; --worker-counts takes worker counts ≥ 1, e.g. 1,2")
        settings = settings_from(args, BatchSettings)
        configure_logging(settings.log_level)
        return run_bench_batch(settings, args.examples, counts, args.folder)
    if args.bench == "engine":
        from .bench_engine import run_bench_engine

        configure_logging("WARNING")  # a line per request and step would bury the progress lines
        dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
        return run_bench_engine(args.model, args.shape, args.device, dtype, args.prompt_tokens, args.spans,
                                args.slots, [int(c) for c in args.concurrency.split(",")], args.json,
                                args.profile, args.cuda_graphs, args.compile, args.attention)
    if args.bench == "train-step":
        return run_train_step(args)
    if args.bench == "attention":
        from .bench_attention import CASES, run_bench_attention

        cases = args.cases.split(",")
        if set(cases) - set(CASES):
            raise InvalidRequestError(f"--cases takes {', '.join(CASES)}")
        return run_bench_attention(args.device, cases, args.json)
    if args.bench == "overflow":
        from .bench_overflow import POLICIES, run_overflow

        policies = args.policies.split(",")
        if set(policies) - set(POLICIES) or args.examples < 1:
            raise InvalidRequestError(f"--policies takes {', '.join(POLICIES)}; --examples ≥ 1")
        return run_overflow(settings_from(args), args.examples, policies)
    from .bench import run_overhead

    settings = settings_from(args)
    configure_logging(settings.log_level)
    return run_overhead(settings, args.requests, args.executors.split(","))


def run_train_step(args) -> int:
    import torch

    from plandiff.model.training.step_timing import time_steps

    variants = args.variants.split(",")
    if (set(variants) - {"eager", "compiled"} or min(args.steps, args.warmup, args.batch_size, args.group_by_length)
            < 1):
        raise InvalidRequestError("--variants takes eager and/or compiled; --steps, --warmup, --batch-size, "
                                  "--group-by-length ≥ 1")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = torch_device_name(device) if device.startswith("cuda") else "cpu"
    grouped = f" grouped by length over {args.group_by_length} batches" if args.group_by_length > 1 else ""
    print(f"{args.model}, mode {args.mode}, batch {args.batch_size}{grouped}, {args.steps} timed steps after "
          f"{args.warmup}, {name}, torch {torch.__version__}")
    print(f"{'variant':10s} {'ms/step':>8s} {'warmup s':>9s} {'tokens/s':>10s} {'loss':>7s} {'padding':>8s} {'lengths':>8s}")
    results = time_steps(args.model, args.mode, args.batch_size, args.steps, args.warmup, device, variants,
                         args.group_by_length, lambda message: print(f"bench train-step: {message}", file=sys.stderr,
                                                                     flush=True))
    for r in results:
        print(f"{r.variant:10s} {r.ms_per_step:8.1f} {r.warmup_s:9.1f} {r.tokens_per_s:10.0f} {r.final_loss:7.3f} "
              f"{r.padding:8.1%} {r.lengths:8d}")
    print(json.dumps([r.__dict__ for r in results]))
    return 0
