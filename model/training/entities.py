"""People and companies for the synthetic task: entities with 2–6 facts drawn from a split's value
pools (vocab.py), written as a prompt in one of many layouts, or as a span that restates every fact.

Layouts come in families; LAYOUTS_HELD_OUT are never drawn for training, so the held-out split
measures layouts the model has not seen (issue 18).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace

from . import vocab
from .vocab import cap

LAYOUTS = ("sentence", "split", "parentheses", "bullets", "key_value", "json", "table", "by_attribute")
LAYOUTS_HELD_OUT = ("numbered", "yaml", "slash")


def article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def age_article(age: int) -> str:
    return "an" if age in (8, 11, 18) or 80 <= age <= 89 else "a"


def join_list(parts: list[str], rng: random.Random) -> str:
    if len(parts) == 1:
        return parts[0]
    conj = rng.choice([" and ", ", and "]) if len(parts) > 2 else " and "
    return ", ".join(parts[:-1]) + conj + parts[-1]


@dataclass
class Entity:
    kind: str  # "person" | "company"
    name: str
    pronoun: str  # "She", "He", "They", "It"
    attrs: dict[str, int | str]


# Per attribute: clauses for the prompt (verb phrases after the subject), keyed descriptors for
# list-style prompts, field names for key: value, JSON and tables, and clauses for the answer.
# {v} is the value, {av} the value with its article.
_PERSON_ATTRS: dict[str, dict[str, list[str]]] = {
    "age": {"clause": ["is {v} years old", "is {v}", "is aged {v}", "has just turned {v}"],
            "list": ["{v} years old", "age {v}", "aged {v}", "{v}"],
            "key": ["age", "Age"],
            "answer": ["is {v} years old", "is {v}", "is aged {v}"]},
    "city": {"clause": ["lives in {v}", "is based in {v}", "comes from {v}", "resides in {v}", "calls {v} home"],
             "list": ["lives in {v}", "from {v}", "based in {v}", "home: {v}", "in {v}"],
             "key": ["city", "City", "home", "lives in"],
             "answer": ["lives in {v}", "is based in {v}", "resides in {v}", "calls {v} home"]},
    "job": {"clause": ["works as {av}", "is {av}", "has a job as {av}", "earns a living as {av}", "is employed as {av}"],
            "list": ["{av}", "works as {av}", "job: {v}", "{v} by trade"],
            "key": ["job", "Job", "occupation", "profession"],
            "answer": ["works as {av}", "is {av}", "has a job as {av}", "earns a living as {av}"]},
    "hobby": {"clause": ["enjoys {v}", "likes {v}", "loves {v}", "spends weekends {v}"],
              "list": ["enjoys {v}", "hobby: {v}", "likes {v}"],
              "key": ["hobby", "Hobby", "pastime"],
              "answer": ["enjoys {v}", "likes {v}", "loves {v}", "spends free time {v}"]},
    "pet": {"clause": ["has {av}", "owns {av}", "keeps {av} at home"],
            "list": ["has {av}", "owns {av}", "pet: {v}"],
            "key": ["pet", "Pet"],
            "answer": ["has {av}", "owns {av}", "keeps {av} as a pet"]},
    "language": {"clause": ["speaks {v}", "is fluent in {v}", "is learning {v}"],
                 "list": ["speaks {v}", "language: {v}", "fluent in {v}"],
                 "key": ["language", "Language", "speaks"],
                 "answer": ["speaks {v}", "is fluent in {v}", "can speak {v}"]},
    "color": {"clause": ["loves the colour {v}", "has {v} as a favourite colour", "likes {v} best"],
              "list": ["favourite colour {v}", "likes {v}", "colour: {v}"],
              "key": ["favourite colour", "color", "Colour"],
              "answer": ["loves the colour {v}", "likes {v} best", "has {v} as a favourite colour"]},
}
_COMPANY_ATTRS: dict[str, dict[str, list[str]]] = {
    "founded": {"clause": ["was founded in {v}", "dates back to {v}", "opened in {v}", "has existed since {v}"],
                "list": ["founded in {v}", "since {v}", "established {v}"],
                "key": ["founded", "Founded", "year founded"],
                "answer": ["was founded in {v}", "dates back to {v}", "has existed since {v}", "opened in {v}"]},
    "city": {"clause": ["is based in {v}", "has its headquarters in {v}", "is located in {v}"],
             "list": ["based in {v}", "headquarters in {v}", "in {v}"],
             "key": ["city", "headquarters", "HQ"],
             "answer": ["is based in {v}", "has its headquarters in {v}", "is located in {v}"]},
    "product": {"clause": ["makes {v}", "sells {v}", "produces {v}"],
                "list": ["makes {v}", "sells {v}", "product: {v}"],
                "key": ["product", "Products", "makes"],
                "answer": ["makes {v}", "sells {v}", "produces {v}", "is known for its {v}"]},
    "staff": {"clause": ["employs {v} people", "has {v} employees", "has a staff of {v}"],
              "list": ["{v} employees", "{v} staff", "staff of {v}"],
              "key": ["staff", "employees", "Staff"],
              "answer": ["employs {v} people", "has {v} employees", "has a staff of {v}"]},
    "ceo": {"clause": ["is run by {v}", "is led by {v}", "has {v} as its chief executive"],
            "list": ["run by {v}", "CEO {v}", "led by {v}"],
            "key": ["CEO", "chief executive", "boss"],
            "answer": ["is run by {v}", "is led by {v}", "has {v} as its chief executive"]},
}


def attrs_table(kind: str) -> dict[str, dict[str, list[str]]]:
    return _PERSON_ATTRS if kind == "person" else _COMPANY_ATTRS


def _fill(template: str, value: int | str) -> str:
    v = str(value)
    return template.format(v=v, av=f"{article(v)} {v}")


def _person_name(rng: random.Random, pool: str) -> str:
    first = vocab.draw(rng, "first", pool)
    r = rng.random()
    return first if r < 0.5 else f"{first} {vocab.draw(rng, 'surname', pool)}"


def draw_entities(rng: random.Random, kind: str, n: int, n_attrs: int | tuple[int, int], pool: str,
                  required: str | None = None, same_keys: bool = False) -> list[Entity]:
    """n entities of one kind, with distinct first words; each has `n_attrs` facts (a number, or a
    (least, most) range drawn per entity) in any subset of the attributes, `required` among them.
    Values may be shared between entities (two people in one city), as in real prompts."""
    table = attrs_table(kind)
    low, high = (n_attrs, n_attrs) if isinstance(n_attrs, int) else n_attrs
    high = min(high, len(table))
    names: list[str] = []
    while len(names) < n:
        if kind == "person":
            name = _person_name(rng, pool)
        else:
            name = f"{vocab.draw(rng, 'company', pool)} {rng.choice(vocab.COMPANY_SUFFIX)}"
        if any(name.split()[0] == other.split()[0] for other in names):
            continue
        names.append(name)
    shared_keys = _keys(rng, table, rng.randint(low, high), required)
    entities = []
    for name in names:
        keys = shared_keys if same_keys else _keys(rng, table, rng.randint(low, high), required)
        pronoun = "It" if kind == "company" else rng.choice(["She", "He", "They"]) if rng.random() < 0.3 else (
            "She" if rng.random() < 0.5 else "He")
        entities.append(Entity(kind, name, pronoun, {k: None for k in keys}))
    for key in dict.fromkeys(k for e in entities for k in e.attrs):  # in order: a set's would vary with PYTHONHASHSEED
        holders = [e for e in entities if key in e.attrs]
        values = _values(rng, key, len(holders), pool, distinct=key == required or rng.random() < 0.6)
        for e, v in zip(holders, values):
            e.attrs[key] = v
    return entities


def _keys(rng: random.Random, table: dict, count: int, required: str | None) -> list[str]:
    optional = [k for k in table if k != required]
    keys = rng.sample(optional, count - bool(required)) + ([required] if required else [])
    rng.shuffle(keys)
    return keys


def _values(rng: random.Random, key: str, n: int, pool: str, distinct: bool) -> list[int | str]:
    def one() -> int | str:
        if key == "age":
            return rng.randint(19, 89)
        if key == "founded":
            return rng.randint(1850, 2024)
        if key == "staff":
            return rng.randint(12, 990)
        if key == "ceo":
            return f"{vocab.draw(rng, 'first', pool)} {vocab.draw(rng, 'surname', pool)}"
        return vocab.draw(rng, key, pool)

    values: list[int | str] = []
    tries = 0
    while len(values) < n:
        v = one()
        tries += 1
        if distinct and v in values and tries < 100:
            continue
        # not distinct: now and then a value repeats on purpose (a shared city or job)
        values.append(values[0] if values and not distinct and rng.random() < 0.4 else v)
    return values


# ----------------------------------------------------------------------------------------------
# The prompt's layouts

def describe_prompt(rng: random.Random, entities: list[Entity], layout: str) -> tuple[str, list[Entity]]:
    """The facts of the prompt in `layout`; and the entities with their facts reordered as the
    prompt states them (the order an answer restates them in)."""
    table = attrs_table(entities[0].kind)
    if layout == "by_attribute":
        keys = list(dict.fromkeys(k for e in entities for k in e.attrs))
        rng.shuffle(keys)
        sentences = []
        for key in keys:
            parts = [f"{e.name} {_fill(rng.choice(table[key]['clause']), e.attrs[key])}" for e in entities if key in e.attrs]
            sentences.append(join_list(parts, rng) + ".")
        return " ".join(sentences), [_reordered(e, [k for k in keys if k in e.attrs]) for e in entities]
    if layout in ("json", "table", "key_value", "yaml"):
        return _structured(rng, entities, layout, table)
    stated = []
    for e in entities:
        keys = list(e.attrs)
        rng.shuffle(keys)
        stated.append(_reordered(e, keys))
    lines = [_entity_line(rng, e, layout, table, i) for i, e in enumerate(stated)]
    if layout == "parentheses":
        return join_list(lines, rng), stated
    sep = "\n" if layout in ("bullets", "numbered") or layout == "slash" and rng.random() < 0.5 else " "
    return sep.join(lines), stated


def _entity_line(rng: random.Random, e: Entity, layout: str, table: dict, index: int) -> str:
    keys = list(e.attrs)
    descriptors = [_fill(rng.choice(table[k]["list"]), e.attrs[k]) for k in keys]
    if layout == "parentheses":
        return f"{e.name} ({', '.join(descriptors)})"
    if layout == "bullets":
        return f"{rng.choice(['- ', '* ', '• '])}{e.name}: {', '.join(descriptors)}"
    if layout == "numbered":
        return f"{index + 1}. {e.name} - {', '.join(descriptors)}"
    if layout == "slash":
        return f"{e.name}: {' / '.join(descriptors)}."
    clauses = [_fill(rng.choice(table[k]["clause"]), e.attrs[k]) for k in keys]
    if layout == "sentence" or len(keys) < 2:
        return f"{e.name} {join_list(clauses, rng)}."
    cut = rng.randint(1, len(keys) - 1)
    if rng.random() < 0.7:
        return f"{e.name} {join_list(clauses[:cut], rng)}. {e.pronoun} {join_list([_agree(e, c) for c in clauses[cut:]], rng)}."
    return f"{e.name} {join_list(clauses[:cut], rng)}. {e.name.split()[0]} {join_list(clauses[cut:], rng)}."


def _structured(rng: random.Random, entities: list[Entity], layout: str, table: dict) -> tuple[str, list[Entity]]:
    """Field-per-value layouts; a table needs one set of columns, so it states every entity's
    facts in one order (missing ones left empty)."""
    keys = list(dict.fromkeys(k for e in entities for k in e.attrs))
    rng.shuffle(keys)
    labels = {k: rng.choice(table[k]["key"]) for k in keys}
    name_label = rng.choice(["name", "Name"])
    stated = [_reordered(e, [k for k in keys if k in e.attrs]) for e in entities]
    if layout == "json":
        rows = [{name_label: e.name, **{labels[k]: e.attrs[k] for k in e.attrs}} for e in stated]
        return json.dumps(rows, indent=rng.choice([None, 1])), stated
    if layout == "table":
        head = [name_label, *(labels[k] for k in keys)]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join([e.name, *(str(e.attrs.get(k, "")) for k in keys)]) + " |" for e in stated]
        return "\n".join(lines), stated
    if layout == "yaml":
        blocks = [f"- {name_label}: {e.name}\n" + "\n".join(f"  {labels[k]}: {e.attrs[k]}" for k in e.attrs) for e in stated]
        return "\n".join(blocks), stated
    blocks = [f"{name_label}: {e.name}\n" + "\n".join(f"{cap(labels[k])}: {e.attrs[k]}" for k in e.attrs) for e in stated]
    return "\n\n".join(blocks), stated


def _reordered(e: Entity, keys: list[str]) -> Entity:
    return replace(e, attrs={k: e.attrs[k] for k in keys})


# ----------------------------------------------------------------------------------------------
# The answer

def describe_answer(rng: random.Random, e: Entity) -> str:
    """One span: the entity with every fact restated, in the order of `e.attrs` (the prompt's, from
    describe_prompt). The wording varies; the order does not, as a reader would expect: an order
    drawn afresh per answer is noise that no model can predict from the prompt (docs/training.md)."""
    table = attrs_table(e.kind)
    keys = list(e.attrs)
    if keys[:2] == ["age", "job"] and rng.random() < 0.5:
        age, job = e.attrs["age"], e.attrs["job"]
        head = f"{e.name} is {age_article(int(age))} {age}-year-old {job}"
        rest = [_fill(rng.choice(table[k]["answer"]), e.attrs[k]) for k in keys[2:]]
        if not rest:
            return head + "."
        if rng.random() < 0.5:
            return f"{head} who {join_list(rest, rng)}."
        return f"{head}. {e.pronoun} {join_list([_agree(e, c) for c in rest], rng)}."
    clauses = [_fill(rng.choice(table[k]["answer"]), e.attrs[k]) for k in keys]
    if len(clauses) >= 4 and rng.random() < 0.5:
        cut = len(clauses) // 2
        rest = [_agree(e, c) for c in clauses[cut:]]
        return f"{e.name} {join_list(clauses[:cut], rng)}. {e.pronoun} {join_list(rest, rng)}."
    return f"{e.name} {join_list(clauses, rng)}."


def _agree(e: Entity, clause: str) -> str:
    """A clause after "They": the verb in the plural."""
    if e.pronoun != "They":
        return clause
    verb, _, rest = clause.partition(" ")
    plural = {"is": "are", "has": "have", "works": "work", "lives": "live", "enjoys": "enjoy", "likes": "like",
              "loves": "love", "owns": "own", "keeps": "keep", "resides": "reside", "calls": "call",
              "earns": "earn", "spends": "spend", "speaks": "speak", "can": "can"}.get(verb, verb)
    return f"{plural} {rest}"


def topic_of(e: Entity) -> str:
    """A span's topic: the name's first word, unique among the entities (a plan token is a
    sequential step, so topics stay short)."""
    return e.name.split()[0]


def entity_facts(e: Entity) -> list[str]:
    """What an answer must say about `e` in its own span: its name and every value."""
    return [e.name, *(str(v) for v in e.attrs.values())]
