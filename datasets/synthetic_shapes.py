"""Procedural scenes and defect primitives behind :mod:`dcam.datasets.synthetic`.

Everything works on float32 RGB images in [0, 1] and on normalised coordinates in
[-0.5, 0.5], so the same geometry renders at any pixel size. Renderers return a
:class:`Scene` that keeps the layers a defect needs (what lies behind a removable part,
where the inspected surface is), so defects edit the clean image rather than repainting it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

Array = np.ndarray
TAU = 2.0 * np.pi


@dataclass
class Scene:
    """A clean rendering plus the layers that defects are built from."""

    img: Array  # HxWx3 float32, the defect-free image before sensor effects
    bg: Array  # HxWx3 float32, what shows where a part goes missing
    fg: Array  # HxW float32 coverage of the inspected surface (ones for textures)
    parts: list[Array] = field(default_factory=list)  # coverages that may go missing

    @property
    def size(self) -> int:
        """Side length in pixels."""
        return self.img.shape[0]


# ----------------------------------------------------------------------------- helpers
def coords(s: int) -> tuple[Array, Array]:
    """Pixel-centre coordinates (x, y) in [-0.5, 0.5], so shapes scale with the image."""
    t = (np.arange(s, dtype=np.float32) + 0.5) / s - 0.5
    x, y = np.meshgrid(t, t, indexing="xy")
    return x, y


def pose(s: int, rng: np.random.Generator, shift: float, rot_deg: float) -> tuple[Array, Array]:
    """Object-frame coordinates under a random small shift and rotation (placement jitter)."""
    x, y = coords(s)
    dx, dy = rng.uniform(-shift, shift, 2)
    a = np.deg2rad(rng.uniform(-rot_deg, rot_deg))
    c, si = np.float32(np.cos(a)), np.float32(np.sin(a))
    x, y = x - np.float32(dx), y - np.float32(dy)
    return c * x + si * y, -si * x + c * y


def cover(sd: Array, s: int, soft: float = 1.0) -> Array:
    """Anti-aliased coverage of a signed distance field (inside is negative)."""
    return np.clip(0.5 - sd * (s / soft), 0.0, 1.0).astype(np.float32)


def sd_box(u: Array, v: Array, hx: float, hy: float, r: float = 0.0) -> Array:
    """Signed distance to a rounded rectangle centred at the origin."""
    qx, qy = np.abs(u) - hx + r, np.abs(v) - hy + r
    out = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    return out + np.minimum(np.maximum(qx, qy), 0.0) - r


def sd_hex(u: Array, v: Array, apothem: float) -> Array:
    """Signed distance (polygonal) to a regular hexagon with flat sides left and right."""
    d = [np.abs(u * np.cos(a) + v * np.sin(a)) for a in (0.0, np.pi / 3, 2 * np.pi / 3)]
    return np.maximum(np.maximum(d[0], d[1]), d[2]) - apothem


def noise(rng: np.random.Generator, s: int, sigma: tuple[float, float]) -> Array:
    """Unit-variance Gaussian-filtered noise; sigma (rows, cols) in pixels at 256 px."""
    n = rng.standard_normal((s, s), dtype=np.float32)
    k = s / 256.0
    n = ndi.gaussian_filter(n, (max(sigma[0] * k, 0.3), max(sigma[1] * k, 0.3)), mode="wrap")
    return n / (n.std() + 1e-6)


def jit(rng: np.random.Generator, rgb: tuple[float, float, float], amt: float = 0.08) -> Array:
    """A palette colour with per-image brightness drift and a slight tint (amt is relative)."""
    gain = 1 + rng.uniform(-amt, amt) + rng.uniform(-amt / 4, amt / 4, 3)
    return np.clip(np.asarray(rgb) * gain, 0, 1).astype(np.float32)


def paint(img: Array, color: Array, alpha: Array) -> Array:
    """Alpha-composite a colour (3-vector or HxWx3) over an image."""
    return img + (color - img) * alpha[..., None]


def backdrop(s: int, rng: np.random.Generator, rgb: tuple[float, float, float]) -> Array:
    """A mildly noisy, uneven surface for objects to sit on."""
    low, fine = noise(rng, s, (10, 10)), noise(rng, s, (0.6, 0.6))
    return jit(rng, rgb, 0.06) * (1 + 0.05 * low + 0.03 * fine)[..., None]


def sample_point(rng: np.random.Generator, weight: Array) -> tuple[float, float]:
    """A random location (normalised x, y) where weight > 0.5 (anywhere if nowhere)."""
    idx = np.flatnonzero(weight > 0.5)
    if idx.size == 0:
        idx = np.arange(weight.size)
    i, s = int(idx[rng.integers(idx.size)]), weight.shape[0]
    return (i % s + 0.5) / s - 0.5, (i // s + 0.5) / s - 0.5


def stroke(s: int, rng: np.random.Generator, x0: float, y0: float, length: float, width: float):
    """Coverage of a random smooth curve starting at (x0, y0); width in pixels."""
    n = max(int(length * s * 2), 4)
    t = np.linspace(0.0, length, n)
    theta = rng.uniform(0, TAU) + rng.uniform(-8, 8) * t + np.cumsum(rng.normal(0, 0.08, n))
    xs = x0 + np.cumsum(np.cos(theta)) * (length / n)
    ys = y0 + np.cumsum(np.sin(theta)) * (length / n)
    on = np.zeros((s, s), bool)
    on[
        np.clip(((ys + 0.5) * s).astype(int), 0, s - 1),
        np.clip(((xs + 0.5) * s).astype(int), 0, s - 1),
    ] = True
    d = ndi.distance_transform_edt(~on).astype(np.float32)
    return np.clip(width + 0.5 - d, 0.0, 1.0)


def inner_window(s: int, margin: float = 0.08) -> Array:
    """Ones away from the border, so texture defects are not cut off by the frame."""
    x, y = coords(s)
    return ((np.abs(x) < 0.5 - margin) & (np.abs(y) < 0.5 - margin)).astype(np.float32)


# ---------------------------------------------------------------------------- textures
def carpet(s: int, rng: np.random.Generator) -> Scene:
    """Basket-woven fibres: anisotropic noise whose direction alternates per weave cell."""
    x, y = pose(s, rng, 0.5, 2.0)
    f = rng.uniform(20, 24)
    weave = np.sin(TAU * f * x) * np.sin(TAU * f * y)
    fib = np.where(weave > 0, noise(rng, s, (0.7, 3.5)), noise(rng, s, (3.5, 0.7)))
    val = 0.55 * fib + 0.3 * noise(rng, s, (8, 8)) + 0.3 * weave
    img = jit(rng, (0.60, 0.28, 0.22)) * (1 + 0.2 * val)[..., None]
    return Scene(img, img, np.ones((s, s), np.float32))


def grid(s: int, rng: np.random.Generator) -> Scene:
    """A woven metal mesh on a dark backing, with jittered phase and a slight tilt."""
    x, y = pose(s, rng, 0.05, 1.5)
    period, half = 1 / rng.uniform(10.5, 11.5), 0.021

    def wire(t: Array) -> tuple[Array, Array]:
        d = np.abs((t / period) % 1.0 - 0.5) * period
        return cover(d - half, s), np.sqrt(np.clip(1 - (d / half) ** 2, 0, 1))

    (cx, shx), (cy, shy) = wire(x), wire(y)
    cov = np.maximum(cx, cy)
    shade = np.maximum(cx * shx, cy * shy) * (1 + 0.06 * noise(rng, s, (2, 2)))
    bg = backdrop(s, rng, (0.10, 0.11, 0.10))
    metal = jit(rng, (0.72, 0.72, 0.68)) * (0.45 + 0.55 * shade)[..., None]
    return Scene(paint(bg, metal, cov), bg, np.ones((s, s), np.float32), [cov])


def wood(s: int, rng: np.random.Generator) -> Scene:
    """Warped sinusoidal growth rings with fine grain running along them."""
    x, y = pose(s, rng, 0.5, 3.0)
    warp = 0.05 * noise(rng, s, (40, 40)) + 0.01 * noise(rng, s, (30, 5))
    phase = x + warp + rng.uniform(-0.3, 0.3) * y**2
    rings = (0.5 + 0.5 * np.sin(TAU * rng.uniform(7, 10) * phase)) ** 3
    t = np.clip(0.65 * rings + 0.1 * noise(rng, s, (14, 0.6)) + 0.06 * noise(rng, s, (6, 6)), 0, 1)
    light, dark = jit(rng, (0.82, 0.64, 0.44)), jit(rng, (0.50, 0.32, 0.17))
    img = light + (dark - light) * t[..., None]
    return Scene(img, img, np.ones((s, s), np.float32))


# ----------------------------------------------------------------------------- objects
def bottle(s: int, rng: np.random.Generator) -> Scene:
    """Top view of a glass bottle: bright rim, rippled shoulder, dark mouth, on black."""
    u, v = pose(s, rng, 0.012, 0.0)
    r, th = np.hypot(u, v), np.arctan2(v, u)
    bg = backdrop(s, rng, (0.05, 0.05, 0.06))
    big = 0.40 * rng.uniform(0.985, 1.015)
    fg = cover(r - big, s)
    glass = jit(rng, (0.36, 0.24, 0.12))
    img = glass * (0.6 + 0.12 * np.cos(TAU * r / 0.035) + 0.03 * noise(rng, s, (3, 3)))[..., None]
    rim = fg * (1 - cover(r - 0.30, s))
    bulge = np.sin(np.pi * np.clip((r - 0.3) / 0.1, 0, 1))  # the rim's rounded lip catches light
    img = paint(img, glass * (1.125 + 0.3 * bulge)[..., None], rim)
    img = paint(img, glass * (0.125 + 0.25 * r / 0.16)[..., None], cover(r - 0.16, s))
    th0 = -2.3 + rng.uniform(-0.2, 0.2)
    spec = 0.35 * np.exp(-(((r - 0.345) / 0.018) ** 2)) * np.clip(np.cos(th - th0), 0, 1) ** 6
    img = paint(bg, img + spec[..., None], fg)
    return Scene(img, bg, fg, [fg * (r > 0.25)])


def nut(s: int, rng: np.random.Generator) -> Scene:
    """A hex nut with a threaded hole and chamfered corners, on a bluish tray."""
    u, v = pose(s, rng, 0.015, 5.0)
    r = np.hypot(u, v)
    bg = backdrop(s, rng, (0.20, 0.24, 0.30))
    fg = cover(sd_hex(u, v, 0.30), s) * (1 - cover(r - 0.13, s))
    val = 0.85 + 0.2 * (-u - v) + 0.04 * noise(rng, s, (3, 3))
    val = val - 0.12 * cover(0.285 - r, s)  # chamfer ring at the corners
    thread = (r < 0.155) * (0.75 + 0.1 * np.cos(TAU * r / 0.008))
    val = np.where(r < 0.155, val * thread, val)
    img = paint(bg, jit(rng, (0.62, 0.62, 0.64)) * val[..., None], fg)
    return Scene(img, bg, fg, [fg * (r > 0.22)])


def capsule(s: int, rng: np.random.Generator) -> Scene:
    """A two-colour pill with cylindrical shading and a soft shadow, on a light tray."""
    u, v = pose(s, rng, 0.012, 3.0)
    hx, hy = 0.36, 0.13
    sd = sd_box(u, v, hx, hy, hy)
    fg = cover(sd, s)
    shadow = ndi.gaussian_filter(cover(sd_box(u - 0.012, v - 0.02, hx, hy, hy), s), 3 * s / 256)
    bg = backdrop(s, rng, (0.86, 0.86, 0.84)) * (1 - 0.18 * shadow)[..., None]
    left = cover(u, s)[..., None]
    body = jit(rng, (0.78, 0.22, 0.14)) * left + jit(rng, (0.92, 0.90, 0.84)) * (1 - left)
    shade = 0.68 + 0.32 * np.sqrt(np.clip(-sd / hy, 0, 1)) - 0.15 * np.exp(-((u / 0.004) ** 2))
    spec = 0.15 * np.exp(-(((v + 0.05) / 0.015) ** 2)) * (np.abs(u) < 0.3)
    img = paint(bg, body * shade[..., None] + spec[..., None], fg)
    return Scene(img, bg, fg, [fg * (np.abs(u) > 0.2)])


def transistor(s: int, rng: np.random.Generator) -> Scene:
    """A TO-220-like part: black body, metal tab with a hole, three legs, on a board."""
    u, v = pose(s, rng, 0.012, 3.0)
    bg = backdrop(s, rng, (0.42, 0.50, 0.40))
    body = cover(sd_box(u, v + 0.06, 0.22, 0.15, 0.01), s)
    tab = cover(sd_box(u, v + 0.27, 0.19, 0.07, 0.01), s) * (
        1 - cover(np.hypot(u, v + 0.27) - 0.04, s)
    )
    metal = jit(rng, (0.78, 0.76, 0.70))
    img, legs = bg, []
    for xk in (-0.12, 0.0, 0.12):
        leg = cover(sd_box(u - xk, v - 0.24, 0.022, 0.16, 0.004), s)
        shade = 0.6 + 0.4 * np.sqrt(np.clip(1 - ((u - xk) / 0.022) ** 2, 0, 1))
        img = paint(img, metal * shade[..., None], leg)
        legs.append(leg * (1 - body))
    img = paint(img, metal * (0.8 + 0.2 * (v + 0.27) / 0.07)[..., None], tab)
    val = 0.12 + 0.02 * noise(rng, s, (2, 2)) + 0.08 * np.exp(-(((v + 0.2) / 0.02) ** 2))
    img = paint(img, jit(rng, (1.0, 1.0, 1.05), 0.1) * val[..., None], body)
    fg = np.maximum(np.maximum(body, tab), np.max(legs, axis=0))
    return Scene(img, bg, fg, legs)


RENDERERS: dict[str, Callable[[int, np.random.Generator], Scene]] = {
    "carpet": carpet,
    "grid": grid,
    "wood": wood,
    "bottle": bottle,
    "nut": nut,
    "capsule": capsule,
    "transistor": transistor,
}
TEXTURES = ("carpet", "grid", "wood")


# ----------------------------------------------------------------------------- defects
# Each defect takes a clean scene and returns the edited float image and optionally a
# support map (where the edit may have acted); the caller derives the mask from the change.
Defect = Callable[[Scene, np.random.Generator], tuple[Array, Array | None]]


def _where(sc: Scene) -> Array:
    return sc.fg * inner_window(sc.size)


def _blob(sc: Scene, rng: np.random.Generator, cx: float, cy: float, a: float) -> Array:
    """Soft irregular elliptical blob of semi-axis ~a around (cx, cy)."""
    x, y = coords(sc.size)
    b, ang = a * rng.uniform(0.5, 1.0), rng.uniform(0, np.pi)
    c, si = np.cos(ang), np.sin(ang)
    px, py = x - cx, y - cy
    d = np.hypot((c * px + si * py) / a, (-si * px + c * py) / b)
    d = d + 0.25 * noise(rng, sc.size, (6, 6))
    return ndi.gaussian_filter(np.clip((1 - d) / 0.3, 0, 1), sc.size / 256)


def scratch(sc: Scene, rng: np.random.Generator) -> tuple[Array, None]:
    """A thin curved line, lighter or darker, clipped to the surface."""
    x0, y0 = sample_point(rng, _where(sc))
    width = rng.uniform(0.5, 1.8) * max(sc.size / 256, 0.5)
    prof = stroke(sc.size, rng, x0, y0, rng.uniform(0.06, 0.3), width) * (sc.fg > 0.5)
    delta = rng.choice([-1.0, 1.0]) * rng.uniform(0.07, 0.35)
    return sc.img + np.float32(delta) * prof[..., None], None


def hole(sc: Scene, rng: np.random.Generator) -> tuple[Array, None]:
    """A dark disc with a slightly raised, lighter rim."""
    cx, cy = sample_point(rng, _where(sc))
    x, y = coords(sc.size)
    r0 = rng.uniform(0.012, 0.05)
    d = np.hypot(x - cx, y - cy)
    r = r0 * (1 + 0.12 * np.sin(3 * np.arctan2(y - cy, x - cx) + rng.uniform(0, TAU)))
    inside = cover(d - r, sc.size, soft=1.5) * sc.fg
    rim = np.exp(-(((d - 1.2 * r0) / (0.3 * r0)) ** 2)) * (1 - inside) * sc.fg
    depth = rng.uniform(0.15, 0.6) * (0.7 + 0.3 * np.clip(d / r0, 0, 1))
    img = paint(sc.img, sc.img * depth[..., None], inside)
    return img + np.float32(rng.uniform(0.03, 0.12)) * rim[..., None], None


def stain(sc: Scene, rng: np.random.Generator) -> tuple[Array, None]:
    """A blob with a brightness/hue shift, from faint to obvious."""
    alpha = _blob(sc, rng, *sample_point(rng, _where(sc)), rng.uniform(0.02, 0.09)) * sc.fg
    direction = rng.normal(0, 1, 3)
    vec = rng.choice([-1.0, 1.0]) * 0.6 + 0.8 * direction / np.linalg.norm(direction)
    vec = (rng.uniform(0.05, 0.25) * vec).astype(np.float32)
    return sc.img + alpha[..., None] * vec, None


def missing(sc: Scene, rng: np.random.Generator) -> tuple[Array, None]:
    """A chunk of a removable part (leg, rim, corner, wire) erased back to the background."""
    part = sc.parts[rng.integers(len(sc.parts))]
    cx, cy = sample_point(rng, part)
    x, y = coords(sc.size)
    r = rng.uniform(0.03, 0.14) * (1 + 0.15 * noise(rng, sc.size, (8, 8)))
    alpha = cover(np.hypot(x - cx, y - cy) - r, sc.size) * part
    return paint(sc.img, sc.bg, alpha), None


FOREIGN = (
    (0.08, 0.07, 0.06),
    (0.85, 0.85, 0.9),
    (0.2, 0.3, 0.8),
    (0.9, 0.85, 0.2),
    (0.1, 0.5, 0.2),
)


def contamination(sc: Scene, rng: np.random.Generator) -> tuple[Array, None]:
    """A few small foreign particles or fibres of another colour, clustered."""
    cx, cy = sample_point(rng, _where(sc))
    x, y = coords(sc.size)
    colour = jit(rng, FOREIGN[rng.integers(len(FOREIGN))], 0.15)
    acc = np.zeros((sc.size, sc.size), np.float32)
    for _ in range(rng.integers(1, 6)):
        px, py = cx + rng.normal(0, 0.03), cy + rng.normal(0, 0.03)
        if rng.random() < 0.5:
            rr = rng.uniform(0.004, 0.015)
            acc = np.maximum(acc, cover(np.hypot(x - px, y - py) - rr, sc.size))
        else:
            w = rng.uniform(0.3, 0.9) * max(sc.size / 256, 0.6)
            acc = np.maximum(acc, stroke(sc.size, rng, px, py, rng.uniform(0.03, 0.12), w))
    return paint(sc.img, colour, acc * np.float32(rng.uniform(0.6, 1.0))), None


def deformation(sc: Scene, rng: np.random.Generator) -> tuple[Array, Array]:
    """A local smooth warp (push or swirl); on objects it is centred on an edge to bend it."""
    s = sc.size
    if sc.fg.min() > 0.5:
        where = _where(sc)
    else:
        edge = ndi.gaussian_gradient_magnitude(sc.fg, 1.0)
        where = (edge > 0.3 * edge.max()) * inner_window(s)
    cx, cy = sample_point(rng, where)
    x, y = coords(s)
    sig = rng.uniform(0.025, 0.07)
    amp = rng.uniform(0.35, 0.8) * sig
    g = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sig**2))
    if rng.random() < 0.5:
        phi = rng.uniform(0, TAU)
        dx, dy = amp * g * np.cos(phi), amp * g * np.sin(phi)
    else:
        sign = rng.choice([-1.0, 1.0])
        dx, dy = -sign * amp * g * (y - cy) / sig, sign * amp * g * (x - cx) / sig
    rows, cols = np.mgrid[0:s, 0:s].astype(np.float32)
    src = [rows - dy * s, cols - dx * s]
    img = np.stack(
        [ndi.map_coordinates(sc.img[..., c], src, order=1, mode="nearest") for c in range(3)], -1
    )
    return img, np.hypot(dx, dy) * s > 0.35


DEFECTS: dict[str, Defect] = {
    "scratch": scratch,
    "hole": hole,
    "stain": stain,
    "missing": missing,
    "contamination": contamination,
    "deformation": deformation,
}
