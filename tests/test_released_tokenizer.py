"""Checkpoints shaped like the released ones: a remote-code `DreamTokenizer` named in
tokenizer_config.json, vocab.json + merges.txt, tags as added tokens. We load them with the library's
Qwen2 BPE, and refuse a tokenizer that would renumber the declared tag ids."""

import json
import shutil

import pytest

from plandiff.model import CheckpointError, GenerationOptions, ModelRuntime
from plandiff.model.random_checkpoint import DREAM_IDS, PD_TOKENS, SPECIAL, byte_symbols

PLAN = "<promise>-<topic>first 2</topic><promise>-<topic>second 1</topic><|im_end|>"


def dream_style_tokenizer(folder, ids):
    """Write vocab.json/merges.txt/tokenizer_config.json as the released checkpoints have them."""
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    (folder / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(byte_symbols())}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    added = {str(i): {"content": s, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False,
                      "special": s in SPECIAL} for s, i in sorted(ids.items(), key=lambda kv: kv[1])}
    config = {"tokenizer_class": "DreamTokenizer", "added_tokens_decoder": added,
              "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
              "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "clean_up_tokenization_spaces": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def test_remote_code_tokenizer_is_loaded_as_qwen2_bpe(compact_folder, compact, tmp_path):
    folder = tmp_path / "released-like"
    shutil.copytree(compact_folder, folder)
    dream_style_tokenizer(folder, {s: 256 + i for i, s in enumerate(SPECIAL + PD_TOKENS)})
    runtime = ModelRuntime.load(folder)
    assert type(runtime.tokenizer).__name__ == "Qwen2Tokenizer"
    assert runtime.tags == compact.tags
    prompt = compact.encode_prompt("hello")
    ours = runtime.generate(prompt, GenerationOptions(), plan=PLAN)
    reference = compact.generate(prompt, GenerationOptions(), plan=PLAN)
    assert ours.token_ids == reference.token_ids


def test_a_tokenizer_that_renumbers_tags_is_refused(compact_folder, tmp_path):
    folder = tmp_path / "gap"
    shutil.copytree(compact_folder, folder)
    dream_style_tokenizer(folder, DREAM_IDS)  # ids far past the vocabulary: the library renumbers them
    with pytest.raises(CheckpointError, match="declares id 151643"):
        ModelRuntime.load(folder)
