"""The synthetic task's four families of examples, drawn from value pools and sentence templates
(people and companies come from entities.py, the sub-questions' tables from tables.py, the values
from vocab.py).

Each maker takes a `random.Random` and a `Draw` (the split's value pool, and whether to use the
wording and layout families held out of training) and returns one `Example`, or raises `Retry` when
a draw does not meet its own constraint. Splits, validity checks, annotation and scoring live in
synthetic.py.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from . import vocab
from .entities import (
    LAYOUTS, LAYOUTS_HELD_OUT, Entity, article, describe_answer, describe_prompt, draw_entities, entity_facts,
    join_list, topic_of,
)
from .tables import (
    CURRENCIES, ITEMS, NUMBER_WORDS, first_names, owner_question, owners_table, price_question, prices_table,
)
from .vocab import cap

class Retry(Exception):
    """The draw did not meet a constraint; draw again."""


@dataclass
class Round:
    """One planning round: optional plain AR text (`lead`), then spans as (topic, text) pairs."""

    spans: list[tuple[str, str]] = field(default_factory=list)
    lead: str = ""


@dataclass
class Example:
    family: str
    prompt: str
    rounds: list[Round]
    facts: list[str]
    final: str | None = None
    # per span of the first round, the facts it must hold (its entity's name first), when the family
    # is about entities: `score` then checks each fact in its own entity's part of the answer
    entities: list[list[str]] = field(default_factory=list)
    held_out: bool = False  # drawn with a wording or layout family kept out of training
    pooled: bool = False  # the prompt holds values of its split's pool: no other split can draw it


@dataclass(frozen=True)
class Draw:
    """What a maker draws from: a split's value pool, and the held-out wording and layout families
    (the held-out split) or the training ones."""

    pool: str = "train"
    held_out: bool = False


# ----------------------------------------------------------------------------------------------
# Word pools of the short questions

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
WORDS = ["garden", "window", "pencil", "rocket", "silver", "harbor", "lantern", "meadow", "thunder",
         "cabinet", "river", "orange", "blanket", "compass", "island", "mirror", "planet", "teapot",
         "village", "whistle", "bridge", "candle", "forest", "ladder", "marble", "pocket", "saddle"]


_NOUNS = {"person": [("person", "people"), ("friend", "friends"), ("colleague", "colleagues")],
          "company": [("company", "companies"), ("firm", "firms"), ("business", "businesses")]}

# Instruction wordings, (intro, ask) templates, {one}/{many}/{n}: the training family and the held-out one.
_INTROS = ["Here are some {many}.", "Consider these {n} {many}.", "Some facts about {n} {many}:",
           "Read about these {many}.", "", "", "Information on {n} {many}:", "I have {n} {many} for you.",
           "Below is a list of {many}.", "Data:"]
_INTROS_HELD_OUT = ["Meet my {many}.", "These are the {many} I told you about:", "Notes on {n} {many}:",
                    "So, about these {many}:"]
_ASKS = ["Describe each {one}.", "Write a short profile of each of them.", "Tell me about each {one}.",
         "Summarize what we know about each one.", "Give a brief description of every {one} mentioned.",
         "Write one short paragraph per {one}.", "Describe them one by one.", "Please describe every {one}.",
         "Tell me about them.", "Describe them.", "Give each {one} a short description.",
         "Summarize each {one} in a sentence or two."]
_ASKS_HELD_OUT = ["Can you introduce them?", "Who are they? One paragraph each.", "Write a mini bio for each.",
                  "Introduce each of them in turn.", "Can you introduce my {many}?", "Profile everyone listed."]
_INTROS_ONE = ["Here is a {one}.", "Some facts about one {one}:", "", "Read about this {one}."]
_ASKS_ONE = ["Describe this {one}.", "Tell me about this {one}.", "Write a short profile.", "Describe them."]
_ASKS_ONE_HELD_OUT = ["Can you introduce them?", "Write a mini bio.", "Who is this?"]
# Parentheses prompts lead with the request: "Describe Bruno (age 29, …) and Ines (…)."
_LEADS = ["Describe", "Tell me about", "Write a short profile of each of", "Give a brief description of",
          "Please describe", "Summarize"]
_LEADS_HELD_OUT = ["Can you introduce", "Introduce", "I'd like to hear about"]


def _instruction(rng: random.Random, kind: str, n: int, held_out: bool) -> tuple[str, str]:
    one, many = rng.choice(_NOUNS[kind])
    if n == 1:
        intros, asks = _INTROS_ONE, _ASKS_ONE_HELD_OUT if held_out else _ASKS_ONE
    else:
        intros, asks = (_INTROS_HELD_OUT, _ASKS_HELD_OUT) if held_out else (_INTROS, _ASKS)
    word = NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)
    fill = lambda t: t.format(one=one, many=many, n=word)  # noqa: E731
    return fill(rng.choice(intros)), fill(rng.choice(asks))


def _entity_count(rng: random.Random) -> int:
    return rng.choices([1, 2, 3, 4, 5, 6], [1, 3, 3, 3, 2, 1])[0]


MAX_FACTS = 22  # facts in one prompt: 6 people with 6 facts each would not fit the demo's context


def _layout(rng: random.Random, d: Draw) -> tuple[str, bool]:
    """A fact layout, and whether the instruction takes the held-out wording: a held-out example
    has a held-out layout, a held-out wording, or both."""
    if not d.held_out:
        return rng.choice(LAYOUTS), False
    if rng.random() < 0.6:
        return rng.choice(LAYOUTS_HELD_OUT), rng.random() < 0.5
    return rng.choice(LAYOUTS), True


def _setup(rng: random.Random, d: Draw, n: int, layout: str, required: str | None = None,
           kind: str | None = None) -> list[Entity]:
    kind = kind or ("person" if rng.random() < 0.7 else "company")
    entities = draw_entities(rng, kind, n, (2, 6), d.pool, required, same_keys=layout == "table")
    if sum(len(e.attrs) for e in entities) > MAX_FACTS:
        raise Retry
    return entities


def _profiles(rng: random.Random, d: Draw) -> Example:
    n = _entity_count(rng)
    layout, held_wording = _layout(rng, d)
    entities = _setup(rng, d, n, layout)
    body, entities = describe_prompt(rng, entities, layout)
    prompt = _compose(rng, entities[0].kind, n, body, layout, held_wording)
    spans = [(topic_of(e), describe_answer(rng, e)) for e in entities]
    groups = [entity_facts(e) for e in entities]
    return Example("profiles", prompt, [Round(spans)], [f for g in groups for f in g], entities=groups,
                   held_out=d.held_out, pooled=True)


def _compose(rng: random.Random, kind: str, n: int, body: str, layout: str, held_wording: bool,
             question: str = "") -> str:
    intro, ask = _instruction(rng, kind, n, held_wording)
    ask = f"{ask} {question}".strip()
    if layout == "parentheses" and rng.random() < 0.6:
        lead = rng.choice(_LEADS_HELD_OUT if held_wording else _LEADS)
        return f"{lead} {body}{'?' if lead.startswith(('Can', 'Could')) else '.'}" + (f" {question}" if question else "")
    if layout == "parentheses":
        body += "."
    if rng.random() < 0.3:
        parts = [ask, intro, body] if intro else [ask, body]
    else:
        parts = [intro, body, ask] if intro else [body, ask]
    return " ".join(parts) if "\n" not in body else "\n".join(parts)


# ----------------------------------------------------------------------------------------------
# Sub-questions over a small table (tables.py)

def _ask_list(rng: random.Random, questions: list[str], held_out: bool) -> str:
    if held_out:  # lettered, or one per line: layouts kept out of training
        if rng.random() < 0.5:
            return " ".join(f"({chr(97 + i)}) {q}" for i, q in enumerate(questions))
        return "\n" + "\n".join(f"- {q}" for q in questions)
    style = rng.randrange(3)
    if style == 0:
        return " ".join(questions)
    if style == 1:
        return " ".join(f"{i + 1}) {q}" for i, q in enumerate(questions))
    return rng.choice(["Please answer: ", "Questions: ", "Answer each of these: "]) + " ".join(questions)


def _subquestions(rng: random.Random, d: Draw) -> Example:
    k = rng.randint(2, 4)
    owners = rng.random() < 0.5
    if owners:
        names, values, unit, body = owners_table(rng, rng.randint(max(2, k - 1), 4), d.pool, d.held_out and rng.random() < 0.5)
        kinds = ["lookup", "sum", "diff", "compare", "most", "fewest", "double"]
        picked = [rng.choice(kinds) for _ in range(k)]
        qs = [owner_question(rng, kd, names, values, unit) for kd in picked]
    else:
        items, prices, cur, body = prices_table(rng, rng.randint(max(2, k - 1), 4), d.held_out and rng.random() < 0.5)
        kinds = ["lookup", "sum", "multiple", "diff", "most", "fewest"]
        picked = [rng.choice(kinds) for _ in range(k)]
        qs = [price_question(rng, kd, items, prices, cur) for kd in picked]
    prompt = f"{body} {_ask_list(rng, [q for q, _, _, _ in qs], d.held_out)}".replace(" \n", "\n")
    spans = [(topic, a) for _, topic, a, _ in qs]
    return Example("subquestions", prompt, [Round(spans)], [f for _, _, _, f in qs], held_out=d.held_out,
                   pooled=owners)


# ----------------------------------------------------------------------------------------------
# Join: spans, then one sentence that depends on them

def _join_profiles(rng: random.Random, d: Draw) -> Example:
    n = rng.randint(2, 4)
    layout, held_wording = _layout(rng, d)
    kind = "person" if rng.random() < 0.7 else "company"
    key = "age" if kind == "person" else rng.choice(["founded", "staff"])
    entities = _setup(rng, d, n, layout, required=key, kind=kind)
    vals = {e.name: int(e.attrs[key]) for e in entities}
    goal = rng.choice(["max", "min", "sum"] if n == 2 else ["max", "min"])  # sums of two: learnable at demo size
    if key == "age":
        if goal == "max":
            x = max(vals, key=vals.get)
            q = rng.choice(["Then say who is the oldest.", "Finally, who is the oldest?", "Also tell me who is oldest."])
            final, sentence = x, rng.choice([f"{x} is the oldest of them.", f"The oldest is {x}, at {vals[x]}.",
                                             f"Of them all, {x} is the oldest."])
        elif goal == "min":
            x = min(vals, key=vals.get)
            q = rng.choice(["Then say who is the youngest.", "Finally, who is the youngest?", "Also tell me who is youngest."])
            final, sentence = x, rng.choice([f"{x} is the youngest of them.", f"The youngest is {x}, at {vals[x]}.",
                                             f"Of them all, {x} is the youngest."])
        else:
            s = sum(vals.values())
            q = rng.choice(["Finally, add up their ages.", "Then give the sum of their ages.",
                            "What is their combined age?"])
            a, b = vals.values()
            final, sentence = str(s), rng.choice([f"Together their ages add up to {a} + {b} = {s}.",
                                                  f"Adding {a} and {b}, their combined age is {s} years.",
                                                  f"Their ages sum to {a} plus {b}, which is {s}."])
        topic = {"max": "oldest", "min": "youngest", "sum": "total age"}[goal]
    elif key == "founded":
        goal = rng.choice(["max", "min"])
        x = (min if goal == "max" else max)(vals, key=vals.get)  # oldest = earliest year
        word = "oldest" if goal == "max" else "newest"
        q = rng.choice([f"Then say which company is the {word}.", f"Finally, which one is {word}?"])
        final, sentence = x, rng.choice([f"{x} is the {word} of them.", f"The {word} company is {x}."])
        topic = word
    else:
        if goal == "sum":
            s = sum(vals.values())
            q = rng.choice(["Finally, how many people do they employ in total?", "Then give their total staff."])
            a, b = vals.values()
            final, sentence = str(s), rng.choice([f"Together they employ {a} + {b} = {s} people.",
                                                  f"Adding {a} and {b}, their total staff is {s}."])
            topic = "total staff"
        else:
            x = (max if goal == "max" else min)(vals, key=vals.get)
            word = "largest" if goal == "max" else "smallest"
            q = rng.choice([f"Then say which company is the {word}.", f"Finally, which one has the {word} staff?"])
            final, sentence = x, rng.choice([f"{x} is the {word} by staff.", f"The {word} company is {x}."])
            topic = word
    if len(set(vals.values())) != len(vals):
        raise Retry  # "the oldest" needs one answer
    body, entities = describe_prompt(rng, entities, layout)
    prompt = _compose(rng, kind, n, body, layout, held_wording, q)
    spans = [(topic_of(e), describe_answer(rng, e)) for e in entities]
    groups = [entity_facts(e) for e in entities]
    return Example("join", prompt, [Round(spans), Round([(topic, sentence)])], [f for g in groups for f in g], final,
                   entities=groups, held_out=d.held_out, pooled=True)


def _join_purchases(rng: random.Random, d: Draw) -> Example:
    n = rng.randint(2, 3)
    names = first_names(rng, n, d.pool)
    items = rng.sample(ITEMS, n)
    cur = rng.choice(CURRENCIES)
    counts = [rng.randint(2, 5) for _ in range(n)]
    prices = [rng.randint(2, 9) for _ in range(n)]  # products from the small times table
    totals = [c * p for c, p in zip(counts, prices)]
    verb = rng.choice(["buys", "orders", "picks up"])
    body = " ".join(f"{x} {verb} {NUMBER_WORDS[c]} {pl} at {p} {cur} each."
                    for x, (_, pl), c, p in zip(names, items, counts, prices))
    goal = rng.choice(["sum", "max"])
    if goal == "sum":
        s = sum(totals)
        q = rng.choice(["How much does each person spend, and how much is that altogether?",
                        "Work out what each of them pays, then the total.",
                        "What does each one spend, and what do they spend in total?"])
        final = str(s)
        addends = " + ".join(map(str, totals))
        sentence = rng.choice([f"Altogether they spend {addends} = {s} {cur}.", f"In total that is {addends} = {s} {cur}.",
                               f"The grand total is {addends}, which is {s} {cur}."])
        topic = "total"
    else:
        if len(set(totals)) != len(totals):
            raise Retry
        x = names[totals.index(max(totals))]
        q = rng.choice(["How much does each person spend, and who spends the most?",
                        "Work out what each of them pays, then say who pays the most."])
        final = x
        sentence = rng.choice([f"{x} spends the most.", f"The biggest spender is {x}."])
        topic = "biggest spender"
    spans = []
    totals_of = {x: (c, p) for x, c, p in zip(names, counts, prices)}
    for x, (_, pl), t in zip(names, items, totals):
        k, price = totals_of[x]
        spans.append((x, rng.choice([f"{x} buys {NUMBER_WORDS[k]} {pl} at {price} {cur} each, so {x} spends {t} {cur}.",
                                     f"{cap(NUMBER_WORDS[k])} {pl} at {price} {cur} each cost {x} {t} {cur}.",
                                     f"{x} pays {k} times {price}, which is {t} {cur} for the {pl}."])))
    prompt = f"{body} {q}" if rng.random() < 0.7 else f"{q} {body}"
    return Example("join", prompt, [Round(spans), Round([(topic, sentence)])], [str(t) for t in totals], final,
                   held_out=d.held_out, pooled=True)


# ----------------------------------------------------------------------------------------------
# Short: one plain sentence, no plan

# Requests outside the task: the answer says so, briefly, instead of another family's template.
_UNSUPPORTED = ["Write a poem about {topic}.", "Tell me a joke about {topic}.", "Write a story about {topic}.",
                "Translate 'good morning' into {language}.", "What will the weather be like in {city} tomorrow?",
                "Write a Python function that sorts a list.", "Summarize today's news.", "Who won the match last night?",
                "What is the meaning of life?", "Recommend a good book about {topic}.", "hello", "Hi there!",
                "Explain how {topic} works.", "Give me a recipe for {topic} soup."]
_UNSUPPORTED_HELD_OUT = ["Compose a song about {topic}.", "Plan a trip to {city} for me.", "Can you write an essay on {topic}?",
                         "What's the capital of {city}?", "Help me fix my code.", "Good evening!"]
_HONEST = ["Sorry, I cannot help with that: I am a small demo model that only describes people and companies, "
           "answers questions about a small table, and does short arithmetic.",
           "I cannot do that. I only answer questions about the people, companies, tables and numbers in your prompt.",
           "Sorry, that is outside what I can do: I cannot answer it."]
_TOPICS = ["the sea", "cats", "winter", "trains", "the moon", "coffee", "friendship", "mountains", "robots", "tomato"]
_QUESTIONS = {"age": "How old is {x}?", "city": "Where does {x} live?", "job": "What does {x} do for a living?",
              "hobby": "What does {x} enjoy doing?", "pet": "What pet does {x} have?",
              "language": "Which language does {x} speak?", "color": "What is {x}'s favourite colour?"}
_ANSWERS = {"age": "{x} is {v} years old.", "city": "{x} lives in {v}.", "job": "{x} works as {av}.",
            "hobby": "{x} enjoys {v}.", "pet": "{x} has {av}.", "language": "{x} speaks {v}.",
            "color": "{x}'s favourite colour is {v}."}


def _short(rng: random.Random, d: Draw) -> Example:
    kind = rng.randrange(8)
    if kind == 0:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        op = rng.choice(["plus", "minus", "times"])
        if op == "minus" and a < b:
            a, b = b, a
        if op == "times":
            a, b = rng.randint(2, 12), rng.randint(2, 12)
        r = a + b if op == "plus" else a - b if op == "minus" else a * b
        asks = [f"Tell me {a} {op} {b}.", f"{a} {op} {b} = ?"] if d.held_out else [
            f"What is {a} {op} {b}?", f"Compute {a} {op} {b}.", f"Quick one: {a} {op} {b}?"]
        prompt = rng.choice(asks)
        answer = rng.choice([f"{a} {op} {b} is {r}.", f"The answer is {r}.", f"{a} {op} {b} equals {r}."])
        fact = str(r)
    elif kind == 1:
        a, b = rng.sample(range(2, 1000), 2)
        big = rng.random() < 0.5
        word = "larger" if big else "smaller"
        asks = [f"{a} or {b}: which one is {word}?"] if d.held_out else [
            f"Which is {word}, {a} or {b}?", f"Which number is {word}: {a} or {b}?"]
        prompt = rng.choice(asks)
        r = max(a, b) if big else min(a, b)
        answer = rng.choice([f"The {word} number is {r}.", f"{r} is the {word} one."])
        fact = str(r)
    elif kind == 2:
        w = rng.choice(WORDS + [vocab.pronounceable(rng) for _ in range(3)])
        asks = [f"Spell out how many letters '{w}' has."] if d.held_out else [
            f"How many letters are in the word '{w}'?", f"Count the letters in \"{w}\"."]
        prompt = rng.choice(asks)
        answer = rng.choice([f"The word {w} has {len(w)} letters.", f"It has {len(w)} letters."])
        fact = str(len(w))
    elif kind == 3:
        seq, label = (DAYS, "day") if rng.random() < 0.5 else (MONTHS, "month")
        i = rng.randrange(len(seq))
        after = rng.random() < 0.5
        j = (i + 1) % len(seq) if after else (i - 1) % len(seq)
        rel = "after" if after else "before"
        asks = [f"Name the {label} {rel} {seq[i]}."] if d.held_out else [
            f"Which {label} comes {rel} {seq[i]}?", f"What {label} is {rel} {seq[i]}?"]
        prompt = rng.choice(asks)
        answer = rng.choice([f"The {label} {rel} {seq[i]} is {seq[j]}.", f"It is {seq[j]}."])
        fact = seq[j]
        prompt = f"{prompt}" if rng.random() < 0.5 else f"Short answer please. {prompt}"
    elif kind == 4:
        a = rng.randint(2, 999)
        asks = [f"Odd or even: {a}?"] if d.held_out else [f"Is {a} even or odd?", f"Is the number {a} odd or even?"]
        prompt = rng.choice(asks)
        parity = "even" if a % 2 == 0 else "odd"
        answer = rng.choice([f"{a} is {parity}.", f"It is {parity}."])
        fact = parity
    elif kind == 5:
        topic = rng.choice(_TOPICS)
        request = rng.choice(_UNSUPPORTED_HELD_OUT if d.held_out else _UNSUPPORTED)
        prompt = request.format(topic=topic, language=vocab.draw(rng, "language", d.pool), city=vocab.draw(rng, "city", d.pool))
        answer = rng.choice(_HONEST)
        fact = "cannot"
    else:
        layout = rng.choice(["sentence", "split", "parentheses", "key_value"] if not d.held_out else ["slash", "yaml"])
        e = draw_entities(rng, "person", 1, (2, 4), d.pool)[0]
        key = rng.choice(list(e.attrs))
        body, _ = describe_prompt(rng, [e], layout)
        if layout == "parentheses":
            body += "."
        first = e.name.split()[0]
        question = _QUESTIONS[key].format(x=first)
        prompt = f"{body} {question}" if rng.random() < 0.7 else f"{question} {body}"
        v = str(e.attrs[key])
        answer = _ANSWERS[key].format(x=first, v=v, av=f"{article(v)} {v}")
        fact = v
    return Example("short", prompt, [Round([], lead=answer)], [fact], held_out=d.held_out, pooled=kind >= 6)


MAKERS: dict[str, Callable[[random.Random, Draw], Example]] = {
    "profiles": _profiles,
    "subquestions": _subquestions,
    # purchases have no held-out wording: the held-out split joins profiles only
    "join": lambda rng, d: _join_profiles(rng, d) if d.held_out or rng.random() < 0.5 else _join_purchases(rng, d),
    "short": _short,
}
