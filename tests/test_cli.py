"""The `plandiff` command line, run in-process (`cli.main(argv)`, output read with capsys), and the
settings precedence behind it: CLI flags > environment (PLANDIFF_…) > YAML preset > defaults.

Two smoke tests run the installed console script in a subprocess, so that a broken entry point is
caught; every other test calls `main` directly (a subprocess pays ~2–3 s of imports).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from plandiff.model import InvalidRequestError
from plandiff.model.codec import DEFAULT_SYSTEM
from plandiff.orchestrator import cli
from plandiff.orchestrator.settings import GenerateSettings, RunSettings, load_settings

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PLAN = ("<promise>-<topic>intro 3</topic><promise>-<topic>body 2</topic><sync/>"
        "<promise>-<topic>end 1</topic><|im_end|>")
ONE_SPAN = "<promise>-<topic>only 3</topic><|im_end|>"  # 30 slots


@pytest.fixture(autouse=True)
def env(monkeypatch):
    """No PLANDIFF_* setting from the outer environment; offline."""
    for key in [k for k in os.environ if k.startswith("PLANDIFF_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    return monkeypatch


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
def plandiff(capsys):
    """`plandiff ARGS…` in this process: its exit status and what it wrote. An exception escaping
    `main` (what would be a traceback) fails the test; argparse's usage errors exit through SystemExit."""

    def run(*argv) -> Run:
        capsys.readouterr()  # drop whatever came before
        try:
            code = cli.main([a if isinstance(a, str) else str(a) for a in argv])
        except SystemExit as exit:
            code = exit.code
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


@pytest.fixture
def sent(monkeypatch) -> list:
    """The GenerateRequests `plandiff generate` builds: what its settings came to, end to end."""
    requests = []
    real = cli.GenerateRequest

    def record(**fields):
        requests.append(real(**fields))
        return requests[-1]

    monkeypatch.setattr(cli, "GenerateRequest", record)
    return requests


def ok(run: Run) -> Run:
    assert run.code == 0, f"exit {run.code}\nstdout:\n{run.out}\nstderr:\n{run.err}"
    assert "Traceback" not in run.err, run.err
    return run


def refused(run: Run, needle: str) -> str:
    """Exit status 2, one line on stderr (`error: …` naming `needle`), nothing on stdout."""
    assert run.code == 2, (run.code, run.out, run.err)
    assert "Traceback" not in run.err, run.err
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    assert lines[0].startswith("error: "), lines
    assert needle in lines[0], lines[0]
    assert run.out == "", run.out
    return lines[0]


def check_forward_accounting(data: dict) -> None:
    rounds, usage = data["rounds"], data["usage"]
    for r in rounds:  # one planning forward per plan token, one more for the stop token (none if cut)
        assert r["plan_forwards"] == len(r["plan_ids"]) + (r["stop"] is not None), r
    assert usage["critical_path"] == sum(r["plan_forwards"] + r["denoise_steps"] for r in rounds)
    assert usage["steps_per_round"] == [r["denoise_steps"] for r in rounds]
    assert usage["plan_tokens"] == sum(len(r["plan_ids"]) for r in rounds)
    assert usage["span_tokens"] == sum(len(s["token_ids"]) for r in rounds for s in r["spans"])


# ---------------------------------------------------------------------------------------- generate


def test_generate_json_free_planning(plandiff, compact_folder):
    data = json.loads(ok(plandiff("generate", "--model", compact_folder, "hi", "--json", "--max-new-tokens", "16")).out)
    assert isinstance(data["text"], str)
    assert isinstance(data["token_ids"], list) and all(isinstance(t, int) for t in data["token_ids"])
    assert 1 <= len(data["token_ids"]) <= 16
    assert isinstance(data["rounds"], list) and data["rounds"]
    assert data["usage"]["critical_path"] > 0
    assert data["usage"]["generated_tokens"] == len(data["token_ids"])
    assert data["finish_reason"] in {"end", "length"}
    # the orchestrator's part of the usage record: wall times, failovers
    assert data["usage"]["total_seconds"] > 0 and data["usage"]["failovers"] == 0
    assert data["usage"]["total_seconds"] >= data["usage"]["plan_seconds"] + data["usage"]["denoise_seconds"] - 1e-6
    check_forward_accounting(data)


def test_generate_forced_plan_json_and_human(plandiff, compact_folder):
    data = json.loads(ok(plandiff("generate", "--model", compact_folder, "hi", "--plan", PLAN, "--json")).out)
    assert data["finish_reason"] == "end"
    assert data["fallback"] is None
    assert len(data["rounds"]) == 2
    assert [r["stop"] for r in data["rounds"]] == ["sync", "end"]
    spans = [s for r in data["rounds"] for s in r["spans"]]
    assert [(s["round"], s["index"], s["topic"], s["length"]) for s in spans] == [
        (0, 0, "intro", 30), (0, 1, "body", 20), (1, 0, "end", 10)]
    assert all(len(s["token_ids"]) == s["length"] and not s["clamped"] for s in spans)
    assert data["usage"]["steps_per_round"] == [30, 10]
    check_forward_accounting(data)
    steps = sum(data["usage"]["steps_per_round"])
    plan_forwards = sum(len(r["plan_ids"]) + 1 for r in data["rounds"])
    assert data["usage"]["critical_path"] == plan_forwards + steps
    # Generated ids: the plan, two scaffolds, <sync/>, the second plan and its scaffold (end token dropped).
    assert len(data["token_ids"]) == data["usage"]["plan_tokens"] + (30 + 2) + (20 + 2) + 1 + (10 + 2)

    out = ok(plandiff("generate", "--model", compact_folder, "hi", "--plan", PLAN)).out
    for topic in ("'intro'", "'body'", "'end'"):
        assert topic in out
    assert "round 0 (sync)" in out and "round 1 (end)" in out
    usage_line = [line for line in out.splitlines() if "forward passes" in line]
    assert len(usage_line) == 1
    assert f"{data['usage']['critical_path']} forward passes" in usage_line[0]
    assert "finish: end" in usage_line[0]


@pytest.mark.parametrize("args, needle", [
    pytest.param(["--plan", "<promise>-<topic>intro</topic><|im_end|>"], "length", id="promise without length"),
    pytest.param(["--plan", "<promise>-<topic>intro 1</topic><sync/>"], "<sync/>", id="last round ends with sync"),
    pytest.param(["--plan", ""], "plan", id="empty plan"),
    pytest.param(["--plan", "  "], "plan", id="blank plan"),
    pytest.param(["--steps-ratio", "2"], "steps_ratio", id="steps ratio 2"),
    pytest.param(["--top-k", "0"], "top_k", id="top-k 0 (none turns it off)"),
    pytest.param(["--length-scale", "nan"], "length_scale", id="length scale nan"),
    pytest.param(["--order", "adaptive"], "threshold", id="order without its threshold"),
])
def test_bad_options_exit_2_with_one_line(plandiff, compact_folder, args, needle):
    refused(plandiff("generate", "hi", "--model", compact_folder, *args), needle)


@pytest.mark.parametrize("prompt, needle", [
    pytest.param("", "prompt is empty", id="empty"),
    pytest.param("\udcff", "prompt is not valid UTF-8", id="lone surrogate"),  # what bytes 0xff in argv become
    pytest.param("hi \ud800 there", "prompt is not valid UTF-8", id="surrogate inside"),
])
def test_bad_prompts_exit_2_with_one_line(plandiff, compact_folder, prompt, needle):
    refused(plandiff("generate", prompt, "--model", compact_folder), needle)


def test_bad_folders_and_presets_exit_2_with_one_line(plandiff, compact_folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(plandiff("generate", "hi", "--model", empty), "config.json")
    refused(plandiff("generate", "hi", "--model", compact_folder, "--config", tmp_path / "nope.yaml"), "nope.yaml")
    (tmp_path / "typo.yaml").write_text("stepsratio: 0.5\n")
    refused(plandiff("generate", "hi", "--model", compact_folder, "--config", tmp_path / "typo.yaml"), "stepsratio")


@pytest.mark.parametrize("args, prog, needle", [
    (["--top-k", "abc"], "plandiff generate", "argument --top-k: expected int or none, got 'abc'"),
    (["--steps-ratio", "none"], "plandiff generate", "argument --steps-ratio: expected float, got 'none'"),
    (["--order", "sideways"], "plandiff generate", "argument --order: invalid choice"),
    (["--no-such-flag"], "plandiff", "unrecognized arguments: --no-such-flag"),
])
def test_unparsable_flags_are_usage_errors(plandiff, compact_folder, args, prog, needle):
    """argparse's own refusals: exit 2, the usage and one `error:` line, no traceback."""
    run = plandiff("generate", "hi", "--model", compact_folder, *args)
    assert run.code == 2 and run.out == "" and "Traceback" not in run.err
    assert run.err.startswith(f"usage: {prog} ")
    last = run.err.strip().splitlines()[-1]
    assert last.startswith(f"{prog}: error: ") and needle in last, last


def test_top_k_none_turns_filtering_off(plandiff, sent, compact_folder):
    data = json.loads(ok(plandiff("generate", "--model", compact_folder, "hi", "--top-k", "none", "--json",
                                  "--plan", "<promise>-<topic>a 1</topic><|im_end|>")).out)
    assert data["finish_reason"] == "end"
    assert sent[-1].options.top_k is None and sent[-1].options.sampling.top_k is None
    ok(plandiff("generate", "--model", compact_folder, "hi", "--json", "--plan", "<promise>-<topic>a 1</topic><|im_end|>"))
    assert sent[-1].options.top_k == 50  # the default, as the reference


def test_optional_numbers_take_none(plandiff, sent, compact_folder, tmp_path):
    """`none` unsets an optional number over a preset that sets it."""
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump({"top_p": 0.9, "seed": 3, "length_scale": 2.0}))
    base = ["generate", "--model", compact_folder, "hi", "--json", "--max-new-tokens", "4", "--config", preset]
    ok(plandiff(*base))
    assert (sent[-1].options.top_p, sent[-1].options.seed, sent[-1].options.length_scale) == (0.9, 3, 2.0)
    ok(plandiff(*base, "--top-p", "none", "--seed", "None", "--length-scale", "NONE"))
    assert (sent[-1].options.top_p, sent[-1].options.seed, sent[-1].options.length_scale) == (None, None, None)


def test_none_in_the_environment_unsets_an_optional_number(plandiff, sent, compact_folder, monkeypatch):
    monkeypatch.setenv("PLANDIFF_TOP_K", "none")
    ok(plandiff("generate", "--model", compact_folder, "hi", "--json", "--max-new-tokens", "2"))
    assert sent[-1].options.top_k is None
    monkeypatch.setenv("PLANDIFF_TOP_K", "7")
    ok(plandiff("generate", "--model", compact_folder, "hi", "--json", "--max-new-tokens", "2"))
    assert sent[-1].options.top_k == 7


def test_system_only_when_given(plandiff, sent, compact_folder):
    ok(plandiff("generate", "--model", compact_folder, "hi", "--json", "--max-new-tokens", "2"))
    assert sent[-1].system == DEFAULT_SYSTEM  # the checkpoints' own
    ok(plandiff("generate", "--model", compact_folder, "hi", "--json", "--max-new-tokens", "2", "--system", "Be terse."))
    assert sent[-1].system == "Be terse."


DEMO_PROMPT = ("Read about these people. Maya is 34 years old, lives in Oslo, works as a nurse and has a cat. "
               "Omar is 51 years old, lives in Lima, works as a pilot and has a dog. Tell me about each person.")


def test_console_script_runs_the_shipped_demo_model(tmp_path):
    """The one subprocess test: the installed `plandiff` entry point, with no flag and no download,
    answers with the demo model that ships in the package, one span per person, planned and filled
    by the model itself; only the JSON reaches stdout, and nothing is built or cached under HOME."""
    # the script installed beside this interpreter (not a version manager's shim, which costs seconds)
    beside = Path(sys.executable).with_name("plandiff")
    script = str(beside) if beside.exists() else shutil.which("plandiff")
    assert script is not None, "the `plandiff` console script is not installed"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANDIFF_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HOME=str(tmp_path))
    proc = subprocess.run([script, "generate", DEMO_PROMPT, "--json"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    data = json.loads(proc.stdout)
    assert data["finish_reason"] == "end" and data["fallback"] is None
    spans = data["rounds"][0]["spans"]
    assert [s["topic"] for s in spans] == ["Maya", "Omar"]
    assert spans[0]["text"].startswith("Maya") and spans[1]["text"].startswith("Omar")
    assert "34" in spans[0]["text"] and "51" in spans[1]["text"]
    assert not any(tmp_path.iterdir())  # nothing was built or cached


def test_live_generate_says_something_before_the_heavy_imports():
    """A newcomer at a terminal sees a line at once, not after pydantic, structlog and torch load
    (issue 18: within 0.5 s); the process is stopped after that line."""
    beside = Path(sys.executable).with_name("plandiff")
    script = str(beside) if beside.exists() else shutil.which("plandiff")
    start = time.monotonic()
    proc = subprocess.Popen([script, "generate", "--live", DEMO_PROMPT], stdout=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        waited = time.monotonic() - start
    finally:
        proc.kill()
        proc.wait()
    assert first.startswith("plandiff: starting")
    assert waited < 0.5, f"the first line came after {waited:.2f} s"


def test_bare_generate_prints_the_demo_models_answer(plandiff):
    text = ok(plandiff("generate", DEMO_PROMPT)).out
    assert "span 0: 'Maya'" in text and "span 1: 'Omar'" in text
    assert "forward passes" in text and "finish: end" in text


def test_random_checkpoint_sharded_then_generate(plandiff, tmp_path):
    folder = tmp_path / "x"
    run = ok(plandiff("random-checkpoint", folder, "--max-shard-size", "100KB"))
    assert str(folder) in run.out
    assert (folder / "model.safetensors.index.json").exists()
    assert len(list(folder.glob("model-*-of-*.safetensors"))) >= 2
    assert not (folder / "model.safetensors").exists()
    data = json.loads(ok(plandiff("generate", "--model", folder, "hi", "--json", "--plan", ONE_SPAN)).out)
    assert data["finish_reason"] == "end"
    assert [s["length"] for s in data["rounds"][0]["spans"]] == [30]


@pytest.mark.parametrize("args, needle", [
    (["--hidden-size", "0"], "--hidden-size"),
    (["--kv-heads", "0"], "--kv-heads"),
    (["--heads", "3"], "not divisible by num_attention_heads 3"),
    (["--heads", "4", "--kv-heads", "3"], "not a multiple of num_key_value_heads 3"),
    (["--max-shard-size", "lots"], "--max-shard-size"),
])
def test_random_checkpoint_bad_sizes_exit_2_with_one_line(plandiff, tmp_path, args, needle):
    """These ended in a ZeroDivisionError or ValueError traceback; a bad shard size left an empty folder."""
    refused(plandiff("random-checkpoint", tmp_path / "x", *args), needle)
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------- settings


@pytest.fixture
def preset(tmp_path) -> Path:
    path = tmp_path / "half.yaml"
    path.write_text(yaml.safe_dump({"steps_ratio": 0.5, "order": "confidence", "max_new_tokens": 64}))
    return path


def test_settings_precedence(env, preset):
    assert load_settings(GenerateSettings, None, {}).steps_ratio == 1.0  # default
    assert load_settings(GenerateSettings, preset, {}).steps_ratio == 0.5  # preset > default
    env.setenv("PLANDIFF_STEPS_RATIO", "0.25")
    settings = load_settings(GenerateSettings, preset, {})
    assert settings.steps_ratio == 0.25  # env > preset
    assert settings.order == "confidence" and settings.max_new_tokens == 64  # the rest of the preset stays
    assert load_settings(GenerateSettings, preset, {"steps_ratio": 1.0}).steps_ratio == 1.0  # CLI > env
    env.setenv("PLANDIFF_ORDER", "margin")
    assert load_settings(GenerateSettings, preset, {}).order == "margin"
    assert load_settings(GenerateSettings, preset, {"order": "entropy"}).order == "entropy"
    env.setenv("PLANDIFF_WORKERS", "3")
    assert load_settings(RunSettings, None, {}).workers == 3
    assert load_settings(RunSettings, None, {"workers": 2}).workers == 2


def test_settings_from_text_are_parsed(env):
    """Environment values are text: booleans as yes/no, true/false, 1/0; the options made from them are typed."""
    for text, value in [("no", False), ("false", False), ("0", False), ("yes", True), ("true", True)]:
        env.setenv("PLANDIFF_CONSTRAINED", text)
        assert load_settings(GenerateSettings, None, {}).constrained is value, text
        assert load_settings(GenerateSettings, None, {}).options().constrained is value, text
    env.setenv("PLANDIFF_CONSTRAINED", "perhaps")
    with pytest.raises(InvalidRequestError, match="constrained") as caught:
        load_settings(GenerateSettings, None, {})
    assert caught.value.field == "constrained"


def test_settings_checked_together_across_sources(env, preset):
    """A field that depends on another is checked on the merged settings, wherever each came from:
    PLANDIFF_ORDER=adaptive with --threshold (or a preset's threshold) is valid. (It was refused: the
    environment was validated alone first, where adaptive has no threshold.)"""
    env.setenv("PLANDIFF_ORDER", "adaptive")
    settings = load_settings(GenerateSettings, preset, {"threshold": 0.9})
    assert (settings.order, settings.threshold, settings.steps_ratio) == ("adaptive", 0.9, 0.5)
    preset.write_text(yaml.safe_dump({"threshold": 0.8}))
    assert load_settings(GenerateSettings, preset, {}).threshold == 0.8
    with pytest.raises(InvalidRequestError, match="threshold"):
        load_settings(GenerateSettings, None, {})
    env.delenv("PLANDIFF_ORDER")
    env.setenv("PLANDIFF_THRESHOLD", "0.7")
    settings = load_settings(GenerateSettings, None, {"order": "threshold"})
    assert (settings.order, settings.threshold) == ("threshold", 0.7)


def test_settings_errors(env, tmp_path):
    with pytest.raises(InvalidRequestError, match="does not exist"):
        load_settings(GenerateSettings, tmp_path / "missing.yaml", {})
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(InvalidRequestError, match="mapping"):
        load_settings(GenerateSettings, tmp_path / "list.yaml", {})
    (tmp_path / "typo.yaml").write_text("stepsratio: 0.5\n")
    with pytest.raises(InvalidRequestError, match="stepsratio"):
        load_settings(GenerateSettings, tmp_path / "typo.yaml", {})
    with pytest.raises(InvalidRequestError, match="steps_ratio") as caught:
        load_settings(GenerateSettings, None, {"steps_ratio": 2.0})
    assert caught.value.field == "steps_ratio"
    env.setenv("PLANDIFF_STEPS_RATIO", "0")
    with pytest.raises(InvalidRequestError, match="steps_ratio"):
        load_settings(GenerateSettings, None, {})
    env.setenv("PLANDIFF_STEPS_RATIO", "abc")
    with pytest.raises(InvalidRequestError, match="steps_ratio") as caught:
        load_settings(GenerateSettings, None, {})
    assert caught.value.field == "steps_ratio"
    env.setenv("PLANDIFF_STEPS_RATIO", "0.5")
    env.setenv("PLANDIFF_WORKERS", "many")
    with pytest.raises(InvalidRequestError, match="workers"):
        load_settings(RunSettings, None, {})
    env.delenv("PLANDIFF_WORKERS")
    for share in (0, 1.5):  # a GPU share is in (0, 1]: above 1 an engine would span GPUs it cannot use
        with pytest.raises(InvalidRequestError, match="gpus_per_worker") as caught:
            load_settings(RunSettings, None, {"gpus_per_worker": share})
        assert caught.value.field == "gpus_per_worker"
    assert load_settings(RunSettings, None, {"gpus_per_worker": 0.5}).gpus_per_worker == 0.5


def test_settings_precedence_end_to_end(plandiff, sent, env, compact_folder, preset):
    """Preset 0.5 → 15 of the span's 30 steps; PLANDIFF_STEPS_RATIO 0.25 over it → 7; --steps-ratio 1.0 over both."""
    args = ["generate", "--model", compact_folder, "hi", "--json", "--plan", ONE_SPAN, "--config", preset]
    assert json.loads(ok(plandiff(*args)).out)["usage"]["steps_per_round"] == [15]
    assert sent[-1].options.order == "confidence"
    env.setenv("PLANDIFF_STEPS_RATIO", "0.25")
    assert json.loads(ok(plandiff(*args)).out)["usage"]["steps_per_round"] == [7]
    assert json.loads(ok(plandiff(*args, "--steps-ratio", "1.0")).out)["usage"]["steps_per_round"] == [30]
    env.setenv("PLANDIFF_CONSTRAINED", "no")
    env.setenv("PLANDIFF_ORDER", "adaptive")
    ok(plandiff(*args, "--threshold", "0.9"))
    options = sent[-1].options
    assert (options.constrained, options.order, options.threshold, options.steps_ratio) == (False, "adaptive", 0.9, 0.25)
    ok(plandiff(*args, "--threshold", "0.9", "--constrained"))
    assert sent[-1].options.constrained is True  # CLI > env for a boolean too


def test_bad_environment_values_exit_2_naming_the_field(plandiff, env, compact_folder):
    env.setenv("PLANDIFF_STEPS_RATIO", "abc")
    refused(plandiff("generate", "hi", "--model", compact_folder), "steps_ratio")
    env.setenv("PLANDIFF_STEPS_RATIO", "2")
    refused(plandiff("generate", "hi", "--model", compact_folder), "steps_ratio")
    assert ok(plandiff("generate", "hi", "--model", compact_folder, "--json", "--max-new-tokens", "2",
                       "--steps-ratio", "1")).code == 0  # a flag overrides the bad value
    env.delenv("PLANDIFF_STEPS_RATIO")
    env.setenv("PLANDIFF_EXECUTOR", "slurm")
    refused(plandiff("generate", "hi", "--model", compact_folder), "executor")


PRESETS = sorted(CONFIGS.glob("*.yaml"))


def test_presets_exist():
    assert {p.name for p in PRESETS} >= {"dream7b-dense.yaml", "dream7b-sparse.yaml", "reference-cached.yaml",
                                          "tiny-random.yaml"}


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_validates(path):
    raw = yaml.safe_load(path.read_text())
    assert isinstance(raw, dict) and set(raw) <= set(GenerateSettings.model_fields)
    settings = load_settings(GenerateSettings, path, {})
    for key, value in raw.items():
        assert getattr(settings, key) == value, key
    options = settings.options()  # and the generation options it makes are valid too
    assert options.steps_ratio == settings.steps_ratio and options.kv_refresh == settings.kv_refresh
