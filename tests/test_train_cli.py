"""`plandiff train` end to end on CPU for a few steps: the folder it writes is a checkpoint the
runtime loads and generates with."""

import json

import pytest
import yaml

from plandiff.model import GenerationOptions, ModelRuntime
from plandiff.orchestrator import cli

RECIPE = "configs/train/tiny.yaml"


@pytest.mark.parametrize("mode", ["planned", "autoregressive", "diffusion"])
def test_train_writes_a_loadable_checkpoint(tmp_path, capsys, mode):
    recipe = yaml.safe_load(open(RECIPE))
    recipe.update(mode=mode, output=str(tmp_path / mode))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert cli.main(["train", "--config", str(path), "--steps", "2", "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 2 and summary["validation_loss"] > 0
    runtime = ModelRuntime.load(tmp_path / mode)
    assert runtime.checkpoint.config.hidden_size == 64
    saved = json.loads((tmp_path / mode / "training.json").read_text())
    assert saved["config"]["mode"] == mode and saved["metrics"]["step"] == 2
    result = runtime.generate("Which is larger, 728 or 502?", GenerationOptions(max_new_tokens=8))
    assert result.finish_reason in ("end", "length") and result.token_ids


def test_bad_recipe_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("output: x\nsteps: 0\nunknown: 1\n")
    assert cli.main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "steps" in err and "unknown" in err


def test_eval_scores_a_trained_checkpoint(tmp_path, capsys):
    recipe = yaml.safe_load(open(RECIPE))
    recipe.update(output=str(tmp_path / "pd"))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert cli.main(["train", "--config", str(path), "--steps", "2", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--model", str(tmp_path / "pd"), "--examples", "6", "--max-new-tokens", "24",
                     "--steps-ratio", "1.0", "0.5", "--threshold", "0.9"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["options"] for r in rows] == [{"steps_ratio": 1.0}, {"steps_ratio": 0.5},
                                            {"steps_ratio": 1.0, "order": "threshold", "threshold": 0.9},
                                            {"steps_ratio": 0.5, "order": "threshold", "threshold": 0.9}]
    for row in rows:
        assert row["examples"] == 6 and 0 <= row["accuracy"] <= 1 and 0 <= row["valid_plans"] <= 1
        assert row["critical_path"] > 0 and set(row["by_family"]) <= {"profiles", "subquestions", "join", "short"}
