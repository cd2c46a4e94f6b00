from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from dcam.core.errors import DcamError
from dcam.nets.features import FeatureExtractor, Normalize
from dcam.teacher.sources import load_teacher
from dcam.training.model import Student


def test_feature_levels_and_channels() -> None:
    net = FeatureExtractor("resnet18")
    feats = net(torch.randn(2, 3, 64, 64))
    assert [f.shape[1:] for f in feats] == [(64, 16, 16), (128, 8, 8), (256, 4, 4)]
    assert net.channels == [64, 128, 256]
    assert not any(k.startswith(("layer4", "fc")) for k in net.state_dict())


def test_wide_resnet_channels() -> None:
    assert FeatureExtractor("wide_resnet50_2").channels == [256, 512, 1024]


def test_teacher_from_torchvision_checkpoint(tmp_path: Path) -> None:
    full = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(full.state_dict(), path)
    teacher = load_teacher("resnet18", "imagenet", path)
    torch.testing.assert_close(teacher.layer3[1].conv2.weight, full.layer3[1].conv2.weight)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not teacher.training


def test_teacher_weights_of_another_backbone_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "wide.pth"
    torch.save(FeatureExtractor("wide_resnet50_2").state_dict(), path)
    with pytest.raises(DcamError, match="do not fit"):
        load_teacher("resnet18", "imagenet", path)


def test_imagenet_teacher_offline_refuses_with_alternatives(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache; nothing can be downloaded
    with pytest.raises(DcamError, match="--teacher random") as info:
        load_teacher("resnet18", "imagenet")
    assert "--teacher-weights" in str(info.value)
    message = str(info.value)
    assert message.index("--teacher formula") < message.index("--teacher-weights")


def test_unusable_teacher_fails_before_data_or_output_are_touched(
    monkeypatch, tmp_path: Path
) -> None:
    """Offline with the default ImageNet teacher: refused at once, offering the shipped one,
    before the dataset is read and before --force replaces an earlier run."""
    from click.testing import CliRunner

    from dcam.training.cli import train_command

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    earlier = tmp_path / "run"
    earlier.mkdir()
    (earlier / "manifest.json").write_text("{}")
    args = ["--data", str(tmp_path / "no-such-data"), "--out", str(earlier), "--force"]
    result = CliRunner().invoke(train_command, args)
    assert result.exit_code == 1
    assert "--teacher formula" in result.output and "no-such-data" not in result.output
    assert (earlier / "manifest.json").read_text() == "{}"


@pytest.mark.parametrize("mode", ["side", "mask"])
def test_deployed_student_has_no_dcam_weights(mode: str) -> None:
    student = Student("resnet18", [64, 128, 256], "channel+spatial", mode)
    assert any("dcam" in k for k in student.state_dict())
    state = student.deployable_state_dict()
    assert not any("dcam" in k for k in state)
    FeatureExtractor("resnet18").load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 64, 64)
    student.eval()
    plain = FeatureExtractor("resnet18")
    plain.load_state_dict(state)
    plain.eval()
    for a, b in zip(student(x), plain(x), strict=True):
        torch.testing.assert_close(a, b)


def test_inline_control_keeps_blocks_at_inference() -> None:
    student = Student("resnet18", [64, 128, 256], "channel", "inline")
    assert any("dcam" in k for k in student.deployable_state_dict())


def test_mask_reading_reweights_both_with_mean_one_weights() -> None:
    student = Student("resnet18", [64, 128, 256], "channel", "mask")
    t = [torch.rand(2, c, 4, 4) for c in (64, 128, 256)]
    s = [torch.rand(2, c, 4, 4) for c in (64, 128, 256)]
    (plain_t, plain_s), (masked_t, masked_s) = student.loss_pairs(t, s)
    assert plain_t is t and plain_s is s
    for tt, mt, ss, ms in zip(t, masked_t, s, masked_s, strict=True):
        w_t, w_s = mt / tt, ms / ss
        torch.testing.assert_close(w_t, w_s)
        torch.testing.assert_close(w_t.mean(dim=(1, 2, 3)), torch.ones(2), rtol=1e-4, atol=1e-4)


def test_normalize_takes_uint8_nhwc() -> None:
    images = torch.full((1, 4, 4, 3), 255, dtype=torch.uint8)
    out = Normalize()(images)
    assert out.shape == (1, 3, 4, 4)
    torch.testing.assert_close(
        out[0, :, 0, 0],
        torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]),
    )


def test_adapt_batchnorm_reestimates_only_the_statistics() -> None:
    """AdaBN: running mean/var become those of this data; weights untouched; eval mode after."""
    from dcam.nets.features import adapt_batchnorm

    torch.manual_seed(0)
    teacher = load_teacher("resnet18", "random")
    stats = ("running_mean", "running_var", "num_batches_tracked")
    weights = {k: v.clone() for k, v in teacher.state_dict().items() if not k.endswith(stats)}
    images = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    seen = adapt_batchnorm(teacher, images, batch_size=6, device=torch.device("cpu"))
    assert seen == 6 and not teacher.training
    with torch.no_grad():
        x = teacher.conv1(Normalize()(torch.from_numpy(images)))
    torch.testing.assert_close(teacher.bn1.running_mean, x.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(
        teacher.bn1.running_var, x.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-5
    )
    assert teacher.bn1.momentum == 0.1  # restored
    for k, v in teacher.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k
    assert not any(p.requires_grad for p in teacher.parameters())


def _no_network(monkeypatch: pytest.MonkeyPatch, hang: bool = False) -> None:
    """Connections fail at once, or hang as a black-holed network does (DNS included)."""
    import socket
    import time

    def connect(*args, **kwargs):
        if hang:
            time.sleep(30)
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", connect)
    monkeypatch.setattr(socket.socket, "connect", connect)


def test_auto_teacher_offline_picks_formula_within_seconds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """No cached ImageNet weights and a network that never answers: formula, in < 5 s, and
    one printed line that says which teacher and why."""
    import time

    from dcam.teacher.sources import choose_source

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _no_network(monkeypatch, hang=True)
    start = time.perf_counter()
    choice = choose_source("resnet18", "auto")
    assert time.perf_counter() - start < 5
    assert choice.source == "formula"
    assert "not cached" in choice.reason and "unreachable" in choice.reason
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"teacher: formula ({choice.reason})"]


def test_auto_teacher_offline_here(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """This machine's own network (offline in CI): auto settles on formula in under 5 s."""
    import time

    from dcam.teacher import sources

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    if sources._unreachable("download.pytorch.org") is None:
        pytest.skip("online: auto would download ImageNet weights")
    start = time.perf_counter()
    teacher = load_teacher("resnet18", "auto")
    assert time.perf_counter() - start < 5
    shipped = load_teacher("resnet18", "formula")
    torch.testing.assert_close(teacher.conv1.weight, shipped.conv1.weight)


def test_auto_teacher_takes_cached_imagenet_weights_without_the_network(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from dcam.teacher.sources import choose_source, imagenet_cache_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _no_network(monkeypatch)
    cached = imagenet_cache_path("resnet18")
    assert cached.is_relative_to(tmp_path) and cached.name.startswith("resnet18-")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    choice = choose_source("resnet18", "auto")
    assert choice.source == "imagenet" and "cached" in choice.reason


def test_explicit_teacher_sources_are_kept_as_asked() -> None:
    from dcam.teacher.sources import TeacherChoice, choose_source

    for source in ("imagenet", "formula", "fractal", "random"):
        assert choose_source("resnet18", source) == TeacherChoice(source, None)
