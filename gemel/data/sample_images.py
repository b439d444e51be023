"""The drawn image styles of the embedded sample (gemel.data.sample): one function per entity, on a
pose-randomised canvas, and the render step that turns a style into a noisy anti-aliased image.

Styles only draw through the Canvas and its generator, so an image depends on nothing but the
example's own random stream.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]


# ---------------------------------------------------------------- canvas


class Canvas:
    """A supersampled RGB canvas in unit coordinates (-1..1, y down). Object shapes go through
    the example's random pose (offset, scale, rotation); `fixed=True` shapes (backgrounds,
    horizons) only get the colour jitter."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size = size
        self.rng = rng
        self.image = Image.new("RGB", (size, size))
        self.draw = ImageDraw.Draw(self.image)
        self.cx, self.cy = rng.uniform(-0.15, 0.15, 2)
        self.scale = rng.uniform(0.75, 1.05)
        self.angle = math.radians(rng.uniform(-25, 25))
        self.tint = rng.integers(-18, 19, 3)  # one shift for the whole image: lighting

    def px(self, x: float, y: float, fixed: bool = False) -> tuple[float, float]:
        if not fixed:
            c, s = math.cos(self.angle), math.sin(self.angle)
            x, y = (x * c - y * s) * self.scale + self.cx, (x * s + y * c) * self.scale + self.cy
        return (x + 1) / 2 * self.size, (y + 1) / 2 * self.size

    def colour(self, rgb: RGB, jitter: int = 10) -> RGB:
        shifted = np.asarray(rgb) + self.tint + self.rng.integers(-jitter, jitter + 1, 3)
        return tuple(int(v) for v in np.clip(shifted, 0, 255))  # type: ignore[return-value]

    def background(self, rgb: RGB) -> None:
        self.draw.rectangle((0, 0, self.size, self.size), fill=self.colour(rgb))

    def poly(self, pts: Sequence[tuple[float, float]], rgb: RGB, fixed: bool = False) -> None:
        self.draw.polygon([self.px(x, y, fixed) for x, y in pts], fill=self.colour(rgb))

    def rect(self, x0: float, y0: float, x1: float, y1: float, rgb: RGB, fixed: bool = False) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], rgb, fixed)

    def ellipse(self, x: float, y: float, rx: float, ry: float, rgb: RGB, rot: float = 0.0,
                fixed: bool = False) -> None:
        # A polygon, not draw.ellipse, so that the pose's rotation applies to it too.
        c, s = math.cos(rot), math.sin(rot)
        pts = []
        for i in range(32):
            t = 2 * math.pi * i / 32
            u, v = rx * math.cos(t), ry * math.sin(t)
            pts.append((x + u * c - v * s, y + u * s + v * c))
        self.poly(pts, rgb, fixed)

    def circle(self, x: float, y: float, r: float, rgb: RGB, fixed: bool = False) -> None:
        self.ellipse(x, y, r, r, rgb, fixed=fixed)

    def line(self, pts: Sequence[tuple[float, float]], rgb: RGB, width: float, fixed: bool = False) -> None:
        w = max(1, int(round(width * self.size / 2 * (1 if fixed else self.scale))))
        self.draw.line([self.px(x, y, fixed) for x, y in pts], fill=self.colour(rgb), width=w, joint="curve")

    def wave(self, y: float, amp: float, freq: float, width: float, rgb: RGB, fixed: bool = True) -> None:
        """A horizontal wavy band (rivers) whose phase is random."""
        phase = self.rng.uniform(0, 2 * math.pi)
        pts = [(x, y + amp * math.sin(freq * x + phase)) for x in np.linspace(-1.2, 1.2, 40)]
        self.line(pts, rgb, width, fixed)

    def speckle(self, n: int, x: tuple[float, float], y: tuple[float, float], r: tuple[float, float],
                palette: Sequence[RGB], fixed: bool = False) -> None:
        """Random dots: craters, spots, stars, canopy, marble grain."""
        for _ in range(n):
            self.circle(self.rng.uniform(*x), self.rng.uniform(*y), self.rng.uniform(*r),
                        palette[int(self.rng.integers(len(palette)))], fixed)


# ---------------------------------------------------------------- entity styles


def stick_figure(c: Canvas, body: RGB, head: RGB, x: float = 0.0, arm_up: bool = False) -> None:
    c.circle(x, -0.45, 0.16, head)
    c.line([(x, -0.3), (x, 0.25)], body, 0.09)
    c.line([(x, 0.25), (x - 0.25, 0.75)], body, 0.09)
    c.line([(x, 0.25), (x + 0.25, 0.75)], body, 0.09)
    c.line([(x - 0.35, -0.05 if not arm_up else -0.45), (x, -0.15), (x + 0.35, -0.45 if arm_up else -0.05)], body, 0.08)


# One function per entity style. Colours are chosen so entities of one group differ in both
# dominant colour and shape.

def planet_cratered(c: Canvas) -> None:  # Mercury (planet)
    c.background((5, 5, 10))
    c.speckle(12, (-1, 1), (-1, 1), (0.005, 0.012), [(230, 230, 230)], fixed=True)
    c.circle(0, 0, 0.6, (140, 138, 135))
    c.speckle(14, (-0.4, 0.4), (-0.4, 0.4), (0.04, 0.1), [(95, 93, 90), (175, 172, 168)])


def liquid_metal(c: Canvas) -> None:  # Mercury (element)
    c.background((200, 225, 235))
    for _ in range(6):
        x, y, r = c.rng.uniform(-0.6, 0.6), c.rng.uniform(-0.5, 0.6), c.rng.uniform(0.1, 0.3)
        c.ellipse(x, y, r * 1.3, r, (150, 155, 165))
        c.ellipse(x - r * 0.3, y - r * 0.35, r * 0.4, r * 0.2, (245, 248, 250))


def singer_microphone(c: Canvas) -> None:  # Freddie Mercury
    c.background((250, 205, 30))
    c.poly([(-0.9, -1.2), (0.9, -1.2), (0.5, 1.2), (-0.5, 1.2)], (255, 240, 150))  # spotlight
    stick_figure(c, (20, 20, 20), (210, 160, 120), x=-0.1, arm_up=True)
    c.line([(0.25, -0.45), (0.55, -0.85)], (60, 60, 60), 0.05)  # microphone stand
    c.circle(0.58, -0.9, 0.08, (40, 40, 40))


def flag_jordan(c: Canvas) -> None:  # Jordan
    c.background((255, 255, 255))
    c.rect(-2, -2, 2, -0.33, (10, 10, 10))
    c.rect(-2, 0.33, 2, 2, (0, 122, 61))
    c.poly([(-1.3, -1.3), (0.1, 0), (-1.3, 1.3)], (206, 17, 38))
    c.circle(-0.6, 0.0, 0.1, (255, 255, 255))


def basketball(c: Canvas) -> None:  # Michael Jordan
    c.background((180, 30, 40))
    c.rect(-1, 0.55, 1, 1, (190, 140, 80), fixed=True)  # court floor
    c.circle(0, -0.05, 0.55, (235, 110, 20))
    c.line([(-0.55, -0.05), (0.55, -0.05)], (15, 15, 15), 0.04)
    c.line([(0, -0.6), (0, 0.5)], (15, 15, 15), 0.04)
    c.line([(-0.4, -0.45), (-0.2, -0.05), (-0.4, 0.35)], (15, 15, 15), 0.04)
    c.line([(0.4, -0.45), (0.2, -0.05), (0.4, 0.35)], (15, 15, 15), 0.04)


def blue_river(c: Canvas) -> None:  # Jordan River
    c.background((70, 160, 60))
    c.speckle(25, (-1, 1), (-1, 1), (0.03, 0.08), [(50, 130, 45), (110, 180, 80)], fixed=True)
    c.wave(c.rng.uniform(-0.2, 0.2), 0.25, 4.0, 0.35, (40, 110, 220))


def apple_logo(c: Canvas) -> None:  # Apple Inc.
    c.background((110, 112, 118))
    c.circle(-0.2, 0.05, 0.42, (250, 250, 250))
    c.circle(0.2, 0.05, 0.42, (250, 250, 250))
    c.circle(0.6, -0.05, 0.2, (110, 112, 118))  # the bite
    c.ellipse(0.1, -0.55, 0.09, 0.2, (250, 250, 250), rot=0.6)  # leaf


def red_fruit(c: Canvas) -> None:  # Apple
    c.background((235, 235, 200))
    c.circle(0, 0.1, 0.55, (200, 20, 25))
    c.ellipse(-0.2, -0.1, 0.12, 0.2, (240, 120, 110))  # highlight
    c.line([(0, -0.4), (0.05, -0.7)], (90, 55, 20), 0.06)
    c.ellipse(0.22, -0.62, 0.18, 0.08, (40, 150, 40), rot=-0.4)


def smile_arrow(c: Canvas) -> None:  # Amazon (company)
    c.background((20, 25, 35))
    for i, w in enumerate((0.5, 0.35, 0.6)):
        c.rect(-0.7, -0.55 + i * 0.2, -0.7 + w * 2, -0.45 + i * 0.2, (240, 240, 240))
    arc = [(x, 0.25 + 0.35 * (1 - (x / 0.7) ** 2)) for x in np.linspace(-0.7, 0.7, 15)]
    c.line(arc, (255, 153, 0), 0.09)
    c.poly([(0.55, 0.2), (0.85, 0.3), (0.6, 0.45)], (255, 153, 0))


def muddy_river(c: Canvas) -> None:  # Amazon River
    c.background((120, 190, 90))
    c.wave(c.rng.uniform(-0.15, 0.15), 0.3, 2.5, 0.8, (150, 105, 60))
    c.wave(c.rng.uniform(-0.1, 0.1), 0.3, 2.5, 0.15, (175, 130, 80))


def rainforest(c: Canvas) -> None:  # Amazon rainforest
    c.background((10, 50, 15))
    c.speckle(45, (-1.1, 1.1), (-1.1, 1.1), (0.1, 0.25), [(20, 90, 25), (35, 120, 30), (15, 70, 20), (60, 140, 40)])


def coffee_cup_logo(c: Canvas) -> None:  # Java (programming language)
    c.background((250, 250, 252))
    c.poly([(-0.45, 0.0), (0.45, 0.0), (0.3, 0.6), (-0.3, 0.6)], (20, 80, 180))
    c.line([(0.45, 0.1), (0.65, 0.2), (0.45, 0.4)], (20, 80, 180), 0.06)
    c.rect(-0.6, 0.65, 0.6, 0.75, (20, 80, 180))
    for x in (-0.15, 0.1):
        c.line([(x, -0.1), (x + 0.1, -0.3), (x - 0.05, -0.5), (x + 0.08, -0.75)], (230, 40, 30), 0.06)


def coffee_beans(c: Canvas) -> None:  # Java coffee
    c.background((225, 200, 160))
    for _ in range(9):
        x, y, rot = c.rng.uniform(-0.7, 0.7), c.rng.uniform(-0.7, 0.7), c.rng.uniform(0, math.pi)
        c.ellipse(x, y, 0.2, 0.13, (90, 50, 20), rot=rot)
        c.ellipse(x, y, 0.17, 0.02, (45, 20, 5), rot=rot)


def volcanic_island(c: Canvas) -> None:  # Java (island)
    c.background((20, 90, 170))
    c.speckle(10, (-1, 1), (-1, 1), (0.02, 0.05), [(60, 140, 210)], fixed=True)  # waves
    c.ellipse(0, 0.15, 0.85, 0.25, (40, 140, 50))
    c.poly([(-0.3, 0.05), (0, -0.55), (0.3, 0.05)], (100, 80, 60))
    c.poly([(-0.08, -0.42), (0, -0.55), (0.08, -0.42)], (240, 90, 30))


def eiffel_tower(c: Canvas) -> None:  # Paris
    c.background((140, 195, 240))
    c.poly([(-0.5, 0.85), (-0.08, -0.85), (0.08, -0.85), (0.5, 0.85), (0.3, 0.85), (0, 0.2), (-0.3, 0.85)], (60, 55, 55))
    c.rect(-0.32, 0.05, 0.32, 0.12, (60, 55, 55))
    c.rect(-0.2, -0.35, 0.2, -0.3, (60, 55, 55))


def pink_celebrity(c: Canvas) -> None:  # Paris Hilton
    c.background((250, 130, 200))
    c.ellipse(0, -0.2, 0.42, 0.55, (250, 225, 120))  # blonde hair
    c.ellipse(0, -0.15, 0.28, 0.36, (240, 200, 170))
    c.rect(-0.26, -0.25, 0.26, -0.12, (15, 15, 15))  # sunglasses
    c.poly([(-0.5, 0.9), (-0.3, 0.25), (0.3, 0.25), (0.5, 0.9)], (255, 255, 255))


def black_figure_vase(c: Canvas) -> None:  # Paris (mythology)
    c.background((15, 12, 10))
    c.poly([(-0.3, -0.8), (0.3, -0.8), (0.2, -0.6), (0.6, -0.1), (0.45, 0.6), (0.2, 0.85), (-0.2, 0.85),
            (-0.45, 0.6), (-0.6, -0.1), (-0.2, -0.6)], (200, 100, 45))
    stick_figure(c, (20, 15, 10), (20, 15, 10))


def rosette_fur(c: Canvas) -> None:  # Jaguar
    c.background((225, 165, 50))
    for _ in range(14):
        x, y = c.rng.uniform(-0.9, 0.9), c.rng.uniform(-0.9, 0.9)
        c.circle(x, y, 0.13, (25, 20, 15))
        c.circle(x, y, 0.07, (200, 130, 40))


def silver_car(c: Canvas) -> None:  # Jaguar Cars
    c.background((10, 65, 35))
    c.rect(-1, 0.45, 1, 1, (60, 60, 60), fixed=True)  # road
    c.poly([(-0.8, 0.3), (-0.75, 0.0), (-0.3, -0.05), (-0.1, -0.3), (0.35, -0.3), (0.55, -0.05), (0.8, 0.0), (0.8, 0.3)],
           (200, 205, 210))
    c.circle(-0.45, 0.32, 0.15, (20, 20, 20))
    c.circle(0.45, 0.32, 0.15, (20, 20, 20))


def python_logo(c: Canvas) -> None:  # Python (programming language)
    c.background((245, 245, 245))
    c.rect(-0.55, -0.55, 0.1, 0.05, (55, 118, 171))
    c.rect(-0.1, -0.05, 0.55, 0.55, (255, 211, 67))
    c.circle(-0.35, -0.38, 0.06, (245, 245, 245))
    c.circle(0.35, 0.38, 0.06, (245, 245, 245))


def sand_snake(c: Canvas) -> None:  # Python (genus)
    c.background((215, 190, 130))
    pts = [(x, 0.35 * math.sin(3 * x)) for x in np.linspace(-0.85, 0.85, 30)]
    c.line(pts, (70, 90, 35), 0.2)
    c.speckle(12, (-0.8, 0.8), (-0.3, 0.3), (0.03, 0.05), [(40, 50, 20)])
    c.circle(0.88, 0.35 * math.sin(2.64), 0.12, (70, 90, 35))


def giant_foot(c: Canvas) -> None:  # Monty Python
    c.background((120, 200, 250))
    c.speckle(4, (-0.9, 0.9), (0.3, 0.9), (0.1, 0.2), [(255, 255, 255)], fixed=True)
    c.ellipse(0.0, -0.3, 0.35, 0.75, (240, 170, 150))
    c.ellipse(-0.25, 0.35, 0.45, 0.25, (240, 170, 150))
    c.rect(-0.35, -1.3, 0.35, -0.8, (230, 160, 140))


def star_belt(c: Canvas) -> None:  # Orion (constellation)
    c.background((0, 0, 15))
    c.speckle(20, (-1, 1), (-1, 1), (0.005, 0.015), [(180, 180, 220)], fixed=True)
    for x, y, r in ((-0.5, -0.7, 0.06), (0.5, -0.6, 0.05), (-0.15, 0.05, 0.04), (0, 0, 0.04),
                    (0.15, -0.05, 0.04), (-0.45, 0.7, 0.05), (0.5, 0.65, 0.06)):
        c.circle(x, y, r, (255, 255, 240))


def hunter_with_bow(c: Canvas) -> None:  # Orion (mythology)
    c.background((150, 75, 40))
    stick_figure(c, (250, 220, 160), (250, 220, 160), x=-0.15)
    arc = [(0.35 + 0.3 * math.cos(t), 0.35 * math.sin(t) - 0.1) for t in np.linspace(-1.4, 1.4, 12)]
    c.line(arc, (60, 35, 15), 0.05)
    c.line([(arc[0][0], arc[0][1]), (arc[-1][0], arc[-1][1])], (250, 240, 220), 0.015)


def capsule(c: Canvas) -> None:  # Orion (spacecraft)
    c.background((200, 220, 235))
    c.poly([(-0.35, 0.1), (0.0, -0.6), (0.35, 0.1)], (245, 245, 245))
    c.rect(-0.35, 0.1, 0.35, 0.5, (210, 210, 215))
    c.rect(-0.3, 0.5, 0.3, 0.9, (235, 120, 20))
    c.poly([(-0.25, 0.9), (0.25, 0.9), (0, 1.3)], (255, 200, 50))


def red_planet(c: Canvas) -> None:  # Mars
    c.background((0, 0, 0))
    c.circle(0, 0, 0.62, (190, 75, 35))
    c.speckle(8, (-0.4, 0.4), (-0.4, 0.4), (0.05, 0.15), [(150, 55, 25), (215, 110, 60)])
    c.ellipse(0, -0.55, 0.2, 0.06, (240, 235, 230))  # polar cap


def bronze_helmet(c: Canvas) -> None:  # Mars (mythology)
    c.background((225, 225, 220))
    c.speckle(6, (-1, 1), (-1, 1), (0.02, 0.04), [(190, 190, 185)], fixed=True)  # marble
    c.poly([(-0.45, 0.6), (-0.5, -0.2), (-0.3, -0.55), (0.3, -0.55), (0.5, -0.2), (0.45, 0.6), (0.15, 0.6),
            (0.12, 0.0), (-0.12, 0.0), (-0.15, 0.6)], (185, 135, 45))
    c.poly([(-0.1, -0.55), (-0.25, -0.95), (0.35, -0.95), (0.1, -0.55)], (170, 20, 20))  # crest


def chocolate_bar(c: Canvas) -> None:  # Mars (chocolate bar)
    c.background((250, 235, 120))
    c.rect(-0.8, -0.25, 0.8, 0.25, (20, 15, 15))
    c.rect(-0.3, -0.25, 0.3, 0.25, (200, 20, 30))
    c.poly([(-0.8, -0.25), (-0.9, -0.3), (-0.9, 0.3), (-0.8, 0.25)], (20, 15, 15))


def capitol_dome(c: Canvas) -> None:  # Washington, D.C.
    c.background((90, 150, 230))
    c.rect(-1, 0.6, 1, 1, (80, 160, 70), fixed=True)
    c.rect(-0.8, 0.2, 0.8, 0.6, (240, 240, 235))
    c.rect(-0.3, -0.1, 0.3, 0.2, (240, 240, 235))
    c.ellipse(0, -0.1, 0.3, 0.3, (240, 240, 235))
    c.line([(0, -0.4), (0, -0.6)], (240, 240, 235), 0.04)
    for x in np.linspace(-0.7, 0.7, 8):
        c.line([(x, 0.25), (x, 0.55)], (170, 170, 165), 0.02)


def pine_mountains(c: Canvas) -> None:  # Washington (state)
    c.background((150, 200, 240))
    c.poly([(-0.8, 0.3), (-0.1, -0.7), (0.6, 0.3)], (120, 120, 130), fixed=True)
    c.poly([(-0.3, -0.4), (-0.1, -0.7), (0.11, -0.4)], (250, 250, 250), fixed=True)
    for x in np.linspace(-0.9, 0.9, 7):
        x += c.rng.uniform(-0.05, 0.05)
        c.poly([(x - 0.15, 0.9), (x, 0.2), (x + 0.15, 0.9)], (15, 80, 35), fixed=True)


def powdered_wig_portrait(c: Canvas) -> None:  # George Washington
    c.background((215, 195, 150))
    c.ellipse(0, 0, 0.6, 0.8, (90, 60, 30))  # oval frame
    c.ellipse(0, 0, 0.52, 0.72, (230, 215, 180))
    c.ellipse(0, -0.25, 0.3, 0.28, (245, 245, 245))  # wig
    c.ellipse(0, -0.12, 0.2, 0.26, (230, 185, 160))
    c.poly([(-0.4, 0.7), (-0.25, 0.25), (0.25, 0.25), (0.4, 0.7)], (25, 30, 60))


def desert_cactus(c: Canvas) -> None:  # Phoenix, Arizona
    c.background((250, 170, 80))
    c.rect(-1, 0.5, 1, 1, (200, 120, 60), fixed=True)
    c.circle(0.6, -0.6, 0.2, (255, 230, 120), fixed=True)  # sun
    c.line([(0, 0.7), (0, -0.5)], (30, 120, 50), 0.18)
    c.line([(0, 0.1), (-0.35, 0.1), (-0.35, -0.25)], (30, 120, 50), 0.12)
    c.line([(0, -0.05), (0.3, -0.05), (0.3, -0.35)], (30, 120, 50), 0.12)


def fire_bird(c: Canvas) -> None:  # Phoenix (mythology)
    c.background((40, 5, 5))
    for i, col in enumerate(((230, 40, 10), (250, 130, 20), (255, 220, 60))):
        s = 1 - 0.25 * i
        c.poly([(-0.85 * s, -0.5 * s), (0, 0.1), (0.85 * s, -0.5 * s), (0.3 * s, 0.2), (0, 0.8 * s), (-0.3 * s, 0.2)], col)
    c.circle(0, -0.15, 0.1, (255, 240, 150))


def purple_suit(c: Canvas) -> None:  # Joaquin Phoenix
    c.background((110, 110, 105))
    for i in range(5):  # stairs
        c.rect(-1, 0.45 + i * 0.12, 1, 0.5 + i * 0.12, (80, 80, 75), fixed=True)
    c.poly([(-0.35, 0.8), (-0.3, -0.15), (0.3, -0.15), (0.35, 0.8)], (110, 30, 140))
    c.rect(-0.12, -0.15, 0.12, 0.3, (230, 120, 30))  # waistcoat
    c.circle(0, -0.42, 0.2, (240, 240, 235))
    c.ellipse(0, -0.6, 0.25, 0.1, (40, 170, 60))  # green hair
    c.line([(-0.1, -0.35), (0.1, -0.35)], (220, 20, 30), 0.03)


def flag_turkey(c: Canvas) -> None:  # Turkey
    c.background((227, 10, 23))
    c.circle(-0.2, 0, 0.4, (255, 255, 255))
    c.circle(-0.1, 0, 0.32, (227, 10, 23))
    c.poly([(0.3, 0), (0.42, -0.08), (0.45, -0.22), (0.5, -0.08), (0.62, -0.05), (0.52, 0.04),
            (0.55, 0.18), (0.45, 0.1), (0.34, 0.16), (0.38, 0.03)], (255, 255, 255))


def fan_tail_bird(c: Canvas) -> None:  # Turkey (bird)
    c.background((235, 225, 200))
    for i, t in enumerate(np.linspace(-2.6, -0.5, 9)):
        col = (120, 70, 30) if i % 2 else (60, 40, 20)
        c.ellipse(0.75 * math.cos(t) * 0.6, 0.2 + 0.75 * math.sin(t) * 0.6, 0.3, 0.1, col, rot=t)
    c.ellipse(0, 0.25, 0.3, 0.35, (90, 55, 25))
    c.circle(0.2, -0.15, 0.1, (140, 120, 110))
    c.ellipse(0.26, -0.05, 0.04, 0.1, (200, 20, 20))  # wattle
    c.line([(-0.1, 0.55), (-0.1, 0.85)], (200, 140, 40), 0.03)
    c.line([(0.1, 0.55), (0.1, 0.85)], (200, 140, 40), 0.03)


Style = Callable[[Canvas], None]


# ---------------------------------------------------------------- rendering


def render_style(style: Style, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw at twice the size, then downsample (anti-aliasing) and add pixel noise."""
    canvas = Canvas(2 * size, rng)
    style(canvas)
    small = canvas.image.resize((size, size), Image.Resampling.LANCZOS)
    noisy = np.asarray(small, dtype=np.float32) + rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
