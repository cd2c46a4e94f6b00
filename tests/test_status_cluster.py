"""`dcam-client status` over a whole line: two real tritonservers on 127.0.0.1 and 127.0.0.2
share one metrics port, like the pods behind a headless Service, and each has scored its own
images. Read through a `dns:///` name (the test's resolver holds the two addresses, as the
cluster's DNS would), their pages merge into the sums of what was scored; read through a real
Prometheus (Debian's `prometheus`, on loopback) that scrapes both, the same figures come back,
summed by PromQL.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from dcam.client.cli import client_group
from dcam.client.status import (
    line_status,
    prometheus_queries,
    prometheus_status,
    query_prometheus,
    read_pages,
    scrape,
)
from dcam.core.errors import ClientError
from dcam.serve.server import ServerConfig, TritonServer, free_port

pytestmark = pytest.mark.triton
HOSTS = ("127.0.0.1", "127.0.0.2")
NAME = "line.test"


def _score(server: TritonServer, folder: Path, out: Path, *options: str) -> list[dict]:
    args = ["score", "--dir", str(folder), "--url", server.grpc_url, "--output", str(out)]
    result = CliRunner().invoke(client_group, [*args, *options])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.fixture(scope="module")
def line(ensemble_repo: Path, synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """Two pods of one line: the first scored both products' test images, the second nut's
    good ones again. Yields the metrics port and every row scored."""
    out, port = tmp_path_factory.mktemp("scored"), free_port()
    pods = [TritonServer(ServerConfig(ensemble_repo, host=h, metrics_port=port)) for h in HOSTS]
    try:
        for pod in pods:
            pod.start()
        rows = _score(
            pods[0], synthetic_root, out / "a.jsonl", "--recursive", "--glob", "*/test/*/*.png",
            "--category-from-path",
        )  # fmt: skip
        nut = synthetic_root / "nut" / "test" / "good"
        rows += _score(pods[1], nut, out / "b.jsonl", "--category", "nut")
        yield port, rows
    finally:
        for pod in pods:
            pod.stop()


def _resolver(host: str, port: int) -> list[str]:
    assert host == NAME
    return list(HOSTS)


def _scored(rows: list[dict]) -> dict[str, tuple[int, int]]:
    """Images and flagged per product, from the results the client wrote."""
    counts: dict[str, tuple[int, int]] = {}
    for row in rows:
        assert row["error"] is None, row
        images, flagged = counts.get(row["category"], (0, 0))
        counts[row["category"]] = (images + 1, flagged + bool(row["is_anomalous"]))
    return counts


def _counts(status: dict) -> dict[str, tuple[int, int]]:
    return {p: (r["images"], r["flagged"]) for p, r in status["products"].items()}


def test_pages_of_every_pod_merge_into_the_line(line) -> None:
    port, rows = line
    each = [line_status(scrape(f"http://{h}:{port}/metrics")) for h in HOSTS]
    assert {"carpet", "nut"} <= set(each[0]["products"]) and set(each[1]["products"]) == {"nut"}
    merged = line_status(*read_pages(f"dns:///{NAME}:{port}", resolver=_resolver))
    assert merged["pods"] == 2 and merged["via"] == "metrics"
    assert _counts(merged) == _scored(rows)  # either pod alone holds part of it
    assert _counts(each[0]) != _counts(merged) != _counts(each[1])
    nut, parts = merged["products"]["nut"], [s["products"]["nut"] for s in each]
    # The median of the summed histograms lies between the pods' own medians.
    low, high = sorted(p["median_score"] for p in parts)
    assert low <= nut["median_score"] <= high
    assert nut["drift_window"] == max(p["drift_window"] for p in parts)
    assert nut["drift_psi"] == max(p["drift_psi"] for p in parts)
    queues = sorted(s["queue_ms_per_request"] for s in each)
    assert queues[0] <= merged["queue_ms_per_request"] <= queues[1]


def test_status_command_reads_every_pod_behind_a_name(line, monkeypatch) -> None:
    port, rows = line
    monkeypatch.setattr("dcam.client.status.resolve_addresses", _resolver)  # the cluster's DNS
    url = f"dns:///{NAME}:{port}/metrics"
    result = CliRunner().invoke(client_group, ["status", "--metrics-url", url, "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["pods"] == 2 and _counts(status) == _scored(rows)
    text = CliRunner().invoke(client_group, ["status", "--metrics-url", url]).output
    assert text.splitlines()[-1] == "pods read: 2"


def test_a_pod_that_cannot_be_read_fails_the_status(line) -> None:
    """A line with a pod missing is not the line: the error names it and says how many read."""
    port, _ = line
    url = f"dns:///{NAME}:{port}"
    with pytest.raises(ClientError, match=r"read 2 of the 3 pods .*127\.0\.0\.3"):
        read_pages(url, resolver=lambda host, p: [*HOSTS, "127.0.0.3"])  # nothing listens there
    with pytest.raises(ClientError, match="no pod"):
        read_pages(url, resolver=lambda host, p: [])
    with pytest.raises(ClientError, match="dns:///host:port"):
        read_pages("dns:///no-port/metrics", resolver=_resolver)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.read()


@pytest.fixture(scope="module")
def prometheus(line, tmp_path_factory: pytest.TempPathFactory):
    """A real Prometheus scraping both pods every second, twice: as namespace `line` and, the
    same pods again, as namespace `other` (a second line in the same Prometheus)."""
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus (Debian package prometheus) is needed to read the line through it")
    port, _ = line
    root, web = tmp_path_factory.mktemp("prometheus"), free_port()
    targets = [f"{h}:{port}" for h in HOSTS]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": ns, "static_configs": [{"targets": targets, "labels": {"namespace": ns}}]}
            for ns in ("line", "other")
        ],
    }
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    command = [
        "prometheus", f"--config.file={root / 'prometheus.yml'}",
        f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address=127.0.0.1:{web}",
    ]  # fmt: skip
    with (root / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{web}"
    try:
        _wait_for_scrapes(url, len(targets) * 2, process, root / "prometheus.log")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _wait_for_scrapes(url: str, targets: int, process: subprocess.Popen, log: Path) -> None:
    """Until every target has been scraped with the dcam series on it (a few seconds)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            found = query_prometheus(
                url, "count by (job, instance) (dcam_images_total)", time.time()
            )
            if len(found) == targets:
                return
        except ClientError:
            pass  # not up yet
        time.sleep(0.5)
    raise AssertionError(f"Prometheus never scraped the pods:\n{log.read_text()[-3000:]}")


def test_prometheus_gives_the_same_figures_summed_over_pods(line, prometheus) -> None:
    port, rows = line
    pages = line_status(*read_pages(f"dns:///{NAME}:{port}", resolver=_resolver))
    status = prometheus_status(prometheus, "line")
    assert (status["pods"], status["via"], status["namespace"]) == (2, "prometheus", "line")
    assert _counts(status) == _scored(rows)
    for product, row in pages["products"].items():
        got = status["products"][product]
        assert got["median_score"] == pytest.approx(row["median_score"]), product
        for key in ("drift_psi", "drift_window", "drift_alarm", "normal_score_mean"):
            assert got[key] == pytest.approx(row[key]), (product, key)
    assert status["queue_ms_per_request"] == pytest.approx(pages["queue_ms_per_request"])


def test_prometheus_with_several_lines_asks_which(line, prometheus) -> None:
    with pytest.raises(ClientError, match=r"--namespace, one of \['line', 'other'\]"):
        prometheus_status(prometheus)
    with pytest.raises(ClientError, match="no dcam pod in namespace elsewhere"):
        prometheus_status(prometheus, "elsewhere")
    with pytest.raises(ClientError, match=r"refused 'sum\(': .*parse error"):
        query_prometheus(prometheus, "sum(", time.time())
    assert all('namespace="line"' in q for q in prometheus_queries("line").values())


def test_status_command_through_prometheus(line, prometheus) -> None:
    _, rows = line
    args = ["status", "--prometheus-url", prometheus, "--namespace", "line"]
    result = CliRunner().invoke(client_group, args)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "pods read: 2 (summed by Prometheus) in namespace line"
    nut = next(row for row in result.output.splitlines() if row.startswith("nut "))
    assert nut.split()[1] == str(_scored(rows)["nut"][0])
    both = CliRunner().invoke(client_group, [*args, "--metrics-url", "http://127.0.0.1:1/m"])
    assert both.exit_code == 2 and "not both" in both.output
