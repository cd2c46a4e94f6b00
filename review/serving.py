"""Have a running Triton take up a calibration version just written, and say when it has.

Triton serves a new version folder in either model-control mode that can change at run time
(Triton's model_management.md): in `explicit` mode a `load` request of the model re-reads its
folder; in `poll` mode (`dcam-serve`'s default, `--poll-secs`) the next scan finds it and a
`load` request is refused ("explicit model load / unload is not allowed if polling is enabled").
So the station asks for a load, takes either answer, and waits until that version is ready. A
server in mode `none` never takes it up: the wait ends with an error that says so.
"""

from __future__ import annotations

import time

from dcam.client.transport import api_key_headers
from dcam.core.errors import ServerError


def take_up(
    url: str, model: str, version: int, timeout_s: float = 60.0, api_key: str | None = None
) -> str:
    """Wait until the server at `url` (gRPC) serves `version` of `model`; returns how it came to
    (loaded on request, or found by its repository poll)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url)
    headers = api_key_headers(api_key, "grpc")
    try:
        try:
            client.load_model(model, headers=headers)
            how = "loaded through Triton's model-control API"
        except InferenceServerException as exc:
            how, refusal = "found by the server's repository poll", str(exc)
        else:
            refusal = ""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if client.is_model_ready(model, str(version)):
                    return how
            except InferenceServerException as exc:
                refusal = str(exc)
            time.sleep(0.5)
    finally:
        client.close()
    raise ServerError(
        f"version {version} of {model} is written but {url} did not serve it within "
        f"{timeout_s:.0f} s: the server must poll its repository (dcam-serve --poll-secs, "
        f"tritonserver --model-control-mode=poll) or allow loads (--model-control-mode=explicit)"
        + (f"; it said: {refusal}" if refusal else "")
    )
