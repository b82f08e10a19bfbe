"""SynthPedes persons: identity attributes, sampling and PIL rendering of a standing pedestrian.

An identity is a fixed :class:`PersonAttributes` combination (gender, hair, upper and lower garment, shoes,
optional bag / backpack / hat). Each rendered image of an identity varies pose, scale, position, background
clutter, lighting and (sometimes) occlusion, while the attribute colours stay recognisable. Only numpy and PIL
are used. The dataset writer is :func:`mmembed.data.synthetic.write_synth_pedes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np
from PIL import Image, ImageDraw

GENDERS = ("male", "female")
HAIR_STYLES = ("short", "long", "ponytail", "bun")
HAIR_COLOURS = ("black", "brown", "blonde", "grey")
UPPER_TYPES = ("t-shirt", "shirt", "jacket", "coat", "sweater", "tank top")
UPPER_COLOURS = ("red", "blue", "green", "yellow", "white", "black", "grey", "purple", "orange", "pink")
LOWER_TYPES = ("trousers", "shorts", "skirt", "long skirt")
LOWER_COLOURS = ("black", "blue", "grey", "brown", "white", "beige", "red", "green")
SHOE_COLOURS = ("black", "white", "brown", "red", "grey", "blue")
ACCESSORIES = ("none", "bag", "backpack", "hat")
ACCESSORY_COLOURS = ("black", "brown", "red", "blue", "green", "yellow", "white", "pink")

#: Canonical RGB of every colour word (hair colours use their own entries, see ``_HAIR_RGB``).
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (200, 32, 32), "blue": (35, 75, 200), "green": (35, 145, 55), "yellow": (240, 205, 35),
    "white": (240, 240, 236), "black": (28, 28, 32), "grey": (130, 130, 134), "purple": (125, 45, 165),
    "orange": (245, 125, 25), "pink": (245, 145, 190), "brown": (115, 70, 35), "beige": (210, 188, 145),
}
_HAIR_RGB = {"black": (22, 20, 20), "brown": (105, 62, 28), "blonde": (230, 195, 110), "grey": (175, 175, 178)}
_SKIN_RGB = ((242, 204, 170), (226, 176, 136), (196, 140, 100), (150, 102, 70), (102, 70, 48))
_SS = 3  # supersampling factor of the figure layer
OCCLUSION_PROB = 0.3


@dataclass(frozen=True)
class PersonAttributes:
    """Attributes of one SynthPedes identity; every image and caption of the identity derives from them.

    Args:
        gender: One of :data:`GENDERS`.
        hair_style: One of :data:`HAIR_STYLES`.
        hair_colour: One of :data:`HAIR_COLOURS`.
        upper_type: One of :data:`UPPER_TYPES`.
        upper_colour: One of :data:`UPPER_COLOURS`.
        lower_type: One of :data:`LOWER_TYPES`.
        lower_colour: One of :data:`LOWER_COLOURS`.
        shoe_colour: One of :data:`SHOE_COLOURS`.
        accessory: One of :data:`ACCESSORIES` (``"none"`` for no accessory).
        accessory_colour: One of :data:`ACCESSORY_COLOURS`, or ``None`` exactly when ``accessory == "none"``.
        skin_tone: Index into the skin palette (0-4). A hidden nuisance trait: not captioned and not counted as
            an attribute.
    """

    gender: str
    hair_style: str
    hair_colour: str
    upper_type: str
    upper_colour: str
    lower_type: str
    lower_colour: str
    shoe_colour: str
    accessory: str = "none"
    accessory_colour: str | None = None
    skin_tone: int = 0

    #: Captionable attributes, in canonical order (``skin_tone`` excluded).
    ATTRIBUTES: ClassVar[tuple[str, ...]] = (
        "gender", "hair_style", "hair_colour", "upper_type", "upper_colour",
        "lower_type", "lower_colour", "shoe_colour", "accessory", "accessory_colour",
    )

    def __post_init__(self) -> None:
        vocab = attribute_vocabulary()
        for name in self.ATTRIBUTES[:-1]:
            if getattr(self, name) not in vocab[name]:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {vocab[name]}")
        if (self.accessory == "none") != (self.accessory_colour is None):
            raise ValueError("accessory_colour must be None exactly when accessory is 'none'")
        if self.accessory_colour is not None and self.accessory_colour not in ACCESSORY_COLOURS:
            raise ValueError(f"accessory_colour={self.accessory_colour!r} is not one of {ACCESSORY_COLOURS}")
        if not 0 <= self.skin_tone < len(_SKIN_RGB):
            raise ValueError(f"skin_tone must be in [0, {len(_SKIN_RGB)})")

    def values(self) -> tuple[str | None, ...]:
        """Returns the captionable attribute values in :attr:`ATTRIBUTES` order."""
        return tuple(getattr(self, name) for name in self.ATTRIBUTES)

    def differences(self, other: PersonAttributes) -> int:
        """Returns the number of captionable attributes in which ``self`` and ``other`` differ."""
        return sum(a != b for a, b in zip(self.values(), other.values()))

    def to_dict(self) -> dict[str, str | int | None]:
        """Returns all fields (including ``skin_tone``) as a JSON-ready dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def attribute_vocabulary() -> dict[str, tuple[str, ...]]:
    """Returns the allowed values of each captionable attribute (``accessory_colour`` excludes ``None``)."""
    return {
        "gender": GENDERS, "hair_style": HAIR_STYLES, "hair_colour": HAIR_COLOURS, "upper_type": UPPER_TYPES,
        "upper_colour": UPPER_COLOURS, "lower_type": LOWER_TYPES, "lower_colour": LOWER_COLOURS,
        "shoe_colour": SHOE_COLOURS, "accessory": ACCESSORIES, "accessory_colour": ACCESSORY_COLOURS,
    }


def _pick(rng: np.random.Generator, values: tuple[str, ...], weights: tuple[float, ...] | None = None) -> str:
    p = None if weights is None else np.asarray(weights, dtype=np.float64) / sum(weights)
    return values[int(rng.choice(len(values), p=p))]


def _sample_one(rng: np.random.Generator) -> PersonAttributes:
    female = rng.random() < 0.5
    accessory = _pick(rng, ACCESSORIES, (0.35, 0.25, 0.22, 0.18))
    return PersonAttributes(
        gender="female" if female else "male",
        hair_style=_pick(rng, HAIR_STYLES, (0.2, 0.35, 0.25, 0.2) if female else (0.75, 0.1, 0.08, 0.07)),
        hair_colour=_pick(rng, HAIR_COLOURS, (0.4, 0.3, 0.18, 0.12)),
        upper_type=_pick(rng, UPPER_TYPES),
        upper_colour=_pick(rng, UPPER_COLOURS),
        lower_type=_pick(rng, LOWER_TYPES, (0.45, 0.15, 0.22, 0.18) if female else (0.78, 0.22, 0.0, 0.0)),
        lower_colour=_pick(rng, LOWER_COLOURS),
        shoe_colour=_pick(rng, SHOE_COLOURS),
        accessory=accessory,
        accessory_colour=None if accessory == "none" else _pick(rng, ACCESSORY_COLOURS),
        skin_tone=int(rng.integers(len(_SKIN_RGB))),
    )


def sample_identities(num_ids: int, rng: np.random.Generator, max_tries_per_id: int = 1000) -> list[PersonAttributes]:
    """Samples ``num_ids`` identities such that any two differ in at least 2 captionable attributes.

    Values are drawn from small vocabularies (some gender-dependent weights), so identities share many values
    and a caption mentioning a few attributes usually matches several identities.

    Args:
        num_ids: Number of identities (>= 0).
        rng: Source of randomness; the result depends only on its state.
        max_tries_per_id: Rejection-sampling budget per identity before giving up.

    Returns:
        The identities, in sampling order.

    Raises:
        ValueError: If ``num_ids`` is negative or the budget is exhausted.
    """
    if num_ids < 0:
        raise ValueError(f"num_ids must be >= 0, got {num_ids}")
    # Two identities differ in <= 1 attribute iff they agree after masking some single attribute.
    taken: set[tuple[int, tuple[str | None, ...]]] = set()
    out: list[PersonAttributes] = []
    while len(out) < num_ids:
        for _ in range(max_tries_per_id):
            cand = _sample_one(rng)
            vals = cand.values()
            keys = [(i, vals[:i] + vals[i + 1:]) for i in range(len(vals))]
            if not any(k in taken for k in keys):
                taken.update(keys)
                out.append(cand)
                break
        else:
            raise ValueError(f"could not sample {num_ids} identities differing in >= 2 attributes")
    return out


# ----------------------------------------------------------------------------------------------- rendering
def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: float = 10.0) -> tuple[int, ...]:
    c = np.clip(np.asarray(rgb, dtype=np.float64) + rng.uniform(-amount, amount, 3), 0, 255)
    return tuple(int(v) for v in c) + (255,)


def _muted(rng: np.random.Generator, lo: float, hi: float, tint: float = 28.0) -> tuple[int, int, int]:
    c = rng.uniform(lo, hi) + rng.uniform(-1.0, 1.0, 3) * rng.uniform(4.0, tint)
    return tuple(int(v) for v in np.clip(c, 0, 255))  # type: ignore[return-value]


def _dark(c: tuple[int, ...], f: float = 0.55) -> tuple[int, ...]:
    return tuple(int(v * f) for v in c[:3]) + (255,)


def _background(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """Street-like muted background: wall and ground, gradient, clutter shapes and low-frequency texture."""
    arr = np.empty((h, w, 3), dtype=np.float32)
    horizon = int(h * rng.uniform(0.55, 0.82))
    arr[:horizon] = _muted(rng, 95, 195)
    arr[horizon:] = _muted(rng, 80, 170, tint=18)
    arr *= np.linspace(1 + rng.uniform(0, 0.12), 1 - rng.uniform(0, 0.12), h, dtype=np.float32)[:, None, None]
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 10))):
        col, kind = _muted(rng, 55, 205), int(rng.integers(4))
        x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(-0.1, 0.95) * h
        if kind == 0:  # building block / door / sign
            d.rectangle([x0, y0, x0 + rng.uniform(0.1, 0.6) * w, y0 + rng.uniform(0.05, 0.5) * h], fill=col)
        elif kind == 1:  # kerb, wire or railing
            d.line([x0, y0, x0 + rng.uniform(-1, 1) * w, y0 + rng.uniform(-0.3, 0.3) * h], fill=col,
                   width=int(rng.integers(1, 4)))
        elif kind == 2:  # bush / lamp
            r = rng.uniform(0.05, 0.25) * w
            d.ellipse([x0 - r, y0 - r, x0 + r, y0 + r * rng.uniform(0.5, 1.2)], fill=col)
        else:  # window grid
            cw, ch = rng.uniform(0.08, 0.18) * w, rng.uniform(0.05, 0.1) * h
            for i in range(int(rng.integers(1, 4))):
                for j in range(int(rng.integers(1, 3))):
                    x, y = x0 + i * cw * 1.5, y0 + j * ch * 1.6
                    d.rectangle([x, y, x + cw, y + ch], fill=col)
    blot = rng.normal(0, 9, (5, 3, 3)).astype(np.float32) + 128
    blot_img = Image.fromarray(np.clip(blot, 0, 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    out = np.asarray(img, dtype=np.float32) + np.asarray(blot_img, dtype=np.float32) - 128
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


class _Canvas:
    """Figure layer drawn in body units ``u`` (head height ~1.1u, figure 8u tall), with lean and supersampling."""

    def __init__(self, h: int, w: int, cx: float, top: float, u: float, lean: float) -> None:
        self.img = Image.new("RGBA", (w * _SS, h * _SS), (0, 0, 0, 0))
        self.d = ImageDraw.Draw(self.img)
        self.cx, self.top, self.u, self.lean = cx, top, u, lean
        self.ol = max(1, round(0.07 * u * _SS))  # outline width in canvas pixels

    def p(self, x: float, y: float) -> tuple[float, float]:
        yy = self.top + y * self.u
        xx = self.cx + x * self.u + (self.top + 8 * self.u - yy) * self.lean
        return xx * _SS, yy * _SS

    def poly(self, pts: list[tuple[float, float]], fill: tuple[int, ...], outline: bool = True) -> None:
        self.d.polygon([self.p(x, y) for x, y in pts], fill=fill,
                       outline=_dark(fill) if outline else None, width=self.ol if outline else 1)

    def ellipse(self, x: float, y: float, rx: float, ry: float, fill: tuple[int, ...], outline: bool = True) -> None:
        px, py = self.p(x, y)
        rx, ry = rx * self.u * _SS, ry * self.u * _SS
        self.d.ellipse([px - rx, py - ry, px + rx, py + ry], fill=fill,
                       outline=_dark(fill) if outline else None, width=self.ol if outline else 0)

    def chain(self, pts: list[tuple[float, float]], widths: list[float], fill: tuple[int, ...]) -> None:
        """Draws a limb through ``pts`` with the given widths, outlined around the union of its segments."""
        grow = 2 * self.ol / (self.u * _SS)
        for colour, g in ((_dark(fill), grow), (fill, 0.0)):
            for (a, b), (wa, wb) in zip(zip(pts, pts[1:]), zip(widths, widths[1:])):
                (ax, ay), (bx, by) = a, b
                wa, wb = wa + g, wb + g
                n = math.hypot(bx - ax, by - ay) or 1e-6
                nx, ny = -(by - ay) / n, (bx - ax) / n
                self.poly([(ax + nx * wa / 2, ay + ny * wa / 2), (bx + nx * wb / 2, by + ny * wb / 2),
                           (bx - nx * wb / 2, by - ny * wb / 2), (ax - nx * wa / 2, ay - ny * wa / 2)], colour, False)
                self.ellipse(ax, ay, wa / 2, wa / 2, colour, outline=False)
                self.ellipse(bx, by, wb / 2, wb / 2, colour, outline=False)


def _along(a: tuple[float, float], b: tuple[float, float], t: float) -> tuple[float, float]:
    return a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t


def _draw_figure(c: _Canvas, p: PersonAttributes, rng: np.random.Generator) -> None:
    female = p.gender == "female"
    skin = _jitter(rng, _SKIN_RGB[p.skin_tone], 6)
    hair = _jitter(rng, _HAIR_RGB[p.hair_colour], 8)
    up = _jitter(rng, COLOUR_RGB[p.upper_colour])
    low = _jitter(rng, COLOUR_RGB[p.lower_colour])
    shoe = _jitter(rng, COLOUR_RGB[p.shoe_colour])
    acc = _jitter(rng, COLOUR_RGB[p.accessory_colour]) if p.accessory_colour else skin
    side = 1.0 if rng.random() < 0.5 else -1.0  # bag / ponytail / brim side
    sy, wy, hy = 1.35, 2.95, 3.75  # shoulder, waist, hip heights
    sw, ww, hw = (0.82, 0.6, 0.8) if female else (0.98, 0.72, 0.74)
    hrx, hry = 0.42, 0.55  # head radii, centre (0, 0.55)
    # joints: legs and arms with jittered angles (degrees from vertical, positive = outward)
    legs, arms = [], []
    for s in (-1.0, 1.0):
        hip = (s * (0.4 if female else 0.38), hy)
        a1 = math.radians(rng.uniform(1, 8))
        knee = (hip[0] + s * math.sin(a1) * 1.85, hip[1] + math.cos(a1) * 1.85)
        a2 = a1 + math.radians(rng.uniform(-5, 3))
        ankle = (knee[0] + s * math.sin(a2) * 1.8, knee[1] + math.cos(a2) * 1.8)
        legs.append((s, hip, knee, ankle))
        sh = (s * (sw - 0.22), sy + 0.28)
        b1 = math.radians(rng.uniform(5, 22))
        elbow = (sh[0] + s * math.sin(b1) * 1.35, sh[1] + math.cos(b1) * 1.35)
        b2 = max(math.radians(2), b1 + math.radians(rng.uniform(-12, 14)))
        fore = 1.25 * (rng.uniform(0.6, 1.0) if rng.random() < 0.35 else 1.0)  # foreshortened swing
        hand = (elbow[0] + s * math.sin(b2) * fore, elbow[1] + math.cos(b2) * fore)
        arms.append((s, sh, elbow, hand))
    # --- behind the body: backpack, long hair, ponytail, bun
    if p.accessory == "backpack":
        c.poly([(-sw - 0.12, sy - 0.2), (sw + 0.12, sy - 0.2), (sw + 0.15, wy + 0.4), (-sw - 0.15, wy + 0.4)], acc)
    if p.hair_style == "long":
        c.poly([(-hrx * 1.2, 0.3), (hrx * 1.2, 0.3), (hrx * 1.45, sy + 0.75), (-hrx * 1.45, sy + 0.75)], hair)
    elif p.hair_style == "ponytail":
        tail = [(0.2, 0.2), (0.62, 0.35), (0.72, 1.55), (0.5, 1.7), (0.38, 0.9)]
        c.poly([(side * x, y) for x, y in tail], hair)
    # --- legs, lower garment, shoes
    for s, hip, knee, ankle in legs:
        c.chain([hip, knee, ankle], [0.66, 0.48, 0.38], skin)
    if p.lower_type in ("trousers", "shorts"):
        c.poly([(-ww, wy - 0.1), (ww, wy - 0.1), (hw, hy), (hw - 0.05, hy + 0.5), (0, hy + 0.3),
                (-hw + 0.05, hy + 0.5), (-hw, hy)], low)
        for s, hip, knee, ankle in legs:
            if p.lower_type == "trousers":
                c.chain([hip, knee, ankle], [0.76, 0.58, 0.48], low)
            else:
                c.chain([hip, _along(hip, knee, 0.6)], [0.8, 0.7], low)
    else:
        bottom, flare = (5.45, 0.5) if p.lower_type == "skirt" else (7.25, 0.75)
        c.poly([(-ww, wy - 0.1), (ww, wy - 0.1), (hw + flare, bottom), (-hw - flare, bottom)], low)
    for s, hip, knee, ankle in legs:
        c.poly([(ankle[0] - 0.26 + s * 0.05, ankle[1] - 0.12), (ankle[0] + 0.26 + s * 0.05, ankle[1] - 0.12),
                (ankle[0] + 0.3 + s * 0.12, 8.0), (ankle[0] - 0.3 + s * 0.12, 8.0)], shoe)
    # --- neck, upper garment and its details
    c.poly([(-0.17, 0.9), (0.17, 0.9), (0.19, sy + 0.1), (-0.19, sy + 0.1)], skin)
    hem, hem_w = (5.0, hw + 0.18) if p.upper_type == "coat" else (hy - 0.1, hw - 0.02)
    torso = [(-0.27, sy - 0.1), (0.27, sy - 0.1), (sw, sy + 0.18), (sw - 0.02, sy + 0.7), (ww, wy),
             (hem_w, hem), (-hem_w, hem), (-ww, wy), (-sw + 0.02, sy + 0.7), (-sw, sy + 0.18)]
    if p.upper_type == "tank top":
        c.poly(torso[:5] + torso[7:], skin)
        c.poly([(-sw + 0.32, sy - 0.02), (-0.3, sy - 0.02), (0, sy + 0.45), (0.3, sy - 0.02), (sw - 0.32, sy - 0.02),
                (sw - 0.12, sy + 0.75), (ww, wy), (hem_w, hem), (-hem_w, hem), (-ww, wy), (-sw + 0.12, sy + 0.75)], up)
    else:
        c.poly(torso, up)
    dk = _dark(up, 0.7)
    if p.upper_type in ("t-shirt", "sweater"):
        c.ellipse(0, sy - 0.05, 0.24, 0.16, dk if p.upper_type == "sweater" else skin)
        if p.upper_type == "sweater":
            c.ellipse(0, sy - 0.07, 0.16, 0.1, skin, outline=False)
            c.poly([(-hw + 0.02, hem - 0.28), (hw - 0.02, hem - 0.28), (hw - 0.02, hem), (-hw + 0.02, hem)], dk)
    elif p.upper_type in ("shirt", "jacket", "coat"):
        c.poly([(-0.2, sy - 0.1), (0.2, sy - 0.1), (0, sy + 0.4)], skin, outline=False)
        collar = _jitter(rng, (235, 235, 230), 5) if p.upper_type == "shirt" else dk
        for s in (-1, 1):
            c.poly([(s * 0.3, sy - 0.14), (s * 0.05, sy + 0.45), (s * 0.12, sy - 0.12)], collar)
        if p.upper_type == "jacket":
            c.poly([(-0.03, sy + 0.4), (0.03, sy + 0.4), (0.03, hem), (-0.03, hem)], _dark(up, 0.45), outline=False)
        for k in range(4 if p.upper_type == "coat" else 3 if p.upper_type == "shirt" else 0):
            c.ellipse(0, sy + 0.6 + k * (0.8 if p.upper_type == "coat" else 0.6), 0.06, 0.06, _dark(up, 0.4), False)
    if p.accessory == "backpack":
        for s in (-1, 1):
            c.poly([(s * 0.42, sy - 0.12), (s * 0.64, sy - 0.12), (s * 0.6, wy - 0.1), (s * 0.42, wy - 0.1)], acc)
    # --- arms (skin, then sleeves), hands
    sleeve = {"t-shirt": 0.55, "tank top": 0.0}.get(p.upper_type, 2.0)
    for s, sh, elbow, hand in arms:
        c.chain([sh, elbow, hand], [0.42, 0.36, 0.3], skin)
        if sleeve > 1.0:
            c.chain([sh, elbow, _along(elbow, hand, 0.93)], [0.5, 0.44, 0.38], up)
            if p.upper_type == "sweater":
                c.chain([_along(elbow, hand, 0.8), _along(elbow, hand, 0.93)], [0.4, 0.4], dk)
        elif sleeve > 0:
            c.chain([sh, _along(sh, elbow, sleeve)], [0.52, 0.48], up)
        c.ellipse(hand[0], hand[1] + 0.05, 0.2, 0.22, skin)
    if p.accessory == "bag":
        bx = -side * (hw + 0.45)
        c.d.line([c.p(side * 0.45, sy - 0.05), c.p(bx + side * 0.25, hy - 0.35)], fill=_dark(acc, 0.75),
                 width=max(1, round(0.1 * c.u * _SS)))
        c.poly([(bx - 0.42, hy - 0.4), (bx + 0.42, hy - 0.4), (bx + 0.48, hy + 0.45), (bx - 0.48, hy + 0.45)], acc)
    # --- head, face, hair, hat
    c.ellipse(0, 0.55, hrx, hry, skin)
    for s in (-1, 1):
        c.ellipse(s * 0.15, 0.62, 0.055, 0.055, (30, 25, 25, 255), outline=False)
    if p.hair_style == "bun":
        c.ellipse(0, -0.05, 0.27, 0.24, hair)
    if p.hair_style != "long":  # sideburns / hair over the ears
        for s in (-1, 1):
            c.poly([(s * 0.3, 0.3), (s * 0.47, 0.3), (s * 0.45, 0.66), (s * 0.35, 0.6)], hair)
    c.d.chord([*c.p(-hrx * 1.12, -0.1), *c.p(hrx * 1.12, 0.78 if p.hair_style == "short" else 0.8)], 180, 360,
              fill=hair, outline=_dark(hair), width=c.ol)
    if p.hair_style == "long":
        for s in (-1, 1):
            lock = [(0.36, 0.3), (0.52, 0.3), (0.6, sy + 0.55), (0.4, sy + 0.55), (0.36, 0.9)]
            c.poly([(s * x, y) for x, y in lock], hair)
    if p.accessory == "hat":
        c.d.chord([*c.p(-hrx * 1.18, -0.32), *c.p(hrx * 1.18, 0.48)], 180, 360, fill=acc, outline=_dark(acc),
                  width=c.ol)
        c.ellipse(side * 0.22, 0.1, hrx + 0.3, 0.08, _dark(acc, 0.85))


def _occlude(rng: np.random.Generator, img: Image.Image, cx: float) -> None:
    w, h = img.size
    d = ImageDraw.Draw(img)
    col, kind = _muted(rng, 50, 170), int(rng.integers(3))
    if kind == 0:  # pole / tree trunk in front of the person
        x, pw = cx + rng.uniform(-0.35, 0.35) * w, rng.uniform(0.05, 0.11) * w
        d.rectangle([x - pw / 2, -1, x + pw / 2, h], fill=col)
        d.line([x - pw / 2, -1, x - pw / 2, h], fill=tuple(int(v * 0.7) for v in col), width=1)
    elif kind == 1:  # bench / car / barrier at the bottom
        d.rectangle([rng.uniform(-0.3, 0.3) * w, h * (1 - rng.uniform(0.12, 0.3)), rng.uniform(0.7, 1.3) * w, h],
                    fill=col)
    else:  # something entering from one side
        x = rng.uniform(0.15, 0.32) * w
        box = [-1, rng.uniform(0.2, 0.6) * h, x, h] if rng.random() < 0.5 else [w - x, rng.uniform(0.2, 0.6) * h, w, h]
        d.rounded_rectangle(box, radius=max(1, int(0.05 * w)), fill=col)


def render_person(
    identity: PersonAttributes, rng: np.random.Generator, size: tuple[int, int] = (128, 64)
) -> Image.Image:
    """Renders one image of ``identity``: a standing pedestrian on a cluttered street-like background.

    Pose (limb angles, lean), scale, position, background, lighting and occlusion (probability
    :data:`OCCLUSION_PROB`) are drawn from ``rng``; attribute colours get only moderate jitter.

    Args:
        identity: The person's attributes.
        rng: Source of randomness; the image depends only on ``identity``, ``size`` and the state of ``rng``.
        size: ``(height, width)`` in pixels; at least ``(32, 16)``.

    Returns:
        An RGB image of the given size.
    """
    h, w = size
    if h < 32 or w < 16:
        raise ValueError(f"image size must be at least (32, 16), got {size}")
    img = _background(rng, h, w).convert("RGBA")
    fh = h * rng.uniform(0.74, 0.92)
    foot = h * rng.uniform(0.94, 0.99)
    cx = w / 2 + rng.uniform(-0.1, 0.1) * w
    canvas = _Canvas(h, w, cx, foot - fh, fh / 8.0, math.tan(math.radians(rng.uniform(-4, 4))))
    _draw_figure(canvas, identity, rng)
    img.alpha_composite(canvas.img.reduce(_SS))
    img = img.convert("RGB")
    if rng.random() < OCCLUSION_PROB:
        _occlude(rng, img, cx)
    # lighting: colour cast, brightness, contrast, directional gradient, sensor noise
    arr = np.asarray(img, dtype=np.float32)
    arr = arr * (1 + rng.uniform(-0.06, 0.06, 3)).astype(np.float32) * rng.uniform(0.8, 1.15)
    mean = arr.mean()
    arr = (arr - mean) * rng.uniform(0.85, 1.15) + mean
    theta, amp = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.16)
    xx = (np.arange(w, dtype=np.float32) / w - 0.5)[None, :]
    yy = (np.arange(h, dtype=np.float32) / h - 0.5)[:, None]
    arr *= (1 + 2 * amp * (math.cos(theta) * xx + math.sin(theta) * yy))[..., None]
    arr += rng.standard_normal(arr.shape, dtype=np.float32) * np.float32(rng.uniform(1.5, 5.0))
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))


def render_to_file(task: tuple[PersonAttributes, tuple[int, ...], tuple[int, int], str]) -> None:
    """Renders one image and saves it as PNG (no timestamp chunk); the worker of the dataset writer.

    Args:
        task: ``(identity, rng_key, size, path)``; the image is rendered with ``np.random.default_rng(rng_key)``,
            so it does not depend on which process renders it or in which order.
    """
    identity, key, size, path = task
    render_person(identity, np.random.default_rng(list(key)), size).save(path, format="PNG", compress_level=6)
