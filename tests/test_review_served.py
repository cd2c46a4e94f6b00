"""A threshold applied at the review station changes what the running server decides, with no
restart: the real embedded tritonserver polling a built repository, `dcam-client score` before
and after, the station's own apply (its page) and `dcam-review rollback`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from starlette.testclient import TestClient

from dcam.client.results import latest_rows
from dcam.core.errors import ConfigError, ServerError
from dcam.review.app import OPERATOR_COOKIE, create_app, product_key
from dcam.review.cli import review_group
from dcam.review.config import ReviewConfig
from dcam.review.serving import take_up
from dcam.review.station import Station
from dcam.review.store import LabelStore
from dcam.review.versions import Repository
from dcam.serve.server import ServerConfig, TritonServer

BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.triton, pytest.mark.slow]


def _score(url: str, root: Path, out: Path) -> dict[str, dict]:
    cmd = [
        str(BIN / "dcam-client"),
        "score",
        "--dir",
        str(root),
        "--recursive",
        "--glob",
        "*/test/*/*",
        "--category-from-path",
        "--url",
        url,
        "--output",
        str(out),
        "--force",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return latest_rows(out)


def _score_until(server, root: Path, out: Path, calibration: str) -> dict[str, dict]:
    """Score until every row names `calibration`: the server rescans every second."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = _score(server.grpc_url, root, out)
        if {r["calibration"] for r in rows.values()} == {calibration}:
            return rows
        time.sleep(1)
    named = sorted({r["calibration"] for r in rows.values()})
    pytest.fail(f"rows never named {calibration}, but {named}; server log:\n{server.log_tail(60)}")


def test_an_applied_threshold_changes_served_decisions_without_a_restart(
    ensemble_repo: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    repo = shutil.copytree(ensemble_repo, tmp_path / "repo")
    build = Repository(repo).build_id
    results = tmp_path / "scores.jsonl"
    with TritonServer(ServerConfig(repo, poll_secs=1)) as server:
        url = server.grpc_url
        before = _score(url, synthetic_root, results)
        assert {r["calibration"] for r in before.values()} == {f"{build}/1"}
        station = Station(ReviewConfig(results=(results,), repository=repo))
        client = TestClient(create_app(station), base_url="http://127.0.0.1")
        client.cookies.set(OPERATOR_COOKIE, "ann")
        for part in station.run.parts:  # the truth is in the folder names
            label = "good" if "/test/good/" in part.path else "defect"
            client.post(f"/part/{part.id}", data={"label": label})
        nut = [r for r in before.values() if r["category"] == "nut"]
        scores = sorted(float(r["score"]) for r in nut)
        threshold = str(scores[len(scores) // 2] - 1e-3)  # the upper half of nuts flagged
        page = client.post(
            f"/product/{product_key('nut')}/apply",
            data={"threshold": threshold},
            follow_redirects=False,
        )
        assert page.status_code == 200 and "Apply anyway" in page.text  # labels do not back it
        stale = client.post(
            f"/product/{product_key('nut')}/apply",
            data={"threshold": threshold, "confirm": "yes", "labels_digest": "0" * 64},
        )
        assert "the labels changed since this fit" in stale.text
        assert Repository(repo).latest() == 1
        done = client.post(
            f"/product/{product_key('nut')}/apply",
            data={"threshold": threshold, "confirm": "yes"},
            follow_redirects=False,
        )
        assert done.status_code == 303 and "version+2" in done.headers["location"]
        after = _score_until(server, synthetic_root, tmp_path / "after.jsonl", f"{build}/2")
        for path, row in after.items():
            if row["category"] == "nut":
                assert row["is_anomalous"] == (float(row["score"]) > float(threshold))
            else:  # the other product keeps its threshold
                assert row["is_anomalous"] == before[path]["is_anomalous"]
        changed = [p for p in after if after[p]["is_anomalous"] != before[p]["is_anomalous"]]
        assert changed  # the new threshold decided some nuts otherwise
        record = Repository(repo).record(2)
        assert record.applied_by == "ann" and record.source["labels_digest"]
        rolled = CliRunner().invoke(review_group, ["rollback", str(repo), "--operator", "bo"])
        assert rolled.exit_code == 0, rolled.output
        back = _score_until(server, synthetic_root, tmp_path / "back.jsonl", f"{build}/3")
        assert {p: r["is_anomalous"] for p, r in back.items()} == {
            p: r["is_anomalous"] for p, r in before.items()
        }
    history = [e["action"] for e in Repository(repo).history()]
    assert history == ["apply", "rollback"]


def test_versions_are_only_added_and_a_rollback_restores_the_one_before(
    ensemble_repo: Path, tmp_path: Path
) -> None:
    repo = Repository(shutil.copytree(ensemble_repo, tmp_path / "repo"))
    first, other = sorted(repo.base.per_category)
    base = repo.base.per_category
    assert repo.apply({first: base[first].threshold + 1}, "ann").version == 2
    assert not list(repo.model_dir.glob(".staging-*"))
    assert repo.spec().per_category[first].threshold == base[first].threshold + 1
    assert repo.spec().per_category[other] == base[other]
    assert repo.apply({other: base[other].threshold + 2}, "bo").version == 3
    undo = repo.rollback("ann")  # back to version 2's calibration, as version 4
    assert (undo.version, undo.source) == (4, {"rollback_of": 3, "restores": 2})
    assert repo.spec() == repo.spec(2)
    assert repo.rollback("ann").version == 5  # and on to the build's own
    assert repo.spec() == repo.base
    with pytest.raises(ConfigError, match="nothing to roll back"):
        repo.rollback("ann")
    assert repo.versions() == [1, 2, 3, 4, 5]  # folders are only ever added
    with pytest.raises(ConfigError, match="unknown products"):
        repo.apply({"widget": 1.0}, "ann")
    with pytest.raises(ConfigError, match="drift law"):
        repo.apply({first: -50.0}, "ann")  # the server would refuse to load it
    with pytest.raises(ConfigError, match="finite"):
        repo.apply({first: float("nan")}, "ann")  # `score > nan` would flag nothing, ever
    assert repo.versions() == [1, 2, 3, 4, 5]
    assert repo.apply({None: 2.5}, "ann").scoring.calibration.threshold == 2.5  # the global
    lines = (repo.root / "calibrations.jsonl").read_text().splitlines()
    actions = [json.loads(x)["action"] for x in lines]
    assert actions == ["apply", "apply", "rollback", "rollback", "apply"]


def test_results_of_another_build_are_refused(ensemble_repo: Path, tmp_path: Path) -> None:
    repo = shutil.copytree(ensemble_repo, tmp_path / "repo")
    results = tmp_path / "scores.jsonl"
    product = sorted(Repository(repo).base.per_category)[0]
    row = {
        "path": str(tmp_path / "a.png"),
        "category": product,
        "score": 1.0,
        "is_anomalous": False,
        "calibration": "0123456789ab/1",
    }
    results.write_text(json.dumps(row) + "\n")
    with pytest.raises(ConfigError, match="scored by build 0123456789ab"):
        Station(ReviewConfig(results=(results,), repository=repo))
    result = CliRunner().invoke(review_group, ["open", str(results), "--repository", str(tmp_path)])
    assert result.exit_code == 1 and "not a dcam-build output" in result.output


def test_apply_from_the_command_line_asks_before_what_the_labels_do_not_back(
    ensemble_repo: Path, tmp_path: Path
) -> None:
    repo = shutil.copytree(ensemble_repo, tmp_path / "repo")
    products = sorted(Repository(repo).base.per_category)
    rows = [
        {
            "path": str(tmp_path / f"{c}-{i}.png"),
            "category": c,
            "score": float(i),
            "is_anomalous": i > 6,
        }
        for c in products
        for i in range(10)
    ]
    results = tmp_path / "scores.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = LabelStore(tmp_path / "scores.labels.sqlite")
    for row in rows[:10]:  # the first product only: the other keeps its threshold
        store.add(row["path"], "defect" if row["score"] >= 5 else "good", "ann", row["category"])
    command = [
        "apply",
        str(results),
        "--repository",
        str(repo),
        "--operator",
        "ann",
        "--false-call-rate",
        "0.2",
    ]
    refused = CliRunner().invoke(review_group, command)
    assert refused.exit_code == 1 and "14 are needed" in refused.output  # 5 goods, 20%
    assert "not applied" in refused.output and Repository(repo).latest() == 1
    done = CliRunner().invoke(review_group, [*command, "--yes"])
    assert done.exit_code == 0, done.output
    spec = Repository(repo).spec()
    # 5 goods at 0..4 allow one false call at 20%: the threshold is the second-highest good
    assert spec.per_category[products[0]].threshold == 3.0
    assert spec.per_category[products[1]] == Repository(repo).base.per_category[products[1]]
    assert f"{products[1]}: no good part is labelled; its threshold stays" in done.output
    assert "a polling server serves it" in done.output


@pytest.mark.parametrize(
    ("mode", "args", "how"),
    [
        ("explicit", ("--model-control-mode=explicit", "--load-model=*"), "model-control API"),
        ("none", (), None),
    ],
)
def test_a_server_takes_a_version_up_by_load_request_or_says_it_cannot(
    ensemble_repo: Path, tmp_path: Path, mode: str, args: tuple[str, ...], how: str | None
) -> None:
    """`--server`: an explicit-mode Triton loads the new version when asked; one in mode none
    never takes it, and the wait ends saying what the server must do."""
    repo = Repository(shutil.copytree(ensemble_repo, tmp_path / "repo"))
    product = sorted(repo.base.per_category)[0]
    config = ServerConfig(repo.root, poll_secs=0, extra_args=args)
    with TritonServer(config) as server:
        record = repo.apply({product: repo.base.per_category[product].threshold + 1}, "ann")
        if how is None:
            with pytest.raises(ServerError, match="must poll its repository"):
                take_up(server.grpc_url, repo.model, record.version, timeout_s=3)
            return
        assert how in take_up(server.grpc_url, repo.model, record.version, timeout_s=60)
        rows = _score(server.grpc_url, _images(tmp_path), tmp_path / "scores.jsonl")
        assert {r["calibration"] for r in rows.values()} == {f"{repo.build_id}/2"}


def _images(tmp_path: Path) -> Path:
    """A few images in the layout _score globs (*/test/*/*)."""
    folder = tmp_path / "images" / "carpet" / "test" / "good"
    folder.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    return tmp_path / "images"
