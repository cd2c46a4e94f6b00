"""Label a station's queue from the folder truth of an MVTec-style test set, through its API.

`python -m dcam.review.truth http://127.0.0.1:8765` stands in for an operator on the demo's
run, whose images carry their truth in their folders (`<product>/test/good/` is good, any other
`test/<defect>/` is a defect): it labels what the station asks a person to judge, each product's
flagged parts and the passed parts nearest its threshold, one POST per label, as the page does.
A plant's own parts have no such folders: people label them.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.parse
import urllib.request
from pathlib import PurePath

import click


def folder_truth(path: str) -> str | None:
    """good or defect from `.../test/<kind>/<file>`; None where the path says nothing."""
    parts = PurePath(path).parts
    if len(parts) < 3 or parts[-3] != "test":
        return None
    return "good" if parts[-2] == "good" else "defect"


def _call(url: str, token: str | None, body: dict | None = None):
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode())
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _wait_until_up(base: str, timeout_s: float = 60.0) -> None:
    """A station started a moment ago (as `make review-demo` does) answers within seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise click.ClickException(f"no station answers at {base}: {exc}") from exc
            time.sleep(0.5)


@click.command()
@click.argument("station")
@click.option("--operator", default="folder-truth", show_default=True)
@click.option("--token", envvar="DCAM_REVIEW_TOKEN", default=None)
def main(station: str, operator: str, token: str | None) -> None:
    """Label STATION's queue (flagged and borderline parts of every product) from folder truth."""
    base = station.rstrip("/")
    _wait_until_up(base)
    products = _call(f"{base}/api/products", token)
    counts = {"good": 0, "defect": 0, "unknown": 0}
    for product in products:
        query = urllib.parse.urlencode({"product": product["key"]})
        for part in _call(f"{base}/api/parts?{query}", token):
            label = folder_truth(part["path"])
            if label is None:
                counts["unknown"] += 1
                continue
            body = {"id": part["id"], "label": label, "operator": operator}
            _call(f"{base}/api/label", token, body)
            counts[label] += 1
    click.echo(
        f"labelled {counts['defect']} defects and {counts['good']} good parts of "
        f"{len(products)} products; {counts['unknown']} paths carry no folder truth"
    )


if __name__ == "__main__":
    sys.exit(main())
