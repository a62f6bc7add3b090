"""The synthetic task's four families of examples, drawn from word pools and sentence templates
(people and companies come from entities.py, the sub-questions' tables from tables.py).

Each maker takes a `random.Random` and returns one `Example`, or raises `Retry` when a draw does not
meet its own constraint. Splits, validity checks, annotation and scoring live in synthetic.py.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from .entities import (
    FEMALE, MALE, Entity, article, cap, describe_answer, describe_prompt, draw_entities, entity_facts, invented, topic_of,
)
from .tables import CURRENCIES, ITEMS, NUMBER_WORDS, owner_question, owners_table, price_question, prices_table


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


# ----------------------------------------------------------------------------------------------
# Word pools of the short questions

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
WORDS = ["garden", "window", "pencil", "rocket", "silver", "harbor", "lantern", "meadow", "thunder",
         "cabinet", "river", "orange", "blanket", "compass", "island", "mirror", "planet", "teapot",
         "village", "whistle", "bridge", "candle", "forest", "ladder", "marble", "pocket", "saddle"]


_NOUNS = {"person": ("person", "people"), "company": ("company", "companies")}


def _profile_instruction(rng: random.Random, kind: str, n: int) -> tuple[str, str]:
    one, many = _NOUNS[kind]
    intro = rng.choice([f"Here are some {many}.", f"Consider these {NUMBER_WORDS[n]} {many}.",
                        f"Some facts about {NUMBER_WORDS[n]} {many}:", f"Read about these {many}.", ""])
    ask = rng.choice([f"Describe each {one}.", "Write a short profile of each of them.",
                      f"Tell me about each {one}.", "Summarize what we know about each one.",
                      f"Give a brief description of every {one} mentioned.",
                      f"Write one short paragraph per {one}.", "Describe them one by one."])
    return intro, ask


def _profile_setup(rng: random.Random, n: int) -> list[Entity]:
    kind = "person" if rng.random() < 0.7 else "company"
    required = "age" if kind == "person" else rng.choice(["founded", "staff"])
    # Every fact a span restates makes the span longer than its promise in the plan: long spans
    # are where parallel denoising pays.
    n_attrs = rng.randint(4, 5) if kind == "person" else 4
    return draw_entities(rng, kind, n, n_attrs, required)


def _profiles(rng: random.Random) -> Example:
    n = rng.randint(2, 4)
    entities = _profile_setup(rng, n)
    intro, ask = _profile_instruction(rng, entities[0].kind, n)
    facts_text, entities = describe_prompt(rng, entities)
    prompt = _compose(rng, intro, facts_text, ask)
    spans = [(topic_of(e), describe_answer(rng, e)) for e in entities]
    facts = [f for e in entities for f in entity_facts(e)]
    return Example("profiles", prompt, [Round(spans)], facts)


def _compose(rng: random.Random, intro: str, body: str, ask: str) -> str:
    if rng.random() < 0.3:
        parts = [ask, intro, body] if intro else [ask, body]
    else:
        parts = [intro, body, ask] if intro else [body, ask]
    return " ".join(parts) if "\n" not in body else "\n".join(parts)


# ----------------------------------------------------------------------------------------------
# Sub-questions over a small table (tables.py)

def _ask_list(rng: random.Random, questions: list[str]) -> str:
    style = rng.randrange(3)
    if style == 0:
        return " ".join(questions)
    if style == 1:
        return " ".join(f"{i + 1}) {q}" for i, q in enumerate(questions))
    return rng.choice(["Please answer: ", "Questions: ", "Answer each of these: "]) + " ".join(questions)


def _subquestions(rng: random.Random) -> Example:
    k = rng.randint(2, 4)
    if rng.random() < 0.5:
        names, values, unit, body = owners_table(rng, rng.randint(max(2, k - 1), 4))
        kinds = ["lookup", "sum", "diff", "compare", "most", "fewest", "double"]
        picked = [rng.choice(kinds) for _ in range(k)]
        qs = [owner_question(rng, kd, names, values, unit) for kd in picked]
    else:
        items, prices, cur, body = prices_table(rng, rng.randint(max(2, k - 1), 4))
        kinds = ["lookup", "sum", "multiple", "diff", "most", "fewest"]
        picked = [rng.choice(kinds) for _ in range(k)]
        qs = [price_question(rng, kd, items, prices, cur) for kd in picked]
    prompt = f"{body} {_ask_list(rng, [q for q, _, _, _ in qs])}"
    spans = [(topic, a) for _, topic, a, _ in qs]
    return Example("subquestions", prompt, [Round(spans)], [f for _, _, _, f in qs])


# ----------------------------------------------------------------------------------------------
# Join: spans, then one sentence that depends on them

def _join_profiles(rng: random.Random) -> Example:
    n = rng.randint(2, 4)
    entities = _profile_setup(rng, n)
    kind = entities[0].kind
    key = "age" if kind == "person" else rng.choice([k for k in ("founded", "staff") if k in entities[0].attrs])
    intro, ask = _profile_instruction(rng, kind, n)
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
    facts_text, entities = describe_prompt(rng, entities)
    prompt = _compose(rng, intro, facts_text, f"{ask} {q}")
    spans = [(topic_of(e), describe_answer(rng, e)) for e in entities]
    facts = [f for e in entities for f in entity_facts(e)]
    return Example("join", prompt, [Round(spans), Round([(topic, sentence)])], facts, final)


def _join_purchases(rng: random.Random) -> Example:
    n = rng.randint(2, 3)
    names = rng.sample(FEMALE + MALE, n)
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
    return Example("join", prompt, [Round(spans), Round([(topic, sentence)])], [str(t) for t in totals], final)


# ----------------------------------------------------------------------------------------------
# Short: one plain sentence, no plan

def _short(rng: random.Random) -> Example:
    kind = rng.randrange(7)
    if kind == 0:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        op = rng.choice(["plus", "minus", "times"])
        if op == "minus" and a < b:
            a, b = b, a
        if op == "times":
            a, b = rng.randint(2, 12), rng.randint(2, 12)
        r = a + b if op == "plus" else a - b if op == "minus" else a * b
        prompt = rng.choice([f"What is {a} {op} {b}?", f"Compute {a} {op} {b}.", f"Quick one: {a} {op} {b}?"])
        answer = rng.choice([f"{a} {op} {b} is {r}.", f"The answer is {r}.", f"It equals {r}."])
        fact = str(r)
    elif kind == 1:
        a, b = rng.sample(range(2, 1000), 2)
        big = rng.random() < 0.5
        word = "larger" if big else "smaller"
        prompt = rng.choice([f"Which is {word}, {a} or {b}?", f"Which number is {word}: {a} or {b}?"])
        r = max(a, b) if big else min(a, b)
        answer = rng.choice([f"The {word} number is {r}.", f"{r} is the {word} one."])
        fact = str(r)
    elif kind == 2:
        w = rng.choice(WORDS + [invented(rng).lower() for _ in range(3)])
        prompt = rng.choice([f"How many letters are in the word '{w}'?", f"Count the letters in \"{w}\"."])
        answer = rng.choice([f"The word {w} has {len(w)} letters.", f"It has {len(w)} letters."])
        fact = str(len(w))
    elif kind == 3:
        seq, label = (DAYS, "day") if rng.random() < 0.5 else (MONTHS, "month")
        i = rng.randrange(len(seq))
        after = rng.random() < 0.5
        j = (i + 1) % len(seq) if after else (i - 1) % len(seq)
        rel = "after" if after else "before"
        prompt = rng.choice([f"Which {label} comes {rel} {seq[i]}?", f"What {label} is {rel} {seq[i]}?"])
        answer = rng.choice([f"The {label} {rel} {seq[i]} is {seq[j]}.", f"It is {seq[j]}."])
        fact = seq[j]
        prompt = f"{prompt}" if rng.random() < 0.5 else f"Short answer please. {prompt}"
    elif kind == 4:
        a = rng.randint(2, 999)
        prompt = rng.choice([f"Is {a} even or odd?", f"Is the number {a} odd or even?"])
        parity = "even" if a % 2 == 0 else "odd"
        answer = rng.choice([f"{a} is {parity}.", f"It is {parity}."])
        fact = parity
    else:
        e = draw_entities(rng, "person", 1, rng.randint(2, 3), "age")[0]
        key = rng.choice([k for k in e.attrs if k != "age"] + ["age"])
        body, _ = describe_prompt(rng, [e], bullets=False)
        first = e.name.split()[0]
        qs = {"age": f"How old is {first}?", "city": f"Where does {first} live?",
              "job": f"What does {first} do for a living?", "hobby": f"What does {first} enjoy doing?",
              "pet": f"What pet does {first} have?"}
        prompt = f"{body} {qs[key]}" if rng.random() < 0.7 else f"{qs[key]} {body}"
        v = e.attrs[key]
        answers = {"age": f"{first} is {v} years old.", "city": f"{first} lives in {v}.",
                   "job": f"{first} works as {article(str(v))} {v}.", "hobby": f"{first} enjoys {v}.",
                   "pet": f"{first} has {article(str(v))} {v}."}
        answer = answers[key]
        fact = str(v)
    return Example("short", prompt, [Round([], lead=answer)], [fact])


MAKERS: dict[str, Callable[[random.Random], Example]] = {
    "profiles": _profiles,
    "subquestions": _subquestions,
    "join": lambda rng: _join_profiles(rng) if rng.random() < 0.5 else _join_purchases(rng),
    "short": _short,
}
