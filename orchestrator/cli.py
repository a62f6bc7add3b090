"""The `plandiff` command line."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import sys
from pathlib import Path

from plandiff.model.codec import TextCodec
from plandiff.model.errors import InvalidRequestError, PlandiffError
from plandiff.model.options import GenerationOptions
from plandiff.workers.logs import configure_logging

from .cli_bench import add_bench, run_bench
from .cli_common import DEMO_MODEL, add_model_arguments, settings_from, torch_device_name
from .events import DoneEvent
from .executors import build_executor
from .flags import add_flags
from .live import LiveView
from .orchestrator import GenerateRequest, Orchestrator
from .settings import GenerateSettings



def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="planned-diffusion generation for one prompt")
    p.add_argument("prompt", help="the user message (wrapped in the checkpoint's chat template)")
    add_model_arguments(p)
    p.add_argument("--system", default=argparse.SUPPRESS, help="the system message (default: the checkpoints' own)")
    p.add_argument("--plan", help="force the plan, e.g. '<promise>-<topic>intro 3</topic><|im_end|>'")
    p.add_argument("--json", action="store_true", help="print the structured result as JSON")
    p.add_argument("--live", action=argparse.BooleanOptionalAction, default=None,
                   help="draw the plan and the spans filling as they happen (default: on a terminal)")
    add_flags(p, GenerationOptions)


def add_batch(sub) -> None:
    from .batch.settings import BatchSettings

    p = sub.add_parser("batch", help="generate for every line of a JSONL file, resumably (docs/batch.md)")
    p.add_argument("--input", required=True, help='JSONL: {"id": …, "prompt": …} or {"id": …, "messages": […]} '
                                                  "per line, with optional per-line options")
    p.add_argument("--output", required=True, help="JSONL of results, appended; a rerun skips the ids it holds")
    p.add_argument("--summary", help="summary JSON (default: beside the output, NAME.summary.json)")
    p.add_argument("--config", help="YAML preset of settings (see configs/)")
    add_flags(p, BatchSettings, skip={"system"})
    p.add_argument("--system", default=argparse.SUPPRESS, help="the system message of prompt lines (default: the checkpoints' own)")


def run_batch(args) -> int:
    from .batch.runner import run_batch as run
    from .batch.settings import BatchSettings
    from .batch.summary import render

    settings = settings_from(args, BatchSettings)
    configure_logging(settings.log_level)
    summary = run(settings, args.input, args.output, args.summary)
    print(render(summary))
    print(f"output: {args.output}; summary: {summary['summary']}")
    return 0


def add_random_checkpoint(sub) -> None:
    p = sub.add_parser("random-checkpoint", help="write a tiny random checkpoint folder (for tests and trials)")
    p.add_argument("folder")
    p.add_argument("--layout", choices=["compact", "dream"], default="compact",
                   help="dream: the released checkpoints' token ids and 152064-row vocabulary")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-shard-size", default="5GB", help="e.g. 10MB to write a sharded checkpoint")
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate-size", type=int, help="default: 2 × hidden size")


def add_serve(sub) -> None:
    from .settings import ServeSettings

    p = sub.add_parser("serve", help="the OpenAI-compatible HTTP server (docs/serving.md)")
    add_model_arguments(p)
    p.add_argument("--system", default=argparse.SUPPRESS,
                   help="the system message of /v1/completions prompts (default: the checkpoints' own)")
    add_flags(p, ServeSettings, only=set(ServeSettings.model_fields) - set(GenerateSettings.model_fields))
    add_flags(p, GenerationOptions)  # the requests' defaults; a body's fields override them


def run_serve(args) -> int:
    from .server import serve
    from .settings import ServeSettings

    settings = settings_from(args, ServeSettings)
    configure_logging(settings.log_level)
    name = None if settings.served_model_name or Path(settings.model) != DEMO_MODEL else "plandiff-demo"

    def ready(url: str) -> None:
        print(f"plandiff: serving {name or settings.served_model_name or Path(settings.model).name} at {url}/v1 "
              f"(executor {settings.executor}); Ctrl-C or SIGTERM drains and stops", flush=True)

    service = serve(settings, name, ready)
    if service.error is not None:
        raise service.error if isinstance(service.error, PlandiffError) else PlandiffError(
            f"the model did not load: {service.error}")
    return 0


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a planned-diffusion model (or its AR / diffusion twin) from scratch")
    p.add_argument("--config", required=True, help="YAML training recipe (configs/train/*.yaml)")
    p.add_argument("--output", help="checkpoint folder to write (overrides the recipe)")
    p.add_argument("--steps", type=int, help="optimizer steps (overrides the recipe)")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")


def run_train(args) -> int:
    from dataclasses import fields

    from plandiff.model.training.recipe import DataConfig, run
    from plandiff.model.training.trainer import TrainConfig

    from .settings import load_train_settings

    settings = load_train_settings(args.config, {"output": args.output, "steps": args.steps, "device": args.device})
    names = {f.name for f in fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in settings.model_dump().items() if k in names})
    try:
        data = DataConfig(**settings.data)
    except TypeError as err:
        raise InvalidRequestError(f"invalid data settings: {err}") from err

    def log(metrics: dict) -> None:
        print(json.dumps({"event": "validation", **metrics}), file=sys.stderr, flush=True)

    metrics = run(config, data, settings.output, settings.device, log)
    print(json.dumps({"output": settings.output, **metrics}))
    return 0


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="score a checkpoint on the synthetic task's test split")
    p.add_argument("--model", required=True, help="checkpoint folder")
    p.add_argument("--mode", choices=["planned", "autoregressive", "diffusion"], default="planned")
    p.add_argument("--label", help="the model's name in the report (default: folder name and mode)")
    p.add_argument("--examples", type=int, default=200, help="per split")
    p.add_argument("--seed", type=int, default=0, help="the data seed the model was trained with")
    p.add_argument("--split", nargs="+", choices=["test", "heldout"], default=["test", "heldout"],
                   help="test: the training wording and layout families (in-family); heldout: the families "
                        "kept out of training; both draw names and values no training example has")
    p.add_argument("--steps-ratio", type=float, nargs="+", default=[1.0], help="one row per value")
    p.add_argument("--order", choices=["entropy", "confidence", "margin", "threshold", "adaptive"], default="entropy")
    p.add_argument("--threshold", type=float, nargs="+", help="τ values (order threshold or adaptive): one row each")
    p.add_argument("--max-new-tokens", type=int, default=400, help="diffusion-only: the answer's length")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=1,
                   help="CPU processes answering side by side, one thread each (the s/answer column then "
                        "includes their contention)")
    p.add_argument("--report", help="folder to add the rows to: results.json, results.md, latency-accuracy.png")


def run_eval(args) -> int:
    import datetime
    import platform
    from contextlib import nullcontext

    from tqdm import tqdm

    from plandiff.model import ModelRuntime
    from plandiff.model.training.evaluation import sweep, worker_pool
    from plandiff.model.training.report import add_rows
    from plandiff.model.training.synthetic import make_split

    if args.order in ("threshold", "adaptive") and not args.threshold:
        raise InvalidRequestError(f"--order {args.order} needs --threshold")
    if args.workers < 1 or args.workers > 1 and args.device != "cpu":
        raise InvalidRequestError("--workers must be at least 1, and more than 1 only with --device cpu")
    if args.examples < 1:
        raise InvalidRequestError("--examples must be at least 1")
    runtime = ModelRuntime.load(args.model, device=args.device)
    splits = {split: make_split(split, args.examples, args.seed) for split in args.split}
    label = args.label or f"{Path(args.model).name} ({args.mode})"
    device = args.device if not args.device.startswith("cuda") else torch_device_name(args.device)
    device = f"{device}, {platform.processor() or platform.machine()}" if device == "cpu" else device
    print(f"{args.model}, mode {args.mode}, {args.examples} examples per split ({', '.join(splits)}), {device}")
    print(f"{'split':8s} {'options':44s} {'accuracy':>8s} {'facts':>6s} {'spans=':>6s} {'valid':>6s} "
          f"{'critical path':>13s} {'denoising':>9s} {'s/answer':>8s}")
    rows = []
    total = sum(map(len, splits.values())) * len(args.steps_ratio) * len(args.threshold or [None])
    bar = tqdm(total=total, desc="answers", unit="answer", leave=False, disable=not sys.stderr.isatty())
    with worker_pool(runtime, args.workers) if args.workers > 1 else nullcontext() as pool:
        for split, examples in splits.items():
            for shown, result in sweep(runtime, examples, args.mode, args.steps_ratio, args.order, args.threshold,
                                       args.max_new_tokens, lambda: bar.update(1), pool):
                rows.append({"label": label, "split": split, "model": args.model, "mode": args.mode, "options": shown,
                             "device": device, "workers": args.workers, "date": datetime.date.today().isoformat(),
                             **result.__dict__})
                text = ", ".join(f"{k}={v}" for k, v in shown.items())
                spans = "" if result.spans_match is None else f"{result.spans_match:.1%}"
                # above the progress bar, not through it
                tqdm.write(f"{split:8s} {text:44s} {result.accuracy:8.1%} {result.facts_right:6.1%} {spans:>6s} "
                           f"{result.valid_plans:6.1%} {result.critical_path:13.1f} {result.denoising:9.1f} "
                           f"{result.seconds:8.3f}", file=sys.stdout)
                sys.stdout.flush()  # each row as it is measured, also into a log file
    bar.close()
    if args.report:
        add_rows(args.report, rows)
        print(f"report: {args.report}")
    return 0


def add_probe(sub) -> None:
    p = sub.add_parser("probe", help="masked-number probe: the numbers of gold sub-question answers, "
                                     "each hidden alone (docs/performance.md)")
    p.add_argument("--model", required=True, help="checkpoint folder")
    p.add_argument("--mode", choices=["planned", "autoregressive"], default="planned")
    p.add_argument("--split", choices=["test", "train"], default="test",
                   help="train: the first examples the model was trained on (with --seed its data seed)")
    p.add_argument("--examples", type=int, default=500, help="examples drawn; the sub-question ones are probed")
    p.add_argument("--seed", type=int, default=0, help="the data seed the model was trained with")


def run_probe(args) -> int:
    from plandiff.model import ModelRuntime
    from plandiff.model.training.probe import probe_numbers
    from plandiff.model.training.synthetic import make_split

    if args.examples < 1:
        raise InvalidRequestError("--examples must be at least 1")
    result = probe_numbers(ModelRuntime.load(args.model), make_split(args.split, args.examples, args.seed), args.mode)
    print(json.dumps({"model": args.model, "mode": args.mode, "split": args.split, "examples": args.examples,
                      **result.__dict__, "accuracy": result.accuracy}))
    return 0


def run_generate(args) -> int:
    settings = settings_from(args)
    configure_logging(settings.log_level)
    request = GenerateRequest(prompt=args.prompt, system=settings.system, plan=args.plan, options=settings.options())
    live = not args.json and (args.live if args.live is not None else sys.stdout.isatty())
    stdout = sys.stdout
    if args.json:  # stdout carries the JSON only: what else prints (Ray's notices, forwarded lines) goes to stderr
        sys.stdout = sys.stderr
    if live:  # something on the screen while the model loads (a newcomer otherwise sees nothing)
        print(f"loading {settings.model} …", flush=True)
    try:
        executor = build_executor(settings)
        try:
            codec = TextCodec.load(settings.model)
            orchestrator = Orchestrator(executor, codec)
            done = asyncio.run(run_live(orchestrator, request, codec) if live else orchestrator.complete(request))
        finally:
            executor.shutdown()
    finally:
        sys.stdout = stdout
    if args.json:
        # the one usage record: the model's counts with the orchestrator's failovers and wall times
        print(json.dumps({**done.result, "usage": dataclasses.asdict(done.usage)}, ensure_ascii=False))
    elif not live:
        print_result(done)
    return 0


async def run_live(orchestrator: Orchestrator, request: GenerateRequest, codec: TextCodec) -> DoneEvent:
    from rich.live import Live

    view = LiveView(codec)
    with Live(view.render(), refresh_per_second=20) as live:
        async for event in orchestrator.generate(request):
            view.update(event)
            live.update(view.render())
    return view.done


def print_result(done: DoneEvent) -> None:
    for r in done.result["rounds"]:
        if not r["spans"] and not r["plan_ids"]:
            continue
        print(f"round {r['index']} ({r['stop'] or 'cut'}): {r['plan_forwards']} planning forwards, "
              f"{r['denoise_steps']} denoising steps")
        for s in r["spans"]:
            notes = (" (clamped)" if s["clamped"] else "") + (f" (retried {s['retries']}×)" if s["retries"] else "")
            print(f"  span {s['index']}: {s['topic']!r}, {s['length']} slots{notes}: {s['text']!r}")
    print()
    print(done.text)
    print()
    u = done.usage
    extra = f", fallback: {done.fallback}" if done.fallback else ""
    print(f"{u.generated_tokens} tokens, {u.critical_path} forward passes on the critical path, "
          f"steps per round {u.steps_per_round}, finish: {done.finish_reason}{extra}, {u.total_seconds:.2f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="plandiff", description="Serve and run planned-diffusion language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_generate(sub)
    add_batch(sub)
    add_random_checkpoint(sub)
    add_bench(sub)
    add_serve(sub)
    add_train(sub)
    add_eval(sub)
    add_probe(sub)
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            return run_generate(args)
        if args.command == "batch":
            return run_batch(args)
        if args.command == "train":
            return run_train(args)
        if args.command == "eval":
            return run_eval(args)
        if args.command == "probe":
            return run_probe(args)
        if args.command == "serve":
            return run_serve(args)
        if args.command == "bench":
            return run_bench(args)
        from plandiff.model.random_checkpoint import build_random_checkpoint

        sizes = (args.hidden_size, args.layers, args.heads, args.kv_heads, args.intermediate_size or 1)
        if min(sizes) < 1:
            raise InvalidRequestError("--hidden-size, --layers, --heads, --kv-heads, --intermediate-size must be ≥ 1")
        if not re.fullmatch(r"\s*\d+(\.\d+)?\s*[KMGT]B\s*", args.max_shard_size, re.IGNORECASE):
            raise InvalidRequestError(f"--max-shard-size takes a size such as 10MB or 5GB, not {args.max_shard_size!r}")
        try:
            folder = build_random_checkpoint(
                args.folder, args.layout, seed=args.seed, max_shard_size=args.max_shard_size,
                hidden_size=args.hidden_size, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                num_key_value_heads=args.kv_heads, intermediate_size=args.intermediate_size or 2 * args.hidden_size,
            )
        except ValueError as err:  # the config's own checks: heads dividing the hidden size, …
            raise InvalidRequestError(str(err)) from None
        print(f"wrote a tiny random {args.layout} checkpoint to {folder}")
        return 0
    except PlandiffError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
