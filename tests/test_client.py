"""dcam-client against the real tritonserver serving the CPU repository built by dcam-build."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from click.testing import CliRunner
from PIL import Image

from dcam.build.verify import reference_outputs
from dcam.client import shm
from dcam.client.cli import TLS_OPTIONS, client_group
from dcam.client.results import read_results, row_path
from dcam.client.score import ScoreConfig, Scorer, score_paths
from dcam.core.images import load_image
from dcam.core.manifest import Manifest
from dcam.serve.server import ServerConfig, TritonServer, free_port
from dcam.serve.shm import REGION_PREFIX, SHM_DIR, _held_paths

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def server(ensemble_repo: Path):
    with TritonServer(ServerConfig(ensemble_repo)) as srv:
        yield srv


def _good_images(synthetic_root: Path, n: int = 12) -> list[Path]:
    paths = sorted(synthetic_root.glob("*/test/*/*.png"))
    return paths[:n]


def test_scores_equal_the_in_process_reference(
    server, synthetic_root: Path, tiny_run: Path
) -> None:
    paths = _good_images(synthetic_root, 11)
    for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
        cfg = ScoreConfig(urls=(url,), protocol=protocol, batch_size=4, concurrency=2)
        results = {r.path: r for r in asyncio.run(score_paths(paths, cfg))}
        assert len(results) == len(paths) and all(r.ok for r in results.values())
        manifest = Manifest.read(tiny_run)
        images = np.stack([load_image(p, 64) for p in paths])
        _, ref_scores, ref_flags = reference_outputs(tiny_run, manifest, images)
        got = np.array([results[str(p)].score for p in paths])
        np.testing.assert_allclose(got, ref_scores[:, 0], rtol=1e-4, atol=1e-4)
        assert [results[str(p)].is_anomalous for p in paths] == list(ref_flags[:, 0])


def _bad_corpus(folder: Path, good: Path) -> dict[str, bool]:
    """Files the client must handle; value: whether it should be scored successfully."""
    folder.mkdir()
    rgb = np.asarray(Image.open(good).convert("RGB"))
    cases = {}

    def save(name: str, img: Image.Image, ok: bool = True, **kw) -> None:
        img.save(folder / name, **kw)
        cases[name] = ok

    save("gray.png", Image.fromarray(rgb[..., 0]))
    save("rgba.png", Image.fromarray(np.dstack([rgb, rgb[..., :1]]), "RGBA"))
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"))
    save("palette.gif", Image.fromarray(rgb).convert("P"))
    save("deep16.png", Image.fromarray(rgb[..., 0].astype(np.uint16) * 257))
    save("tiny_1x1.png", Image.fromarray(rgb[:1, :1]))
    save("huge_20000.png", Image.new("1", (20000, 20000)), ok=False)
    (folder / "empty.png").write_bytes(b"")
    cases["empty.png"] = False
    (folder / "text.png").write_text("not an image\n")
    cases["text.png"] = False
    Image.fromarray(rgb).save(folder / "truncated.jpg", quality=95)
    data = (folder / "truncated.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    cases["truncated.jpg"] = False
    os.symlink("loop.png", folder / "loop.png")
    cases["loop.png"] = False
    os.mkfifo(folder / "fifo.png")  # opening it would block for ever
    cases["fifo.png"] = False
    os.symlink("/dev/zero", folder / "zero.png")  # reading it would never end
    cases["zero.png"] = False
    (folder / "folder.png").mkdir()  # named like an image, not a file: reported, not a row
    odd = os.fsdecode(b"caf\xe9-\xff.png")  # not UTF-8
    shutil.copy(good, folder / odd)
    cases[odd] = True
    if os.geteuid() != 0:  # root reads anything, so permissions can only be tested as a user
        shutil.copy(good, folder / "locked.png")
        (folder / "locked.png").chmod(0)
        cases["locked.png"] = False
    return cases


def test_bad_inputs_each_get_one_row(server, synthetic_root: Path, tmp_path: Path) -> None:
    cases = _bad_corpus(tmp_path / "line", _good_images(synthetic_root, 1)[0])
    out = tmp_path / "scores.jsonl"
    result = CliRunner().invoke(
        client_group,
        [
            "score",
            "--dir",
            str(tmp_path / "line"),
            "--url",
            server.grpc_url,
            "--output",
            str(out),
            "--batch-size",
            "3",
        ],
    )
    assert result.exit_code == 1, result.output
    rows = read_results(out)
    by_name = {Path(row_path(r)).name: r for r in rows}  # the name on disk, escaped or not
    assert len(rows) == len(by_name) == len(cases)
    for name, ok in cases.items():
        assert (by_name[name]["error"] is None) == ok, (name, by_name[name])
        if not ok:
            assert name in by_name[name]["error"] or "loop" in by_name[name]["error"]
    assert "too large" in by_name["huge_20000.png"]["error"]
    assert "not a regular file (a FIFO)" in by_name["fifo.png"]["error"]
    assert "not a regular file (a character device)" in by_name["zero.png"]["error"]
    assert all(r["retryable"] is False for r in rows if r["error"])  # all permanent
    assert "skipped 1 folders named like images (not files):" in result.output
    assert "folder.png" in result.output and "FAILED" in result.output


def test_csv_output_and_heatmaps(server, synthetic_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    args = [
        "score",
        "--dir",
        str(synthetic_root),
        "--recursive",
        "--glob",
        "nut/test/*/*",
        "--url",
        server.http_url,
        "--protocol",
        "http",
        "--output",
        str(out),
        "--heatmaps",
        str(tmp_path / "heat"),
    ]
    result = CliRunner().invoke(client_group, args)
    assert result.exit_code == 0, result.output
    rows = read_results(out)
    expected = sorted(synthetic_root.glob("nut/test/*/*.png"))
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in expected)
    heatmaps = sorted((tmp_path / "heat").rglob("*.png"))
    assert len(heatmaps) == len(expected)
    assert Image.open(heatmaps[0]).width >= 512
    assert "images/s" in result.output and "p50/p95/p99" in result.output
    auroc = CliRunner().invoke(client_group, ["auroc", str(out)])
    assert auroc.exit_code == 0 and "image AUROC" in auroc.output
    again = CliRunner().invoke(client_group, args)
    assert again.exit_code == 1 and "--resume" in again.output


def test_resume_scores_each_file_once(server, synthetic_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "line"
    folder.mkdir()
    paths = _good_images(synthetic_root, 10)
    for p in paths[:4]:
        shutil.copy(p, folder / f"{p.parent.name}-{p.name}")
    out = tmp_path / "scores.jsonl"
    base = ["score", "--dir", str(folder), "--url", server.grpc_url, "--output", str(out)]
    assert CliRunner().invoke(client_group, base).exit_code == 0
    with out.open("a") as fh:
        fh.write('{"path": "torn')  # a crash in the middle of a row
    for p in paths[4:]:
        shutil.copy(p, folder / f"{p.parent.name}-{p.name}")
    result = CliRunner().invoke(client_group, [*base, "--resume"])
    assert result.exit_code == 0, result.output
    assert "skipped 4" in result.output
    names = [Path(r["path"]).name for r in read_results(out)]
    assert sorted(names) == sorted(p.name for p in folder.iterdir())


def test_resume_rescores_transient_failures_and_keeps_permanent_ones(
    server, synthetic_root: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "line"
    folder.mkdir()
    for p in _good_images(synthetic_root, 4):
        shutil.copy(p, folder / f"{p.parent.name}-{p.name}")
    (folder / "broken.png").write_bytes(b"not an image")  # a permanent, per-file error
    out = tmp_path / "scores.csv"
    base = ["score", "--dir", str(folder), "--url", server.grpc_url, "--output", str(out)]
    # Every request times out: the images fail transiently, the broken file permanently.
    first = CliRunner().invoke(client_group, [*base, "--timeout", "0.0001", "--retries", "1"])
    assert first.exit_code == 1
    rows = {Path(r["path"]).name: r for r in read_results(out)}
    assert rows["broken.png"]["retryable"] == "False"
    assert {r["retryable"] for n, r in rows.items() if n != "broken.png"} == {"True"}

    second = CliRunner().invoke(client_group, [*base, "--resume"])
    assert second.exit_code == 1, second.output  # the broken file is still in the output
    assert "skipped 1 already" in second.output and "1 failed files in" in second.output
    rows = read_results(out)
    assert sorted(Path(r["path"]).name for r in rows) == sorted(p.name for p in folder.iterdir())
    assert [Path(r["path"]).name for r in rows if r["error"]] == ["broken.png"]

    third = CliRunner().invoke(client_group, [*base, "--resume", "--retry-failed"])
    assert third.exit_code == 1 and "skipped 4 already" in third.output
    assert len(read_results(out)) == 5  # tried again, failed again, still once
    lone = CliRunner().invoke(client_group, [*base, "--force", "--retry-failed"])
    assert lone.exit_code != 0 and "with --resume" in lone.output


def test_rows_written_before_errors_were_classified_resume_sensibly() -> None:
    from dcam.client.results import is_settled

    assert is_settled({"path": "a", "error": ""})
    assert not is_settled({"path": "a", "error": "inference failed: gave up after 4 attempts"})
    assert is_settled({"path": "a", "error": "cannot decode image"})
    assert not is_settled({"path": "a", "error": "cannot decode image"}, retry_failed=True)
    assert not is_settled({"path": "a", "error": "x", "retryable": True})
    assert is_settled({"path": "a", "error": "x", "retryable": "False"})


def _score_good_nuts(root: Path, url: str, out: Path, *options: str):
    """`dcam-client score` on the nut product's good test images, through CliRunner."""
    args = ["score", "--dir", str(root / "nut" / "test" / "good"), "--url", url]
    return CliRunner().invoke(client_group, [*args, *options, "--output", str(out)])


def test_no_server_at_start(tmp_path: Path, synthetic_root: Path) -> None:
    url = f"127.0.0.1:{free_port()}"
    result = _score_good_nuts(synthetic_root, url, tmp_path / "s.jsonl", "--ready-timeout", "2")
    assert result.exit_code == 1
    assert "no server with model 'dcam' ready" in result.output


def test_request_timeout_is_a_per_file_error(server, synthetic_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.jsonl"
    options = ("--timeout", "0.0001", "--retries", "1")
    result = _score_good_nuts(synthetic_root, server.grpc_url, out, *options)
    assert result.exit_code == 1
    rows = read_results(out)
    assert rows and all("inference failed" in r["error"] for r in rows)


def test_server_killed_and_restarted_mid_run(ensemble_repo: Path, synthetic_root: Path) -> None:
    ports = {f"{k}_port": free_port() for k in ("http", "grpc", "metrics")}
    paths = sorted(synthetic_root.glob("*/train/good/*.png")) * 8
    paths = [p for p in paths]  # the same file many times: each occurrence is one input
    regions_before = set(SHM_DIR.glob(f"{REGION_PREFIX}*"))
    first = TritonServer(ServerConfig(ensemble_repo, **ports)).start()
    second: list[TritonServer] = []

    def restart() -> None:
        os.killpg(first.process.pid, signal.SIGKILL)
        first.process.wait()
        time.sleep(0.5)
        second.append(TritonServer(ServerConfig(ensemble_repo, **ports)).start())

    async def run() -> list:
        cfg = ScoreConfig(
            urls=(f"127.0.0.1:{ports['grpc_port']}",),
            batch_size=4,
            concurrency=2,
            retries=8,
            timeout_s=20,
        )
        scorer = Scorer(cfg)
        results, restarted = [], None
        try:
            async for result in scorer.stream(paths):
                results.append(result)
                if len(results) == 16:
                    restarted = asyncio.get_running_loop().run_in_executor(None, restart)
            await restarted
        finally:
            await scorer.close()
        return results

    try:
        results = asyncio.run(run())
    finally:
        first.stop()
        for srv in second:
            srv.stop()
    assert second, "the server was not restarted"
    # SIGKILL left the first server's Python-backend regions; the next start removed them, and
    # nothing this test started is left in /dev/shm (a region still held is another run's).
    assert second[0].freed_at_start.regions >= 1
    held = _held_paths() or set()
    left = set(SHM_DIR.glob(f"{REGION_PREFIX}*")) - regions_before
    assert {p for p in left if str(p) not in held} == set()
    assert len(results) == len(paths)
    assert [r.error for r in results if not r.ok] == []
    assert sorted(r.path for r in results) == sorted(str(p) for p in paths)


def test_watch_scores_files_as_they_land(server, synthetic_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "hot"
    folder.mkdir()
    out = tmp_path / "watch.jsonl"
    cmd = [
        str(Path(sys.executable).parent / "dcam-client"),
        "score",
        "--dir",
        str(folder),
        "--url",
        server.grpc_url,
        "--output",
        str(out),
        "--watch",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not out.exists() and time.monotonic() < deadline:  # the first listing is done
            time.sleep(0.2)
        sources = _good_images(synthetic_root, 3)
        for i, src in enumerate(sources):
            shutil.copy(src, folder / f"part-{i}.png")
        (folder / "incoming.png").write_bytes(b"")  # still being written: not yet scored
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(read_results(out)) < len(sources):
            time.sleep(0.5)
        assert sorted(Path(r["path"]).name for r in read_results(out)) == [
            "part-0.png",
            "part-1.png",
            "part-2.png",
        ]
        regions = f"{shm.PREFIX}-{proc.pid}-"
        assert any(p.name.startswith(regions) for p in shm.SHM_DIR.iterdir())  # through /dev/shm
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert "files 3" in output and "images through shared memory" in output
    # Ctrl-C unregistered the regions from the server and removed them from /dev/shm.
    status = grpcclient.InferenceServerClient(server.grpc_url).get_system_shared_memory_status()
    assert not [n for n in status.regions if n.startswith(regions)]
    assert not [p for p in shm.SHM_DIR.iterdir() if p.name.startswith(regions)]


def test_client_never_imports_torch() -> None:
    code = "import sys, dcam.client.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_score_options_are_the_fields_of_score_and_run_configs() -> None:
    """Each `score` option is a field of one config; the --tls* options make `tls`, and
    --heatmaps makes `keep_maps`."""
    from dataclasses import fields

    from dcam.client.run import RunConfig

    options = {p.name for p in client_group.commands["score"].params}
    run = {f.name for f in fields(RunConfig)}
    score = {f.name for f in fields(ScoreConfig)} - {"tls", "keep_maps"}
    assert not run & score
    assert options == run | score | set(TLS_OPTIONS)


def test_dead_server_among_several_is_taken_out(server, synthetic_root: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    paths = _good_images(synthetic_root, 12)
    cfg = ScoreConfig(urls=(dead, server.grpc_url), batch_size=2, concurrency=3, retries=4)
    results = asyncio.run(score_paths(paths, cfg))
    assert sorted(r.path for r in results) == sorted(str(p) for p in paths)
    assert all(r.ok for r in results)


def test_category_from_path_reads_the_folder_layout(tmp_path: Path) -> None:
    from dcam.client.files import category_from_path
    from dcam.core.errors import ClientError

    root = tmp_path / "line"
    assert category_from_path(root / "bottle" / "test" / "crack" / "0.png", root) == "bottle"
    assert category_from_path(root / "bottle" / "train" / "good" / "0.png", root) == "bottle"
    assert category_from_path(root / "cam1" / "bottle" / "0.png", root) == "cam1"
    category_root = tmp_path / "nut"
    assert category_from_path(category_root / "test" / "good" / "0.png", category_root) == "nut"
    with pytest.raises(ClientError, match="--category NAME"):
        category_from_path(root / "0.png", root)


def test_each_image_scored_with_its_products_calibration(
    server, synthetic_root: Path, tiny_run: Path, tmp_path: Path
) -> None:
    """--category-from-path: every row names its product and carries that product's z-score and
    decision; mixed products never share a request."""
    out = tmp_path / "scores.jsonl"
    args = ["score", "--dir", str(synthetic_root), "--recursive", "--glob", "*/test/*/*"]
    args += ["--url", server.grpc_url, "--output", str(out), "--category-from-path"]
    args += ["--batch-size", "3"]
    result = CliRunner().invoke(client_group, args)
    assert result.exit_code == 0, result.output
    rows = read_results(out)
    manifest = Manifest.read(tiny_run)
    for category in ("carpet", "nut"):
        mine = sorted((r for r in rows if r["category"] == category), key=lambda r: r["path"])
        assert mine and all(f"/{category}/test/" in r["path"] for r in mine)
        images = np.stack([load_image(r["path"], 64) for r in mine])
        _, ref_scores, ref_flags = reference_outputs(tiny_run, manifest, images, category)
        calibration = manifest.scoring.calibration_for(category)
        # Compared as raw scores: the tiny run holds out one image per product, so its std is
        # the 1e-6 floor and z-scores magnify float32 rounding of the raw score a millionfold.
        got_raw = np.array([r["score"] for r in mine]) * calibration.std + calibration.mean
        ref_raw = ref_scores[:, 0] * calibration.std + calibration.mean
        np.testing.assert_allclose(got_raw, ref_raw, rtol=1e-5, atol=1e-6)
        threshold = calibration.threshold
        clear = np.abs(ref_scores[:, 0] - threshold) > 1e-3
        flags = np.array([r["is_anomalous"] for r in mine])
        np.testing.assert_array_equal(flags[clear], ref_flags[clear, 0])
    auroc = CliRunner().invoke(client_group, ["auroc", str(out)])
    assert auroc.exit_code == 0 and "TPR" in auroc.output and "FPR" in auroc.output


def test_unknown_category_is_refused_before_any_file_with_the_known_names(
    server, synthetic_root: Path, tmp_path: Path
) -> None:
    """The model publishes its products: --category is checked at start, not once per file
    (tests/test_client_line.py: the per-file error of a product told by the path)."""
    out = tmp_path / "scores.jsonl"
    args = ["score", "--dir", str(synthetic_root / "nut" / "test" / "good")]
    args += ["--url", server.grpc_url, "--output", str(out), "--category", "sofa"]
    result = CliRunner().invoke(client_group, args)
    assert result.exit_code == 1
    assert "unknown category 'sofa'; calibrated: ['carpet', 'nut']" in result.output
    assert read_results(out) == []
    both = CliRunner().invoke(client_group, [*args, "--force", "--category-from-path"])
    assert both.exit_code == 1 and "not both" in both.output


def test_heatmaps_share_one_scale_per_product() -> None:
    """Per-image scaling painted every part's own maximum hot; one scale per product from its
    calibration keeps a good part cool and a defect hot, with the threshold on the bar."""
    from dcam.client.heatmap import product_scale, render_heatmap
    from dcam.core.scoring import Calibration, ScoringSpec

    spec = ScoringSpec(
        (32, 32), "sum", 0.0, Calibration(0.3, 0.1, 3.0), {"bottle": Calibration(0.1, 0.01, 3.0)}
    )
    scale = product_scale(spec, "bottle")
    assert (scale.vmin, scale.threshold, scale.vmax) == pytest.approx((0.07, 0.13, 0.16))
    assert product_scale(spec, None).threshold == pytest.approx(0.6)  # the global calibration
    image = np.zeros((32, 32, 3), np.uint8)
    good = 0.08 + 0.005 * np.random.default_rng(0).random((32, 32)).astype(np.float32)
    bad = good.copy()
    bad[10:14, 10:14] = 0.2
    overlay = slice(0, 256)  # 32 px maps are drawn 8x; the overlay is the left half
    g = np.asarray(render_heatmap(image, good, 0.0, False, scale))[overlay, overlay]
    b = np.asarray(render_heatmap(image, bad, 9.0, True, scale))[overlay, overlay]
    assert g[..., 0].max() < 10 < b[..., 0].max()  # no red on the good part, red on the defect


def test_image_whose_product_the_path_does_not_tell_fails_alone(
    server, synthetic_root: Path, tmp_path: Path
) -> None:
    """--category-from-path never scores an image with the global calibration by default: one
    lying directly in --dir fails with the reason, the others are scored with their product's."""
    line = tmp_path / "line"
    (line / "nut").mkdir(parents=True)
    good = _good_images(synthetic_root, 2)
    shutil.copy(good[0], line / "stray.png")
    shutil.copy(good[1], line / "nut" / "part.png")
    out = tmp_path / "scores.jsonl"
    args = ["score", "--dir", str(line), "--recursive", "--category-from-path"]
    result = CliRunner().invoke(
        client_group, [*args, "--url", server.grpc_url, "--output", str(out)]
    )
    assert result.exit_code == 1
    rows = {Path(r["path"]).name: r for r in read_results(out)}
    assert "cannot tell its product" in rows["stray.png"]["error"]
    assert rows["part.png"]["category"] == "nut" and rows["part.png"]["error"] is None
