"""The task graph over the events of real requests: span jobs from the state machine's own
promises, re-planned rounds, and answer text released piece by piece that adds up to the answer."""

import sys
from pathlib import Path

import pytest

from plandiff.model import GenerationOptions
from plandiff.orchestrator.task_graph import TaskGraph

sys.path.insert(0, str(Path(__file__).parent))
from test_request_control import PLAN, scripted_planner  # noqa: E402


def replay(runtime, options, plan=None, processor=None, prompt="x"):
    """Run a request alone, feeding each forward's events to a task graph as a worker would."""
    state = runtime.new_state(runtime.encode_prompt(prompt), options,
                              runtime.encode_plan(plan) if plan else None, processor)
    graph = TaskGraph("r", runtime.codec, options)
    seq = runtime.runner.admit(state)
    out = []
    while state.phase.value != "done":
        assert runtime.runner.step([seq]) == [None]
        out += graph.apply(state.drain())
    runtime.runner.release(seq)
    result = runtime.result(state)
    return out + graph.final_text(result.text), graph, result


@pytest.mark.parametrize("options", [GenerationOptions(), GenerationOptions(dense=True, order="confidence"),
                                     GenerationOptions(on_overflow="retry", max_span_length=40)])
def test_text_deltas_add_up_to_the_answer(compact, options):
    events, graph, result = replay(compact, options, plan=PLAN)
    deltas = [e.text for e in events if e.kind == "text"]
    assert "".join(deltas) == result.text and result.text
    # each release decoded only the ids it added: everything was consumed exactly once
    assert graph.text.consumed == len(result.token_ids)
    if options.on_overflow == "accept":  # spans are final when filled: text comes before the first sync
        assert [e.kind for e in events].index("text") < [e.kind for e in events].index("sync")


def test_autoregressive_text_streams_as_it_is_written(compact):
    events, _, result = replay(compact, GenerationOptions(mode="autoregressive", max_new_tokens=40))
    kinds = [e.kind for e in events]
    assert kinds.count("text") > 5 and kinds.index("text") < len(kinds) - 10
    assert "".join(e.text for e in events if e.kind == "text") == result.text


def test_spans_come_from_the_state_machines_promises(compact):
    events, graph, result = replay(compact, GenerationOptions(), plan=PLAN)
    promised = [(e.round, e.span, e.topic, e.length) for e in events if e.kind == "span_promised"]
    assert promised == [(s.round, s.index, s.topic, s.length) for s in result.spans]
    assert [len(r.spans) for r in graph.rounds] == [2, 1]


def test_a_replanned_round_starts_over_in_the_graph(compact):
    options = GenerationOptions(on_overflow="replan", max_overflow_retries=2, max_span_length=60, top_k=None)
    events, graph, result = replay(compact, options, processor=scripted_planner(compact))
    kinds = [e.kind for e in events]
    assert kinds.count("replanned") == 2 and graph.replans == 2
    assert [e.bounds for e in events if e.kind == "replanned"] == [{0: (2, 4)}, {0: (4, 6)}]
    # after each re-plan the round's plan tokens and its span come again
    last = len(kinds) - 1 - kinds[::-1].index("replanned")
    assert "plan_token" in kinds[last:] and "span_promised" in kinds[last:]
    assert [(j.index, j.length) for j in graph.round.spans] == [(0, 40)]
    # only the last plan is kept: the graph's plan is the one the answer holds
    assert graph.round.plan[:-1] == result.rounds[0].plan_ids and graph.joined == result.token_ids
    assert "".join(e.text for e in events if e.kind == "text") == result.text
