"""The synthetic training task (model/training/synthetic.py) and its tokenizer (tokenizer.py)."""

import math
import multiprocessing
import os
import re
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

import pytest
from transformers import PreTrainedTokenizerFast

from plandiff.model.plan_parser import Malformed, PlanParser, RoundEnd, PromiseClosed
from plandiff.model.result import strip_tags
from plandiff.model.tags import TagProfile, TagVocabulary
from plandiff.model.training import synthetic
from plandiff.model.training.synthetic import (
    FAMILIES, MAX_PROMPT_WORDS, Example, ar_completion, completion, make_split, score,
)
from plandiff.model.training.tokenizer import train_tokenizer

PD_TAGS = ["<|mask|>", "<async>", "</async>", "<promise>-<topic>", "</topic>", "<sync/>", "[PAD]"]


@pytest.fixture(scope="module")
def train_examples() -> list[Example]:
    return make_split("train", 500, seed=0)


@pytest.fixture(scope="module")
def tokenizer(train_examples) -> PreTrainedTokenizerFast:
    return train_tokenizer([t for e in train_examples for t in (e.prompt, ar_completion(e))], vocab_size=1024)


@pytest.fixture(scope="module")
def tags(tokenizer) -> TagVocabulary:
    return TagVocabulary.from_tokenizer(tokenizer)


def test_deterministic():
    a, b = make_split("validation", 60, seed=3), make_split("validation", 60, seed=3)
    assert a == b
    assert [e.prompt for e in make_split("validation", 60, seed=4)] != [e.prompt for e in a]


def test_shards_drawn_in_parallel_give_the_same_examples(monkeypatch):
    """A split is drawn in seeded shards; a pool of processes changes nothing but the speed, and
    the first shard is the split's first examples."""
    monkeypatch.setattr(synthetic, "SHARD", 40)
    serial = make_split("validation", 130, seed=3)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        assert make_split("validation", 130, seed=3, pool=pool) == serial
    assert len({e.prompt for e in serial}) == 130
    assert serial[:40] == make_split("validation", 40, seed=3)


def test_the_examples_do_not_depend_on_the_process_hash_seed():
    """Two processes draw the same examples whatever PYTHONHASHSEED is (a set of attribute names
    once ordered the draws: a twin and its PD model, or two eval runs, got different examples)."""
    code = ("import hashlib; from plandiff.model.training.synthetic import make_split; "
            "print(hashlib.sha256(repr([(e.prompt, e.facts) for s in ('train', 'test', 'heldout') "
            "for e in make_split(s, 60, seed=1)]).encode()).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code], env=os.environ | {"PYTHONHASHSEED": seed},
                              capture_output=True, text=True, check=True).stdout for seed in ("1", "2")}
    assert len(digests) == 1


def test_splits_are_disjoint_and_deduplicated(train_examples):
    prompts = {s: [e.prompt for e in make_split(s, 300, seed=0)] for s in ("validation", "test")}
    prompts["train"] = [e.prompt for e in train_examples]
    for s, ps in prompts.items():
        assert len(set(ps)) == len(ps), s
    assert not set(prompts["train"]) & set(prompts["validation"])
    assert not set(prompts["train"]) & set(prompts["test"])
    assert not set(prompts["validation"]) & set(prompts["test"])
    # another seed is still disjoint from the first seed's other splits
    assert not {e.prompt for e in make_split("test", 200, seed=1)} & set(prompts["train"])
    with pytest.raises(ValueError):
        make_split("dev", 1)


def test_families_and_structure(train_examples):
    by_family = {f: [e for e in train_examples if e.family == f] for f in FAMILIES}
    assert all(len(v) >= 20 for v in by_family.values()), {f: len(v) for f, v in by_family.items()}
    for e in by_family["profiles"] + by_family["subquestions"]:
        low, high = (1, 6) if e.family == "profiles" else (2, 4)
        assert len(e.rounds) == 1 and low <= len(e.rounds[0].spans) <= high and not e.rounds[0].lead
        assert e.final is None
    assert {len(e.rounds[0].spans) for e in by_family["profiles"]} == set(range(1, 7))
    facts = [len(g) - 1 for e in by_family["profiles"] for g in e.entities]  # the name aside
    assert min(facts) == 2 and max(facts) == 6
    for e in by_family["join"]:
        assert len(e.rounds) == 2 and 2 <= len(e.rounds[0].spans) <= 4 and len(e.rounds[1].spans) == 1
        assert e.final is not None
    for e in by_family["short"]:
        assert len(e.rounds) == 1 and e.rounds[0].spans == [] and e.rounds[0].lead
        assert e.final is None
    for e in by_family["profiles"]:  # one span per entity, the topic its name's first word, every fact restated
        topics = [topic for topic, _ in e.rounds[0].spans]
        assert len(set(topics)) == len(topics)
        for topic, text in e.rounds[0].spans:
            assert text.startswith(topic) and " " not in topic
    for e in train_examples:
        assert len(e.prompt.split()) <= MAX_PROMPT_WORDS
        assert all(not re.search(r"\d", topic) for r in e.rounds for topic, _ in r.spans)


def test_wording_varies(train_examples):
    openers = {e.rounds[0].spans[0][1].split(" ", 2)[-1][:12] for e in train_examples if e.family == "profiles"}
    assert len(openers) > 30
    assert len({e.prompt.split()[-1] for e in train_examples}) > 50


def _first(text: str, fact: str) -> int | None:
    """Where `fact` first occurs in `text` as whole words, or None."""
    match = re.search(rf"(?<!\w){re.escape(fact)}(?!\w)", text)
    return match.start() if match else None


def test_profile_answers_restate_facts_in_the_order_of_the_prompt(train_examples):
    """Whatever the prompt's layout (per entity, or one sentence per attribute across entities),
    a span restates its entity's facts in the order the prompt first states them."""
    profiles = [e for e in train_examples if e.family == "profiles"
                or e.family == "join" and all(_first(e.prompt, f) is not None for f in e.facts)]
    assert len(profiles) > 100 and any(e.family == "join" for e in profiles)
    for e in profiles:
        for (_, text), group in zip(e.rounds[0].spans, e.entities):
            # the prompt's part about this entity: from its name on (values may be shared)
            about = e.prompt[e.prompt.index(group[0]):]
            if len(set(group)) < len(group) or any(_first(about, f) is None for f in group):
                continue  # by_attribute and table layouts state an entity's facts among the others'
            in_span = sorted(group, key=lambda f: _first(text, f))
            assert in_span == sorted(group, key=lambda f: _first(about, f)), (e.prompt, text)
    assert len({tuple(e.rounds[0].spans[0][1].split()[1:3]) for e in profiles}) > 10  # the wording still varies


def test_a_topic_ending_in_a_digit_is_refused(tokenizer):
    from plandiff.model.training.task_families import Round
    example = Example("profiles", "p", [Round([("Room 2", "Room 2 is free.")])], ["free"])
    with pytest.raises(ValueError, match="digit"):
        completion(example, tokenizer)


def _rounds(ids: list[int], tags: TagVocabulary) -> list[list[int]]:
    out, current = [], []
    for t in ids:
        if t == tags.sync:
            out.append(current)
            current = []
        else:
            current.append(t)
    return [*out, current]


def test_completion_parses_and_lengths_match(train_examples, tokenizer, tags):
    for e in train_examples[:200]:
        text = completion(e, tokenizer)
        if e.family == "short":
            assert text == e.rounds[0].lead
        ids = tokenizer.encode(text, add_special_tokens=False)
        rounds = _rounds(ids, tags)
        assert len(rounds) == len(e.rounds)
        for k, (round_ids, rnd) in enumerate(zip(rounds, e.rounds)):
            first_span = round_ids.index(tags.span_open) if tags.span_open in round_ids else len(round_ids)
            plan = round_ids[:first_span]
            end = tags.sync if k < len(rounds) - 1 else tags.end[0]
            parser = PlanParser(tags)
            events = [ev for ev in (parser.feed(t) for t in [*plan, end]) if ev is not None]
            assert not any(isinstance(ev, Malformed) for ev in events), (text, events)
            promised = [ev for ev in events if isinstance(ev, PromiseClosed)]
            assert events[-1] == RoundEnd("sync" if end == tags.sync else "end", len(rnd.spans))
            # the span contents, as tokenized in context, and their promised lengths
            contents, i = [], first_span
            while i < len(round_ids):
                assert round_ids[i] == tags.span_open
                close = round_ids.index(tags.span_close, i)
                contents.append(round_ids[i + 1:close])
                i = close + 1
            assert len(promised) == len(contents) == len(rnd.spans)
            for ev, content, (topic, span_text) in zip(promised, contents, rnd.spans):
                assert content == tokenizer.encode(span_text, add_special_tokens=False)
                assert ev.number == max(1, math.ceil(len(content) / 10))
                assert tokenizer.decode(list(ev.topic_ids)) == topic


def test_join_as_text_writes_rounds_after_sync_without_promises(train_examples, tokenizer, tags):
    profile = TagProfile()
    joins = [e for e in train_examples if e.family == "join"][:20]
    assert joins
    for e in joins:
        text = completion(e, tokenizer, join="text")
        first, second = text.split("<sync/>")
        assert first == completion(e, tokenizer).split("<sync/>")[0]  # the spans' round is unchanged
        assert "<promise>" not in second and "<async>" not in second
        assert second == e.rounds[1].spans[0][1]  # the join sentence, as plain text
        assert strip_tags(text, profile) == strip_tags(completion(e, tokenizer), profile)  # same answer
        parser = PlanParser(tags)
        events = [parser.feed(t) for t in tokenizer.encode(second + "<|im_end|>", add_special_tokens=False)]
        assert events[-1] == RoundEnd("end", 0)  # a legal round with no promise


def test_score_accepts_references_and_rejects_altered_facts(train_examples, tokenizer):
    profile = TagProfile()
    for e in train_examples[:200]:
        reference = ar_completion(e)
        result = score(e, reference)
        assert result["correct"] and result["facts_found"] == result["facts_total"] == len(e.facts) + (e.final is not None)
        assert result.get("entities_right", 0) == result.get("entities_total", 0) == len(e.entities)
        assert score(e, strip_tags(completion(e, tokenizer), profile))["correct"]
        assert score(e, reference.upper().replace(" ", "  \n"))["correct"]
        for fact in [*e.facts, *([e.final] if e.final else [])]:
            altered = re.sub(rf"(?<!\w){re.escape(fact)}(?!\w)", "zzqx", reference, flags=re.I)
            result = score(e, altered)
            assert not result["correct"], (fact, altered)
            assert result["facts_found"] < result["facts_total"]


def test_score_attributes_facts_to_their_entity():
    """A fact in another entity's part of the answer is wrong, even when the text holds every fact."""
    from plandiff.model.training.task_families import Round
    e = Example("profiles", "p", [Round([("Bruno", "."), ("Ines", ".")])], ["Bruno", "29", "Riga", "Ines", "53", "Oslo"],
                entities=[["Bruno", "29", "Riga"], ["Ines", "53", "Oslo"]])
    assert score(e, "Bruno is 29 and lives in Riga. Ines is 53 and lives in Oslo.")["correct"]
    swapped = score(e, "Bruno is 29 and lives in Oslo. Ines is 53 and lives in Riga.")
    assert not swapped["correct"] and swapped["entities_right"] == 0
    leaked = score(e, "Bruno is 29, lives in Riga and knows Oslo. Ines is 53 and lives in Oslo.")
    assert not leaked["correct"] and leaked["entities_right"] == 1  # Oslo is Ines's
    assert not score(e, "Bruno is 29 and lives in Riga.")["correct"]  # Ines never named


def test_splits_draw_disjoint_value_pools_and_held_out_families():
    """No name of the test split is a training name; the held-out split uses layouts and wordings
    that training never draws."""
    from plandiff.model.training import vocab
    from plandiff.model.training.entities import LAYOUTS_HELD_OUT
    train, test, held = (make_split(s, 200, seed=0) for s in ("train", "test", "heldout"))
    names = lambda examples: {g[0] for e in examples for g in e.entities}  # noqa: E731
    assert names(train) and names(test) and not names(train) & names(test)
    assert all(vocab.pool_of(g[0].split()[0]) == "test" for e in test for g in e.entities)
    assert all(e.held_out for e in held) and not any(e.held_out for e in train + test)
    assert {e.family for e in held} == set(FAMILIES)
    assert not any(line.startswith("1. ") or line.startswith("- name:") for e in train for line in e.prompt.splitlines()
                   if e.family in ("profiles", "join"))
    assert LAYOUTS_HELD_OUT


def test_score_specifics():
    e = Example("join", "p", [], facts=["3", "Oslo"], final="Maya")
    assert not score(e, "Maya lives in Oslo, age 33. Tom is the oldest.")["correct"]  # "3" is not "33"
    assert not score(e, "Maya is 3 and lives in Oslo. Tom is the oldest.")["correct"]  # final not last
    assert score(e, "Tom is 3 and lives in oslo. The oldest is maya.")["correct"]


def test_tokenizer(tokenizer, tags, tmp_path):
    vocab = tokenizer.get_vocab()
    assert len(tokenizer) <= 1024
    for tag in ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *PD_TAGS]:
        assert tokenizer.encode(f"a{tag}b", add_special_tokens=False) == [
            *tokenizer.encode("a", add_special_tokens=False), vocab[tag], *tokenizer.encode("b", add_special_tokens=False)]
    assert set(tokenizer.all_special_tokens) >= {"<|im_end|>", "<|endoftext|>"}
    assert not set(PD_TAGS) & set(tokenizer.all_special_tokens)  # tags are ordinary added tokens
    for number in ["0123456789", "2024", " 37 plus 48"]:
        ids = tokenizer.encode(number, add_special_tokens=False)
        digits = [t for t in ids if tags.digit_value(t) is not None]
        assert len(digits) == sum(c.isdigit() for c in number)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\n")
    text = "<promise>-<topic>Maya Chen 2</topic><async>Maya is 34 and lives in Oslo.</async><sync/>"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text

    tokenizer.save_pretrained(tmp_path)
    loaded = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert loaded.get_vocab() == vocab
    assert loaded.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)
    assert TagVocabulary.from_tokenizer(loaded) == tags
    assert loaded.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                      add_generation_prompt=True) == chat
    assert loaded.eos_token == "<|im_end|>" and loaded.pad_token == "<|endoftext|>"
