"""Procedural cartoon faces driven by facial-action parameters.

Expressions are not drawn as seven hand-made pictures but as points in a small
space of facial actions (a simplified FACS). That keeps the label semantics of
real FER data: weak expressions drift towards neutral, and classes that share
actions (fear and surprise raise the brows, anger and disgust lower them) become
genuinely confusable at low intensity while full-intensity prototypes stay
distinct. Faces are drawn symmetric, so a horizontal flip never changes the
label.

Geometry lives in "face units": the canvas spans [-0.5, 0.5] in x and y, y
pointing down, face centred at the origin.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from PIL import Image, ImageDraw

Colour = tuple[int, int, int]
Point = tuple[float, float]


@dataclass(frozen=True)
class Actions:
    """Facial-action intensities; all zero is the neutral face.

    Roughly in [-1, 1]; `eye_open` and `mouth_curve` are signed (narrowed or
    widened eyes, frown or smile), `mouth_stretch` widens (+) or rounds (-) the
    lips, the others are one-sided.
    """

    brow_raise: float = 0.0
    brow_lower: float = 0.0
    brow_inner: float = 0.0
    eye_open: float = 0.0
    mouth_curve: float = 0.0
    mouth_open: float = 0.0
    mouth_stretch: float = 0.0
    lip_press: float = 0.0
    nose_wrinkle: float = 0.0

    def as_array(self) -> np.ndarray:
        return np.array([getattr(self, f.name) for f in fields(self)], dtype=np.float64)

    @classmethod
    def from_array(cls, values: np.ndarray) -> Actions:
        return cls(*(float(v) for v in values))


# Canonical class order: Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral.
PROTOTYPES: tuple[Actions, ...] = (
    Actions(brow_raise=1.0, eye_open=1.0, mouth_open=1.0, mouth_stretch=-0.7),
    Actions(
        brow_raise=0.6,
        brow_inner=0.9,
        eye_open=0.9,
        mouth_open=0.45,
        mouth_stretch=1.0,
        mouth_curve=-0.3,
    ),
    Actions(
        nose_wrinkle=1.0,
        brow_lower=0.6,
        eye_open=-0.5,
        mouth_curve=-0.5,
        mouth_open=0.2,
        mouth_stretch=0.2,
    ),
    Actions(mouth_curve=1.0, mouth_open=0.35, mouth_stretch=0.7, eye_open=-0.6),
    Actions(brow_inner=1.0, mouth_curve=-0.9, eye_open=-0.4, lip_press=0.3),
    Actions(brow_lower=1.0, eye_open=-0.3, lip_press=1.0, mouth_curve=-0.2, mouth_stretch=-0.3),
    Actions(),
)


@dataclass(frozen=True)
class Identity:
    """What stays fixed for one person: shape, colouring and feature placement."""

    face_w: float
    face_h: float
    skin: Colour
    hair: Colour
    hair_style: int
    eye_dx: float
    eye_y: float
    eye_w: float
    brow_gap: float
    brow_thickness: float
    mouth_y: float
    mouth_w: float
    iris: Colour

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Identity:
        tone = rng.uniform()
        skin = _mix((92, 58, 40), (246, 214, 190), tone) + rng.integers(-12, 13, 3)
        hair_shade = rng.uniform()
        hair = _mix((20, 16, 14), (200, 160, 90), hair_shade**2) + rng.integers(-10, 11, 3)
        return cls(
            face_w=rng.uniform(0.27, 0.35),
            face_h=rng.uniform(0.38, 0.45),
            skin=_colour(skin),
            hair=_colour(hair),
            hair_style=int(rng.integers(0, 3)),
            eye_dx=rng.uniform(0.105, 0.14),
            eye_y=rng.uniform(-0.09, -0.04),
            eye_w=rng.uniform(0.055, 0.07),
            brow_gap=rng.uniform(0.055, 0.08),
            brow_thickness=rng.uniform(0.02, 0.03),
            mouth_y=rng.uniform(0.17, 0.23),
            mouth_w=rng.uniform(0.09, 0.12),
            iris=_colour(rng.integers(30, 120, 3)),
        )


def render_face(
    actions: Actions,
    identity: Identity,
    *,
    size: int = 64,
    supersample: int = 4,
    yaw: float = 0.0,
    background: Colour = (220, 224, 230),
) -> Image.Image:
    """Draw one RGB face of `size` pixels, anti-aliased by supersampling.

    `yaw` (radians, about +-0.5 at most) turns the head: features slide over a
    cylinder and squeeze on the far side, as in a non-frontal photo.
    """
    canvas = size * supersample
    image = Image.new("RGB", (canvas, canvas), background)
    pen = _Pen(ImageDraw.Draw(image), canvas, identity.face_w, yaw)
    _draw_head(pen, identity)
    _draw_eyes(pen, identity, actions)
    _draw_brows(pen, identity, actions)
    _draw_nose(pen, identity, actions)
    _draw_mouth(pen, identity, actions)
    return image.reduce(supersample) if supersample > 1 else image


class _Pen:
    """Maps face units to pixels (with the yaw warp) and draws filled shapes."""

    def __init__(self, draw: ImageDraw.ImageDraw, canvas: int, face_w: float, yaw: float):
        self.draw = draw
        self.canvas = canvas
        self.face_w = face_w
        self.yaw = yaw

    def pixels(self, points: np.ndarray, warp: bool = True) -> list[tuple[float, float]]:
        x, y = points[:, 0], points[:, 1]
        if warp and self.yaw:
            # Points lie on a cylinder of the face's half-width; turning it
            # moves them by the sine, which squeezes the receding side.
            u = np.clip(x / (self.face_w * 1.1), -1.0, 1.0)
            x = self.face_w * 1.1 * np.sin(np.arcsin(u) + self.yaw)
        px = (x + 0.5) * self.canvas
        py = (y + 0.5) * self.canvas
        return list(zip(px.tolist(), py.tolist(), strict=True))

    def polygon(self, points: np.ndarray, fill: Colour, warp: bool = True) -> None:
        self.draw.polygon(self.pixels(points, warp), fill=fill)

    def line(self, points: np.ndarray, fill: Colour, width: float) -> None:
        w = max(1, round(width * self.canvas))
        self.draw.line(self.pixels(points), fill=fill, width=w, joint="curve")


def _draw_head(pen: _Pen, who: Identity) -> None:
    neck = np.array([[-0.11, 0.2], [0.11, 0.2], [0.14, 0.5], [-0.14, 0.5]])
    pen.polygon(neck, _shade(who.skin, 0.82), warp=False)
    if who.hair_style > 0:
        pen.polygon(_ellipse(0, -0.05, who.face_w * 1.12, who.face_h * 1.05), who.hair, warp=False)
    for side in (-1, 1):
        ear = _ellipse(side * who.face_w * 0.98, who.eye_y + 0.04, 0.035, 0.06, n=12)
        pen.polygon(ear, _shade(who.skin, 0.9), warp=False)
    pen.polygon(_ellipse(0, 0, who.face_w, who.face_h), who.skin, warp=False)
    if who.hair_style > 0:
        # Style 0 is bald; styles 1 and 2 differ in how far the fringe comes down.
        top = -who.face_h
        fringe_bottom = who.eye_y - who.brow_gap - 0.1 + 0.02 * who.hair_style
        fringe = _ellipse(0, top, who.face_w * 1.02, fringe_bottom - top + 0.02, n=24)
        pen.polygon(fringe[fringe[:, 1] <= fringe_bottom], who.hair, warp=False)


def _draw_eyes(pen: _Pen, who: Identity, act: Actions) -> None:
    eh = who.eye_w * 0.55 * max(0.12, 1.0 + 0.75 * act.eye_open)
    lid = _shade(who.skin, 0.45)
    for side in (-1, 1):
        cx = side * who.eye_dx
        pen.polygon(_ellipse(cx, who.eye_y, who.eye_w * 1.12, eh + 0.008), lid)
        pen.polygon(_ellipse(cx, who.eye_y, who.eye_w, eh), (245, 245, 240))
        r = who.eye_w * 0.5
        pen.polygon(_ellipse(cx, who.eye_y, r, min(r, eh)), who.iris)
        pen.polygon(_ellipse(cx, who.eye_y, r * 0.45, min(r, eh) * 0.45, n=10), (10, 10, 10))


def _draw_brows(pen: _Pen, who: Identity, act: Actions) -> None:
    base = who.eye_y - who.eye_w * 0.55 - who.brow_gap
    lift = 0.06 * act.brow_raise
    inner_y = base - lift - 0.055 * act.brow_inner + 0.05 * act.brow_lower
    outer_y = base - lift + 0.012 * act.brow_inner - 0.01 * act.brow_lower
    inner_x = who.eye_dx - who.eye_w * 0.9 - 0.02 * act.brow_lower
    outer_x = who.eye_dx + who.eye_w * 1.25
    arch = 0.009 * (1.0 - 0.6 * act.brow_lower - 0.4 * act.brow_inner)
    # Features stay darker than the skin for every tone, so they survive greyscale.
    colour = _colour(_mix(who.hair, _shade(who.skin, 0.3), 0.6))
    for side in (-1, 1):
        mid = (side * (inner_x + outer_x) / 2, (inner_y + outer_y) / 2 - arch)
        curve = _through((side * inner_x, inner_y), mid, (side * outer_x, outer_y))
        pen.line(curve, colour, who.brow_thickness)


def _draw_nose(pen: _Pen, who: Identity, act: Actions) -> None:
    tip_y = (who.eye_y + who.mouth_y) / 2 + 0.03 - 0.015 * act.nose_wrinkle
    shadow = _shade(who.skin, 0.7)
    pen.line(np.array([[0.0, who.eye_y + 0.05], [0.0, tip_y - 0.012]]), shadow, 0.007)
    for side in (-1, 1):
        pen.polygon(_ellipse(side * 0.018, tip_y, 0.011, 0.007, n=10), _shade(who.skin, 0.5))
    # Wrinkles fade in with the action, so weak disgust is only faintly marked.
    wrinkle = _mix(who.skin, _shade(who.skin, 0.35), _unit(act.nose_wrinkle))
    for k in range(3):
        y = who.eye_y + 0.015 + 0.014 * k
        pen.line(np.array([[-0.02, y], [0.02, y]]), _colour(wrinkle), 0.006)
    for side in (-1, 1):
        fold = np.array([[side * 0.035, tip_y - 0.005], [side * 0.05, tip_y + 0.03]])
        pen.line(fold, _colour(wrinkle), 0.008)


def _draw_mouth(pen: _Pen, who: Identity, act: Actions) -> None:
    my = who.mouth_y
    half_w = who.mouth_w * (1.0 + 0.35 * act.mouth_stretch - 0.2 * act.lip_press)
    corner_y = my - 0.055 * act.mouth_curve
    opening = max(0.0, act.mouth_open)
    top_y = my - 0.004 - 0.02 * opening
    bottom_y = my + 0.004 + 0.12 * opening + 0.03 * max(0.0, act.mouth_curve) * opening
    left, right = (-half_w, corner_y), (half_w, corner_y)
    upper = _through(left, (0.0, top_y), right)
    lower = _through(left, (0.0, bottom_y), right)
    press = _unit(act.lip_press)
    # Pressed lips thin out and darken but keep their hue, so that lip press is
    # told by shape and brightness (which survive greyscale) rather than by colour.
    red = _mix(_shade(who.skin, 0.55), (150, 40, 50), 0.4)
    lip = _colour(red * (1.0 - 0.5 * press))
    lip_width = max(0.006, 0.016 * (1.0 - 0.75 * press))
    if bottom_y - top_y > 0.012:
        pen.polygon(np.vstack([upper, lower[::-1]]), (45, 8, 12))
        teeth = _through(left, (0.0, top_y + (bottom_y - top_y) * 0.35), right)
        pen.polygon(np.vstack([upper, teeth[::-1]]), (240, 240, 230))
        pen.line(lower, lip, lip_width)
    pen.line(upper, lip, lip_width)
    chin = _mix(who.skin, _shade(who.skin, 0.5), press)
    dimple = _through((-0.03, my + 0.07), (0.0, my + 0.06), (0.03, my + 0.07))
    pen.line(dimple, _colour(chin), 0.006)


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 20) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _bezier(p0: Point, p1: Point, p2: Point) -> np.ndarray:
    t = np.linspace(0.0, 1.0, 9)[:, None]
    a, b, c = np.asarray(p0), np.asarray(p1), np.asarray(p2)
    return (1 - t) ** 2 * a + 2 * (1 - t) * t * b + t**2 * c


def _through(p0: Point, mid: Point, p2: Point) -> np.ndarray:
    """A quadratic curve from p0 to p2 that passes through `mid` halfway."""
    control = 2 * np.asarray(mid) - (np.asarray(p0) + np.asarray(p2)) / 2
    return _bezier(p0, (float(control[0]), float(control[1])), p2)


def _mix(a: Colour | np.ndarray, b: Colour | np.ndarray, t: float) -> np.ndarray:
    return (1.0 - t) * np.asarray(a, dtype=np.float64) + t * np.asarray(b, dtype=np.float64)


def _shade(colour: Colour, factor: float) -> Colour:
    return _colour(np.asarray(colour, dtype=np.float64) * factor)


def _unit(value: float) -> float:
    return min(1.0, max(0.0, value))


def _colour(values: np.ndarray) -> Colour:
    r, g, b = (int(v) for v in np.clip(np.round(values), 0, 255))
    return (r, g, b)
