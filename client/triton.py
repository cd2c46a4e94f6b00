"""Async connections to one or more Triton servers serving the `dcam` model.

Batches are spread round-robin across the servers that are up; a server that fails is taken out
for a back-off period and tried again later, so a line scales out by adding servers. Unavailable,
overloaded or slow servers raise RetryableError; the caller retries with back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from dataclasses import dataclass
from http import HTTPStatus

import aiohttp
import grpc
import numpy as np
from tritonclient.utils import InferenceServerException

from dcam.client.discovery import (
    Discovery,
    NameTarget,
    Resolver,
    is_name_target,
    resolve_addresses,
)
from dcam.client.registration import ServerRegions
from dcam.client.shm import Region, RegionPool
from dcam.client.transport import ClientTls, api_key_headers
from dcam.core.errors import ClientError, RetryableError
from dcam.core.names import CALIBRATION_VERSION, IMAGE, OUTPUTS
from dcam.core.network import address_url, is_loopback, url_host
from dcam.core.scoring import SCORING_PARAMETER, ScoringSpec
from dcam.core.served_calibration import BUILD_ID_PARAMETER

# What tritonclient reports as InferenceServerException.status() for a server that is down,
# restarting, overloaded (a full queue) or too slow: worth another try. Anything else (a bad
# request, an unknown model, a model that failed) is permanent.
RETRYABLE_STATUS = {
    *(
        str(code)  # gRPC: "StatusCode.UNAVAILABLE", as tritonclient formats it
        for code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.ABORTED,
        )
    ),
    *(
        str(int(code))  # HTTP: "503"
        for code in (
            HTTPStatus.TOO_MANY_REQUESTS,
            HTTPStatus.BAD_GATEWAY,
            HTTPStatus.SERVICE_UNAVAILABLE,
            HTTPStatus.GATEWAY_TIMEOUT,
        )
    ),
}


SHM_MODES = ("auto", "system", "none")  # client --shared-memory: see ServerPool.use_shared_memory


def _client_module(protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc.aio as module
    elif protocol == "http":
        import tritonclient.http.aio as module
    else:
        raise ClientError(f"unknown protocol {protocol!r}; choose grpc or http")
    return module


def is_retryable(exc: BaseException) -> bool:
    """Transport and availability failures are retried; a bad request is not.

    Decided on the status code tritonclient's exception carries, never on message text.
    """
    if isinstance(exc, (asyncio.TimeoutError, ConnectionError, OSError)):
        return True
    if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
        return True  # the HTTP client's own transport failures (server gone mid-response)
    return isinstance(exc, InferenceServerException) and exc.status() in RETRYABLE_STATUS


@dataclass
class ModelSpec:
    height: int
    width: int
    scoring: ScoringSpec | None = None  # the calibration per product, where the model publishes it
    build_id: str | None = None  # the repository's build, where the model publishes it
    # Whether the model answers CALIBRATION_VERSION: repositories built before it do not.
    calibration_version: bool = False

    def output_names(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """`names` plus the calibration version where the model answers it."""
        return (*names, CALIBRATION_VERSION) if self.calibration_version else names

    def calibration(self, version: int) -> str:
        """A result's calibration as `<build_id>/<version>` (the version alone without an id)."""
        return f"{self.build_id}/{version}" if self.build_id else str(version)


class Server:
    """One Triton endpoint with its async client and health state."""

    def __init__(
        self, url: str, protocol: str, tls: ClientTls | None = None, api_key: str | None = None
    ) -> None:
        self.url = url
        self.protocol = protocol
        self.module = _client_module(protocol)
        if tls is not None and protocol != "grpc":
            raise ClientError("Triton serves TLS on gRPC only: use --protocol grpc with TLS")
        kwargs = tls.grpc_kwargs() if tls is not None else {}
        self.client = self.module.InferenceServerClient(url, **kwargs)
        self.headers = api_key_headers(api_key, protocol)  # for the restricted shm API only
        self.down_until = 0.0
        self.failures = 0
        self.shm: ServerRegions | None = None  # where it reads images from (same host)
        self.discovered = False  # found behind a dns:/// name: dropped when the name drops it

    @property
    def up(self) -> bool:
        return time.monotonic() >= self.down_until

    def mark_down(self, backoff_s: float) -> None:
        """Out for backoff_s * 2^(failures - 1), at most 30 s. Requests in flight when it went
        down fail together (an overload rejects a burst): they count as one failure, or 16
        rejections would back off for 30 s instead of 0.5."""
        if not self.up:
            return
        self.failures += 1
        self.down_until = time.monotonic() + min(backoff_s * 2 ** (self.failures - 1), 30.0)

    def mark_up(self) -> None:
        self.failures = 0
        self.down_until = 0.0

    async def ready(self, model: str) -> bool:
        """Whether `model` is ready here. Not the server's own readiness: under strict readiness
        a server is not ready while any version of any model is not, e.g. a calibration version
        that failed to load (a polling server retries it at every scan), though `model` keeps
        serving the version before."""
        try:
            return bool(await self.client.is_model_ready(model))
        except Exception:
            return False

    async def published(self, model: str) -> tuple[ScoringSpec | None, str | None]:
        """The scoring record and the build id the served model publishes in its config
        parameters (None: not published, an older build)."""
        if self.protocol == "grpc":
            reply = await self.client.get_model_config(model, as_json=True)
            config = reply["config"]
        else:
            config = await self.client.get_model_config(model)
        params = config.get("parameters", {})
        value = params.get(SCORING_PARAMETER, {}).get("string_value")
        build_id = params.get(BUILD_ID_PARAMETER, {}).get("string_value")
        return (ScoringSpec.from_json(value) if value else None), (build_id or None)

    async def metadata(self, model: str) -> dict:
        if self.protocol == "grpc":
            return await self.client.get_model_metadata(model, as_json=True)
        return await self.client.get_model_metadata(model)

    async def infer(
        self,
        model: str,
        images: np.ndarray,
        parameters: dict,
        timeout_s: float,
        names: tuple[str, ...] = OUTPUTS,
        region: Region | None = None,
    ) -> dict[str, np.ndarray]:
        """One request; the images go through `region` where given (registered on this server)."""
        image = self.module.InferInput(IMAGE, list(images.shape), "UINT8")
        if region is not None:
            image.set_shared_memory(region.name, region.write(images))
        else:
            image.set_data_from_numpy(images)
        outputs = [self.module.InferRequestedOutput(name) for name in names]
        params = parameters or None
        request = self.client.infer(model, [image], outputs=outputs, parameters=params)
        result = await asyncio.wait_for(request, timeout_s)
        return {name: result.as_numpy(name) for name in names}

    async def close(self) -> None:
        # Closing the client of a dead server must not hide the real error.
        with contextlib.suppress(Exception):
            await self.client.close()


def parse_spec(metadata: dict, model: str) -> ModelSpec:
    """Check the model's inputs and outputs against what the client sends and reads."""
    inputs = {i["name"]: i for i in metadata.get("inputs", [])}
    outputs = {o["name"] for o in metadata.get("outputs", [])}
    image = inputs.get(IMAGE)
    if image is None or image.get("datatype") != "UINT8" or len(image.get("shape", [])) != 4:
        raise ClientError(
            f"model {model!r} does not take {IMAGE} as UINT8 [batch, H, W, 3]: "
            f"inputs {list(inputs.values())}"
        )
    _, height, width, channels = (int(d) for d in image["shape"])
    if channels != 3 or height <= 0 or width <= 0:
        raise ClientError(f"model {model!r} has {IMAGE} shape {image['shape']}; need [-1, H, W, 3]")
    missing = set(OUTPUTS) - outputs
    if missing:
        raise ClientError(f"model {model!r} lacks outputs {sorted(missing)}")
    return ModelSpec(height, width, calibration_version=CALIBRATION_VERSION in outputs)


class ServerPool:
    """Round-robin over healthy servers, with readiness wait, metadata check and retries."""

    def __init__(
        self,
        urls: list[str],
        protocol: str,
        model: str,
        timeout_s: float,
        retries: int,
        backoff_s: float = 0.5,
        tls: ClientTls | None = None,
        api_key: str | None = None,
        resolver: Resolver = resolve_addresses,
        resolve_every_s: float = 10.0,
    ) -> None:
        if not urls:
            raise ClientError("give at least one server URL")
        self._server_args = (protocol, tls, api_key)
        self.urls = list(urls)
        self.servers = [Server(u, protocol, tls, api_key) for u in urls if not is_name_target(u)]
        names = [NameTarget.parse(u) for u in urls if is_name_target(u)]
        self._found_behind: dict[str, str] = {}  # server URL -> the dns:/// name it came from
        self.discovery = Discovery(names, resolve_every_s, self._noting_names(resolver))
        self._retired: list[Server] = []  # dropped by their name: closed at the end
        self.model, self.timeout_s = model, timeout_s
        self.retries, self.backoff_s = retries, backoff_s
        self._next = 0
        self.regions: RegionPool | None = None
        self.shm_mode = "none"
        self.notes: list[str] = []  # for the user: which servers read shared memory, and why not

    async def use_shared_memory(self, mode: str, count: int, size: int) -> None:
        """Send images through `count` shared-memory regions of `size` bytes.

        mode "auto": to the servers on loopback addresses; one that refuses (a container without
        this host's /dev/shm) gets them over the wire, and `notes` says so. "system": to every
        server; a refusal is an error. "none": over the wire only.
        """
        if mode not in SHM_MODES:
            raise ClientError(f"shared memory mode {mode!r}: choose one of {', '.join(SHM_MODES)}")
        self.shm_mode = mode
        local = [s for s in self.servers if self._reads_shared_memory(s)]
        if not local and not self.discovery.targets:
            return
        try:
            self.regions = RegionPool(count, size)
        except ClientError as exc:
            if mode == "system":
                raise
            self.notes.append(f"shared memory unavailable, images over the wire: {exc}")
            return
        for server in local:
            self._attach(server)
            if not server.up:  # not ready yet: registered before its first request
                continue
            try:
                await server.shm.register()
            except Exception as exc:
                if mode == "system":
                    raise ClientError(f"{server.url} refused shared memory: {exc}") from exc
                self._to_the_wire(server, exc)
                continue
            self.notes.append(f"{server.url}: images through shared memory")

    def _noting_names(self, resolver: Resolver) -> Resolver:
        """`resolver`, noting the name behind each address it returns (see `_discovered`)."""

        def resolve(host: str, port: int) -> list[str]:
            addresses = resolver(host, port)
            self._found_behind.update({address_url(a, port): host for a in addresses})
            return addresses

        return resolve

    def _discovered(self, url: str) -> Server:
        """A server found behind a dns:/// name. With TLS its certificate is checked against
        that name (the one a Service's certificate carries), not the pod address dialled,
        unless a server name was given."""
        protocol, tls, api_key = self._server_args
        if tls is not None and tls.server_name is None and url in self._found_behind:
            tls = dataclasses.replace(tls, server_name=self._found_behind[url])
        server = Server(url, protocol, tls, api_key)
        server.discovered = True
        return server

    def _reads_shared_memory(self, server: Server) -> bool:
        mode = self.shm_mode
        return mode == "system" or (mode == "auto" and is_loopback(url_host(server.url)))

    def _attach(self, server: Server) -> None:
        """Give `server` the regions (registered before its first request through them)."""
        server.shm = ServerRegions(
            server.client, server.protocol, server.headers, self.timeout_s, self.regions.regions
        )

    async def refresh(self, force: bool = False) -> None:
        """Follow the replicas behind dns:/// names: add new addresses, drop vanished ones
        (requests in flight on them finish or fail over as usual)."""
        if not (self.discovery.due() or (force and self.discovery.targets)):
            return
        urls = await self.discovery.resolve()
        known = {s.url for s in self.servers}
        for url in sorted(urls - known):
            server = self._discovered(url)
            if self.regions is not None and self._reads_shared_memory(server):
                self._attach(server)
            self.servers.append(server)
        for server in [s for s in self.servers if s.discovered and s.url not in urls]:
            self.servers.remove(server)
            self._retired.append(server)

    def _to_the_wire(self, server: Server, exc: BaseException) -> None:
        server.shm = None
        self.notes.append(f"{server.url}: shared memory refused, images over the wire: {exc}")

    async def wait_ready(self, timeout_s: float) -> ModelSpec:
        """Wait until at least one server has the model ready; check its metadata."""
        deadline = time.monotonic() + timeout_s
        while True:
            await self.refresh(force=True)
            states = await asyncio.gather(*(s.ready(self.model) for s in self.servers))
            ready = [s for s, ok in zip(self.servers, states, strict=True) if ok]
            for server in self.servers:
                if server not in ready:
                    server.mark_down(self.backoff_s)
            if ready:
                for server in ready:
                    server.mark_up()
                spec = parse_spec(await ready[0].metadata(self.model), self.model)
                spec.scoring, spec.build_id = await ready[0].published(self.model)
                return spec
            if time.monotonic() > deadline:
                urls = ", ".join(self.urls)
                if self.discovery.error:
                    urls += f" ({self.discovery.error})"
                raise ClientError(
                    f"no server with model {self.model!r} ready at {urls} after {timeout_s:.0f} s"
                )
            await asyncio.sleep(0.5)

    def _pick(self) -> Server | None:
        for _ in range(len(self.servers)):
            server = self.servers[self._next % len(self.servers)]
            self._next += 1
            if server.up:
                return server
        return None

    async def _next_up(self) -> Server:
        """The next healthy server, waiting out the shortest back-off when all are down."""
        await self.refresh()
        while (server := self._pick()) is None:
            await self.refresh()
            if not self.servers:  # a name that resolves to nothing yet
                await asyncio.sleep(self.backoff_s)
                continue
            wait = min(s.down_until for s in self.servers) - time.monotonic()
            # Jitter: the requests that waited do not all return in the same instant and
            # overload the server again (a thundering herd).
            await asyncio.sleep(max(wait, 0.05) + random.uniform(0, self.backoff_s))
        return server

    async def infer(
        self, images: np.ndarray, parameters: dict | None = None, names: tuple[str, ...] = OUTPUTS
    ) -> dict:
        """Send one batch, retrying on another (or the same, later) server when one fails.

        The one back-off is the failed server's: it is out for backoff_s * 2^(failures - 1)
        (at most 30 s) and the next attempt goes to a healthy server or waits for one.
        """
        last: BaseException | None = None
        async with self.regions.hold() if self.regions else contextlib.nullcontext() as region:
            for _ in range(self.retries + 1):
                server = await self._next_up()
                shm = server.shm if region is not None else None
                generation = shm.generation if shm else 0
                try:
                    if shm is not None:
                        generation, shm = await self._registered(server, shm)
                    outputs = await server.infer(
                        self.model, images, parameters or {}, self.timeout_s, names,
                        region if shm else None,
                    )  # fmt: skip
                except Exception as exc:
                    last = exc
                    if is_retryable(exc) or not await server.ready(self.model):
                        # A server whose model is no longer ready (stopping in a rolling
                        # update, unloading) answers NOT_FOUND: another replica can serve.
                        server.mark_down(self.backoff_s)
                    elif not (shm and await shm.forgot(region, generation)):
                        raise ClientError(f"{server.url}: {exc}") from exc
                    continue
                server.mark_up()
                return outputs
        raise RetryableError(
            f"gave up after {self.retries + 1} attempts: {type(last).__name__}: {last}"
        )

    async def _registered(
        self, server: Server, shm: ServerRegions
    ) -> tuple[int, ServerRegions | None]:
        """Registers the regions on `server` if it lacks them. In auto mode a server that refuses
        (one that was not up at start) gets the wire from then on, and `notes` says so."""
        try:
            return await shm.ensure(), shm
        except Exception as exc:
            if is_retryable(exc) or self.shm_mode == "system":
                raise
            self._to_the_wire(server, exc)
            return 0, None

    async def close(self) -> None:
        servers = self.servers + self._retired
        await asyncio.gather(*(s.shm.unregister() for s in servers if s.shm))
        await asyncio.gather(*(s.close() for s in servers))
        if self.regions is not None:
            self.regions.close()
