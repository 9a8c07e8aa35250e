"""The two imaging domains of the benchmark and how one sample is drawn.

`studio` imitates lab-posed datasets (colour, frontal, clean, balanced, few
subjects photographed many times) and `wild` imitates in-the-wild datasets
(greyscale, small, posed off-axis, badly lit, blurred, noisy, JPEG-compressed,
sometimes occluded, skewed class frequencies, every face a new person). Both
share the expression space, so a model trained on one can be adapted to the
other; only the nuisances and the class prior differ.

The strengths below are calibrated, not arbitrary: with 4000/1000 images per
domain, a small 32x32 CNN trained on studio (flip and mild crop only) scores
about 95% on studio test but only about 50% on wild test, while the same CNN
trained on wild labels scores about 86%, so the gap is a domain gap that
adaptation can close and not missing information. Changing a value here
moves those numbers; re-check them and bump `generate.VERSION`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import cv2
import numpy as np
from PIL import Image

from clup.data.synthetic.face import PROTOTYPES, Actions, Identity, render_face

WORK_SIZE = 64
"""Every face is drawn at this size before the domain's nuisances apply."""


@dataclass(frozen=True)
class Nuisance:
    """How far a domain's photographs stray from a clean frontal portrait.

    Single values are the largest amount (degrees, fraction of the image,
    radians of yaw, relative light ramp, grey-level offset, pixels of blur
    sigma, noise std on a 0-1 scale, probability of an occluder); pairs are
    ranges. Every sample draws its own amounts uniformly, so a domain ranges
    from mildly to strongly degraded images rather than one fixed corruption.
    """

    rotation_deg: float = 0.0
    shift: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    yaw: float = 0.0
    light: float = 0.0
    contrast: tuple[float, float] = (1.0, 1.0)
    brightness: float = 0.0
    resolution: tuple[int, int] | None = None
    blur: float = 0.0
    noise: float = 0.0
    occlusion: float = 0.0
    jpeg_quality: tuple[int, int] | None = None


@dataclass(frozen=True)
class DomainStyle:
    """Everything that distinguishes one domain of the benchmark."""

    name: str
    domain_id: int
    size: int
    colour: bool
    class_frequencies: tuple[float, ...]
    images_per_identity: int
    intensity_beta: tuple[float, float]
    min_intensity: float
    action_noise: float
    background: tuple[int, int]
    nuisance: Nuisance

    @property
    def suffix(self) -> str:
        return ".png" if self.nuisance.jpeg_quality is None else ".jpg"


DOMAINS: Mapping[str, DomainStyle] = MappingProxyType(
    {
        "studio": DomainStyle(
            name="studio",
            domain_id=0,
            size=64,
            colour=True,
            class_frequencies=(1 / 7,) * 7,
            images_per_identity=20,
            intensity_beta=(2.0, 1.2),
            min_intensity=0.25,
            action_noise=0.03,
            background=(190, 240),
            nuisance=Nuisance(rotation_deg=3.0, shift=0.02, scale=(0.97, 1.03)),
        ),
        "wild": DomainStyle(
            name="wild",
            domain_id=1,
            size=32,
            colour=False,
            class_frequencies=(0.10, 0.05, 0.06, 0.30, 0.13, 0.10, 0.26),
            images_per_identity=2,
            intensity_beta=(2.0, 1.2),
            min_intensity=0.25,
            action_noise=0.03,
            background=(20, 235),
            nuisance=Nuisance(
                rotation_deg=12.0,
                shift=0.05,
                scale=(0.95, 1.2),
                yaw=0.3,
                light=0.4,
                contrast=(0.7, 1.15),
                brightness=0.15,
                resolution=(28, 32),
                blur=0.5,
                noise=0.01,
                occlusion=0.1,
                jpeg_quality=(70, 95),
            ),
        ),
    }
)


def sample_actions(style: DomainStyle, label: int, rng: np.random.Generator) -> Actions:
    """Neutral plus a random fraction of the way to the class prototype, plus jitter."""
    low = style.min_intensity
    intensity = low + (1.0 - low) * rng.beta(*style.intensity_beta)
    target = PROTOTYPES[label].as_array()
    jitter = rng.normal(0.0, style.action_noise, target.shape)
    return Actions.from_array(intensity * target + jitter)


def encode_sample(
    style: DomainStyle, label: int, identity: Identity, rng: np.random.Generator
) -> bytes:
    """Draw one image of `label` for `identity` and return the file's bytes."""
    actions = sample_actions(style, label, rng)
    nuisance = style.nuisance
    red, green, blue = (int(v) for v in rng.integers(*style.background, size=3))
    face = render_face(
        actions,
        identity,
        size=WORK_SIZE,
        yaw=rng.uniform(-nuisance.yaw, nuisance.yaw),
        background=(red, green, blue),
    )
    pixels = _scene(np.asarray(face, dtype=np.float32) / 255.0, nuisance, rng)
    pixels = _camera(pixels, style.size, nuisance, rng)
    image = Image.fromarray(np.clip(np.round(pixels * 255.0), 0, 255).astype(np.uint8))
    image = image if style.colour else image.convert("L")
    buffer = io.BytesIO()
    if nuisance.jpeg_quality is None:
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=int(rng.integers(*nuisance.jpeg_quality)))
    return buffer.getvalue()


def _scene(pixels: np.ndarray, nuisance: Nuisance, rng: np.random.Generator) -> np.ndarray:
    """What happens in front of the camera: pose, occluders and lighting."""
    pixels = _pose(pixels, nuisance, rng)
    if rng.uniform() < nuisance.occlusion:
        pixels = _occlude(pixels, rng)
    return _light(pixels, nuisance, rng)


def _camera(
    pixels: np.ndarray, size: int, nuisance: Nuisance, rng: np.random.Generator
) -> np.ndarray:
    """What the camera does: low effective resolution, then blur and sensor noise."""
    if nuisance.resolution is not None:
        low = int(rng.integers(nuisance.resolution[0], nuisance.resolution[1] + 1))
        pixels = _resize(pixels, min(low, size))
    pixels = _resize(pixels, size)
    sigma = rng.uniform(0.0, nuisance.blur)
    if sigma > 0.2:
        pixels = cv2.GaussianBlur(pixels, (0, 0), sigma)
    noise_std = rng.uniform(0.0, nuisance.noise)
    if noise_std > 0.0:
        pixels = pixels + rng.normal(0.0, noise_std, pixels.shape[:2])[..., None]
    return pixels


def _pose(pixels: np.ndarray, nuisance: Nuisance, rng: np.random.Generator) -> np.ndarray:
    if nuisance.rotation_deg == 0.0 and nuisance.shift == 0.0 and nuisance.scale == (1.0, 1.0):
        return pixels
    size = pixels.shape[0]
    angle = rng.uniform(-nuisance.rotation_deg, nuisance.rotation_deg)
    scale = rng.uniform(*nuisance.scale)
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
    matrix[:, 2] += rng.uniform(-nuisance.shift, nuisance.shift, 2) * size
    return cv2.warpAffine(pixels, matrix, (size, size), borderMode=cv2.BORDER_REPLICATE)


def _occlude(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cover part of the face with a bar, a patch or a hand-like blob."""
    size = pixels.shape[0]
    out = pixels.copy()
    colour = tuple(float(v) for v in rng.uniform(0.0, 1.0, 3))
    kind = rng.integers(0, 3)
    if kind == 0:
        y = int(rng.uniform(0.3, 0.8) * size)
        half = int(rng.uniform(0.05, 0.1) * size)
        cv2.rectangle(out, (0, y - half), (size, y + half), colour, -1)
    elif kind == 1:
        x, y = (rng.uniform(0.2, 0.8, 2) * size).astype(int)
        w, h = (rng.uniform(0.12, 0.3, 2) * size).astype(int)
        cv2.rectangle(out, (x - w, y - h), (x + w, y + h), colour, -1)
    else:
        skin = tuple(float(v) for v in rng.uniform(0.3, 0.95) * np.array([1.0, 0.8, 0.65]))
        x, y = (rng.uniform(0.25, 0.75, 2) * size).astype(int)
        axes = (int(0.16 * size), int(0.11 * size))
        cv2.ellipse(out, (x, y), axes, rng.uniform(0, 180), 0, 360, skin, -1, cv2.LINE_AA)
        for k in range(4):
            dx = int((k - 1.5) * 0.07 * size)
            tip = (x + dx, y - int(0.28 * size))
            cv2.line(out, (x + dx, y), tip, skin, max(1, int(0.055 * size)), cv2.LINE_AA)
    return out


def _light(pixels: np.ndarray, nuisance: Nuisance, rng: np.random.Generator) -> np.ndarray:
    """A directional lighting ramp, then a contrast and brightness change."""
    if nuisance.light > 0.0:
        size = pixels.shape[0]
        theta = rng.uniform(0.0, 2.0 * math.pi)
        axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
        ramp = math.cos(theta) * axis[None, :] + math.sin(theta) * axis[:, None]
        pixels = pixels * (1.0 + rng.uniform(0.0, nuisance.light) * ramp)[..., None]
    contrast = rng.uniform(*nuisance.contrast)
    offset = rng.uniform(-nuisance.brightness, nuisance.brightness)
    mean = float(pixels.mean())
    return (pixels - mean) * contrast + mean + offset


def _resize(pixels: np.ndarray, size: int) -> np.ndarray:
    if pixels.shape[0] == size:
        return pixels
    interpolation = cv2.INTER_AREA if pixels.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(pixels, (size, size), interpolation=interpolation)
