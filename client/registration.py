"""The shared-memory regions one server reads requests from: registered once, registered again
only after the server forgot them (a restart), never while requests use them, and every call
with a deadline so a stalled server cannot hang the client."""

from __future__ import annotations

import asyncio
import contextlib

from dcam.client.shm import Region, is_stale


class ServerRegions:
    """Registration state of `regions` on one server (a tritonclient gRPC or HTTP aio client).

    `generation` counts registrations: a request that failed can tell whether the regions were
    registered again after it was sent, and simply try again.
    """

    def __init__(
        self,
        client,
        protocol: str,
        headers: dict[str, str] | None,
        timeout_s: float,
        regions: list[Region],
    ) -> None:
        self.client, self.protocol, self.headers = client, protocol, headers
        self.timeout_s, self.regions = timeout_s, regions
        self.registered: set[str] = set()  # names this server holds for this client
        self.stale = True  # register before the next request
        self.generation = 0
        self._lock = asyncio.Lock()  # concurrent requests register once

    async def _call(self, request):
        return await asyncio.wait_for(request, self.timeout_s)

    async def names(self) -> set[str]:
        """The names of every region the server has registered (any client's)."""
        status = await self._call(self.client.get_system_shared_memory_status(headers=self.headers))
        if self.protocol == "grpc":  # SystemSharedMemoryStatusResponse: regions keyed by name
            return set(status.regions)
        return {region["name"] for region in status}

    async def _unregister(self, name: str) -> None:
        await self._call(self.client.unregister_system_shared_memory(name, headers=self.headers))

    async def register(self) -> None:
        """Register the regions the server does not hold, after removing registrations of dcam
        clients that died. A failure part-way unregisters what this call registered."""
        known = await self.names()
        for name in sorted(n for n in known if is_stale(n)):
            await self._unregister(name)
        done: list[str] = []
        try:
            for region in self.regions:
                if region.name in known:
                    continue  # still held, maybe by a request in flight: leave it
                await self._call(
                    self.client.register_system_shared_memory(
                        region.name, region.key, region.size, headers=self.headers
                    )
                )
                done.append(region.name)
        except BaseException:
            with contextlib.suppress(Exception):
                for name in done:
                    await self._unregister(name)
            raise
        self.registered = {r.name for r in self.regions}
        self.stale = False
        self.generation += 1

    async def ensure(self) -> int:
        """Register if the server forgot the regions; the registration generation."""
        async with self._lock:
            if self.stale:
                await self.register()
        return self.generation

    async def forgot(self, region: Region, generation: int) -> bool:
        """After a request through `region` (sent at `generation`) failed without a retryable
        status: should it be sent again? Yes if the regions were registered again since, or if
        the server no longer lists the region (restarted between two requests: the next request
        registers them). No when the server cannot be asked: the request's own error stands."""
        if generation != self.generation:
            return True
        try:
            known = region.name in await self.names()
        except Exception:
            return False
        if generation != self.generation:  # registered again while we asked
            return True
        self.stale = self.stale or not known
        return not known

    async def unregister(self) -> None:
        """Best effort at exit: a server that is gone has forgotten them anyway."""
        with contextlib.suppress(Exception):
            for name in sorted(self.registered):
                await self._unregister(name)
        self.registered = set()
