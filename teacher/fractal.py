"""Formula-driven images for teacher pretraining (FractalDB, Kataoka et al. 2020): IFS fractals.

ImageNet weights cannot be downloaded here and come with licence questions; images rendered from
random iterated function systems (IFS) need neither, and a ResNet trained to tell such classes
apart learns generic edge, texture and shape features the distillation teacher needs. One class
is one IFS; its instances jitter the IFS parameters, the colours, and flip the image.
"""

from __future__ import annotations

import numpy as np

from dcam.core.errors import DcamError

MAX_MAPS = 4
_MAX_NORM = 0.95  # spectral-norm cap on jittered maps: the chaos game must never diverge
_STEPS = 32  # sequential chaos-game steps; the points come from many chains run side by side


def sample_ifs(rng: np.random.Generator, n_maps: int | None = None) -> np.ndarray:
    """k (2..4) random contractive affine maps [[a, b, e], [c, d, f]], FractalDB's range [-1, 1].

    Maps that do not contract are redrawn, so every attractor is bounded.
    """
    k = int(rng.integers(2, MAX_MAPS + 1)) if n_maps is None else n_maps
    if not 2 <= k <= MAX_MAPS:
        raise DcamError(f"an IFS needs 2..{MAX_MAPS} maps; got {k}")
    maps = []
    while len(maps) < k:
        m = rng.uniform(-1.0, 1.0, size=(2, 3))
        if np.linalg.norm(m[:, :2], ord=2) < 1.0:
            maps.append(m)
    return np.stack(maps)


def map_probabilities(params: np.ndarray) -> np.ndarray:
    """Chaos-game probabilities ∝ |det| (FractalDB), which spreads points evenly over the set."""
    det = np.abs(params[..., 0, 0] * params[..., 1, 1] - params[..., 0, 1] * params[..., 1, 0])
    det = det + 1e-3 * (det.sum(-1, keepdims=True) == 0)  # all-singular: uniform, not NaN
    return det / det.sum(-1, keepdims=True)


def _pad(systems: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack systems of 2..4 maps into (B, 4, 2, 3) with a validity mask (padded maps: zero)."""
    params = np.zeros((len(systems), MAX_MAPS, 2, 3))
    valid = np.zeros((len(systems), MAX_MAPS), dtype=bool)
    for i, s in enumerate(systems):
        params[i, : len(s)] = s
        valid[i, : len(s)] = True
    return params, valid


def _jitter(params: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """FractalDB instances: scale one map by 0.8..1.2, or add small noise to every map."""
    b = len(params)
    params = params.copy()
    pick = (rng.random((b, MAX_MAPS)) * valid).argmax(1)  # one valid map per image
    scale = np.ones((b, MAX_MAPS))
    scale[np.arange(b), pick] = rng.uniform(0.8, 1.2, b)
    noisy = rng.random(b) < 0.5
    params *= np.where(noisy[:, None], 1.0, scale)[..., None, None]
    params += (
        noisy[:, None, None, None] * valid[..., None, None] * rng.normal(0, 0.05, params.shape)
    )
    norm = np.linalg.norm(params[..., :2], ord=2, axis=(-2, -1))
    params[..., :2] *= np.minimum(1.0, _MAX_NORM / np.maximum(norm, 1e-9))[..., None, None]
    return params


def _chaos_game(
    params: np.ndarray, probs: np.ndarray, rng: np.random.Generator, n_points: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points (B, N) x, y and the map that made each one, every image advancing in lockstep.

    Each image runs N/_STEPS chains from the fixed point of its first map (which lies on the
    attractor, so no burn-in is needed); numpy does one gather and one affine step per step.
    """
    b = len(params)
    chains = -(-n_points // _STEPS)
    cum = np.cumsum(probs, axis=1)
    cum = cum / cum[:, -1:]  # exactly 1.0 from the last valid map on: padding is never chosen
    choice = (rng.random((_STEPS, b, chains, 1)) >= cum[None, :, None, :-1]).sum(-1)
    flat = params.reshape(b * MAX_MAPS, 6)  # a, b, e, c, d, f
    offset = (np.arange(b) * MAX_MAPS)[:, None]
    lin, t = params[:, 0, :, :2], params[:, 0, :, 2]
    start = np.linalg.solve(np.eye(2) - lin, t[..., None])[..., 0]  # fixed point of map 0
    x = np.repeat(start[:, :1], chains, 1)
    y = np.repeat(start[:, 1:], chains, 1)
    xs, ys = np.empty((2, _STEPS, b, chains))
    for s in range(_STEPS):
        p = flat[offset + choice[s]]
        x, y = p[..., 0] * x + p[..., 1] * y + p[..., 2], p[..., 3] * x + p[..., 4] * y + p[..., 5]
        xs[s], ys[s] = x, y

    def per_image(a: np.ndarray) -> np.ndarray:
        return a.transpose(1, 0, 2).reshape(b, -1)

    return per_image(xs), per_image(ys), per_image(choice)


def _pixels(
    xs: np.ndarray, ys: np.ndarray, size: int, margin: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Fit each point cloud into the image, keeping its aspect ratio (a line stays a line)."""
    lo_x, hi_x = xs.min(1, keepdims=True), xs.max(1, keepdims=True)
    lo_y, hi_y = ys.min(1, keepdims=True), ys.max(1, keepdims=True)
    extent = np.maximum(np.maximum(hi_x - lo_x, hi_y - lo_y), 1e-9)
    scale = (size - 1) * (1 - 2 * margin[:, None]) / extent
    cx = (xs - (lo_x + hi_x) / 2) * scale + (size - 1) / 2
    cy = (ys - (lo_y + hi_y) / 2) * scale + (size - 1) / 2
    return (np.clip(np.rint(cx), 0, size - 1).astype(np.intp),
            np.clip(np.rint(cy), 0, size - 1).astype(np.intp))  # fmt: skip


def default_points(size: int) -> int:
    """About one point per pixel: dense enough to show the set's structure at FractalDB's fill."""
    return size * size


def filling_rate(
    systems: list[np.ndarray], size: int, rng: np.random.Generator, n_points: int | None = None
) -> np.ndarray:
    """Share of pixels the plain (unjittered) render of each system covers."""
    params, _ = _pad(systems)
    xs, ys, _ = _chaos_game(
        params, map_probabilities(params), rng, n_points or default_points(size)
    )
    ix, iy = _pixels(xs, ys, size, np.full(len(systems), 0.05))
    mask = np.zeros((len(systems), size * size), dtype=bool)
    mask[np.arange(len(systems))[:, None], iy * size + ix] = True
    return mask.mean(1)


def make_classes(
    n_classes: int,
    seed: int,
    filling_range: tuple[float, float] = (0.05, 0.35),
    resolution: int = 64,
) -> list[np.ndarray]:
    """FractalDB's category search: random IFS, kept when they fill a useful share of the image.

    Too low a filling rate means a dot or a thin curve; too high, a blob: neither teaches shape.
    """
    rng = np.random.default_rng([seed, 0xF4AC])
    kept: list[np.ndarray] = []
    for _ in range(max(100, 20 * n_classes)):
        candidates = [sample_ifs(rng) for _ in range(64)]
        rates = filling_rate(candidates, resolution, rng)
        kept += [
            s
            for s, r in zip(candidates, rates, strict=True)
            if filling_range[0] <= r <= filling_range[1]
        ]
        if len(kept) >= n_classes:
            return kept[:n_classes]
    raise DcamError(f"found only {len(kept)} IFS with a filling rate in {filling_range}")


def render_batch(
    systems: list[np.ndarray],
    class_ids: np.ndarray,
    rng: np.random.Generator,
    size: int,
    n_points: int | None = None,
) -> np.ndarray:
    """UINT8 (B, size, size, 3) instances of the given classes: jittered, coloured and flipped.

    Colour is either one per image or one per map (which paints the set's self-similar parts),
    on a light background; all of it is random, so only the shape identifies the class.
    """
    b = len(class_ids)
    params, valid = _pad([systems[int(c)] for c in class_ids])
    params = _jitter(params, valid, rng)
    xs, ys, maps = _chaos_game(
        params, map_probabilities(params), rng, n_points or default_points(size)
    )
    xs = xs * rng.choice([-1.0, 1.0], (b, 1))  # flips
    ys = ys * rng.choice([-1.0, 1.0], (b, 1))
    ix, iy = _pixels(xs, ys, size, rng.uniform(0.02, 0.12, b))
    palette = rng.integers(0, 160, (b, MAX_MAPS, 3), dtype=np.uint8)
    one_colour = rng.random(b) < 0.5
    palette[one_colour] = palette[one_colour, :1]
    images = np.empty((b, size, size, 3), dtype=np.uint8)
    images[:] = rng.integers(190, 256, (b, 1, 1, 3), dtype=np.uint8)
    rows = np.arange(b)[:, None]
    images.reshape(b, size * size, 3)[rows, iy * size + ix] = palette[rows, maps]
    return images
