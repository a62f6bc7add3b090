"""The one request model: every generation knob declared once (GenerationOptions), read by the
settings (YAML, environment), the CLI flags and the request; every bad value one typed error that
names its field, before any work starts."""

import math
import subprocess
import sys

import pytest

from plandiff.model import GenerationOptions, InvalidRequestError, Sampling
from plandiff.orchestrator.orchestrator import ChatMessage, GenerateRequest
from plandiff.orchestrator.settings import GenerateSettings, RunSettings, load_settings


@pytest.mark.parametrize("field, value", [
    ("top_p", 1.5), ("top_p", 0.0), ("temperature", -1.0), ("temperature", math.nan), ("temperature", math.inf),
    ("length_scale", math.nan), ("length_scale", math.inf), ("length_scale", 0.0), ("overflow_growth", math.inf),
    ("overflow_growth", 1.0), ("steps_ratio", 0.0), ("steps_ratio", "1"), ("max_new_tokens", 0),
    ("max_new_tokens", 3.5), ("constrained", "no"), ("constrained", 1), ("dense", "yes"), ("order", "best"),
    ("mode", "fast"), ("on_overflow", "grow"), ("top_k", 0), ("seed", -1), ("threshold", 1.5), ("kv_cache", None),
    ("unknown_knob", 1),
])
def test_a_bad_option_is_an_invalid_request_naming_its_field(field, value):
    with pytest.raises(InvalidRequestError) as err:
        GenerationOptions(**{field: value})
    assert err.value.field == field and field in str(err.value)


def test_an_order_with_a_threshold_needs_one():
    with pytest.raises(InvalidRequestError) as err:
        GenerationOptions(order="adaptive")
    assert err.value.field == "threshold"
    assert GenerationOptions(order="adaptive", threshold=0.9).threshold == 0.9


def test_options_are_frozen_and_replace_validates():
    options = GenerationOptions()
    with pytest.raises(Exception):
        options.steps_ratio = 0.5
    assert options.replace(steps_ratio=0.5).steps_ratio == 0.5
    with pytest.raises(InvalidRequestError):
        options.replace(steps_ratio=5)
    assert options.sampling == Sampling(temperature=0.0, top_p=None, top_k=50)


def test_parse_reads_a_json_object_strictly():
    assert GenerationOptions.parse({"steps_ratio": 0.5, "dense": True}).dense is True
    for body in ([1, 2], "x", None):
        with pytest.raises(InvalidRequestError):
            GenerationOptions.parse(body)


@pytest.mark.parametrize("fields, field", [
    (dict(), None), (dict(prompt="a", prompt_ids=[1]), None), (dict(prompt=""), None),
    (dict(prompt="bad \udcff"), "prompt"), (dict(prompt="a", system="\ud800"), "system"),
    (dict(prompt="a", plan=""), None), (dict(prompt="a", plan="  "), None), (dict(prompt_ids=[]), None),
    (dict(prompt_ids=[1, "2"]), "prompt_ids.1"), (dict(messages=[]), None),
    (dict(messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]), None),
    (dict(messages=[{"role": "robot", "content": "a"}]), "messages.0.role"),
    (dict(prompt="a", options={"top_p": 3}), "options.top_p"), (dict(prompt="a", request_id=""), "request_id"),
])
def test_a_bad_request_is_refused_before_any_work(fields, field):
    with pytest.raises(InvalidRequestError) as err:
        GenerateRequest(**fields)
    if field is not None:
        assert err.value.field == field


def test_a_conversation_is_a_request():
    request = GenerateRequest(messages=[ChatMessage(role="system", content="s"), {"role": "user", "content": "q"}])
    assert [m.role for m in request.messages] == ["system", "user"]


def test_settings_inherit_every_option_and_read_text_leniently(monkeypatch, tmp_path):
    assert set(GenerationOptions.model_fields) <= set(GenerateSettings.model_fields)
    assert set(RunSettings.model_fields) <= set(GenerateSettings.model_fields)
    for name in list(__import__("os").environ):
        if name.startswith("PLANDIFF_"):
            monkeypatch.delenv(name)
    preset = tmp_path / "p.yaml"
    preset.write_text("steps_ratio: 0.5\norder: confidence\nconstrained: false\n")
    monkeypatch.setenv("PLANDIFF_ORDER", "margin")
    monkeypatch.setenv("PLANDIFF_DENSE", "yes")
    settings = load_settings(GenerateSettings, preset, {"steps_ratio": 0.25})
    options = settings.options()
    assert (options.steps_ratio, options.order, options.dense, options.constrained) == (0.25, "margin", True, False)
    monkeypatch.setenv("PLANDIFF_LENGTH_SCALE", "nan")
    with pytest.raises(InvalidRequestError) as err:
        load_settings(GenerateSettings, preset, {})
    assert err.value.field == "length_scale"
    preset.write_text("steps_ration: 0.5\n")
    monkeypatch.delenv("PLANDIFF_LENGTH_SCALE")
    with pytest.raises(InvalidRequestError) as err:
        load_settings(GenerateSettings, preset, {})
    assert err.value.field == "steps_ration"


def test_the_control_plane_imports_without_torch():
    code = ("import sys, plandiff.orchestrator.orchestrator, plandiff.orchestrator.cli, "
            "plandiff.orchestrator.executors, plandiff.orchestrator.settings, plandiff.orchestrator.task_graph, "
            "plandiff.model.options; print(sorted(m for m in ('torch', 'transformers', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
