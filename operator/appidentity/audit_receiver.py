"""The live receiver: the API server's audit webhook backend POSTs each batch of audit Events
(an `audit.k8s.io/v1` EventList) here, over HTTPS, authenticated by its client certificate
(verified against the CA given; any other client fails the TLS handshake). Each batch feeds
`usage.live.LiveUsage`; GET /usage shows what it holds, to the same clients.

It runs on kopf's event loop (started by a startup handler in `handlers`): a batch is parsed
and counted in the loop, which costs microseconds per Event of a tracked identity and a
dictionary lookup for any other."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from .usage.live import LiveUsage

log = logging.getLogger("appidentity.audit")
PATH = "/audit"
# A batch of the API server's default size (--audit-webhook-batch-max-size 400) at Metadata
# level is well under this; RequestResponse-level batches can be larger.
MAX_BODY = 64 << 20
# How often identities whose usage changed are woken, so their status says so; a turn writes
# usage at most once a minute per identity (usage.live.PUBLISH_SECONDS) whatever this is.
WAKE_SECONDS = 5.0


@dataclass(frozen=True)
class ReceiverConfig:
    port: int
    cert: Path
    key: Path
    client_ca: Path
    bind: str = "0.0.0.0"


def tls_context(config: ReceiverConfig) -> ssl.SSLContext:
    """Serving with the given key pair; a client certificate signed by the CA is required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.cert, config.key)
    context.load_verify_locations(cafile=str(config.client_ca))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass
class Receiver:
    config: ReceiverConfig
    live: LiveUsage
    wake: Callable[[str], None]
    runner: web.AppRunner | None = None
    waker: asyncio.Task[None] | None = None

    async def events(self, request: web.Request) -> web.Response:
        raw = await request.read()
        # Parsing and counting a batch is CPU work: off kopf's loop, whose watches must not wait.
        try:
            body = await asyncio.to_thread(json.loads, raw)
        except ValueError:
            return web.Response(status=400, text="not JSON")
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, list) or body.get("kind") != "EventList":
            return web.Response(status=400, text="not an audit.k8s.io EventList")
        events = [i for i in items if isinstance(i, dict)]
        counted = await asyncio.to_thread(self.live.ingest, events)
        log.debug("audit batch: %d Events, %d of tracked identities", len(items), counted)
        return web.Response(text="ok")

    async def usage(self, _: web.Request) -> web.Response:
        return web.json_response(self.live.snapshot(), dumps=json.dumps)

    async def _wake_changed(self) -> None:
        while True:
            await asyncio.sleep(WAKE_SECONDS)
            for key in self.live.due(time.monotonic()):
                self.wake(key)

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post(PATH, self.events)
        app.router.add_get("/usage", self.usage)
        self.runner = web.AppRunner(app, shutdown_timeout=5)
        await self.runner.setup()
        site = web.TCPSite(
            self.runner, self.config.bind, self.config.port, ssl_context=tls_context(self.config)
        )
        await site.start()
        self.waker = asyncio.create_task(self._wake_changed(), name="appidentity-usage-waker")
        log.info(
            "audit webhook receiver on https://%s:%d%s", self.config.bind, self.config.port, PATH
        )

    async def stop(self) -> None:
        if self.waker is not None:
            self.waker.cancel()
        if self.runner is not None:
            await self.runner.cleanup()
