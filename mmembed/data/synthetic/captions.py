"""SynthPedes caption grammar: CUHK-PEDES-like descriptions of a :class:`PersonAttributes` identity.

Each caption mentions every attribute with probability :data:`MENTION_PROB` (at least 2 attributes), picks
synonyms for nouns, verbs and colours, and varies word and clause order, e.g. "A woman with long black hair is
wearing a red jacket, blue jeans and white shoes. She carries a brown bag." Captions never state a false
attribute value; a colour word always directly precedes (up to two words before) the noun it describes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mmembed.data.synthetic.persons import PersonAttributes

MENTION_PROB = 0.75

#: Words that may express each canonical colour.
COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("red",), "blue": ("blue",), "green": ("green",), "yellow": ("yellow",), "white": ("white",),
    "black": ("black",), "grey": ("grey", "gray"), "purple": ("purple",), "orange": ("orange",),
    "pink": ("pink",), "brown": ("brown",), "beige": ("beige", "khaki"), "blonde": ("blonde", "blond"),
}
UPPER_WORDS: dict[str, tuple[str, ...]] = {
    "t-shirt": ("t-shirt", "tee", "short-sleeved top", "short-sleeved shirt"),
    "shirt": ("shirt", "long-sleeved shirt", "button-up shirt"),
    "jacket": ("jacket", "zip-up jacket"),
    "coat": ("coat", "long coat", "overcoat"),
    "sweater": ("sweater", "jumper", "pullover"),
    "tank top": ("tank top", "sleeveless top", "vest top"),
}
LOWER_WORDS: dict[str, tuple[str, ...]] = {
    "trousers": ("trousers", "pants", "jeans", "long pants"),
    "shorts": ("shorts", "short pants"),
    "skirt": ("skirt", "short skirt", "miniskirt"),
    "long skirt": ("long skirt", "maxi skirt", "ankle-length skirt"),
}
ACCESSORY_WORDS: dict[str, tuple[str, ...]] = {
    "bag": ("bag", "shoulder bag", "handbag"),
    "backpack": ("backpack", "rucksack"),
    "hat": ("cap", "baseball cap", "hat"),
}
SHOE_WORDS = ("shoes", "shoes", "sneakers", "trainers")
_PLURAL = {"trousers", "pants", "jeans", "long pants", "shorts", "short pants", "bottoms", "shoes", "sneakers",
           "trainers"}
_NOUNS = {"male": ("man", "man", "guy", "gentleman", "male pedestrian"),
          "female": ("woman", "woman", "lady", "girl", "female pedestrian"),
          None: ("person", "person", "pedestrian")}
_PRONOUNS = {"male": ("He",), "female": ("She",), None: ("The person", "This pedestrian", "The pedestrian")}


def _choice(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _article(phrase: str) -> str:
    if phrase.split(" ")[-1] in _PLURAL:
        return phrase
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _noun_phrase(rng: np.random.Generator, colour: str | None, noun: str) -> str:
    """``[a/an] [colour] noun``; plural nouns sometimes get "a pair of"."""
    phrase = f"{_choice(rng, COLOUR_SYNONYMS[colour])} {noun}" if colour else noun
    if noun.split(" ")[-1] in _PLURAL and noun != "bottoms" and rng.random() < 0.2:
        return "a pair of " + phrase
    return _article(phrase)


def _join(rng: np.random.Generator, items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    if len(items) == 2:
        return f"{items[0]} {_choice(rng, ('and', 'and', 'with'))} {items[1]}"
    last = ", and " if rng.random() < 0.3 else " and "
    return ", ".join(items[:-1]) + last + items[-1]


def mention_mask(identity: PersonAttributes, rng: np.random.Generator, prob: float = MENTION_PROB) -> dict[str, bool]:
    """Chooses which attributes a caption mentions: each with probability ``prob``, at least 2 in total.

    ``accessory_colour`` is skipped for identities without an accessory and implies ``accessory``.

    Args:
        identity: The described identity.
        rng: Source of randomness.
        prob: Per-attribute mention probability.

    Returns:
        ``{attribute: mentioned}`` over the applicable attributes.
    """
    names = [a for a in identity.ATTRIBUTES if not (a == "accessory_colour" and identity.accessory == "none")]
    while True:
        mask = {a: bool(rng.random() < prob) for a in names}
        if mask.get("accessory_colour"):
            mask["accessory"] = True
        if sum(mask.values()) >= 2:
            return mask


def _hair_phrase(p: PersonAttributes, rng: np.random.Generator, m: dict[str, bool]) -> str | None:
    if not (m["hair_style"] or m["hair_colour"]):
        return None
    colour = _choice(rng, COLOUR_SYNONYMS[p.hair_colour]) + " " if m["hair_colour"] else ""
    if not m["hair_style"]:
        return f"{colour}hair"
    if p.hair_style in ("short", "long"):
        return f"{p.hair_style} {colour}hair"
    tied = _choice(rng, ("in a", "tied in a", "tied back in a" if p.hair_style == "ponytail" else "tied up in a"))
    return f"{colour}hair {tied} {p.hair_style}"


def _carry_phrase(p: PersonAttributes, rng: np.random.Generator, m: dict[str, bool]) -> tuple[str, str] | None:
    """Returns ``(finite verb phrase, "with"/participle phrase)`` for a bag, backpack or no accessory."""
    if not m["accessory"] or p.accessory == "hat":
        return None
    if p.accessory == "none":
        finite = _choice(rng, ("is not carrying anything", "carries nothing", "has no bag"))
        return finite, "carrying nothing"
    colour = p.accessory_colour if m.get("accessory_colour") else None
    np_ = _noun_phrase(rng, colour, _choice(rng, ACCESSORY_WORDS[p.accessory]))
    where = " over one shoulder" if p.accessory == "bag" else " on the back"
    finite = _choice(rng, (f"carries {np_}", f"is carrying {np_}", f"has {np_}{where}"))
    return finite, _choice(rng, (f"carrying {np_}", f"with {np_}"))


def _wear_items(p: PersonAttributes, rng: np.random.Generator, m: dict[str, bool]) -> list[str]:
    items: list[str] = []
    if m["upper_type"] or m["upper_colour"]:
        noun = _choice(rng, UPPER_WORDS[p.upper_type]) if m["upper_type"] else "top"
        items.append(_noun_phrase(rng, p.upper_colour if m["upper_colour"] else None, noun))
    if m["lower_type"] or m["lower_colour"]:
        noun = _choice(rng, LOWER_WORDS[p.lower_type]) if m["lower_type"] else "bottoms"
        items.append(_noun_phrase(rng, p.lower_colour if m["lower_colour"] else None, noun))
    if m["shoe_colour"]:
        items.append(_noun_phrase(rng, p.shoe_colour, _choice(rng, SHOE_WORDS)))
    if p.accessory == "hat" and m["accessory"]:
        hat = _noun_phrase(rng, p.accessory_colour if m.get("accessory_colour") else None,
                           _choice(rng, ACCESSORY_WORDS["hat"]))
        items.insert(0 if rng.random() < 0.2 else len(items), hat)
    if len(items) > 1 and rng.random() < 0.25:
        items = [items[int(i)] for i in rng.permutation(len(items))]
    return items


def make_caption(identity: PersonAttributes, rng: np.random.Generator, prob: float = MENTION_PROB) -> str:
    """Generates one caption of ``identity`` (see the module docstring for the grammar).

    Args:
        identity: The described identity.
        rng: Source of randomness.
        prob: Per-attribute mention probability.

    Returns:
        One or more sentences, each capitalised and ending with a full stop.
    """
    m = mention_mask(identity, rng, prob)
    gender = identity.gender if m["gender"] else None
    pron = _choice(rng, _PRONOUNS[gender])
    first = f"{_choice(rng, ('A', 'The', 'This'))} {_choice(rng, _NOUNS[gender])}"
    hair, carry, wear = _hair_phrase(identity, rng, m), _carry_phrase(identity, rng, m), _wear_items(identity, rng, m)
    attached = False
    if hair and rng.random() < 0.5:
        first, hair, attached = f"{first} with {hair}", None, True
    elif carry and carry[1].startswith("with") and rng.random() < 0.3:
        first, carry, attached = f"{first} {carry[1]}", None, True
    rest: list[str] = []
    if wear:
        if len(wear) >= 3 and rng.random() < 0.3:
            cut = int(rng.integers(1, len(wear)))
            wear, extra = wear[:cut], wear[cut:]
            rest.append(f"{pron} {_choice(rng, ('also wears', 'is also wearing', 'also has on'))} {_join(rng, extra)}")
        if rng.random() < 0.6:
            verb = _choice(rng, ("is wearing", "wears", "is dressed in", "is wearing", "has on"))
            first = f"{first} {verb} {_join(rng, wear)}"
            if carry and rng.random() < 0.4:
                first, carry = f"{first} and {carry[0]}", None
        else:
            first = f"{first} {_choice(rng, ('wearing', 'dressed in', 'in'))} {_join(rng, wear)}"
            if carry and rng.random() < 0.4:
                first, carry = f"{first}, {carry[1]}", None
    elif hair:
        first, hair = f"{first} has {hair}", None
    elif carry:
        first, carry = f"{first} {carry[0]}", None
    elif not attached or rng.random() < 0.5:
        first = f"{first} {_choice(rng, ('is walking', 'is standing on the street', 'walks along the street'))}"
    if hair:
        rest.append(f"{pron} has {hair}")
    if carry:
        rest.append(f"{pron} {carry[0]}")
    order = rng.permutation(len(rest))
    sentences = [first] + [rest[int(i)] for i in order]
    return " ".join(s[0].upper() + s[1:] + "." for s in sentences)


def make_captions(
    identity: PersonAttributes, rng: np.random.Generator, n: int, prob: float = MENTION_PROB
) -> list[str]:
    """Generates ``n`` captions of ``identity``, distinct whenever the grammar allows it.

    Args:
        identity: The described identity.
        rng: Source of randomness; the result depends only on ``identity``, ``n``, ``prob`` and its state.
        n: Number of captions (>= 0).
        prob: Per-attribute mention probability.

    Returns:
        The captions.
    """
    out: list[str] = []
    for _ in range(n):
        cap = make_caption(identity, rng, prob)
        for _retry in range(10):
            if cap not in out:
                break
            cap = make_caption(identity, rng, prob)
        out.append(cap)
    return out
