from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from dcam.core import anomaly_map as amap
from dcam.core import scoring
from dcam.core.scoring import Calibration, ScoringSpec


@pytest.mark.parametrize(
    ("src", "dst"), [((16, 20), (64, 48)), ((16, 20), (8, 10)), ((4, 4), (256, 256))]
)
def test_resize_matches_torch_bilinear(src: tuple, dst: tuple) -> None:
    maps = np.random.default_rng(0).random((3, *src)).astype(np.float32)
    ref = F.interpolate(
        torch.from_numpy(maps)[:, None], size=dst, mode="bilinear", align_corners=False
    )[:, 0].numpy()
    np.testing.assert_allclose(amap.resize_bilinear(maps, dst), ref, atol=2e-6)


def test_gaussian_matches_scipy_reflect() -> None:
    x = np.random.default_rng(1).random((2, 40, 50)).astype(np.float32)
    ref = np.stack(
        [gaussian_filter(m.astype(np.float64), 4.0, mode="mirror", truncate=4.0) for m in x]
    )
    np.testing.assert_allclose(amap.gaussian_smooth(x, 4.0), ref, atol=1e-6)
    assert amap.gaussian_smooth(x, 0.0) is x


def test_cosine_distance_matches_torch() -> None:
    rng = np.random.default_rng(2)
    t, s = rng.normal(size=(2, 2, 8, 5, 5)).astype(np.float32)
    ref = 1 - F.cosine_similarity(torch.from_numpy(t), torch.from_numpy(s), dim=1).numpy()
    np.testing.assert_allclose(amap.cosine_distance(t, s), ref, atol=1e-6)
    # FP16 inputs are computed in FP32
    assert amap.cosine_distance(t.astype(np.float16), s.astype(np.float16)).dtype == np.float32


def _two_levels(seed: int, batch: int, size: int) -> tuple[list, list]:
    """Random teacher and student features of two levels, size and size / 2."""
    rng = np.random.default_rng(seed)
    shapes = [(batch, 4 * batch, size, size), (batch, 4 * batch, size // 2, size // 2)]
    return [rng.normal(size=s) for s in shapes], [rng.normal(size=s) for s in shapes]


def _upsampled(t: list, s: list, size: int) -> list:
    return [
        amap.resize_bilinear(amap.cosine_distance(a, b), (size, size))
        for a, b in zip(t, s, strict=True)
    ]


def test_anomaly_map_combines_levels() -> None:
    t, s = _two_levels(3, 1, 8)
    levels = _upsampled(t, s, 16)
    np.testing.assert_allclose(amap.anomaly_map(t, s, (16, 16)), levels[0] + levels[1], rtol=1e-6)
    np.testing.assert_allclose(
        amap.anomaly_map(t, s, (16, 16), "product"), levels[0] * levels[1], rtol=1e-6
    )
    with pytest.raises(ValueError, match="combine"):
        amap.anomaly_map(t, s, (16, 16), "mean")


def test_scores_normalisation_and_decisions() -> None:
    maps = np.zeros((2, 4, 4), np.float32)
    maps[0, 1, 2] = 3.0
    maps[1, 0, 0] = 1.0
    scores = amap.image_scores(maps)
    np.testing.assert_array_equal(scores, [3.0, 1.0])
    z = Calibration(mean=1.0, std=0.5, threshold=2.0).normalise(scores)
    np.testing.assert_allclose(z, [4.0, 0.0])
    np.testing.assert_array_equal(scoring.decide(z, 2.0), [True, False])


def test_torch_tensors_give_the_numpy_result() -> None:
    rng = np.random.default_rng(4)
    t = [rng.normal(size=(2, 8, 8, 8)).astype(np.float32), rng.normal(size=(2, 8, 4, 4))]
    s = [rng.normal(size=(2, 8, 8, 8)).astype(np.float32), rng.normal(size=(2, 8, 4, 4))]
    ref = amap.anomaly_map(t, s, (32, 32), "sum", 2.0)
    got = amap.anomaly_map(
        [torch.from_numpy(a) for a in t], [torch.from_numpy(b) for b in s], (32, 32), "sum", 2.0
    )
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(amap.image_scores(got).numpy(), amap.image_scores(ref), rtol=1e-6)
    calibration = Calibration(1.0, 2.0, 0.0)
    z = calibration.normalise(amap.image_scores(got))
    np.testing.assert_allclose(z.numpy(), calibration.normalise(amap.image_scores(ref)), rtol=1e-5)


def test_folded_smoothing_equals_resize_then_blur() -> None:
    t, s = _two_levels(5, 2, 16)
    levels = _upsampled(t, s, 64)
    expected = amap.gaussian_smooth(levels[0] + levels[1], 3.0)
    np.testing.assert_allclose(
        amap.anomaly_map(t, s, (64, 64), "sum", 3.0), expected, rtol=1e-5, atol=1e-6
    )
    product = amap.gaussian_smooth(levels[0] * levels[1], 3.0)
    np.testing.assert_allclose(
        amap.anomaly_map(t, s, (64, 64), "product", 3.0), product, rtol=1e-5, atol=1e-6
    )


def test_cosine_is_overflow_safe_in_fp16() -> None:
    """A TensorRT FP16 engine computes the fused graph's cosine in FP16: |t|^2 * |s|^2 for 256
    channels of magnitude ~8 is ~1e9, far past FP16's 65504; the map must stay finite and right."""
    rng = np.random.default_rng(7)
    t = rng.uniform(0, 16, size=(2, 256, 4, 4)).astype(np.float32)
    s = t + rng.normal(0, 2, size=t.shape).astype(np.float32)
    half = amap.cosine_distance(
        torch.from_numpy(t).half(), torch.from_numpy(s).half(), keep_dtype=True
    )
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    t64, s64 = t.astype(np.float64), s.astype(np.float64)
    ref = 1 - (t64 * s64).sum(1) / np.sqrt((t64 * t64).sum(1) * (s64 * s64).sum(1))
    np.testing.assert_allclose(half.float().numpy(), ref, atol=2e-3)
    np.testing.assert_allclose(amap.cosine_distance(t, s), ref, atol=1e-6)
    zeros = np.zeros((1, 8, 2, 2), np.float32)
    assert np.isfinite(amap.cosine_distance(zeros, zeros)).all()  # no 0/0 for empty features


def test_resize_matrices_are_built_once_per_device() -> None:
    """Copying the constant matrices to the device on every request (and inside a CUDA-graph
    capture) was the defect: they are cached per device and warmed up front."""
    spec = ScoringSpec((32, 32), "sum", 2.0, Calibration(0.0, 1.0, 0.0))
    scoring.warm_up(spec, [(8, 8, 8), (8, 4, 4)], "cpu")
    before = amap._torch_matrix.cache_info()
    feats = [torch.rand(2, 8, 8, 8), torch.rand(2, 8, 4, 4)]
    scoring.score(spec, feats, feats)
    scoring.score(spec, feats, feats)
    after = amap._torch_matrix.cache_info()
    assert after.misses == before.misses and after.hits > before.hits
    m = torch.zeros(1, 8, 8)
    assert amap._matrix(m, amap.bilinear_matrix, 32, 8) is amap._matrix(
        m, amap.bilinear_matrix, 32, 8
    )
