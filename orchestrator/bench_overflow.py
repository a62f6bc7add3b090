"""`plandiff bench overflow`: what each span-overflow policy recovers, and what it costs.

Spans are made to overflow on purpose: the model's promised lengths are scaled down
(`length_scale`, e.g. 0.3 of the demo model's 10 slots per unit), so many spans get fewer slots than
their content needs. For the same test prompts, each policy (accept, retry, replan) answers greedily;
under greedy decoding the first plan and first fill of every round are the same for all policies, so
accept's overflowing spans are the ones each policy starts from. Reported per policy: overflowing
spans left in the final answers, the share recovered (1 − left / accept's), critical path per answer
and the extra forwards over accept, and accuracy on the task's fact check.
"""

from __future__ import annotations

import json
import statistics
import sys


POLICIES = ("accept", "retry", "replan")


def overflowing(result, pad: int) -> int:
    return sum(1 for s in result.spans if s.token_ids and s.token_ids[-1] != pad)


def run_overflow(settings, examples: int, policies: list[str], seed: int = 0) -> int:
    import torch
    from tqdm import tqdm

    from plandiff.model import ModelRuntime
    from plandiff.model.training.synthetic import make_split, score

    torch.set_num_threads(1)
    runtime = ModelRuntime.load(settings.model, dtype=settings.dtype, device=settings.device)
    prompts = make_split("test", examples, seed)
    base = settings.options()
    print(f"{settings.model}: {examples} test prompts, length_scale {base.length_scale}, order {base.order}"
          f"{f' τ {base.threshold}' if base.threshold else ''}, max_overflow_retries {base.max_overflow_retries}, "
          f"overflow_growth {base.overflow_growth}")
    rows = {}
    for policy in policies:
        options = base.replace(on_overflow=policy)
        left, forwards, correct, retries, replans = 0, [], 0, 0, 0
        for example in tqdm(prompts, desc=policy, leave=False, disable=not sys.stderr.isatty()):
            result = runtime.generate(example.prompt, options)
            left += overflowing(result, runtime.tags.pad)
            forwards.append(result.usage.critical_path)
            correct += score(example, result.text)["correct"]
            retries += result.usage.retries
            replans += result.usage.replans
        rows[policy] = {"overflowing_left": left, "critical_path": statistics.fmean(forwards),
                        "accuracy": correct / len(prompts), "retries": retries, "replans": replans}
    first = rows.get("accept", {}).get("overflowing_left")
    print(f"{'policy':8s} {'overflowing':>11s} {'recovered':>9s} {'critical path':>13s} {'extra fwd':>9s} "
          f"{'retries':>7s} {'replans':>7s} {'accuracy':>8s}")
    for policy, row in rows.items():
        if first:
            row["recovered"] = 1 - row["overflowing_left"] / first
            row["extra_forwards"] = row["critical_path"] / rows["accept"]["critical_path"] - 1
        shown = (f"{row['recovered']:9.1%} {row['extra_forwards']:+9.1%}" if first else f"{'':9s} {'':9s}")
        print(f"{policy:8s} {row['overflowing_left']:11d} {shown} {row['critical_path']:13.1f} "
              f"{row['retries']:7d} {row['replans']:7d} {row['accuracy']:8.1%}")
    print(json.dumps({"examples": examples, "options": base.model_dump(), "policies": rows}))
    return 0
