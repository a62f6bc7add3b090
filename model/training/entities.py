"""People and companies for the synthetic task: word pools, entities with distinct attribute values,
and their facts written as a prompt (four layouts) or as a span that restates every one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

# ----------------------------------------------------------------------------------------------
# Word pools

FEMALE = ["Maya", "Clara", "Nina", "Sofia", "Elena", "Hannah", "Lucy", "Iris", "Zoe", "Amara", "Greta",
          "Ingrid", "Leila", "Priya", "Rosa", "Tessa", "Yara", "Alice", "Beatrix", "Daphne", "Freya",
          "Helga", "Jasmine", "Kira", "Lena", "Mira", "Noor", "Olga", "Paula", "Ruth", "Selma", "Vera"]
MALE = ["Tom", "Leo", "Omar", "Felix", "Hugo", "Ivan", "Jonas", "Kenji", "Luca", "Marco", "Nils",
        "Oscar", "Pablo", "Rafael", "Samir", "Theo", "Victor", "Arjun", "Bruno", "Caleb", "Dmitri",
        "Emil", "Farid", "Gustav", "Henrik", "Idris", "Jakob", "Karim", "Lars", "Mateo", "Noah", "Otto"]
SURNAMES = ["Chen", "Novak", "Okafor", "Silva", "Berg", "Moreau", "Tanaka", "Kowalski", "Haddad",
            "Lindqvist", "Rossi", "Mendez", "Petrov", "Nakamura", "Fischer", "Osei", "Varga", "Quinn",
            "Dubois", "Larsen", "Ibrahim", "Costa", "Weber", "Sato", "Brennan", "Alvarez", "Kaur", "Holm"]
SYLLABLES = ["ka", "lo", "mi", "ra", "ven", "dor", "sa", "li", "tu", "ne", "zo", "bri", "an", "el",
             "mar", "tho", "wyn", "fa", "ri", "os", "ta", "quel", "ber", "ni", "so", "va", "del", "ju"]
CITIES = ["Oslo", "Lima", "Lisbon", "Nairobi", "Kyoto", "Dublin", "Porto", "Quito", "Hanoi", "Tunis",
          "Bergen", "Krakow", "Leeds", "Seville", "Austin", "Denver", "Perth", "Cork", "Accra", "Bogota",
          "Cusco", "Graz", "Malmo", "Riga", "Tallinn", "Zagreb", "Lyon", "Bruges", "Osaka", "Madras",
          "Halifax", "Boise", "Tucson", "Geneva", "Naples", "Turin", "Ghent", "Basel", "Aarhus", "Split"]
JOBS = ["nurse", "engineer", "teacher", "baker", "pilot", "architect", "librarian", "carpenter", "chef",
        "dentist", "farmer", "journalist", "lawyer", "mechanic", "painter", "pharmacist", "plumber",
        "translator", "veterinarian", "electrician", "gardener", "accountant", "photographer", "tailor",
        "surgeon", "geologist", "florist", "optician", "barber", "potter", "editor", "astronomer"]
HOBBIES = ["playing chess", "painting", "hiking", "baking bread", "gardening", "swimming",
           "reading novels", "knitting", "playing the piano", "bird watching", "rock climbing", "cycling",
           "fishing", "writing poems", "collecting stamps", "running", "cooking", "dancing", "sailing",
           "taking photos", "playing the guitar", "doing yoga", "skiing", "solving puzzles", "surfing"]
PETS = ["dog", "cat", "parrot", "rabbit", "tortoise", "hamster", "goldfish", "pony", "ferret", "lizard"]
PRODUCTS = ["bicycles", "garden tools", "toy trains", "solar panels", "wool sweaters", "coffee machines",
            "violins", "running shoes", "board games", "kitchen knives", "paper lanterns", "ceramic tiles",
            "rain boots", "desk lamps", "sailboats", "chocolate bars", "wooden chairs", "fishing rods"]
COMPANY_SUFFIX = ["Labs", "Works", "Industries", "Group", "Studio", "Company", "Systems", "Trading"]
def article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def age_article(age: int) -> str:
    return "an" if age in (8, 11, 18) or 80 <= age <= 89 else "a"


def join_list(parts: list[str], rng: random.Random) -> str:
    if len(parts) == 1:
        return parts[0]
    conj = rng.choice([" and ", ", and "]) if len(parts) > 2 else " and "
    return ", ".join(parts[:-1]) + conj + parts[-1]


def cap(s: str) -> str:
    return s[0].upper() + s[1:]


def invented(rng: random.Random) -> str:
    return cap("".join(rng.choice(SYLLABLES) for _ in range(rng.choice([2, 2, 3]))))


# ----------------------------------------------------------------------------------------------
# Entities (people, companies) and their attributes

@dataclass
class Entity:
    kind: str  # "person" | "company"
    name: str
    pronoun: str  # "She", "He", "It"
    attrs: dict[str, int | str]


# Per attribute: clauses for the prompt (verb phrases after the subject), compact descriptors for
# list-style prompts, and clauses for the answer. {v} is the value, {av} the value with its article.
_PERSON_ATTRS: dict[str, dict[str, list[str]]] = {
    "age": {
        "clause": ["is {v} years old", "is {v}", "is aged {v}", "has just turned {v}"],
        "list": ["{v} years old", "age {v}", "aged {v}"],
        "answer": ["is {v} years old", "is {v}", "is aged {v}"],
    },
    "city": {
        "clause": ["lives in {v}", "is based in {v}", "comes from {v}", "resides in {v}", "calls {v} home"],
        "list": ["lives in {v}", "from {v}", "based in {v}", "home: {v}"],
        "answer": ["lives in {v}", "is based in {v}", "resides in {v}", "calls {v} home", "makes a home in {v}"],
    },
    "job": {
        "clause": ["works as {av}", "is {av}", "has a job as {av}", "earns a living as {av}",
                   "is employed as {av}"],
        "list": ["{v}", "works as {av}", "job: {v}"],
        "answer": ["works as {av}", "is {av}", "has a job as {av}", "earns a living as {av}"],
    },
    "hobby": {
        "clause": ["enjoys {v}", "likes {v}", "loves {v}", "spends weekends {v}"],
        "list": ["enjoys {v}", "hobby: {v}", "likes {v}"],
        "answer": ["enjoys {v}", "likes {v}", "loves {v}", "spends free time {v}"],
    },
    "pet": {
        "clause": ["has {av}", "owns {av}", "keeps {av} at home"],
        "list": ["has {av}", "owns {av}", "pet: {v}"],
        "answer": ["has {av}", "owns {av}", "keeps {av} as a pet"],
    },
}
_COMPANY_ATTRS: dict[str, dict[str, list[str]]] = {
    "founded": {
        "clause": ["was founded in {v}", "dates back to {v}", "opened in {v}", "has existed since {v}"],
        "list": ["founded in {v}", "since {v}", "established {v}"],
        "answer": ["was founded in {v}", "dates back to {v}", "has existed since {v}", "opened in {v}"],
    },
    "city": {
        "clause": ["is based in {v}", "has its headquarters in {v}", "is located in {v}"],
        "list": ["based in {v}", "headquarters in {v}", "in {v}"],
        "answer": ["is based in {v}", "has its headquarters in {v}", "is located in {v}"],
    },
    "product": {
        "clause": ["makes {v}", "sells {v}", "produces {v}"],
        "list": ["makes {v}", "sells {v}", "product: {v}"],
        "answer": ["makes {v}", "sells {v}", "produces {v}", "is known for its {v}"],
    },
    "staff": {
        "clause": ["employs {v} people", "has {v} employees", "has a staff of {v}"],
        "list": ["{v} employees", "{v} staff", "staff of {v}"],
        "answer": ["employs {v} people", "has {v} employees", "has a staff of {v}"],
    },
}


def _attrs_table(kind: str) -> dict[str, dict[str, list[str]]]:
    return _PERSON_ATTRS if kind == "person" else _COMPANY_ATTRS


def _fill(template: str, value: int | str) -> str:
    v = str(value)
    return template.format(v=v, av=f"{article(v)} {v}")


def draw_entities(rng: random.Random, kind: str, n: int, n_attrs: int, required: str) -> list[Entity]:
    """n entities of one kind with distinct names and distinct values per attribute."""
    table = _attrs_table(kind)
    optional = [k for k in table if k != required]
    keys = [required, *rng.sample(optional, n_attrs - 1)]
    names: list[str] = []
    pronouns: list[str] = []
    while len(names) < n:
        if kind == "person":
            female = rng.random() < 0.5
            first = rng.choice(FEMALE if female else MALE) if rng.random() < 0.75 else invented(rng)
            r = rng.random()
            name = first if r < 0.45 else f"{first} {rng.choice(SURNAMES)}" if r < 0.85 else f"{first} {invented(rng)}"
            pronoun = "She" if female else "He"
        else:
            base = invented(rng) if rng.random() < 0.6 else rng.choice(SURNAMES)
            name = f"{base} {rng.choice(COMPANY_SUFFIX)}"
            pronoun = "It"
        first_word = name.split()[0]
        if any(first_word == other.split()[0] for other in names):
            continue
        names.append(name)
        pronouns.append(pronoun)
    values: dict[str, list[int | str]] = {}
    for key in keys:
        if key == "age":
            values[key] = rng.sample(range(19, 90), n)
        elif key == "founded":
            values[key] = rng.sample(range(1850, 2021), n)
        elif key == "staff":
            values[key] = rng.sample(range(12, 990), n)
        else:
            pool = {"city": CITIES, "job": JOBS, "hobby": HOBBIES, "pet": PETS, "product": PRODUCTS}[key]
            values[key] = rng.sample(pool, n)
    return [Entity(kind, names[i], pronouns[i], {k: values[k][i] for k in keys}) for i in range(n)]


def describe_prompt(rng: random.Random, entities: list[Entity], bullets: bool = True) -> tuple[str, list[Entity]]:
    """The facts of the prompt, in one of four layouts; and the entities with their facts reordered
    as the prompt states them (the order an answer restates them in)."""
    table = _attrs_table(entities[0].kind)
    style = rng.choice(["sentence", "split", "list", "by_attribute"])
    if style == "by_attribute":
        keys = list(entities[0].attrs)
        rng.shuffle(keys)
        sentences = []
        for key in keys:
            parts = [f"{e.name} {_fill(rng.choice(table[key]['clause']), e.attrs[key])}" for e in entities]
            sentences.append(join_list(parts, rng) + ".")
        return " ".join(sentences), [_reordered(e, keys) for e in entities]
    out, stated = [], []
    bullet = rng.choice(["", "- "]) if bullets else ""
    for e in entities:
        keys = list(e.attrs)
        rng.shuffle(keys)
        stated.append(_reordered(e, keys))
        if style == "list":
            descriptors = [_fill(rng.choice(table[k]["list"]), e.attrs[k]) for k in keys]
            out.append(f"{bullet}{e.name}: {', '.join(descriptors)}.")
        elif style == "sentence":
            clauses = [_fill(rng.choice(table[k]["clause"]), e.attrs[k]) for k in keys]
            out.append(f"{e.name} {join_list(clauses, rng)}.")
        else:
            cut = rng.randint(1, max(1, len(keys) - 1))
            first = [_fill(rng.choice(table[k]["clause"]), e.attrs[k]) for k in keys[:cut]]
            rest = [_fill(rng.choice(table[k]["clause"]), e.attrs[k]) for k in keys[cut:]]
            text = f"{e.name} {join_list(first, rng)}."
            if rest:
                subject = e.pronoun if rng.random() < 0.7 else e.name.split()[0]
                text += f" {subject} {join_list(rest, rng)}."
            out.append(text)
    sep = "\n" if style == "list" and bullet else " "
    return sep.join(out), stated


def _reordered(e: Entity, keys: list[str]) -> Entity:
    return replace(e, attrs={k: e.attrs[k] for k in keys})


def describe_answer(rng: random.Random, e: Entity) -> str:
    """One span: the entity with every fact restated, in the order of `e.attrs` (the prompt's, from
    describe_prompt). The wording varies; the order does not, as a reader would expect: an order
    drawn afresh per answer is noise that no model can predict from the prompt (docs/training.md)."""
    table = _attrs_table(e.kind)
    keys = list(e.attrs)
    if keys[:2] == ["age", "job"] and rng.random() < 0.5:
        age, job = e.attrs["age"], e.attrs["job"]
        head = f"{e.name} is {age_article(int(age))} {age}-year-old {job}"
        rest = [_fill(rng.choice(table[k]["answer"]), e.attrs[k]) for k in keys[2:]]
        if not rest:
            return head + "."
        if rng.random() < 0.5:
            return f"{head} who {join_list(rest, rng)}."
        return f"{head}. {e.pronoun} {join_list(rest, rng)}."
    clauses = [_fill(rng.choice(table[k]["answer"]), e.attrs[k]) for k in keys]
    if len(clauses) >= 4 and rng.random() < 0.5:
        cut = len(clauses) // 2
        return f"{e.name} {join_list(clauses[:cut], rng)}. {e.pronoun} {join_list(clauses[cut:], rng)}."
    return f"{e.name} {join_list(clauses, rng)}."


def topic_of(e: Entity) -> str:
    """A span's topic: the name's first word, unique among the entities (a plan token is a
    sequential step, so topics stay short)."""
    return e.name.split()[0]


def entity_facts(e: Entity) -> list[str]:
    return [e.name, *(str(v) for v in e.attrs.values())]
