"""The embedded default dataset: drawn LEGO-minifigure-like photos, no network needed.

`generate_dataset` writes the exact layout of the Kaggle "LEGO Minifigures Classification"
dataset (metadata.csv, index.csv, test.csv for the current release; index.csv with a
train-valid column for the legacy one). Each class is a fixed character (head gear, torso
colour and print, legs, accessory) derived from the class index alone; each image of it is a new
"photo" (pose, scale, background, lighting, blur, noise, JPEG quality) drawn from a numpy
Generator seeded by (seed, class, image). `Nuisance` holds the ranges of that photo variation, so
drifted data (darker, blurrier, more compressed) is just another `Nuisance`.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from tqdm import tqdm

RGB = tuple[int, int, int]
Range = tuple[float, float]

FRANCHISES = ("marvel", "star-wars", "harry-potter", "jurassic-world")
BACKGROUND_KINDS = ("solid", "gradient", "texture", "table", "clutter")
RELEASES = ("current", "legacy")
# Class looks come from this fixed seed, never from the dataset seed: class k is always the
# same character, whatever seed, size or number of classes is asked for.
SPEC_SEED = 20_200_813

PALETTE: dict[str, RGB] = {
    "red": (201, 26, 9), "dark-red": (114, 14, 15), "orange": (254, 138, 24),
    "bright-yellow": (250, 200, 10), "lime": (165, 202, 24), "green": (35, 120, 65),
    "dark-green": (24, 70, 50), "azure": (54, 174, 191), "blue": (0, 85, 191),
    "dark-blue": (10, 52, 99), "sand-blue": (96, 116, 161), "purple": (105, 46, 142),
    "magenta": (146, 57, 120), "tan": (228, 205, 158), "brown": (88, 57, 39),
    "white": (244, 244, 244), "light-grey": (160, 165, 169), "dark-grey": (99, 95, 97),
    "black": (27, 30, 34),
}
SKINS: dict[str, RGB] = {
    "yellow": (250, 205, 55), "light-nougat": (246, 215, 179), "nougat": (204, 142, 104),
    "medium-nougat": (170, 125, 85), "dark-brown": (53, 33, 0),
}
BLADES: dict[str, RGB] = {
    "saber-green": (90, 255, 90), "saber-red": (255, 50, 40), "saber-blue": (70, 150, 255),
    "saber-purple": (200, 90, 255),
}
COLOURS: dict[str, RGB] = {**PALETTE, **SKINS, **BLADES}

HEADGEAR = ("none", "short-hair", "long-hair", "cap", "helmet", "wizard-hat", "hood")
FACES = ("smile", "grin", "glasses", "beard", "mask")
PRINTS = ("plain", "stripes", "emblem", "letter", "zipper", "belt", "vest", "straps")
ACCESSORIES = ("none", "sword", "lightsaber", "shield", "cape", "wand", "blaster")
LETTERS = "AHKMNRSTVWXZ"
ROLE_BY_ACCESSORY = {
    "none": "CIVILIAN", "sword": "KNIGHT", "lightsaber": "DUELIST", "shield": "GUARDIAN",
    "cape": "HERO", "wand": "WIZARD", "blaster": "RANGER",
}


@dataclass(frozen=True)
class Nuisance:
    """Ranges of the per-image "photo" variation. Ranges are (low, high), sampled uniformly."""

    brightness: Range = (0.8, 1.2)  # multiplicative gain on all channels
    contrast: Range = (0.8, 1.15)  # stretch around mid-grey
    colour_cast: float = 0.08  # max relative deviation of each channel's gain
    blur_radius: Range = (0.0, 1.5)  # Gaussian radius in pixels of a 256 px image
    jpeg_quality: tuple[int, int] = (60, 95)
    noise_std: Range = (0.0, 6.0)  # sensor noise, in 0..255 grey levels
    rotation_deg: Range = (-15.0, 15.0)
    scale: Range = (0.5, 0.9)  # figure height as a fraction of the image height
    max_shift: float = 0.1  # max horizontal offset of the figure, fraction of the width
    backgrounds: tuple[str, ...] = BACKGROUND_KINDS

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "blur_radius", "jpeg_quality", "noise_std",
                     "rotation_deg", "scale"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"Nuisance.{name}: low {low} is above high {high}")
        for name in ("brightness", "contrast", "blur_radius", "noise_std", "colour_cast",
                     "max_shift"):
            value = getattr(self, name)
            lowest = value[0] if isinstance(value, tuple) else value
            if lowest < 0:
                raise ValueError(f"Nuisance.{name} must not be negative, got {value}")
        if not (self.scale[0] > 0 and self.scale[1] <= 1):
            raise ValueError(f"Nuisance.scale must lie in (0, 1], got {self.scale}")
        if not (self.jpeg_quality[0] >= 1 and self.jpeg_quality[1] <= 100):
            raise ValueError(f"Nuisance.jpeg_quality must lie in 1..100, got {self.jpeg_quality}")
        unknown = set(self.backgrounds) - set(BACKGROUND_KINDS)
        if not self.backgrounds or unknown:
            raise ValueError(f"Nuisance.backgrounds must be a non-empty subset of "
                             f"{BACKGROUND_KINDS}, got {self.backgrounds}")


@dataclass(frozen=True)
class FigureSpec:
    """What makes a class a class. Attributes that would not show are "none" (a face under a
    helmet is "hidden"), so two specs that compare unequal always look different."""

    head_colour: str
    face: str
    headgear: str
    headgear_colour: str
    torso_colour: str
    print_kind: str
    print_colour: str
    letter: str
    arm_colour: str
    hand_colour: str
    hip_colour: str
    leg_colour: str
    boot_colour: str
    accessory: str
    accessory_colour: str


@dataclass(frozen=True)
class ClassInfo:
    class_id: int
    name: str
    franchise: str
    folder: str  # "marvel/0001"
    lego_id: int
    set_name: str
    spec: FigureSpec


# ---------------------------------------------------------------------------- class specs


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str],
          exclude: tuple[str, ...] = ()) -> str:
    allowed = [option for option in options if option not in exclude]
    return allowed[int(rng.integers(len(allowed)))]


def _random_look(rng: np.random.Generator, torso: str, legs: str, skin: str,
                 exclude_print: str = "", exclude_accessory: str = "") -> FigureSpec:
    """Everything except torso, legs and skin; those are what sibling classes share."""
    colours = tuple(PALETTE)
    headgear = _pick(rng, HEADGEAR)
    face = "hidden" if headgear == "helmet" else _pick(rng, FACES)  # a helmet hides the face
    print_kind = _pick(rng, PRINTS, (exclude_print,))
    accessory = _pick(rng, ACCESSORIES, (exclude_accessory,))
    mask = face == "mask"
    arm = torso if rng.random() < 0.6 else _pick(rng, colours, (torso,))
    hips = legs if rng.random() < 0.6 else _pick(rng, colours, (legs,))
    boots = legs if rng.random() < 0.7 else _pick(rng, colours, (legs,))
    if accessory == "lightsaber":
        accessory_colour = _pick(rng, tuple(BLADES))
    elif accessory in ("shield", "cape"):
        accessory_colour = _pick(rng, colours, (torso,))
    else:
        accessory_colour = "none"
    return FigureSpec(
        head_colour=_pick(rng, colours, (torso,)) if mask else skin,
        face=face,
        headgear=headgear,
        headgear_colour="none" if headgear == "none" else _pick(rng, colours),
        torso_colour=torso,
        print_kind=print_kind,
        print_colour="none" if print_kind == "plain" else _pick(rng, colours, (torso,)),
        letter=_pick(rng, LETTERS) if print_kind == "letter" else "none",
        arm_colour=arm,
        hand_colour=_pick(rng, ("black", "white", "dark-grey")) if mask else skin,
        hip_colour=hips,
        leg_colour=legs,
        boot_colour=boots,
        accessory=accessory,
        accessory_colour=accessory_colour,
    )


def _skin(rng: np.random.Generator) -> str:
    # Mostly classic yellow, like the real figures.
    return "yellow" if rng.random() < 0.6 else _pick(rng, tuple(SKINS), ("yellow",))


def _next_spec(index: int, earlier: list[FigureSpec]) -> FigureSpec:
    rng = np.random.default_rng([SPEC_SEED, index])
    while True:
        if index % 2 == 0:
            spec = _random_look(rng, _pick(rng, tuple(PALETTE)), _pick(rng, tuple(PALETTE)),
                                _skin(rng))
        else:
            twin = earlier[index - 1]
            skin = twin.head_colour if twin.head_colour in SKINS else _skin(rng)
            spec = _random_look(rng, twin.torso_colour, twin.leg_colour, skin,
                                twin.print_kind, twin.accessory)
        if spec not in earlier:
            return spec


_SPECS: list[FigureSpec] = []  # grown on demand; entry k depends only on k


def class_specs(count: int) -> tuple[FigureSpec, ...]:
    """Specs of classes 0..count-1, all different. Classes come in sibling pairs (2p, 2p+1)
    that share torso, leg and skin colours but differ in print and accessory, so no single mean
    colour separates every class. Spec k depends only on k (and SPEC_SEED), never on count."""
    while len(_SPECS) < count:
        _SPECS.append(_next_spec(len(_SPECS), _SPECS))
    return tuple(_SPECS[:count])


def _names(specs: tuple[FigureSpec, ...]) -> list[str]:
    """Readable names, unique by a numeric suffix, except that class 4 deliberately reuses the
    name of class 1: the real dataset has two different classes both named SPIDER-MAN."""
    names: list[str] = []
    for index, spec in enumerate(specs):
        base = f"{spec.torso_colour.replace('-', ' ')} {ROLE_BY_ACCESSORY[spec.accessory]}"
        name, suffix = base.upper(), 2
        while name in names:
            name, suffix = f"{base.upper()} {suffix}", suffix + 1
        names.append(names[0] if index == 3 else name)
    return names


def class_table(count: int) -> list[ClassInfo]:
    """Metadata of classes 1..count: consecutive pairs form a "set" of one franchise."""
    specs = class_specs(count)
    per_franchise: dict[str, int] = {}
    table = []
    for index, (spec, name) in enumerate(zip(specs, _names(specs), strict=True)):
        set_index = index // 2
        franchise = FRANCHISES[set_index % len(FRANCHISES)]
        per_franchise[franchise] = per_franchise.get(franchise, 0) + 1
        table.append(ClassInfo(
            class_id=index + 1, name=name, franchise=franchise,
            folder=f"{franchise}/{per_franchise[franchise]:04d}", lego_id=90_001 + set_index,
            set_name=f"Builder's {franchise.replace('-', ' ').title()} Pack {set_index + 1}",
            spec=spec))
    return table


# ---------------------------------------------------------------------------- drawing

Point = tuple[float, float]


@lru_cache(maxsize=256)
def _unit_arc(start: float, end: float) -> tuple[Point, ...]:
    steps = max(4, round(abs(end - start) / 10))
    angles = np.radians(np.linspace(start, end, steps + 1))
    return tuple((math.cos(a), math.sin(a)) for a in angles)


def _arc_points(cx: float, cy: float, rx: float, ry: float, start: float,
                end: float) -> list[Point]:
    """Points on an ellipse arc; angles in degrees, clockwise from 3 o'clock (PIL's rule)."""
    return [(cx + rx * cos, cy + ry * sin) for cos, sin in _unit_arc(start, end)]


def _rounded_box(x0: float, y0: float, x1: float, y1: float, radius: float) -> list[Point]:
    if radius <= 0:
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    r = min(radius, (x1 - x0) / 2, (y1 - y0) / 2)
    corners = ((x1 - r, y0 + r, 270), (x1 - r, y1 - r, 0), (x0 + r, y1 - r, 90),
               (x0 + r, y0 + r, 180))
    return [p for cx, cy, start in corners for p in _arc_points(cx, cy, r, r, start, start + 90)]


class _Pen:
    """Draws in figure units (the figure is 1.0 tall, centred on x = 0.5) onto an RGBa canvas,
    turned `angle_deg` counter-clockwise about figure point (0.5, 0.5), which lands on `origin`.
    Every shape is a polygon or a line, so the turn costs nothing (no image rotation)."""

    def __init__(self, canvas: Image.Image, unit: float, origin: Point, angle_deg: float) -> None:
        self.canvas, self.unit, self.origin, self.angle = canvas, unit, origin, angle_deg
        self.draw = ImageDraw.Draw(canvas)
        self._cos, self._sin = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))

    def _xy(self, points: list[Point]) -> list[Point]:
        ox, oy = self.origin
        turned = []
        for x, y in points:
            dx, dy = (x - 0.5) * self.unit, (y - 0.5) * self.unit
            turned.append((ox + dx * self._cos + dy * self._sin,
                           oy - dx * self._sin + dy * self._cos))
        return turned

    def _px(self, width: float) -> int:
        return max(1, round(width * self.unit))

    def polygon(self, points: list[Point], fill: RGB) -> None:
        self.draw.polygon(self._xy(points), fill=(*fill, 255))

    def line(self, points: list[Point], fill: RGB, width: float) -> None:
        self.draw.line(self._xy(points), fill=(*fill, 255), width=self._px(width), joint="curve")

    def box(self, x0: float, y0: float, x1: float, y1: float, fill: RGB,
            radius: float = 0.0) -> None:
        self.polygon(_rounded_box(x0, y0, x1, y1, radius), fill)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, fill: RGB) -> None:
        self.polygon(_arc_points(cx, cy, rx, ry, 0, 360), fill)

    def ring(self, cx: float, cy: float, rx: float, ry: float, fill: RGB, width: float) -> None:
        self.line(_arc_points(cx, cy, rx, ry, 0, 360), fill, width)

    def chord(self, cx: float, cy: float, rx: float, ry: float, start: float, end: float,
              fill: RGB) -> None:
        self.polygon(_arc_points(cx, cy, rx, ry, start, end), fill)

    def arc(self, cx: float, cy: float, rx: float, ry: float, start: float, end: float,
            fill: RGB, width: float) -> None:
        self.line(_arc_points(cx, cy, rx, ry, start, end), fill, width)

    def glyph(self, text: str, cx: float, cy: float, height: float, fill: RGB) -> None:
        """A letter: text cannot be drawn turned, so it is drawn upright and its mask rotated."""
        font = _font(max(4, round(height * self.unit)))
        left, top, right, bottom = self.draw.textbbox((0, 0), text, font=font)
        side = 2 * max(right - left, bottom - top) + 2
        mask = Image.new("L", (side, side), 0)
        ImageDraw.Draw(mask).text(((side - left - right) / 2, (side - top - bottom) / 2), text,
                                  fill=255, font=font)
        mask = mask.rotate(self.angle, Image.Resampling.BILINEAR)
        (x, y), = self._xy([(cx, cy)])
        self.canvas.paste((*fill, 255), (round(x - side / 2), round(y - side / 2)), mask)


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _shade(colour: RGB, factor: float) -> RGB:
    r, g, b = (int(min(255, max(0, c * factor))) for c in colour)
    return r, g, b


def _c(name: str) -> RGB:
    return COLOURS[name]


TORSO_TOP, TORSO_BOTTOM = 0.30, 0.60
HIP_BOTTOM, FEET = 0.665, 0.975
SHOULDERS = ((0.36, 0.325), (0.64, 0.325))


def _torso_x(y: float) -> tuple[float, float]:
    """Left and right edge of the trapezoid torso at height y."""
    t = (y - TORSO_TOP) / (TORSO_BOTTOM - TORSO_TOP)
    half = 0.135 + t * 0.065
    return 0.5 - half, 0.5 + half


def _torso_band(y0: float, y1: float) -> list[Point]:
    (l0, r0), (l1, r1) = _torso_x(y0), _torso_x(y1)
    return [(l0, y0), (r0, y0), (r1, y1), (l1, y1)]


def _hand_position(side: int, angle_deg: float) -> Point:
    """Centre of the hand of the arm on `side` (-1 left, +1 right) swung out by angle_deg."""
    sx, sy = SHOULDERS[0 if side < 0 else 1]
    angle = math.radians(angle_deg)
    length = 0.27
    return sx + side * length * math.sin(angle), sy + length * math.cos(angle)


def _draw_arm(pen: _Pen, spec: FigureSpec, side: int, angle_deg: float) -> None:
    sx, sy = SHOULDERS[0 if side < 0 else 1]
    angle = math.radians(angle_deg)
    along = (side * math.sin(angle), math.cos(angle))
    across = (along[1] * side, -along[0] * side)

    def at(a: float, b: float) -> Point:
        return sx + along[0] * a + across[0] * b, sy + along[1] * a + across[1] * b

    pen.polygon([at(-0.02, -0.05), at(-0.02, 0.035), at(0.20, 0.03), at(0.20, -0.045)],
                _c(spec.arm_colour))
    pen.polygon([at(0.19, -0.025), at(0.19, 0.02), at(0.23, 0.02), at(0.23, -0.025)],
                _c(spec.hand_colour))
    hx, hy = _hand_position(side, angle_deg)
    pen.ellipse(hx, hy, 0.04, 0.04, _c(spec.hand_colour))
    pen.ellipse(hx + side * 0.008, hy + 0.01, 0.017, 0.017, _shade(_c(spec.hand_colour), 0.55))


def _draw_legs(pen: _Pen, spec: FigureSpec) -> None:
    hips, leg, boot = _c(spec.hip_colour), _c(spec.leg_colour), _c(spec.boot_colour)
    pen.box(0.30, TORSO_BOTTOM, 0.70, HIP_BOTTOM, hips)
    for x0, x1 in ((0.30, 0.495), (0.505, 0.70)):
        pen.box(x0, HIP_BOTTOM, x1, FEET, leg, radius=0.01)
        pen.box(x0, 0.89, x1, FEET, boot, radius=0.01)
    pen.line([(0.30, HIP_BOTTOM), (0.70, HIP_BOTTOM)], _shade(hips, 0.6), 0.008)
    pen.line([(0.5, HIP_BOTTOM), (0.5, FEET)], _shade(leg, 0.5), 0.01)


def _draw_torso(pen: _Pen, spec: FigureSpec) -> None:
    torso = _c(spec.torso_colour)
    pen.polygon(_torso_band(TORSO_TOP, TORSO_BOTTOM), torso)
    if spec.print_kind != "plain":
        _draw_print(pen, spec.print_kind, _c(spec.print_colour), torso, spec.letter)


def _draw_print(pen: _Pen, kind: str, ink: RGB, torso: RGB, letter: str) -> None:
    if kind == "stripes":
        for y in (0.36, 0.44, 0.52):
            pen.polygon(_torso_band(y, y + 0.04), ink)
    elif kind == "emblem":
        pen.ellipse(0.5, 0.43, 0.075, 0.075, ink)
        pen.polygon([(0.5, 0.375), (0.545, 0.43), (0.5, 0.485), (0.455, 0.43)], torso)
    elif kind == "letter":
        pen.ellipse(0.5, 0.44, 0.085, 0.085, ink)
        pen.glyph(letter, 0.5, 0.44, 0.12, torso)
    elif kind == "zipper":
        pen.polygon([(0.43, TORSO_TOP), (0.57, TORSO_TOP), (0.5, 0.42)], ink)
        pen.line([(0.5, 0.42), (0.5, TORSO_BOTTOM)], _shade(ink, 0.8), 0.014)
        pen.box(0.488, 0.45, 0.512, 0.49, ink)
    elif kind == "belt":
        pen.polygon(_torso_band(0.535, 0.585), ink)
        pen.box(0.47, 0.53, 0.53, 0.59, _c("bright-yellow"), radius=0.008)
    elif kind == "vest":
        pen.polygon([(0.44, TORSO_TOP), (0.56, TORSO_TOP), (0.54, TORSO_BOTTOM),
                     (0.46, TORSO_BOTTOM)], ink)
        for y in (0.38, 0.45, 0.52):
            pen.ellipse(0.5, y, 0.012, 0.012, torso)
    elif kind == "straps":
        pen.line([(0.39, TORSO_TOP), (0.66, TORSO_BOTTOM - 0.01)], ink, 0.04)
        pen.line([(0.61, TORSO_TOP), (0.34, TORSO_BOTTOM - 0.01)], ink, 0.04)


def _draw_head(pen: _Pen, spec: FigureSpec) -> None:
    head = _c(spec.head_colour)
    pen.box(0.45, 0.27, 0.55, 0.31, _shade(head, 0.85))  # neck
    pen.box(0.448, 0.055, 0.552, 0.095, head, radius=0.01)  # stud
    pen.box(0.395, 0.085, 0.605, 0.285, head, radius=0.05)
    _draw_face(pen, spec.face)


def _draw_face(pen: _Pen, face: str) -> None:
    ink = _c("black")
    if face == "hidden":
        return
    if face == "mask":
        for side in (-1, 1):
            pen.ellipse(0.5 + side * 0.045, 0.175, 0.035, 0.025, ink)
            pen.ellipse(0.5 + side * 0.045, 0.175, 0.027, 0.018, _c("white"))
        return
    for side in (-1, 1):
        pen.ellipse(0.5 + side * 0.04, 0.17, 0.011, 0.016, ink)
        pen.line([(0.5 + side * 0.025, 0.145), (0.5 + side * 0.055, 0.142)], ink, 0.006)
    if face == "smile":
        pen.arc(0.5, 0.2125, 0.045, 0.0325, 20, 160, ink, 0.007)
    elif face == "grin":
        pen.chord(0.5, 0.22, 0.045, 0.03, 0, 180, ink)
        pen.box(0.47, 0.22, 0.53, 0.23, _c("white"))
    elif face == "glasses":
        for side in (-1, 1):
            pen.ring(0.5 + side * 0.04, 0.17, 0.026, 0.024, ink, 0.007)
        pen.arc(0.5, 0.2175, 0.035, 0.0225, 30, 150, ink, 0.007)
    elif face == "beard":
        pen.chord(0.5, 0.21, 0.09, 0.07, 20, 160, _c("brown"))
        pen.arc(0.5, 0.215, 0.03, 0.015, 20, 160, ink, 0.006)


def _draw_headgear_back(pen: _Pen, spec: FigureSpec) -> None:
    """Parts drawn behind head and torso (long hair, hood)."""
    if spec.headgear == "long-hair":
        pen.box(0.375, 0.07, 0.625, 0.39, _c(spec.headgear_colour), radius=0.05)
    elif spec.headgear == "hood":
        pen.box(0.36, 0.05, 0.64, 0.34, _c(spec.headgear_colour), radius=0.09)


def _draw_headgear_front(pen: _Pen, spec: FigureSpec) -> None:
    if spec.headgear == "none":
        return
    colour = _c(spec.headgear_colour)
    if spec.headgear in ("short-hair", "long-hair"):
        pen.chord(0.5, 0.155, 0.115, 0.105, 180, 360, colour)
        pen.box(0.385, 0.13, 0.415, 0.21, colour)
        pen.box(0.585, 0.13, 0.615, 0.21, colour)
    elif spec.headgear == "cap":
        pen.chord(0.5, 0.14, 0.11, 0.09, 180, 360, colour)
        pen.box(0.36, 0.125, 0.66, 0.15, _shade(colour, 0.75), radius=0.01)
    elif spec.headgear == "helmet":
        pen.box(0.38, 0.045, 0.62, 0.3, colour, radius=0.07)
        visor = _c("black")
        pen.box(0.415, 0.14, 0.585, 0.18, visor, radius=0.01)
        pen.box(0.48, 0.14, 0.52, 0.26, visor, radius=0.005)
    elif spec.headgear == "wizard-hat":
        pen.polygon([(0.5, 0.0), (0.60, 0.12), (0.40, 0.12)], colour)
        pen.ellipse(0.5, 0.12, 0.17, 0.025, _shade(colour, 0.8))
    elif spec.headgear == "hood":
        pen.chord(0.5, 0.135, 0.13, 0.085, 180, 360, colour)


def _draw_held_item(pen: _Pen, spec: FigureSpec, hand: Point) -> None:
    """Items held in the right hand: drawn before the hand so the hand grips them."""
    hx, hy = hand
    if spec.accessory == "sword":
        pen.polygon([(hx - 0.012, hy), (hx + 0.012, hy), (hx + 0.01, hy - 0.36),
                     (hx, hy - 0.39), (hx - 0.01, hy - 0.36)], _c("light-grey"))
        pen.box(hx - 0.045, hy - 0.06, hx + 0.045, hy - 0.045, _c("brown"))
    elif spec.accessory == "lightsaber":
        blade = _c(spec.accessory_colour)
        pen.line([(hx, hy - 0.05), (hx, hy - 0.45)], blade, 0.05)
        pen.line([(hx, hy - 0.05), (hx, hy - 0.435)], _c("white"), 0.018)
        pen.box(hx - 0.016, hy - 0.07, hx + 0.016, hy + 0.05, _c("dark-grey"))
    elif spec.accessory == "wand":
        pen.line([(hx, hy), (hx + 0.06, hy - 0.17)], _c("brown"), 0.014)
    elif spec.accessory == "blaster":
        pen.box(hx - 0.015, hy - 0.05, hx + 0.015, hy + 0.02, _c("black"))
        pen.box(hx - 0.015, hy - 0.07, hx + 0.15, hy - 0.04, _c("black"))


def _draw_shield(pen: _Pen, spec: FigureSpec, hand: Point) -> None:
    hx, hy = hand
    pen.ellipse(hx, hy - 0.02, 0.11, 0.11, _c("light-grey"))
    pen.ellipse(hx, hy - 0.02, 0.09, 0.09, _c(spec.accessory_colour))
    pen.ellipse(hx, hy - 0.02, 0.04, 0.04, _c("white"))


def _draw_figure(pen: _Pen, spec: FigureSpec, arm_angles: tuple[float, float]) -> None:
    left_hand = _hand_position(-1, arm_angles[0])
    right_hand = _hand_position(1, arm_angles[1])
    if spec.accessory == "cape":
        pen.polygon([(0.37, 0.31), (0.63, 0.31), (0.76, 0.93), (0.24, 0.93)],
                    _c(spec.accessory_colour))
    _draw_headgear_back(pen, spec)
    _draw_legs(pen, spec)
    _draw_torso(pen, spec)
    _draw_held_item(pen, spec, right_hand)
    _draw_arm(pen, spec, -1, arm_angles[0])
    _draw_arm(pen, spec, 1, arm_angles[1])
    _draw_head(pen, spec)
    _draw_headgear_front(pen, spec)
    if spec.accessory == "shield":
        _draw_shield(pen, spec, left_hand)


# ---------------------------------------------------------------------------- photo conditions


@dataclass(frozen=True)
class _Conditions:
    """One photo's draw from a Nuisance."""

    background: str
    rotation: float
    scale: float
    shift: float
    height_position: float  # 0 = figure as high as fits, 1 = as low as fits
    arm_angles: tuple[float, float]
    brightness: float
    contrast: float
    channel_gains: tuple[float, float, float]
    blur_radius: float
    noise_std: float


def _uniform(rng: np.random.Generator, bounds: Range) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _channel_gains(rng: np.random.Generator, cast: float) -> tuple[float, float, float]:
    red, green, blue = (float(gain) for gain in 1 + rng.uniform(-cast, cast, 3))
    return red, green, blue


def _sample_conditions(rng: np.random.Generator, nuisance: Nuisance,
                       spec: FigureSpec) -> _Conditions:
    raise_arm = spec.accessory in ("sword", "lightsaber", "wand", "blaster")
    cast = nuisance.colour_cast
    return _Conditions(
        background=nuisance.backgrounds[int(rng.integers(len(nuisance.backgrounds)))],
        rotation=_uniform(rng, nuisance.rotation_deg),
        scale=_uniform(rng, nuisance.scale),
        shift=_uniform(rng, (-nuisance.max_shift, nuisance.max_shift)),
        height_position=float(rng.uniform()),
        arm_angles=(_uniform(rng, (5, 30)), _uniform(rng, (25, 60) if raise_arm else (5, 30))),
        brightness=_uniform(rng, nuisance.brightness),
        contrast=_uniform(rng, nuisance.contrast),
        channel_gains=_channel_gains(rng, cast),
        blur_radius=_uniform(rng, nuisance.blur_radius),
        noise_std=_uniform(rng, nuisance.noise_std),
    )


# ---------------------------------------------------------------------------- backgrounds


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """Mostly muted colours, like walls, tables and studio backdrops."""
    grey = rng.uniform(60, 235)
    saturation = rng.uniform(0, 0.6)
    return grey * (1 - saturation) + rng.uniform(0, 255, 3) * saturation


def _vertical_gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    top, bottom = _random_colour(rng), _random_colour(rng)
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    return np.broadcast_to(top * (1 - t) + bottom * t, (size, size, 3)).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, grid: tuple[int, int]) -> np.ndarray:
    """size x size field in [0, 1] made by upsampling a coarse random grid (wood, fabric)."""
    coarse = Image.fromarray((rng.uniform(0, 255, grid)).astype(np.uint8), mode="L")
    return np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC),
                      dtype=np.float32) / 255.0


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    grid = (int(rng.integers(3, 40)), int(rng.integers(3, 12)))  # streaky, like wood grain
    if rng.random() < 0.5:
        grid = grid[::-1]
    field = _smooth_noise(rng, size, grid)[..., None]
    return _random_colour(rng) * (0.75 + 0.5 * field)


def _table(rng: np.random.Generator, size: int) -> np.ndarray:
    wall = _vertical_gradient(rng, size).copy()
    horizon = int(rng.uniform(0.55, 0.85) * size)
    table_colour = _random_colour(rng)
    wall[horizon:] = table_colour
    if rng.random() < 0.5:  # a baseplate: rows of studs, closer together near the horizon
        image = Image.fromarray(wall.clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        light = tuple(int(min(255, c * 1.15)) for c in table_colour)
        y, pitch = horizon + 2.0, size / 40
        while y < size:
            for x in np.arange(-pitch * rng.uniform(), size, pitch * 1.6):
                draw.ellipse((x, y, x + pitch * 1.1, y + pitch * 0.45), fill=light)
            y, pitch = y + pitch * 0.9, pitch * 1.12
        wall = np.asarray(image, dtype=np.float32)
    return wall


def _clutter(rng: np.random.Generator, size: int) -> np.ndarray:
    """Out-of-focus objects behind the figure, like the sets in the real photos. Drawn small
    and enlarged: the enlargement is the defocus blur, at a fraction of a Gaussian's cost."""
    small = max(8, size // 8)
    image = Image.fromarray(_vertical_gradient(rng, small).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = rng.uniform(-0.2, 0.9, 2) * small
        w, h = rng.uniform(0.15, 0.6, 2) * small
        r, g, b = (int(c) for c in rng.uniform(0, 255, 3))
        box = (x0, y0, x0 + w, y0 + h)
        if rng.random() < 0.5:
            draw.ellipse(box, fill=(r, g, b))
        else:
            draw.rectangle(box, fill=(r, g, b))
    image = image.filter(ImageFilter.GaussianBlur(1.2))
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)


def make_background(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """size x size x 3 float32 in 0..255."""
    if kind == "solid":
        return np.broadcast_to(_random_colour(rng), (size, size, 3)).astype(np.float32)
    if kind == "gradient":
        return _vertical_gradient(rng, size)
    if kind == "texture":
        return _texture(rng, size).astype(np.float32)
    if kind == "table":
        return _table(rng, size)
    if kind == "clutter":
        return _clutter(rng, size)
    raise ValueError(f"unknown background kind {kind!r}; known: {BACKGROUND_KINDS}")


# ---------------------------------------------------------------------------- the photo


def _place_figure(background: np.ndarray, spec: FigureSpec, cond: _Conditions) -> Image.Image:
    size = background.shape[0]
    figure_px = cond.scale * size
    margin = 0.01 * size + 0.49 * figure_px
    centre_x = size / 2 + cond.shift * size
    centre_y = margin + cond.height_position * max(0.0, size - 2 * margin)
    _add_shadow(background, centre_x, centre_y, figure_px, cond.rotation)
    photo = Image.fromarray(background.clip(0, 255).astype(np.uint8))
    # Drawn at twice the size and halved: cheap anti-aliasing of every edge. Drawing in
    # premultiplied RGBa keeps the halved edges free of dark fringes.
    canvas = Image.new("RGBa", (2 * size, 2 * size), (0, 0, 0, 0))
    pen = _Pen(canvas, 2 * figure_px, (2 * centre_x, 2 * centre_y), cond.rotation)
    _draw_figure(pen, spec, cond.arm_angles)
    box = canvas.getbbox()
    if box is None:
        return photo
    left, top = box[0] - box[0] % 2, box[1] - box[1] % 2  # even, so halving stays aligned
    layer = canvas.crop((left, top, box[2], box[3])).reduce(2).convert("RGBA")
    photo.paste(layer, (left // 2, top // 2), layer)
    return photo


def _add_shadow(background: np.ndarray, centre_x: float, centre_y: float, figure_px: float,
                rotation: float) -> None:
    """Darken a soft ellipse under the feet, in place."""
    size = background.shape[0]
    angle = math.radians(rotation)
    feet_x = centre_x + 0.47 * figure_px * math.sin(angle)
    feet_y = centre_y + 0.47 * figure_px * math.cos(angle)
    radius_x, radius_y = 0.28 * figure_px, 0.05 * figure_px
    # Only the window where the shadow is visible (beyond 3 radii it is below 1e-4).
    x0, x1 = max(0, int(feet_x - 3 * radius_x)), min(size, int(feet_x + 3 * radius_x) + 1)
    y0, y1 = max(0, int(feet_y - 3 * radius_y)), min(size, int(feet_y + 3 * radius_y) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    ys, xs = np.ogrid[y0:y1, x0:x1]
    distance = ((xs - feet_x) / radius_x) ** 2 + ((ys - feet_y) / radius_y) ** 2
    background[y0:y1, x0:x1] *= (1 - 0.45 * np.exp(-distance))[..., None].astype(np.float32)


def _lighting_table(cond: _Conditions) -> list[int]:
    """Brightness, contrast and colour cast as one per-channel lookup table (R, G, B)."""
    levels = np.arange(256, dtype=np.float64)
    table = []
    for gain in cond.channel_gains:
        mapped = ((levels - 128) * cond.contrast + 128) * cond.brightness * gain
        table.extend(mapped.clip(0, 255).round().astype(int).tolist())
    return table


def _apply_camera(photo: Image.Image, cond: _Conditions, rng: np.random.Generator) -> Image.Image:
    """Blur, lighting and sensor noise."""
    if cond.blur_radius > 0:
        photo = photo.filter(ImageFilter.GaussianBlur(cond.blur_radius * photo.width / 256))
    photo = photo.point(_lighting_table(cond))
    if cond.noise_std <= 0:
        return photo
    # Luminance noise only: a third of the cost of per-channel noise, and it is the bulk of
    # what a phone sensor adds anyway.
    noise = cond.noise_std * rng.standard_normal((photo.height, photo.width, 1), np.float32)
    noisy = np.asarray(photo, dtype=np.float32) + noise
    return Image.fromarray(noisy.clip(0, 255).round().astype(np.uint8))


def generate_image(class_index: int, rng: np.random.Generator, image_size: int,
                   nuisance: Nuisance) -> Image.Image:
    """One RGB photo (image_size square) of class `class_index` (0-based), before JPEG."""
    spec = class_specs(class_index + 1)[class_index]
    cond = _sample_conditions(rng, nuisance, spec)
    background = make_background(cond.background, rng, image_size)
    return _apply_camera(_place_figure(background, spec, cond), cond, rng)


def generate_jpeg(class_index: int, rng: np.random.Generator, image_size: int,
                  nuisance: Nuisance) -> bytes:
    """`generate_image`, then JPEG-encoded at a quality drawn from nuisance.jpeg_quality."""
    image = generate_image(class_index, rng, image_size, nuisance)
    low, high = nuisance.jpeg_quality
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(low, high + 1)))
    return buffer.getvalue()


# ---------------------------------------------------------------------------- the dataset


def image_rng(seed: int, class_index: int, image_index: int) -> np.random.Generator:
    return np.random.default_rng([seed, class_index, image_index])


def _legacy_roles(seed: int, class_index: int, count: int) -> list[str]:
    """'train'/'valid' per image: half each (valid gets the smaller half), shuffled."""
    rng = np.random.default_rng([seed, class_index, 1_000_003])
    roles = ["valid" if i < count // 2 else "train" for i in range(count)]
    return [roles[i] for i in rng.permutation(count)]


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _write_metadata(out_dir: Path, table: list[ClassInfo]) -> None:
    rows: list[list[object]] = [[info.class_id, str([info.lego_id]), str([info.set_name]),
                                 info.name] for info in table]
    _write_csv(out_dir / "metadata.csv", ["class_id", "lego_ids", "lego_names",
                                          "minifigure_name"], rows)


@dataclass(frozen=True)
class _PlannedImage:
    class_index: int
    image_index: int
    path: str


def _plan(table: list[ClassInfo], train_per_class: int, test_per_class: int, seed: int,
          release: str) -> tuple[list[_PlannedImage], dict[str, list[list[object]]]]:
    """Where each image goes, and the rows of each CSV listing images."""
    per_class = train_per_class + test_per_class
    images: list[_PlannedImage] = []
    csv_rows: dict[str, list[list[object]]] = {"index.csv": []}
    if release == "current":
        csv_rows["test.csv"] = []
    for class_index, info in enumerate(table):
        roles = _legacy_roles(seed, class_index, per_class)
        for image_index in range(per_class):
            if release == "current" and image_index >= train_per_class:
                path = f"test/{len(csv_rows['test.csv']) + 1:03d}.jpg"
                csv_rows["test.csv"].append([path, info.class_id])
            elif release == "current":
                path = f"{info.folder}/{image_index + 1:03d}.jpg"
                csv_rows["index.csv"].append([path, info.class_id])
            else:
                path = f"{info.folder}/{image_index + 1:03d}.jpg"
                row = [len(csv_rows["index.csv"]), path, info.class_id, roles[image_index]]
                csv_rows["index.csv"].append(row)
            images.append(_PlannedImage(class_index, image_index, path))
    return images, csv_rows


def generate_dataset(out_dir: Path, *, classes: int = 8, train_per_class: int = 24,
                     test_per_class: int = 6, image_size: int = 256, seed: int = 7,
                     release: str = "current", nuisance: Nuisance | None = None,
                     progress: bool = True) -> None:
    """Write the dataset into out_dir (created; must be empty or absent).

    Image i of a class is the same picture whichever release is asked for: in "current" the
    first train_per_class go to index.csv and the rest to test/; in "legacy" all go to
    index.csv with a train-valid column.
    """
    if release not in RELEASES:
        raise ValueError(f"release must be one of {RELEASES}, got {release!r}")
    if classes < 1 or train_per_class < 1 or test_per_class < 1 or image_size < 16:
        raise ValueError("classes, train_per_class and test_per_class must be >= 1 and "
                         f"image_size >= 16, got {classes}, {train_per_class}, "
                         f"{test_per_class}, {image_size}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty: generate into a fresh folder")
    nuisance = nuisance or Nuisance()
    table = class_table(classes)
    images, csv_rows = _plan(table, train_per_class, test_per_class, seed, release)
    for image in tqdm(images, desc="embedded dataset", unit="img", disable=not progress):
        target = out_dir / image.path
        target.parent.mkdir(parents=True, exist_ok=True)
        rng = image_rng(seed, image.class_index, image.image_index)
        target.write_bytes(generate_jpeg(image.class_index, rng, image_size, nuisance))
    _write_metadata(out_dir, table)
    index_header = ["path", "class_id"] if release == "current" else \
        ["", "path", "class_id", "train-valid"]
    _write_csv(out_dir / "index.csv", index_header, csv_rows["index.csv"])
    if release == "current":
        _write_csv(out_dir / "test.csv", ["path", "class_id"], csv_rows["test.csv"])
