"""A synthetic instruction task with natural parallel structure and verifiable answers.

Pure Python, seeded, no downloads. Four families (drawn in task_families.py, people and companies
in entities.py, the sub-questions' tables in tables.py, the values in vocab.py), each example
records its own:

- ``profiles``: facts about 1–6 invented people or companies (2–6 facts each, any subset, in one of
  many layouts and wordings); the answer describes each entity in its own span (topic = the
  entity's first name), restating every fact in the order the prompt gives them.
- ``subquestions``: 2–4 independent questions about a small table given in the prompt (sums,
  differences, lookups, maxima, yes/no comparisons); one span per question.
- ``join``: profiles or purchases, then one sentence after ``<sync/>`` that depends on the spans
  (who is oldest, the total spent…): round 2 has one promise and one span.
- ``short``: a short question answered by one plain sentence, no promise, no span; a request the
  task does not cover gets a short honest answer.

Every example lists ``facts`` (names, numbers, cities… that a correct answer must contain) and, for
``join``, the ``final`` fact of the join sentence. `score` checks them as whole words
(case-insensitive, whitespace-normalized); the final fact must be in the answer's last sentence.
For the entity families each fact must be in its own entity's part of the answer (from its name to
the next entity's), and no other entity's fact may be there: one person's city in another person's
span is wrong.

Splits: ``train``, ``validation`` and ``test`` draw the training wording and layout families, each
from its own value pool (vocab.py: no test name, city or job is ever trained on) and its own seed,
and a prompt belongs to one split only (a hash of its text). ``heldout`` draws the wording and
layout families kept out of training, from the test pool.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from concurrent.futures import Executor

from .task_families import MAKERS, Draw, Example, Retry

FAMILIES = ("profiles", "subquestions", "join", "short")
DEFAULT_MIX = {"profiles": 0.35, "subquestions": 0.2, "join": 0.3, "short": 0.15}
SPLITS = ("train", "validation", "test", "heldout")
DRAWS = {"train": Draw("train"), "validation": Draw("validation"), "test": Draw("test"),
         "heldout": Draw("test", held_out=True)}
MAX_PROMPT_WORDS = 200
MAX_SPAN_WORDS = 60


# ----------------------------------------------------------------------------------------------
# Splits


def _words(text: str) -> int:
    return len(text.split())


def _valid(example: Example) -> bool:
    if _words(example.prompt) > MAX_PROMPT_WORDS:
        return False
    spans = [text for r in example.rounds for _, text in r.spans]
    if any(_words(text) > MAX_SPAN_WORDS for text in spans):
        return False
    if example.entities:
        return _valid_entities(example)
    keys = [_norm(f) for f in example.facts] + ([_norm(example.final)] if example.final else [])
    if len(set(keys)) != len(keys):
        return False
    if example.family != "short":
        # each fact is in exactly one span of the first round (the span that owns it)
        first = [_norm(text) for _, text in example.rounds[0].spans]
        for fact in example.facts:
            if sum(_contains(t, _norm(fact)) for t in first) != 1:
                return False
    if example.final is not None and not _contains(_norm(example.rounds[-1].spans[-1][1]), _norm(example.final)):
        return False
    return all(_contains(_norm(ar_completion(example)), _norm(f)) for f in example.facts)


def _valid_entities(example: Example) -> bool:
    """Each entity's span holds its facts and no fact of another entity (values two entities share
    aside), names are distinct from every value, and the join sentence holds its final fact: the
    attributed score (`score`) is then exact on the reference answer."""
    first = [_norm(text) for _, text in example.rounds[0].spans]
    groups = [[_norm(f) for f in g] for g in example.entities]
    names = {g[0].split()[0] for g in groups}
    if any(_norm(v) in names for g in groups for v in g[1:]) or len(first) != len(groups):
        return False
    for i, (text, mine) in enumerate(zip(first, groups)):
        if not all(_contains(text, f) for f in mine):
            return False
        foreign = {f for j, g in enumerate(groups) if j != i for f in g} - set(mine)
        if any(_contains(text, f) for f in foreign):
            return False
    if example.final is not None and not _contains(_norm(example.rounds[-1].spans[-1][1]), _norm(example.final)):
        return False
    return score(example, ar_completion(example))["correct"]


def _split_of(prompt: str) -> str:
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return SPLITS[digest[0] % 3]


def generate(rng: random.Random, family: str, draw: Draw = Draw()) -> Example:
    """One valid example of a family (no split constraint), from `draw`'s pool and families."""
    for _ in range(1000):
        try:
            example = MAKERS[family](rng, draw)
        except Retry:
            continue
        if _valid(example):
            return example
    raise RuntimeError(f"could not draw a valid {family} example")


SHARD = 10_000  # examples drawn from one seeded stream; shards are drawn in parallel


def make_split(split: str, n: int, seed: int = 0, mix: dict[str, float] | None = None,
               pool: Executor | None = None) -> list[Example]:
    """n distinct examples of a split; the same arguments give the same examples, with or without
    a `pool` of worker processes to draw them in.

    A prompt belongs to one split only (a hash of its text picks it), so splits never share a
    prompt, whatever their seeds. `mix` weights the families (DEFAULT_MIX by default). Examples come
    in shards of SHARD from their own seeded streams, concatenated in order with repeats dropped;
    the first SHARD examples of a split are its first shard's.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    mix = mix or DEFAULT_MIX
    out: list[Example] = []
    seen: set[str] = set()
    shard = 0
    while len(out) < n:
        # Shards for what is missing, all at once; a repeat across shards costs a small top-up.
        missing = n - len(out)
        sizes = [SHARD] * (missing // SHARD) + [missing % SHARD] * bool(missing % SHARD)
        jobs = [(split, size, seed, mix, shard + k) for k, size in enumerate(sizes)]
        shard += len(jobs)
        for drawn in (pool.map if pool else map)(draw_shard, *zip(*jobs)):
            for example in drawn:
                if example.prompt not in seen and len(out) < n:
                    seen.add(example.prompt)
                    out.append(example)
    return out


def draw_shard(split: str, n: int, seed: int, mix: dict[str, float], index: int) -> list[Example]:
    families = [f for f in FAMILIES if mix.get(f, 0) > 0]
    weights = [mix[f] for f in families]
    rng = random.Random(f"plandiff-synthetic/{seed}/{split}" + (f"/{index}" if index else ""))
    seen: set[str] = set()
    out: list[Example] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise RuntimeError(f"could not draw {n} distinct {split} examples (got {len(out)})")
        family = rng.choices(families, weights)[0]
        example = generate(rng, family, DRAWS[split])
        # A prompt with values of the split's pool cannot be drawn by another split; the held-out
        # split's families are never drawn by the others; the rest is split by a hash.
        if example.prompt in seen or not (example.pooled or split == "heldout" or _split_of(example.prompt) == split):
            continue
        seen.add(example.prompt)
        out.append(example)
    return out


# ----------------------------------------------------------------------------------------------
# Annotations and scoring

def completion(example: Example, tokenizer, unit: int = 10, join: str = "span") -> str:
    """The planned-diffusion annotation: per round its lead text, its promises, then its spans;
    rounds joined by ``<sync/>``. A promise's number is ceil(span tokens / unit), at least 1,
    written right after the topic (``Maya3``: the released checkpoints' ``Maya 3`` spends a plan
    token, a sequential step, on the space; the parser reads the trailing digits either way).
    join="text" writes the rounds after a ``<sync/>`` as plain autoregressive text instead (a
    round with no promise), so a sentence that computes from the spans is decoded left to right."""
    rounds = []
    planned = [r for index, r in enumerate(example.rounds) if not (index and join == "text")]
    # Every span of the example in one call (a call per span was most of the encoding time).
    counts = iter(len(e.ids) for e in tokenizer.backend_tokenizer.encode_batch(
        [text for r in planned for _, text in r.spans], add_special_tokens=False))
    for index, r in enumerate(example.rounds):
        if index and join == "text":
            rounds.append(" ".join([r.lead] * bool(r.lead) + [text for _, text in r.spans]))
            continue
        promises, spans = [], []
        for topic, text in r.spans:
            if topic[-1:].isdigit():
                raise ValueError(f"a topic must not end in a digit (it would read as the length): {topic!r}")
            count = next(counts)
            promises.append(f"<promise>-<topic>{topic}{max(1, math.ceil(count / unit))}</topic>")
            spans.append(f"<async>{text}</async>")
        rounds.append(r.lead + "".join(promises) + "".join(spans))
    return "<sync/>".join(rounds)


def ar_completion(example: Example) -> str:
    """The same answer with no tags: lead texts and span texts, in order, joined by single spaces."""
    parts = []
    for r in example.rounds:
        if r.lead:
            parts.append(r.lead)
        parts.extend(text for _, text in r.spans)
    return " ".join(parts)


def record(example: Example, tokenizer, unit: int = 10) -> dict[str, str]:
    """A training row in the reference's format (§5.1): {"prompt", "completion"}."""
    return {"prompt": example.prompt, "completion": completion(example, tokenizer, unit)}


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _contains(normalized_text: str, normalized_fact: str) -> bool:
    """`fact` occurs as whole words (no word character on either side)."""
    return _find(normalized_text, normalized_fact) is not None


def _find(normalized_text: str, normalized_fact: str) -> int | None:
    """Where `fact` first occurs as whole words, or None (str.find: a regex per fact would be
    compiled anew, as drawing checks more distinct facts than the regex cache holds)."""
    start = normalized_text.find(normalized_fact)
    while start >= 0:
        end = start + len(normalized_fact)
        if not (start and _is_word(normalized_text[start - 1])) and not (
                end < len(normalized_text) and _is_word(normalized_text[end])):
            return start
        start = normalized_text.find(normalized_fact, start + 1)
    return None


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"


def _last_sentence(normalized_text: str) -> str:
    pieces = re.split(r"(?<=[.!?])\s+", normalized_text.strip())
    return pieces[-1] if pieces else ""


def entity_parts(example: Example, normalized_text: str) -> list[str | None]:
    """Per entity, its part of the answer: from the first mention of its first name to the next
    entity's first mention (None: never named). Spans and the AR twin's text are cut alike."""
    starts = [_find(normalized_text, _norm(g[0].split()[0])) for g in example.entities]
    named = sorted((s, i) for i, s in enumerate(starts) if s is not None)
    parts: list[str | None] = [None] * len(starts)
    for k, (start, i) in enumerate(named):
        end = named[k + 1][0] if k + 1 < len(named) else len(normalized_text)
        parts[i] = normalized_text[start:end]
    return parts


def score(example: Example, answer_text: str) -> dict:
    """Whole-word, case-insensitive, whitespace-normalized fact check.

    facts_total counts the facts and the final fact; the final fact must be in the answer's last
    sentence. For the entity families a fact counts only in its own entity's part of the answer,
    and an entity whose part states another entity's fact is wrong (entities_right counts the
    entities with every fact right). correct iff every fact is found (and, there, every entity right).
    """
    text = _norm(answer_text)
    result: dict = {}
    if example.entities:
        groups = [[_norm(f) for f in g] for g in example.entities]
        parts = entity_parts(example, text)
        found, right = 0, 0
        for i, (part, mine) in enumerate(zip(parts, groups)):
            hits = sum(part is not None and _contains(part, f) for f in mine)
            foreign = {f for j, g in enumerate(groups) if j != i for f in g} - set(mine)
            # the join sentence after the spans may name another entity: it is checked as `final`
            own = part if example.final is None or part is None else part[:len(part) - len(_last_sentence(part))]
            leak = own is not None and any(_contains(own, f) for f in foreign)
            found += hits
            right += hits == len(mine) and not leak
        total = sum(len(g) for g in groups)
        result = {"entities_right": right, "entities_total": len(groups)}
        correct = right == len(groups)
    else:
        found = sum(_contains(text, _norm(f)) for f in example.facts)
        total = len(example.facts)
        correct = True
    if example.final is not None:
        total += 1
        found += _contains(_last_sentence(text), _norm(example.final))
    return {"correct": correct and found == total, "facts_found": found, "facts_total": total, **result}
