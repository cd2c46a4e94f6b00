"""Procedural textures for teacher pretraining: dead leaves and spectral noise (Baradad et al.,
NeurIPS 2021, "Learning to See by Looking at Noise").

An industrial part is mostly texture and edges; fractals (fractal.py) teach shapes on a plain
background. These two families teach the rest: dead leaves are occluding shapes with a power-law
size distribution (edges, corners, T-junctions at every scale, as in natural images), spectral
noise is a random field with a chosen power spectrum (grain, fibres, weaves, stripes, marbling).

As for fractals, one class is one set of generator parameters and its instances are fresh random
draws from it, so telling classes apart means recognising the texture's statistics, not an image.
Both renderers are vectorised over the batch in numpy and return UINT8 (B, size, size, 3).
"""

from __future__ import annotations

import numpy as np


def recolour(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per instance: permute, scale and shift the colour channels of float (B, H, W, 3), in place.

    Colour is random per instance, as for fractals, so the class is told by its texture
    statistics (sizes, shapes, orientations, spectrum), not by a palette.
    """
    b = len(image)
    image[:] = np.take_along_axis(
        image, rng.permuted(np.tile([0, 1, 2], (b, 1)), axis=1)[:, None, None, :], axis=3
    )
    image *= rng.uniform(0.7, 1.3, (b, 1, 1, 3)).astype(np.float32)
    image += rng.uniform(-40, 40, (b, 1, 1, 3)).astype(np.float32)
    return image


# ---- dead leaves ----------------------------------------------------------------------------

_LEAVES = 96  # shapes per image; enough to cover the image at most size laws
_SHAPES = ("disc", "ellipse", "rectangle")


def dead_leaves_class(rng: np.random.Generator) -> dict:
    """One class: a shape kind, an elongation, an orientation law, a size law and a palette."""
    shape = int(rng.integers(len(_SHAPES)))
    return {
        "shape": shape,
        "aspect": 1.0 if shape == _SHAPES.index("disc") else float(rng.uniform(1.0, 5.0)),
        "angle": float(rng.uniform(0, np.pi)),
        "angle_spread": float(rng.choice([0.0, 0.3, np.pi])),  # aligned, loose, any
        "alpha": float(rng.uniform(1.5, 3.5)),  # radius density ∝ r^-alpha
        "r_min": float(rng.uniform(0.01, 0.05)),
        "r_max": float(rng.uniform(0.08, 0.45)),
        "palette": rng.integers(0, 256, (int(rng.integers(2, 6)), 3)).astype(np.float32),
        "grain": float(rng.choice([0.0, 4.0, 12.0])),
    }


def _power_law(
    rng: np.random.Generator,
    lo: np.ndarray,
    hi: np.ndarray,
    alpha: np.ndarray,
    shape: tuple[int, ...],
) -> np.ndarray:
    """Inverse-CDF samples of density ∝ r^-alpha on [lo, hi] (alpha != 1), per image."""
    u = rng.random(shape)
    a = (1.0 - alpha)[:, None]
    lo_a, hi_a = lo[:, None] ** a, hi[:, None] ** a
    return (lo_a + u * (hi_a - lo_a)) ** (1.0 / a)


def render_dead_leaves(classes: list[dict], rng: np.random.Generator, size: int) -> np.ndarray:
    """Each image: _LEAVES shapes painted back to front over a background from the palette."""
    b, k = len(classes), _LEAVES

    def column(key: str) -> np.ndarray:
        return np.array([c[key] for c in classes], dtype=np.float32)[:, None, None]

    radius = _power_law(
        rng, column("r_min")[:, 0, 0], column("r_max")[:, 0, 0], column("alpha")[:, 0, 0], (b, k)
    ).astype(np.float32)
    centre = (rng.random((b, k, 2), dtype=np.float32) * 1.2 - 0.1).astype(np.float32)
    angle = column("angle")[:, 0] + column("angle_spread")[:, 0] * rng.uniform(-1, 1, (b, k))
    cos, sin = np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)
    colours = np.empty((b, k + 1, 3), dtype=np.float32)
    for i, c in enumerate(classes):
        pal = c["palette"]
        colours[i] = pal[rng.integers(len(pal), size=k + 1)] + rng.normal(0, 10, (k + 1, 3))
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    aspect, rectangle = column("aspect"), column("shape") == _SHAPES.index("rectangle")
    top = np.full((b, size, size), k, dtype=np.int64)  # the background: the last colour
    for j in range(k):  # back to front: later shapes occlude earlier ones
        dx = grid[None, None, :] - centre[:, j, 0, None, None]
        dy = grid[None, :, None] - centre[:, j, 1, None, None]
        c, s, r = cos[:, j, None, None], sin[:, j, None, None], radius[:, j, None, None]
        along = np.abs(dx * c + dy * s)
        across = np.abs(dy * c - dx * s) * aspect
        reach = np.where(rectangle, np.maximum(along, across), np.hypot(along, across))
        top[reach <= r] = j
    image = np.take_along_axis(colours, top.reshape(b, -1, 1), axis=1).reshape(b, size, size, 3)
    image += column("grain")[..., None] * rng.standard_normal(image.shape, np.float32)
    return np.clip(recolour(image, rng), 0, 255).astype(np.uint8)


# ---- spectral noise -------------------------------------------------------------------------

_NONLINEAR = ("linear", "ridges", "threshold")


def spectral_class(rng: np.random.Generator) -> dict:
    """One class: spectral slope, anisotropy, periodic peaks, a nonlinearity and a colour mix."""
    n_peaks = int(rng.choice([0, 0, 1, 2, 3]))
    return {
        "alpha": float(rng.uniform(0.5, 3.0)),  # power ∝ 1 / f^(2 alpha)
        "ratio": float(rng.choice([1.0, rng.uniform(1.5, 8.0)])),  # elongation of the spectrum
        "angle": float(rng.uniform(0, np.pi)),
        "peaks": [
            (float(rng.uniform(3, 24)), float(rng.uniform(0, np.pi)), float(rng.uniform(0.5, 3)))
            for _ in range(n_peaks)
        ],  # (cycles per image, direction, width): stripes, weaves, grids
        "nonlinear": int(rng.integers(len(_NONLINEAR))),
        "mean": rng.integers(40, 216, 3).astype(np.float32),
        "mix": rng.normal(0, 1, (3, 2)).astype(np.float32),
        "contrast": float(rng.uniform(15, 60)),
    }


def _spectrum(c: dict, fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
    cos, sin = np.cos(c["angle"]), np.sin(c["angle"])
    along, across = fx * cos + fy * sin, (fy * cos - fx * sin) * c["ratio"]
    amp = 1.0 / (1.0 + np.hypot(along, across)) ** c["alpha"]
    for freq, direction, width in c["peaks"]:
        px, py = freq * np.cos(direction), freq * np.sin(direction)
        for sign in (1.0, -1.0):
            amp = amp + 4.0 * np.exp(-((fx - sign * px) ** 2 + (fy - sign * py) ** 2) / width**2)
    amp[0, 0] = 0.0  # no DC: the mean colour is set separately
    return amp.astype(np.float32)


def render_spectral(classes: list[dict], rng: np.random.Generator, size: int) -> np.ndarray:
    """Two random fields per image with the class spectrum, shaped and mixed into RGB."""
    b = len(classes)
    f = np.fft.fftfreq(size, d=1.0 / size).astype(np.float32)  # cycles per image
    fx, fy = np.meshgrid(f, f)
    spectra = np.stack([_spectrum(c, fx, fy) for c in classes])[:, None]
    noise = np.fft.fft2(rng.standard_normal((b, 2, size, size), np.float32))
    fields = np.fft.ifft2(noise * spectra).real
    fields -= fields.mean(axis=(2, 3), keepdims=True)
    fields /= fields.std(axis=(2, 3), keepdims=True) + 1e-6
    kind = np.array([c["nonlinear"] for c in classes])[:, None, None, None]
    ridges, threshold = _NONLINEAR.index("ridges"), _NONLINEAR.index("threshold")
    fields = np.where(kind == ridges, 1.0 - 2.0 * np.abs(fields), fields)  # veins, marbling
    fields = np.where(kind == threshold, np.tanh(4.0 * fields), fields)  # hard-edged blobs
    mix = np.stack([c["mix"] * c["contrast"] for c in classes])  # (b, 3, 2)
    image = np.einsum("bcf,bfhw->bhwc", mix, fields)
    image += np.stack([c["mean"] for c in classes])[:, None, None, :]
    return np.clip(recolour(image.astype(np.float32), rng), 0, 255).astype(np.uint8)
