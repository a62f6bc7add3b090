"""Small tables for the sub-question family (counts per owner, price lists) and the questions
asked about them, each with its answer sentence and the fact a correct answer must state."""

from __future__ import annotations

import random

from . import vocab
from .entities import article, join_list
from .vocab import cap

# ----------------------------------------------------------------------------------------------
# Word pools (the purchases and short questions use some too)

UNITS = ["stamps", "coins", "marbles", "books", "shells", "stickers", "points", "apples", "cards",
         "pencils", "badges", "postcards", "seeds", "buttons"]
ITEMS = [("pen", "pens"), ("notebook", "notebooks"), ("mug", "mugs"), ("lamp", "lamps"),
         ("scarf", "scarves"), ("candle", "candles"), ("kite", "kites"), ("map", "maps"), ("cup", "cups"),
         ("hat", "hats"), ("ball", "balls"), ("brush", "brushes"), ("basket", "baskets"),
         ("towel", "towels"), ("clock", "clocks"), ("plate", "plates"), ("puzzle", "puzzles")]
CURRENCIES = ["dollars", "euros", "coins", "francs", "pounds"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


# ----------------------------------------------------------------------------------------------
# Tables, and questions about them

def first_names(rng: random.Random, n: int, pool: str) -> list[str]:
    """n distinct first names of a value pool."""
    names: list[str] = []
    while len(names) < n:
        name = vocab.draw(rng, "first", pool)
        if name not in names:
            names.append(name)
    return names


def owners_table(rng: random.Random, n: int, pool: str, held_out: bool = False):
    """Counts per owner; `held_out` writes them in the layouts kept out of training."""
    names = first_names(rng, n, pool)
    values = rng.sample(range(2, 60), n)
    unit = rng.choice(UNITS)
    style = rng.choice([4, 5]) if held_out else rng.randrange(4)
    if style == 4:
        body = f"{cap(unit)}:\n" + "\n".join(f"{i + 1}. {x} - {v}" for i, (x, v) in enumerate(zip(names, values)))
    elif style == 5:
        body = f"name | {unit}\n" + "\n".join(f"{x} | {v}" for x, v in zip(names, values))
    elif style == 0:
        body = join_list([f"{x} has {v} {unit}" if i == 0 or rng.random() < 0.5 else f"{x} has {v}"
                      for i, (x, v) in enumerate(zip(names, values))], rng) + "."
    elif style == 1:
        body = f"{cap(unit[:-1] if unit.endswith('s') else unit)} counts: " + ", ".join(
            f"{x} {v}" for x, v in zip(names, values)) + "."
    elif style == 2:
        verb = rng.choice(["owns", "has", "collected"])
        body = " ".join(f"{x} {verb} {v} {unit}." for x, v in zip(names, values))
    else:
        body = "After counting, " + join_list([f"{x} ends up with {v}" for x, v in zip(names, values)], rng) + f" {unit}."
    return names, values, unit, body


def owner_question(rng: random.Random, kind: str, names, values, unit):
    """(question, topic, answer sentence, fact) or None when the kind does not fit the table."""
    v = dict(zip(names, values))
    if kind == "lookup":
        x = rng.choice(names)
        q = rng.choice([f"How many {unit} does {x} have?", f"What is {x}'s number of {unit}?"])
        a = rng.choice([f"{x} has {v[x]} {unit}.", f"The number of {unit} {x} has is {v[x]}."])
        return q, x, a, str(v[x])
    if kind in ("sum", "diff", "compare"):
        x, y = rng.sample(names, 2)
        if kind == "sum":
            s = v[x] + v[y]
            q = rng.choice([f"How many {unit} do {x} and {y} have together?",
                            f"What is the total number of {unit} of {x} and {y}?",
                            f"Combined, how many {unit} do {x} and {y} have?"])
            a = rng.choice([f"{x} has {v[x]} and {y} has {v[y]}, so together they have {s} {unit}.",
                            f"With {v[x]} and {v[y]} {unit}, {x} and {y} have {s} {unit} together.",
                            f"{x} has {v[x]} {unit} and {y} has {v[y]}, which makes {s} combined."])
            return q, f"{x} and {y}", a, str(s)
        if kind == "diff":
            if v[x] < v[y]:
                x, y = y, x
            d = v[x] - v[y]
            q = rng.choice([f"How many more {unit} does {x} have than {y}?",
                            f"By how many {unit} does {x} lead {y}?"])
            a = rng.choice([f"{x} has {v[x]} and {y} has {v[y]}, so {x} has {d} more {unit}.",
                            f"With {v[x]} against {v[y]} {unit}, {x} leads {y} by {d}."])
            return q, f"{x} versus {y}", a, str(d)
        q = rng.choice([f"Does {x} have more {unit} than {y}?", f"Is it true that {x} has more {unit} than {y}?"])
        counts = f"{x} has {v[x]} {unit} and {y} has {v[y]}"
        if v[x] > v[y]:
            a = rng.choice([f"Yes: {counts}, so {x} has more.", f"{counts}, so yes, {x} is ahead of {y}."])
            return q, f"{x} or {y}", a, "yes"
        a = rng.choice([f"No: {counts}, so {x} has fewer.", f"{counts}, so no, {x} is behind {y}."])
        return q, f"{x} or {y}", a, "no"
    if kind in ("most", "fewest"):
        best = max(names, key=v.get) if kind == "most" else min(names, key=v.get)
        q = rng.choice([f"Who has the {kind} {unit}?", f"Which person has the {kind} {unit}?"])
        a = rng.choice([f"{best} has the {kind} {unit}.", f"The {kind} {unit} belong to {best}."])
        return q, f"{kind} {unit}", a, best
    if kind == "double":
        x = rng.choice(names)
        q = rng.choice([f"If {x} doubled the {unit}, how many would {x} have?",
                        f"How many {unit} would {x} have with twice as many?"])
        a = rng.choice([f"{x} has {v[x]} {unit}, so doubled that would be {2 * v[x]}.",
                        f"Twice {v[x]} is {2 * v[x]}, so {x} would have {2 * v[x]} {unit}."])
        return q, f"{x} doubled", a, str(2 * v[x])
    raise ValueError(kind)


def prices_table(rng: random.Random, n: int, held_out: bool = False):
    items = rng.sample(ITEMS, n)
    prices = rng.sample(range(2, 30), n)
    cur = rng.choice(CURRENCIES)
    style = 3 if held_out else rng.randrange(3)
    if style == 3:
        body = f"Prices ({cur}):\n" + "\n".join(f"- {s}: {p}" for (s, _), p in zip(items, prices))
    elif style == 0:
        place = rng.choice(["At the market", "In the shop", "At the fair", "In the store"])
        body = f"{place}, " + join_list([f"{article(s)} {s} costs {p} {cur}" for (s, _), p in zip(items, prices)], rng) + "."
    elif style == 1:
        body = f"Price list in {cur}: " + ", ".join(f"{s} {p}" for (s, _), p in zip(items, prices)) + "."
    else:
        body = " ".join(f"One {s} sells for {p} {cur}." for (s, _), p in zip(items, prices))
    return items, prices, cur, body


def price_question(rng: random.Random, kind: str, items, prices, cur):
    p = {s: price for (s, _), price in zip(items, prices)}
    plural = dict(items)
    singles = [s for s, _ in items]
    if kind == "lookup":
        s = rng.choice(singles)
        q = rng.choice([f"How much does {article(s)} {s} cost?", f"What is the price of {article(s)} {s}?"])
        a = rng.choice([f"{cap(article(s))} {s} costs {p[s]} {cur}.", f"The {s} is priced at {p[s]} {cur}."])
        return q, f"the {s}", a, str(p[s])
    if kind == "sum":
        s, t = rng.sample(singles, 2)
        q = rng.choice([f"What do {article(s)} {s} and {article(t)} {t} cost together?",
                        f"How much would {article(s)} {s} plus {article(t)} {t} cost?"])
        a = rng.choice([f"{cap(article(s))} {s} costs {p[s]} and {article(t)} {t} costs {p[t]}, so together "
                        f"they cost {p[s] + p[t]} {cur}.",
                        f"At {p[s]} and {p[t]} {cur}, {article(s)} {s} and {article(t)} {t} cost {p[s] + p[t]} {cur} "
                        "together."])
        return q, f"{s} and {t}", a, str(p[s] + p[t])
    if kind == "multiple":
        s = rng.choice(singles)
        k = rng.randint(2, 4)
        q = rng.choice([f"How much do {NUMBER_WORDS[k]} {plural[s]} cost?",
                        f"What is the price of {NUMBER_WORDS[k]} {plural[s]}?"])
        a = rng.choice([f"One {s} costs {p[s]} {cur}, so {NUMBER_WORDS[k]} {plural[s]} cost {k * p[s]} {cur}.",
                        f"At {p[s]} {cur} each, buying {NUMBER_WORDS[k]} {plural[s]} costs {k * p[s]} {cur}."])
        return q, f"{NUMBER_WORDS[k]} {plural[s]}", a, str(k * p[s])
    if kind == "diff":
        s, t = rng.sample(singles, 2)
        if p[s] < p[t]:
            s, t = t, s
        q = rng.choice([f"How much more does {article(s)} {s} cost than {article(t)} {t}?"])
        a = rng.choice([f"{cap(article(s))} {s} costs {p[s]} and {article(t)} {t} costs {p[t]}, so the {s} costs "
                        f"{p[s] - p[t]} {cur} more.",
                        f"At {p[s]} against {p[t]} {cur}, the {s} is {p[s] - p[t]} {cur} dearer than the {t}."])
        return q, f"{s} versus {t}", a, str(p[s] - p[t])
    if kind in ("most", "fewest"):
        best = max(singles, key=p.get) if kind == "most" else min(singles, key=p.get)
        word = "most expensive" if kind == "most" else "cheapest"
        q = rng.choice([f"Which item is the {word}?", f"What is the {word} item?"])
        a = rng.choice([f"The {best} is the {word}.", f"The {word} item is the {best}."])
        return q, word, a, best
    raise ValueError(kind)
