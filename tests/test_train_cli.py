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
