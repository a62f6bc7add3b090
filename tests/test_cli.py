"""The `plandiff` command line, run for real in subprocesses, and the settings precedence behind it.

Each subprocess pays ~2–3 s of imports, so independent invocations of one test run concurrently.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from plandiff.model import InvalidRequestError
from plandiff.orchestrator import cli
from plandiff.orchestrator.settings import GenerateSettings, load_settings

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODULE = [sys.executable, "-m", "plandiff.orchestrator.cli"]
PLAN = ("<promise>-<topic>intro 3</topic><promise>-<topic>body 2</topic><sync/>"
        "<promise>-<topic>end 1</topic><|im_end|>")
ONE_SPAN = "<promise>-<topic>only 3</topic><|im_end|>"  # 30 slots


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without any PLANDIFF_* setting, offline, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANDIFF_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.update(extra)
    return env


def run_many(commands: list[tuple[list[str], dict[str, str] | None]], timeout: float = 120):
    """Start every command at once; return CompletedProcess objects in order."""
    procs = [
        (cmd, subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env or clean_env()))
        for cmd, env in commands
    ]
    done = []
    for cmd, proc in procs:
        out, err = proc.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(cmd, proc.returncode, out, err))
    return done


def run(*args, env: dict[str, str] | None = None, command: list[str] = MODULE):
    return run_many([([*command, *args], env)])[0]


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def check_forward_accounting(data: dict) -> None:
    rounds, usage = data["rounds"], data["usage"]
    for r in rounds:  # one planning forward per plan token, one more for the stop token (none if cut)
        assert r["plan_forwards"] == len(r["plan_ids"]) + (r["stop"] is not None), r
    assert usage["forward_passes"] == sum(r["plan_forwards"] + r["denoise_steps"] for r in rounds)
    assert usage["steps_per_round"] == [r["denoise_steps"] for r in rounds]
    assert usage["plan_tokens"] == sum(len(r["plan_ids"]) for r in rounds)
    assert usage["span_tokens"] == sum(len(s["token_ids"]) for r in rounds for s in r["spans"])


# ---------------------------------------------------------------------------------------- generate


def test_generate_json_free_planning(compact_folder):
    proc = ok(run("generate", "--model", compact_folder, "hi", "--json", "--max-new-tokens", "16"))
    data = json.loads(proc.stdout)
    assert isinstance(data["text"], str)
    assert isinstance(data["token_ids"], list) and all(isinstance(t, int) for t in data["token_ids"])
    assert 1 <= len(data["token_ids"]) <= 16
    assert isinstance(data["rounds"], list) and data["rounds"]
    assert data["usage"]["forward_passes"] > 0
    assert data["usage"]["generated_tokens"] == len(data["token_ids"])
    assert data["finish_reason"] in {"end", "length"}
    assert data["serving"]["total_seconds"] >= 0 and data["serving"]["failovers"] == 0
    check_forward_accounting(data)


def test_generate_forced_plan_json_and_human(compact_folder):
    as_json, human = run_many([
        ([*MODULE, "generate", "--model", compact_folder, "hi", "--plan", PLAN, "--json"], None),
        ([*MODULE, "generate", "--model", compact_folder, "hi", "--plan", PLAN], None),
    ])
    data = json.loads(ok(as_json).stdout)
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
    assert data["usage"]["forward_passes"] == plan_forwards + steps
    # Generated ids: the plan, two scaffolds, <sync/>, the second plan and its scaffold (end token dropped).
    assert len(data["token_ids"]) == data["usage"]["plan_tokens"] + (30 + 2) + (20 + 2) + 1 + (10 + 2)

    out = ok(human).stdout
    for topic in ("'intro'", "'body'", "'end'"):
        assert topic in out
    assert "round 0 (sync)" in out and "round 1 (end)" in out
    usage_line = [line for line in out.splitlines() if "forward passes" in line]
    assert len(usage_line) == 1
    assert f"{data['usage']['forward_passes']} forward passes" in usage_line[0]
    assert "finish: end" in usage_line[0]


def test_bad_inputs_exit_2_with_one_line(compact_folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    base = [*MODULE, "generate", "hi"]
    cases = {
        "promise without length": ([*base, "--model", compact_folder, "--plan",
                                    "<promise>-<topic>intro</topic><|im_end|>"], "length"),
        "last round ends with sync": ([*base, "--model", compact_folder, "--plan",
                                       "<promise>-<topic>intro 1</topic><sync/>"], "<sync/>"),
        "steps ratio 2": ([*base, "--model", compact_folder, "--steps-ratio", "2"], "steps_ratio"),
        "empty model folder": ([*base, "--model", empty], "config.json"),
        "missing config": ([*base, "--model", compact_folder, "--config", tmp_path / "nope.yaml"], "nope.yaml"),
    }
    results = run_many([(cmd, None) for cmd, _ in cases.values()])
    for (name, (_, needle)), proc in zip(cases.items(), results):
        assert proc.returncode == 2, (name, proc.returncode, proc.stderr)
        assert "Traceback" not in proc.stderr, (name, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, (name, proc.stderr)
        assert lines[0].startswith("error: "), (name, lines)
        assert needle in lines[0], (name, lines[0])
        assert proc.stdout == "", (name, proc.stdout)


DEMO_PROMPT = ("Read about these people. Maya is 34 years old, lives in Oslo, works as a nurse and has a cat. "
               "Omar is 51 years old, lives in Lima, works as a pilot and has a dog. Tell me about each person.")


def test_bare_generate_runs_the_shipped_demo_model(tmp_path):
    """No flag, no download: the installed `plandiff` script answers with the demo model that ships
    in the package, one span per person, planned and filled by the model itself."""
    script = shutil.which("plandiff")
    assert script is not None, "the `plandiff` console script is not installed"
    proc = ok(run("generate", DEMO_PROMPT, "--json", env=clean_env(HOME=str(tmp_path)), command=[script]))
    data = json.loads(proc.stdout)
    assert data["finish_reason"] == "end" and data["fallback"] is None
    spans = data["rounds"][0]["spans"]
    assert [s["topic"] for s in spans] == ["Maya", "Omar"]
    assert spans[0]["text"].startswith("Maya") and spans[1]["text"].startswith("Omar")
    assert "34" in spans[0]["text"] and "51" in spans[1]["text"]
    assert not any(tmp_path.iterdir())  # nothing was built or cached
    text = ok(run("generate", DEMO_PROMPT, env=clean_env(HOME=str(tmp_path)), command=[script])).stdout
    assert "span 0: 'Maya'" in text and "forward passes" in text and "finish: end" in text


def test_random_checkpoint_sharded_then_generate(tmp_path):
    folder = tmp_path / "x"
    proc = ok(run("random-checkpoint", folder, "--max-shard-size", "100KB"))
    assert str(folder) in proc.stdout
    assert (folder / "model.safetensors.index.json").exists()
    assert len(list(folder.glob("model-*-of-*.safetensors"))) >= 2
    assert not (folder / "model.safetensors").exists()
    data = json.loads(ok(run("generate", "--model", folder, "hi", "--json", "--plan", ONE_SPAN)).stdout)
    assert data["finish_reason"] == "end"
    assert [s["length"] for s in data["rounds"][0]["spans"]] == [30]


def test_top_k_zero_turns_filtering_off(compact_folder, capsys, monkeypatch):
    for key in [k for k in os.environ if k.startswith("PLANDIFF_")]:
        monkeypatch.delenv(key)
    rc = cli.main(["generate", "--model", str(compact_folder), "hi", "--top-k", "0", "--json",
                   "--plan", "<promise>-<topic>a 1</topic><|im_end|>"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["finish_reason"] == "end"


# ---------------------------------------------------------------------------------------- settings


@pytest.fixture
def no_plandiff_env(monkeypatch):
    for key in [k for k in os.environ if k.startswith("PLANDIFF_")]:
        monkeypatch.delenv(key)
    return monkeypatch


@pytest.fixture
def preset(tmp_path) -> Path:
    path = tmp_path / "half.yaml"
    path.write_text(yaml.safe_dump({"steps_ratio": 0.5, "order": "confidence", "max_new_tokens": 64}))
    return path


def test_settings_precedence(no_plandiff_env, preset):
    assert load_settings(None, {"steps_ratio": None}).steps_ratio == 1.0  # default
    assert load_settings(preset, {"steps_ratio": None}).steps_ratio == 0.5  # preset > default
    no_plandiff_env.setenv("PLANDIFF_STEPS_RATIO", "0.25")
    settings = load_settings(preset, {"steps_ratio": None})
    assert settings.steps_ratio == 0.25  # env > preset
    assert settings.order == "confidence" and settings.max_new_tokens == 64  # the rest of the preset stays
    assert load_settings(preset, {"steps_ratio": 1.0}).steps_ratio == 1.0  # CLI > env
    no_plandiff_env.setenv("PLANDIFF_ORDER", "margin")
    assert load_settings(preset, {"order": None}).order == "margin"
    assert load_settings(preset, {"order": "entropy"}).order == "entropy"


def test_settings_errors(no_plandiff_env, tmp_path):
    with pytest.raises(InvalidRequestError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml", {})
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(InvalidRequestError, match="mapping"):
        load_settings(tmp_path / "list.yaml", {})
    (tmp_path / "typo.yaml").write_text("stepsratio: 0.5\n")
    with pytest.raises(InvalidRequestError, match="stepsratio"):
        load_settings(tmp_path / "typo.yaml", {})
    with pytest.raises(InvalidRequestError, match="steps_ratio"):
        load_settings(None, {"steps_ratio": 2.0})
    no_plandiff_env.setenv("PLANDIFF_STEPS_RATIO", "0")
    with pytest.raises(InvalidRequestError, match="steps_ratio"):
        load_settings(None, {})


def test_settings_precedence_end_to_end(compact_folder, preset):
    args = [*MODULE, "generate", "--model", compact_folder, "hi", "--json", "--plan", ONE_SPAN, "--config", preset]
    preset_only, env_wins, cli_wins = run_many([
        (args, None),
        (args, clean_env(PLANDIFF_STEPS_RATIO="0.25")),
        ([*args, "--steps-ratio", "1.0"], clean_env(PLANDIFF_STEPS_RATIO="0.25")),
    ])
    assert json.loads(ok(preset_only).stdout)["usage"]["steps_per_round"] == [15]
    assert json.loads(ok(env_wins).stdout)["usage"]["steps_per_round"] == [7]
    assert json.loads(ok(cli_wins).stdout)["usage"]["steps_per_round"] == [30]


PRESETS = sorted(CONFIGS.glob("*.yaml"))


def test_presets_exist():
    assert {p.name for p in PRESETS} >= {"dream7b-dense.yaml", "dream7b-sparse.yaml", "reference-cached.yaml",
                                          "tiny-random.yaml"}


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_validates(no_plandiff_env, path):
    raw = yaml.safe_load(path.read_text())
    assert isinstance(raw, dict) and set(raw) <= set(GenerateSettings.model_fields)
    settings = load_settings(path, {})
    for key, value in raw.items():
        assert getattr(settings, key) == value, key
    options = settings.options()  # and the generation options it makes are valid too
    assert options.steps_ratio == settings.steps_ratio and options.kv_refresh == settings.kv_refresh
