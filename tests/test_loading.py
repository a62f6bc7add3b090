"""Checkpoint folders: single vs sharded safetensors, config.json round trips, dtypes, typed errors,
offline loading and the vocabulary layouts. Everything is built locally; nothing is downloaded."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from plandiff.model import CheckpointError, GenerationOptions, ModelRuntime
from plandiff.model.config import DreamConfig
from plandiff.model.loading import INDEX, SINGLE, load_checkpoint, save_checkpoint
from plandiff.model.random_checkpoint import DREAM_IDS, build_random_checkpoint

PLAN = "<promise>-<topic>intro 2</topic><promise>-<topic>body 1</topic><sync/><promise>-<topic>end 1</topic><|im_end|>"


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    """The same seed-3 checkpoint written as one file and as several shards."""
    root = tmp_path_factory.mktemp("pair")
    single = build_random_checkpoint(root / "single", "compact", seed=3)
    sharded = build_random_checkpoint(root / "sharded", "compact", seed=3, max_shard_size="100KB")
    return single, sharded


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def shard_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("model-*-of-*.safetensors"))


# ---------------------------------------------------------------------------------------- single vs sharded


def test_sharded_folder_has_index_and_several_shards(pair):
    single, sharded = pair
    assert (single / SINGLE).exists() and not (single / INDEX).exists()
    assert not (sharded / SINGLE).exists()
    index = json.loads((sharded / INDEX).read_text())
    shards = shard_files(sharded)
    assert len(shards) >= 2
    assert sorted(set(index["weight_map"].values())) == [p.name for p in shards]
    assert index["metadata"]["total_size"] > 0


def test_single_and_sharded_load_identically(pair):
    single, sharded = pair
    a, b = load_checkpoint(single), load_checkpoint(sharded)
    sa, sb = a.network.state_dict(), b.network.state_dict()
    assert set(sa) == set(sb) and len(sa) > 0
    for name in sa:
        assert sa[name].dtype == sb[name].dtype == torch.float32, name
        assert torch.equal(sa[name], sb[name]), name
    # And the files themselves hold the same tensors.
    on_disk = load_file(single / SINGLE)
    from_shards = {k: v for p in shard_files(sharded) for k, v in load_file(p).items()}
    assert set(on_disk) == set(from_shards)
    assert all(torch.equal(on_disk[k], from_shards[k]) for k in on_disk)

    ra, rb = ModelRuntime(a), ModelRuntime(b)
    ga = ra.generate("Hello there", GenerationOptions(steps_ratio=0.5), plan=PLAN)
    gb = rb.generate("Hello there", GenerationOptions(steps_ratio=0.5), plan=PLAN)
    assert ga.finish_reason == "end"
    assert [s.topic for s in ga.spans] == ["intro", "body", "end"]
    assert ga.token_ids == gb.token_ids
    assert ga.text == gb.text


def test_seed_changes_the_weights(pair, compact_folder):
    seed3 = load_checkpoint(pair[0]).network.state_dict()
    seed0 = load_checkpoint(compact_folder).network.state_dict()
    assert not torch.equal(seed3["lm_head.weight"], seed0["lm_head.weight"])


# ---------------------------------------------------------------------------------------- config.json


def test_config_json_round_trips(compact_folder, tmp_path):
    config = DreamConfig.from_file(compact_folder / "config.json")
    assert DreamConfig.from_dict(config.to_dict()) == config
    config.save(tmp_path / "config.json")
    again = DreamConfig.from_file(tmp_path / "config.json")
    assert again == config
    assert json.loads((tmp_path / "config.json").read_text()) == json.loads((compact_folder / "config.json").read_text())


def test_config_json_has_the_official_loaders_keys(compact_folder):
    data = json.loads((compact_folder / "config.json").read_text())
    assert data["model_type"] == "Dream"
    assert data["sliding_window"] == data["max_position_embeddings"]
    assert data["mask_token_id"] == 259  # <|mask|> in the compact layout
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "rope_theta", "rms_norm_eps", "tie_word_embeddings", "torch_dtype"):
        assert key in data, key
    assert "extra" not in data
    generation = json.loads((compact_folder / "generation_config.json").read_text())
    assert generation["mask_token_id"] == data["mask_token_id"]
    assert generation["eos_token_id"] == data["eos_token_id"]


def test_unknown_config_keys_survive_load_and_save(compact_folder, tmp_path):
    folder = copy_folder(compact_folder, tmp_path / "ckpt")
    data = json.loads((folder / "config.json").read_text())
    data["my_custom_key"] = {"nested": [1, 2, 3]}
    data["transformers_version"] = "4.99.0"
    (folder / "config.json").write_text(json.dumps(data))

    checkpoint = load_checkpoint(folder)
    assert checkpoint.config.extra["my_custom_key"] == {"nested": [1, 2, 3]}
    out = tmp_path / "saved"
    save_checkpoint(out, checkpoint.config, checkpoint.network, checkpoint.tokenizer)
    saved = json.loads((out / "config.json").read_text())
    assert saved["my_custom_key"] == {"nested": [1, 2, 3]}
    assert saved["transformers_version"] == "4.99.0"
    reloaded = load_checkpoint(out)
    assert reloaded.config == checkpoint.config
    assert reloaded.config.extra["my_custom_key"] == {"nested": [1, 2, 3]}


# ---------------------------------------------------------------------------------------- dtypes


def test_bfloat16_load_and_generate(compact_folder):
    runtime = ModelRuntime.load(compact_folder, dtype="bfloat16")
    dtypes = {p.dtype for p in runtime.network.parameters()}
    assert dtypes == {torch.bfloat16}
    result = runtime.generate("Hi", GenerationOptions(), plan="<promise>-<topic>a 1</topic><|im_end|>")
    assert result.finish_reason == "end"
    assert len(result.spans) == 1 and len(result.spans[0].token_ids) == 10


def test_dtype_defaults_to_config_torch_dtype(compact_folder):
    checkpoint = load_checkpoint(compact_folder)
    assert checkpoint.config.torch_dtype == "float32"
    assert {p.dtype for p in checkpoint.network.parameters()} == {torch.float32}
    assert {p.dtype for p in load_checkpoint(compact_folder, dtype=torch.float16).network.parameters()} == {
        torch.float16
    }


@pytest.mark.parametrize("dtype", ["float64", "int8", "fp32"])
def test_unknown_dtype_is_a_checkpoint_error(compact_folder, dtype):
    with pytest.raises(CheckpointError, match=dtype):
        load_checkpoint(compact_folder, dtype=dtype)


# ---------------------------------------------------------------------------------------- typed errors


def test_folder_without_config_json(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(tmp_path / "does-not-exist")


def test_folder_without_weights(compact_folder, tmp_path):
    folder = copy_folder(compact_folder, tmp_path / "ckpt")
    (folder / SINGLE).unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_checkpoint(folder)


def test_missing_shard_is_named(pair, tmp_path):
    folder = copy_folder(pair[1], tmp_path / "ckpt")
    gone = shard_files(folder)[1]
    gone.unlink()
    with pytest.raises(CheckpointError, match=gone.name):
        load_checkpoint(folder)


def test_missing_weight_is_named(compact_folder, tmp_path):
    folder = copy_folder(compact_folder, tmp_path / "ckpt")
    state = load_file(folder / SINGLE)
    del state["lm_head.weight"]
    save_file(state, folder / SINGLE, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing") as err:
        load_checkpoint(folder)
    assert "lm_head.weight" in str(err.value)


def test_unexpected_weight_is_named(compact_folder, tmp_path):
    folder = copy_folder(compact_folder, tmp_path / "ckpt")
    state = load_file(folder / SINGLE)
    state["model.extra_thing.weight"] = torch.zeros(2)
    save_file(state, folder / SINGLE, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="unexpected") as err:
        load_checkpoint(folder)
    assert "model.extra_thing.weight" in str(err.value)


def test_unresolvable_tag_override_names_the_tag(compact_folder, tmp_path):
    folder = copy_folder(compact_folder, tmp_path / "ckpt")
    data = json.loads((folder / "config.json").read_text())
    data["plandiff_tags"] = {"sync": "<nope/>"}
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="sync") as err:
        load_checkpoint(folder)
    assert "<nope/>" in str(err.value)


def test_unknown_tag_override_key(compact_folder, tmp_path):
    folder = copy_folder(compact_folder, tmp_path / "ckpt")
    data = json.loads((folder / "config.json").read_text())
    data["plandiff_tags"] = {"synk": "<sync/>"}
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="synk"):
        load_checkpoint(folder)


def test_folder_without_tokenizer(compact_folder, tmp_path):
    folder = copy_folder(compact_folder, tmp_path / "ckpt")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="tokenizer"):
        load_checkpoint(folder)


def _bad_json(data: dict, folder: Path) -> None:
    (folder / "config.json").write_text("{not json")


def _bad_activation(data: dict, folder: Path) -> None:
    data["hidden_act"] = "gelu"
    (folder / "config.json").write_text(json.dumps(data))


def _shape_mismatch(data: dict, folder: Path) -> None:
    data["hidden_size"] = 32
    (folder / "config.json").write_text(json.dumps(data))


def _corrupt_weights(data: dict, folder: Path) -> None:
    (folder / SINGLE).write_bytes(b"garbage")


@pytest.mark.parametrize("damage", [
    pytest.param(_bad_json, id="invalid-json"),
    pytest.param(_bad_activation, id="unsupported-hidden-act"),
    pytest.param(_shape_mismatch, id="shape-mismatch"),
    pytest.param(_corrupt_weights, id="corrupt-safetensors"),
])
def test_damaged_folder_is_a_checkpoint_error(compact_folder, tmp_path, damage):
    folder = copy_folder(compact_folder, tmp_path / "ckpt")
    damage(json.loads((folder / "config.json").read_text()), folder)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(folder)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400  # one short line, not torch's dump


def test_a_wrong_weight_shape_names_the_weights(compact_folder, tmp_path):
    folder = copy_folder(compact_folder, tmp_path / "ckpt")
    _shape_mismatch(json.loads((folder / "config.json").read_text()), folder)
    with pytest.raises(CheckpointError, match=r"embed_tokens.weight is \(\d+, 64\), config.json implies \(\d+, 32\)"
                                              r".*and \d+ more"):
        load_checkpoint(folder)


# ---------------------------------------------------------------------------------------- offline


def test_loading_never_touches_the_network(compact_folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted during loading")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    runtime = ModelRuntime.load(compact_folder)
    result = runtime.generate("Hi", GenerationOptions(), plan="<promise>-<topic>a 1</topic><|im_end|>")
    assert result.finish_reason == "end"
    assert attempts == []


# ---------------------------------------------------------------------------------------- vocabulary layouts


def test_dream_layout_ids(dream):
    assert dream.tags.sync == DREAM_IDS["<sync/>"] == 151671
    assert dream.tags.mask == 151666 == dream.checkpoint.config.mask_token_id
    assert dream.tags.promise_open == 151669
    assert dream.tags.pad == 151672
    assert 151645 in dream.tags.end  # <|im_end|>
    assert dream.checkpoint.config.vocab_size == 152064
    assert dream.network.state_dict()["lm_head.weight"].shape[0] == 152064
    assert dream.tags.digits == tuple(range(15, 25))


def test_compact_layout_ids(compact):
    assert compact.tags.sync == 264
    assert compact.tags.mask == 259 == compact.checkpoint.config.mask_token_id
    assert compact.checkpoint.config.vocab_size == 272
    assert compact.tags.digits == tuple(range(15, 25))
    assert max(compact.tags.structural) < compact.checkpoint.config.vocab_size


def test_loading_and_generating_do_not_import_the_compiler():
    """torch._dynamo takes 2–3 s to import on 2 cores, a third of a first `plandiff generate`:
    building the network on the meta device to load weights into must not pull it in (torch's
    initialisers and arithmetic on meta do, as reference ops), nor must a CPU answer."""
    code = ("import sys; from plandiff.model import ModelRuntime; "
            "ModelRuntime.load('model/demo/pd').generate('Hello there'); print('torch._dynamo' in sys.modules)")
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).parents[1])
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.strip().splitlines()[-1] == "False"

