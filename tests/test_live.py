"""The terminal view of `plandiff generate`: frames built from the orchestrator's real events, with
the shipped demo model planning and filling two spans."""

import asyncio
import io
import re

from rich.console import Console

from plandiff.model.codec import TextCodec
from plandiff.orchestrator.cli_common import DEMO_MODEL
from plandiff.orchestrator.events import SpanProgressEvent
from plandiff.orchestrator.executors import LocalExecutor
from plandiff.orchestrator.live import LiveView
from plandiff.orchestrator.orchestrator import GenerateRequest, Orchestrator

PROMPT = ("Read about these people. Maya is 34 years old, lives in Oslo, works as a nurse and has a cat. "
          "Omar is 51 years old, lives in Lima, works as a pilot and has a dog. Tell me about each person.")


def draw(view: LiveView) -> str:
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(view.render())
    return console.file.getvalue()


def test_frames_show_the_plan_then_spans_filling_in_parallel_then_the_answer():
    codec = TextCodec.load(DEMO_MODEL)
    orchestrator = Orchestrator(LocalExecutor(str(DEMO_MODEL)), codec)
    view = LiveView(codec)
    assert "planning" in draw(view)  # something shows before the first event
    frames: list[tuple[object, str]] = []

    async def go():
        async for event in orchestrator.generate(GenerateRequest(prompt=PROMPT)):
            view.update(event)
            frames.append((event, draw(view)))

    asyncio.run(go())
    progress = [frame for event, frame in frames if isinstance(event, SpanProgressEvent)]
    assert progress, "no denoising step was shown"
    first = progress[0]
    # the plan, written before any span fills, as topics and lengths rather than tags
    assert re.search(r"Maya \(\d+ slots\)", first) and "Omar (" in first and "<promise>" not in first
    assert "·" in first and "a slot still masked" in first  # slots still masked after the first step, and the legend
    # the spans fill side by side: some frame shows both partly filled (text and masks in each)
    def partly_filled(frame: str, topic: str) -> bool:
        line = next(line for line in frame.splitlines() if line.strip().startswith(topic + ":"))
        slots = line.strip()[len(topic) + 1:]
        return "·" in slots and any(c.isalpha() for c in slots)

    assert any(partly_filled(frame, "Maya") and partly_filled(frame, "Omar") for frame in progress)
    final = frames[-1][1]
    assert "\nanswer\n" in final
    counts = [re.search(r"(\d+)/(\d+)\s*$", line) for line in final.splitlines() if line.strip().startswith(("Maya:", "Omar:"))]
    assert counts and all(m and int(m[1]) <= int(m[2]) for m in counts)  # [PAD]s, room left, are not counted
    assert "·" not in final.replace("· a slot still masked", "")
    assert view.done is not None and view.done.text.split(".")[0] in final
    assert "forward passes on the critical path" in final
