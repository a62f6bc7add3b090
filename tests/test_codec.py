"""Prompts and plans in, text out; user text can never become control tags."""

import pytest

from plandiff.model import GenerationOptions, InvalidRequestError
from plandiff.model.codec import TextCodec


def test_plain_prompts_tokenize_as_the_whole_chat_string(compact):
    codec = compact.codec
    for text in ["What is 2+2?", "Line one\nline two  with  spaces", "naïve café 123 — ok"]:
        messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": text}]
        whole = compact.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert codec.encode_prompt(text) == compact.tokenizer.encode(whole, add_special_tokens=False)


@pytest.mark.parametrize("text", ["<sync/>", "a <async>b</async> <|mask|> [PAD] <promise>-<topic>x 3</topic>",
                                  "end here <|im_end|> and <|endoftext|>"])
def test_tag_text_in_a_prompt_stays_text(compact, text):
    content = compact.codec.encode_text(text)
    assert not set(content) & compact.tags.structural
    assert compact.tokenizer.decode(content) == text
    ids = compact.codec.encode_prompt(text)
    tail = compact.tokenizer.encode("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    assert ids[-len(tail) - len(content):] == content + tail
    result = compact.generate(text, GenerationOptions(), plan="<promise>-<topic>a 1</topic><|im_end|>")
    assert result.finish_reason == "end"


def test_prompts_encoded_in_a_batch_are_encoded_one_by_one(compact):
    """encode_prompts (training encodes millions of prompts in one tokenizer call) gives each prompt's
    encode_prompt ids, tag text left as text, with or without a system message."""
    from plandiff.model.training.synthetic import make_split

    codec = compact.codec
    prompts = [e.prompt for e in make_split("train", 40)] + [
        "a <sync/> b", "<|im_end|> x <|mask|>", "ｆｕｌｌ width <async> ok", "é ü 中文 🙂", "Line one\nline two"]
    assert codec.encode_prompts(prompts) == [codec.encode_prompt(p) for p in prompts]
    assert codec.encode_prompts(prompts, system=None) == [codec.encode_prompt(p, system=None) for p in prompts]
    import copy

    plain = copy.deepcopy(compact.tokenizer)  # a tokenizer without a chat template joins the contents
    plain.chat_template = None
    untemplated = TextCodec(plain, codec.profile, codec.tags)
    assert untemplated.encode_prompts(prompts) == [untemplated.encode_prompt(p) for p in prompts]
    with pytest.raises(InvalidRequestError):
        codec.encode_prompts(["fine", ""])
    with pytest.raises(InvalidRequestError):
        codec.encode_prompts(["bad \udcff byte"])


def test_prompt_ids_holding_control_tags_are_rejected(compact):
    ids = compact.encode_prompt("hi")
    for tag in (compact.tags.sync, compact.tags.mask, compact.tags.span_open, compact.tags.promise_open):
        with pytest.raises(InvalidRequestError, match="control-tag ids"):
            compact.generate(ids[:-3] + [tag] + ids[-3:], GenerationOptions())


def test_codec_loads_without_the_network(compact_folder, compact):
    codec = TextCodec.load(compact_folder)
    assert codec.tags == compact.tags
    assert codec.encode_prompt("hello") == compact.encode_prompt("hello")
    result = compact.generate("hello", GenerationOptions(), plan="<promise>-<topic>a 1</topic><|im_end|>")
    assert codec.text(result.token_ids) == result.text


@pytest.mark.parametrize("text", ["", "bad \udcff byte", "lone \ud800 surrogate"])
def test_empty_or_broken_prompts_are_refused_naming_the_field(compact, text):
    with pytest.raises(InvalidRequestError) as err:
        compact.generate(text)
    assert err.value.field == "prompt"


def test_prompt_ids_outside_the_vocabulary_are_refused(compact):
    vocab = compact.checkpoint.config.vocab_size
    for ids in ([1, vocab], [-1, 2], [1, 2.5]):
        with pytest.raises(InvalidRequestError) as err:
            compact.generate(ids)
        assert err.value.field == "prompt_ids"
