"""The review station's pages and API in-process (Starlette's TestClient, real SQLite, real files):
labelling, fits, the token, cross-site refusal, merging line PCs, and bad input. The browser,
the killed station and the served apply are tests/test_review_browser.py and
tests/test_review_served.py."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from dcam.client.results import escape_path
from dcam.core.errors import ConfigError
from dcam.review.app import OPERATOR_COOKIE, create_app, product_key
from dcam.review.cli import review_group
from dcam.review.config import ReviewConfig
from dcam.review.station import Station
from dcam.review.store import LabelStore
from tests.review_data import write_line

TOKEN = "a-token-of-twenty-chars"
LOCAL = "http://127.0.0.1"  # the station answers loopback names only, without a token


def _page(product: str | None) -> str:
    return f"/product/{product_key(product)}"


@pytest.fixture
def line(tmp_path: Path) -> dict:
    return write_line(tmp_path)


def _station(line: dict, **overrides) -> Station:
    config = ReviewConfig(results=(line["results"],), heatmaps=(line["heatmaps"],), **overrides)
    return Station(config)


def _client(station: Station, operator: str | None = "ann") -> TestClient:
    client = TestClient(create_app(station), base_url=LOCAL)
    if operator:
        client.cookies.set(OPERATOR_COOKIE, operator)
    return client


def test_overview_and_product_pages_show_counts_queue_and_histogram(line: dict) -> None:
    station = _station(line)
    client = _client(station)
    page = client.get("/").text
    flagged = sum(r["is_anomalous"] for r in line["rows"] if r["category"] == "bolt")
    assert f"<td>{flagged}</td>" in page
    page = client.get(_page("bolt")).text
    assert 'data-chart="histogram"' in page
    scores = [r["score"] for r in line["rows"] if r["category"] == "bolt" and r["is_anomalous"]]
    shown = [float(s) for s in _card_scores(page, "flagged")]
    assert shown == pytest.approx(sorted(scores, reverse=True), abs=0.006)
    passed = sorted(
        (r["score"] for r in line["rows"] if r["category"] == "bolt" and not r["is_anomalous"]),
        reverse=True,
    )
    assert [float(s) for s in _card_scores(page, "borderline")] == pytest.approx(
        passed[: station.config.borderline], abs=0.006
    )


def _card_scores(page: str, section: str) -> list[str]:
    block = page.split(f'id="{section}"', 1)[1].split("</div>\n", 1)[0]
    return [
        chunk.split("<span>", 1)[1].split("<", 1)[0].split(" ")[0]
        for chunk in block.split('class="card')[1:]
    ]


def test_labels_go_to_sqlite_at_once_and_the_next_unlabelled_part_follows(line: dict) -> None:
    station = _station(line)
    client = _client(station)
    queue = station.queue("bolt")
    first = client.post(f"/part/{queue[0].id}", data={"label": "defect"}, follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == f"/part/{queue[1].id}"
    other = LabelStore(station.config.labels_path)  # a second reader sees it already
    assert other.current()[queue[0].path].label == "defect"
    assert other.current()[queue[0].path].operator == "ann"
    client.post(f"/part/{queue[2].id}", data={"label": "good"})
    second = client.post(f"/part/{queue[1].id}", data={"label": "skip"}, follow_redirects=False)
    assert second.headers["location"] == f"/part/{queue[3].id}"  # 2 is labelled: skipped over
    assert client.get(f"/part/{queue[0].id}").text.count('id="current-label">defect') == 1


def test_labelling_needs_an_operator_name(line: dict) -> None:
    station = _station(line)
    client = _client(station, operator=None)
    part = station.queue("gear")[0]
    answer = client.post(f"/part/{part.id}", data={"label": "good"}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/operator")
    assert station.store.current() == {}
    saved = client.post(
        "/operator", data={"operator": "bo", "next": f"/part/{part.id}"}, follow_redirects=False
    )
    assert saved.cookies.get(OPERATOR_COOKIE) == "bo"


def test_two_operators_at_once_keep_every_label(line: dict) -> None:
    station = _station(line)
    ann, bo = _client(station, "ann"), _client(station, "bo")
    queue = station.queue("gear")
    for i, part in enumerate(queue):
        (ann if i % 2 else bo).post(f"/part/{part.id}", data={"label": "good"})
    ann.post(f"/part/{queue[0].id}", data={"label": "defect"})  # a second opinion supersedes
    history = station.store.history()
    assert len(history) == len(queue) + 1
    assert {h.operator for h in history} == {"ann", "bo"}
    assert station.store.current()[queue[0].path].label == "defect"
    rows = list(csv.DictReader(io.StringIO(ann.get("/labels.csv").text)))
    assert len(rows) == len(queue)


def test_fit_reports_threshold_counts_and_bound(line: dict) -> None:
    station = _station(line)
    client = _client(station)
    truth = line["truth"]
    for part in station.run.of_product("bolt"):
        client.post(f"/part/{part.id}", data={"label": truth[part.path]})
    page = client.get(_page("bolt") + "?target=false_call_rate&rate=0.1").text
    fitted = station.fit("bolt", "false_call_rate", 0.1)
    assert f"{fitted.threshold:.3f}" in page and 'data-chart="roc"' in page
    assert fitted.false_calls <= 0.1 * fitted.goods
    assert "too few" in page  # 16 goods cannot back 10% at 95%
    assert "rate must be" in client.get(_page("bolt") + "?rate=2").text


def test_the_token_guards_every_page_and_the_api(line: dict) -> None:
    station = _station(line, host="0.0.0.0", token=TOKEN)
    client = TestClient(create_app(station), base_url="http://line-pc.example")  # any name
    assert client.get("/").status_code == 401
    assert client.get("/api/parts").status_code == 401
    assert client.get("/?token=wrong-token-of-twenty").status_code == 401
    assert client.get("/healthz").status_code == 200
    entered = client.get(f"/?token={TOKEN}", follow_redirects=False)
    assert entered.status_code == 303 and "token" not in entered.headers["location"]
    assert client.get("/").status_code == 200  # the cookie now
    bearer = TestClient(create_app(station), base_url="http://line-pc.example")
    assert bearer.get("/api/parts", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_other_interfaces_need_a_token(line: dict) -> None:
    with pytest.raises(ConfigError, match="token"):
        _station(line, host="0.0.0.0")
    result = CliRunner().invoke(
        review_group, [str(line["results"]), "--host", "0.0.0.0"], env={"DCAM_REVIEW_TOKEN": ""}
    )
    assert result.exit_code == 1 and "give a token" in result.output
    with pytest.raises(ConfigError, match="16 characters"):
        _station(line, host="0.0.0.0", token="short")


def test_a_post_from_another_site_is_refused(line: dict) -> None:
    station = _station(line)
    client = _client(station)
    part = station.queue("bolt")[0]
    for headers in ({"sec-fetch-site": "cross-site"}, {"origin": "http://evil.example"}):
        answer = client.post(f"/part/{part.id}", data={"label": "good"}, headers=headers)
        assert answer.status_code == 403
    assert station.store.current() == {}


def test_the_api_labels_for_scripts(line: dict) -> None:
    station = _station(line)
    client = TestClient(create_app(station), base_url=LOCAL)
    parts = client.get("/api/parts", params={"product": product_key("gear")}).json()
    assert [p["score"] for p in parts if p["flagged"]] == sorted(
        (p["score"] for p in parts if p["flagged"]), reverse=True
    )
    answer = client.post(
        "/api/label", json={"path": parts[0]["path"], "label": "defect", "operator": "script"}
    )
    assert answer.json()["label"] == "defect"
    assert (
        client.post(
            "/api/label", json={"path": "/nope", "label": "good", "operator": "x"}
        ).status_code
        == 404
    )
    assert (
        client.post(
            "/api/label", json={"id": parts[0]["id"], "label": "maybe", "operator": "x"}
        ).status_code
        == 400
    )


def test_line_pcs_merge_by_path_later_rows_winning(line: dict, tmp_path: Path) -> None:
    rows = line["rows"]
    second = tmp_path / "pc2.jsonl"
    changed = {**rows[0], "score": 9.5, "is_anomalous": True}
    extra = {**rows[1], "path": str(tmp_path / "elsewhere" / "x.png")}  # not on this machine
    second.write_text(json.dumps(changed) + "\n" + json.dumps(extra) + "\n")
    station = Station(ReviewConfig(results=(line["results"], second), heatmaps=(line["heatmaps"],)))
    assert len(station.run.parts) == len(rows) + 1
    assert station.run.superseded_rows == 1
    assert next(p for p in station.run.parts if p.path == rows[0]["path"]).score == 9.5
    page = _client(station).get("/").text
    assert "1 images are not on this machine" in page
    assert "1 parts have no heatmap" in page


def test_missing_heatmaps_and_images_are_said_not_fatal(line: dict) -> None:
    shutil.rmtree(line["heatmaps"] / "gear")
    (Path(line["rows"][0]["path"])).unlink()
    station = _station(line)
    client = _client(station)
    page = client.get("/").text
    assert "16 parts have no heatmap" not in page and "parts have no heatmap" in page
    gear = station.queue("gear")[0]
    assert "no heatmap for this part" in client.get(f"/part/{gear.id}").text
    assert client.get(f"/heatmap/{gear.id}").status_code == 404
    missing = station.parts[next(iter(station.parts))]
    assert client.get(f"/image/{missing.id}").status_code == 404


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "no result rows"),
        ('{"file": "x"}\n', "not a dcam-client output"),
        ('{"path": "a.png", "score": null, "error": "cannot decode"}\n', "every row failed"),
    ],
)
def test_results_that_cannot_be_reviewed_are_refused(
    tmp_path: Path, content: str, message: str
) -> None:
    results = tmp_path / "bad.jsonl"
    results.write_text(content)
    with pytest.raises(ConfigError, match=message):
        Station(ReviewConfig(results=(results,)))


def test_a_missing_heatmap_folder_or_results_file_is_named(line: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such folder"):
        Station(ReviewConfig(results=(line["results"],), heatmaps=(tmp_path / "none",)))
    result = CliRunner().invoke(review_group, ["open", str(tmp_path / "none.jsonl")])
    assert result.exit_code == 1 and "no such results file" in result.output


def test_export_writes_the_labels_as_csv(line: dict, tmp_path: Path) -> None:
    station = _station(line)
    part = station.queue("bolt")[0]
    station.store.add(part.path, "defect", "ann", "bolt")
    out = tmp_path / "labels.csv"
    result = CliRunner().invoke(review_group, ["export", str(line["results"]), "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert rows == [
        {
            "path": part.path,
            "product": "bolt",
            "label": "defect",
            "operator": "ann",
            "labelled_at": rows[0]["labelled_at"],
        }
    ]


def test_parts_scored_meanwhile_show_on_the_next_page(line: dict) -> None:
    """A line PC still scoring into the results file: the station reads it again."""
    station = _station(line)
    client = _client(station)
    before = len(client.get("/api/parts").json())
    extra = {
        **line["rows"][0],
        "path": line["rows"][0]["path"].replace("000", "new"),
        "score": 7.5,
        "is_anomalous": True,
    }
    with line["results"].open("a") as fh:
        fh.write(json.dumps(extra) + "\n")
    parts = client.get("/api/parts").json()
    assert len(parts) == before + 1 and extra["path"] in {p["path"] for p in parts}
    assert "7.50" in client.get(_page("bolt")).text


def test_without_a_token_only_loopback_names_are_answered(line: dict) -> None:
    """DNS rebinding: a page's own name resolved to 127.0.0.1 must not reach the station."""
    station = _station(line)
    rebound = TestClient(create_app(station), base_url="http://attacker.example:8765")
    assert rebound.get("/api/parts").status_code == 403
    assert rebound.post("/api/label", json={"path": "x", "label": "good"}).status_code == 403
    for name in ("http://localhost:8765", "http://[::1]:8765", LOCAL):
        assert TestClient(create_app(station), base_url=name).get("/").status_code == 200


def test_any_product_name_has_a_page(tmp_path: Path) -> None:
    rows = [
        {
            "path": str(tmp_path / f"{i}.png"),
            "category": "screw/10%41 <b>",
            "score": i,
            "is_anomalous": i > 2,
        }
        for i in range(5)
    ]
    results = tmp_path / "scores.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    station = Station(ReviewConfig(results=(results,)))
    client = _client(station)
    page = client.get(_page("screw/10%41 <b>"))
    assert page.status_code == 200 and "screw/10%41 &lt;b&gt;" in page.text
    assert client.get("/product/nothing").status_code == 404


def test_rows_that_cannot_be_judged_or_would_share_a_heatmap(line: dict, tmp_path: Path) -> None:
    rows = line["rows"]
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({**rows[0], "score": float("nan")}) + "\n")
    station = Station(ReviewConfig(results=(line["results"], broken)))
    assert station.run.failed_rows == 1  # the NaN row; the earlier row of that path stays
    flat = tmp_path / "flat"  # heatmaps written flat: 000.png would fit a bolt and a gear
    flat.mkdir()
    shutil.copy(line["heatmaps"] / "bolt" / "test" / "good" / "000.png", flat / "000.png")
    station = Station(ReviewConfig(results=(line["results"],), heatmaps=(flat,)))
    assert all(p.heatmap is None for p in station.run.parts)


def test_unreadable_file_names_label_and_export(line: dict, tmp_path: Path) -> None:
    """A name that is not UTF-8 (an old camera share) is keyed by its escaped text."""
    raw = os.fsdecode(b"/line/caf\xe9.png")
    row = {**line["rows"][0], "path": escape_path(raw)[0], "path_escaped": True}
    results = tmp_path / "latin1.jsonl"
    results.write_text(json.dumps(row) + "\n")
    station = Station(ReviewConfig(results=(results,)))
    client = _client(station)
    part = station.run.parts[0]
    assert part.path == "/line/caf\\xe9.png"
    assert client.post(f"/part/{part.id}", data={"label": "good"}).status_code == 200
    assert client.get("/api/parts").json()[0]["label"] == "good"
    assert "caf\\xe9" in client.get("/labels.csv").text


def test_bad_api_bodies_are_answered_400(line: dict) -> None:
    client = _client(_station(line))
    assert client.post("/api/label", content=b"not json").status_code == 400
    assert client.post("/api/label", json=[1, 2]).status_code == 400
