"""Value pools of the synthetic task: real lists and generated words (pronounceable names,
character-level random strings), split into disjoint pools for train, validation and test.

A model that has seen every name and city of its test set can recall them instead of copying them
from the prompt (issue 18: new names came out garbled, new cities were replaced by known ones).
So every value belongs to one pool, chosen by a hash of its text, and a split draws only values of
its own pool: test answers must copy what training never showed. Generated words make the pools
large (a value is rarely seen twice) and character-level strings make copying letter by letter
part of the task.
"""

from __future__ import annotations

import hashlib
import random

POOLS = ("train", "validation", "test")

FIRST_NAMES = [
    "Maya", "Clara", "Nina", "Sofia", "Elena", "Hannah", "Lucy", "Iris", "Zoe", "Amara", "Greta", "Ingrid",
    "Leila", "Priya", "Rosa", "Tessa", "Yara", "Alice", "Beatrix", "Daphne", "Freya", "Helga", "Jasmine",
    "Kira", "Lena", "Mira", "Noor", "Olga", "Paula", "Ruth", "Selma", "Vera", "Ines", "Aiko", "Fatima",
    "Chloe", "Emma", "Grace", "Julia", "Laura", "Marta", "Nadia", "Sara", "Anna", "Eva", "Lina", "Mei",
    "Tom", "Leo", "Omar", "Felix", "Hugo", "Ivan", "Jonas", "Kenji", "Luca", "Marco", "Nils", "Oscar",
    "Pablo", "Rafael", "Samir", "Theo", "Victor", "Arjun", "Bruno", "Caleb", "Dmitri", "Emil", "Farid",
    "Gustav", "Henrik", "Idris", "Jakob", "Karim", "Lars", "Mateo", "Noah", "Otto", "Joon", "Diego",
    "Ali", "Ben", "Sam", "Max", "Paul", "Adam", "David", "Erik", "Hassan", "Juan", "Kofi", "Liam", "Raj",
    "Wei", "Yusuf", "Anders", "Carlos", "Daniel", "George", "Jack", "James", "Peter", "Simon", "Tariq",
]
SURNAMES = [
    "Chen", "Novak", "Okafor", "Silva", "Berg", "Moreau", "Tanaka", "Kowalski", "Haddad", "Lindqvist", "Rossi",
    "Mendez", "Petrov", "Nakamura", "Fischer", "Osei", "Varga", "Quinn", "Dubois", "Larsen", "Ibrahim", "Costa",
    "Weber", "Sato", "Brennan", "Alvarez", "Kaur", "Holm", "Smith", "Garcia", "Kim", "Nguyen", "Patel",
    "Murphy", "Jensen", "Schmidt", "Russo", "Kovacs", "Yilmaz", "Park", "Lopez", "Santos", "Meyer",
]
CITIES = [
    "Oslo", "Lima", "Lisbon", "Nairobi", "Kyoto", "Dublin", "Porto", "Quito", "Hanoi", "Tunis", "Bergen",
    "Krakow", "Leeds", "Seville", "Austin", "Denver", "Perth", "Cork", "Accra", "Bogota", "Cusco", "Graz",
    "Malmo", "Riga", "Tallinn", "Zagreb", "Lyon", "Bruges", "Osaka", "Madras", "Halifax", "Boise", "Tucson",
    "Geneva", "Naples", "Turin", "Ghent", "Basel", "Aarhus", "Split", "Paris", "London", "Berlin", "Madrid",
    "Rome", "Vienna", "Prague", "Warsaw", "Athens", "Cairo", "Lagos", "Tokyo", "Seoul", "Delhi", "Mumbai",
    "Sydney", "Toronto", "Chicago", "Boston", "Seattle", "Miami", "Santiago", "Havana", "Manila", "Jakarta",
    "Helsinki", "Munich", "Hamburg", "Milan", "Florence", "Valencia", "Glasgow", "Bristol", "Marseille",
    "Istanbul", "Tbilisi", "Dakar", "Kigali", "Montreal", "Auckland", "Busan", "Taipei", "Stockholm",
]
JOBS = [
    "nurse", "engineer", "teacher", "baker", "pilot", "architect", "librarian", "carpenter", "chef", "dentist",
    "farmer", "journalist", "lawyer", "mechanic", "painter", "pharmacist", "plumber", "translator",
    "veterinarian", "electrician", "gardener", "accountant", "photographer", "tailor", "surgeon", "geologist",
    "florist", "optician", "barber", "potter", "editor", "astronomer", "doctor", "firefighter", "musician",
    "designer", "programmer", "biologist", "chemist", "waiter", "driver", "butcher", "jeweler", "sculptor",
    "banker", "actor", "dancer", "writer", "poet", "nanny", "cashier", "courier", "welder", "roofer",
    "beekeeper", "fisherman", "brewer", "historian", "economist", "physicist", "paramedic", "psychologist",
]
HOBBIES = [
    "playing chess", "painting", "hiking", "baking bread", "gardening", "swimming", "reading novels", "knitting",
    "playing the piano", "bird watching", "rock climbing", "cycling", "fishing", "writing poems",
    "collecting stamps", "running", "cooking", "dancing", "sailing", "taking photos", "playing the guitar",
    "doing yoga", "skiing", "solving puzzles", "surfing", "camping", "pottery", "singing", "rowing",
    "playing tennis", "watching films", "playing football", "drawing comics", "juggling", "skating",
]
PETS = ["dog", "cat", "parrot", "rabbit", "tortoise", "hamster", "goldfish", "pony", "ferret", "lizard", "snake",
        "canary", "guinea pig", "turtle", "horse", "goat", "mouse", "owl", "frog", "hedgehog", "iguana", "duck"]
LANGUAGES = ["French", "Spanish", "German", "Italian", "Polish", "Greek", "Turkish", "Arabic", "Hindi",
             "Japanese", "Korean", "Swahili", "Dutch", "Swedish", "Finnish", "Czech", "Portuguese", "Russian",
             "Thai", "Welsh", "Irish", "Danish", "Hungarian", "Latvian", "Tamil", "Urdu", "Malay", "Zulu"]
COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "teal", "violet", "amber", "crimson", "silver",
          "gold", "pink", "navy", "olive", "maroon", "turquoise", "lilac", "indigo", "beige", "coral", "ivory"]
PRODUCTS = ["bicycles", "garden tools", "toy trains", "solar panels", "wool sweaters", "coffee machines",
            "violins", "running shoes", "board games", "kitchen knives", "paper lanterns", "ceramic tiles",
            "rain boots", "desk lamps", "sailboats", "chocolate bars", "wooden chairs", "fishing rods",
            "umbrellas", "headphones", "tea kettles", "backpacks", "candles", "sunglasses", "robots", "drones"]
COMPANY_SUFFIX = ["Labs", "Works", "Industries", "Group", "Studio", "Company", "Systems", "Trading", "Foods",
                  "Motors", "Partners", "Supply"]

_ONSETS = ["b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "br",
           "ch", "dr", "fl", "gr", "kr", "pr", "sh", "st", "th", "tr", "y", "qu", "sl", "bl"]
_VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o", "ai", "ea", "ou", "ie", "y"]
_CODAS = ["", "", "", "n", "r", "l", "s", "m", "k", "th", "x", "nd", "rt", "sh"]
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def pool_of(value: str) -> str:
    """The pool a value belongs to: 80 % train, 10 % validation, 10 % test, by a hash of its text."""
    digest = hashlib.sha256(value.lower().encode("utf-8")).digest()[0] % 10
    return "train" if digest < 8 else "validation" if digest == 8 else "test"


def _pick(rng: random.Random, seq):
    return seq[int(rng.random() * len(seq))]  # rng.choice is several times slower; drawing is hot


def pronounceable(rng: random.Random, syllables: int | None = None) -> str:
    n = syllables or _pick(rng, (1, 2, 2, 2, 3))
    return "".join(_pick(rng, _ONSETS) + _pick(rng, _VOWELS) + _pick(rng, _CODAS) for _ in range(n))


def random_letters(rng: random.Random) -> str:
    """A character-level random string: nothing in it can be recalled, only copied."""
    return "".join(_pick(rng, _LETTERS) for _ in range(3 + int(rng.random() * 5)))


def cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _generated(kind: str, rng: random.Random) -> str:
    word = pronounceable(rng) if rng.random() < 0.8 else random_letters(rng)
    if kind in ("first", "surname", "company"):
        return cap(word)
    if kind == "city":
        return rng.choice(["{w}", "{w}", "{w}", "{w}burg", "{w}ford", "Port {w}", "San {w}", "{w}ville"]).format(w=cap(word))
    if kind == "job":
        return rng.choice(["{w}ist", "{w}smith", "{w}wright", "{w} technician", "{w} keeper", "{w}er", "{w} analyst"]).format(w=word)
    if kind == "hobby":
        return rng.choice(["playing {w}", "collecting {w} shells", "building {w} kites", "{w} dancing", "carving {w}"]).format(w=word)
    if kind == "pet":
        return rng.choice(["{w} lizard", "{w} fish", "{w} bird", "{w} beetle", "{w}"]).format(w=word)
    if kind == "language":
        return cap(word) + rng.choice(["ish", "ese", "i", "an"])
    if kind == "product":
        return rng.choice(["{w} lamps", "{w} boots", "{w} clocks", "{w} radios", "{w} bikes", "{w}s"]).format(w=word)
    raise ValueError(kind)


_REAL = {"first": FIRST_NAMES, "surname": SURNAMES, "city": CITIES, "job": JOBS, "hobby": HOBBIES, "pet": PETS,
         "language": LANGUAGES, "color": COLORS, "product": PRODUCTS, "company": SURNAMES}
_REAL_SHARE = {"first": 0.5, "surname": 0.5, "city": 0.5, "job": 0.6, "hobby": 0.7, "pet": 0.7, "language": 0.6,
               "color": 1.0, "product": 0.6, "company": 0.3}


_BY_POOL = {kind: {pool: [v for v in values if pool_of(v) == pool] for pool in POOLS} for kind, values in _REAL.items()}


def draw(rng: random.Random, kind: str, pool: str) -> str:
    """One value of `kind` from `pool`: a real one or a generated one, never one of another pool."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, not {pool!r}")
    if kind == "color":  # a closed class of a few words, shared by every pool
        return _pick(rng, COLORS)
    real = _BY_POOL[kind][pool]
    if real and rng.random() < _REAL_SHARE[kind]:
        return rng.choice(real)
    while True:  # a generated word is in the pool 1 time in 10 at worst
        value = _generated(kind, rng)
        if pool_of(value) == pool:
            return value
