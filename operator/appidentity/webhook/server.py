"""`appidentity-operator webhook`: the requester webhook over HTTPS (aiohttp), a plain health
port, and the certificate loop. The TLS context is reloaded in place when the certificates
change, so a rotation never restarts the server; `reuse_port` lets several replicas share one
host port (the suite runs them so, as a Service spreads them in a cluster)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from ..kube import ApiError
from .certs import Material
from .stamp import review_response
from .tls_sync import TlsSync

log = logging.getLogger("appidentity.webhook")
PATH = "/mutate-requester"


@dataclass
class Webhook:
    sync: TlsSync
    bind: str
    port: int
    health_port: int
    sync_seconds: float
    context: ssl.SSLContext = field(default_factory=lambda: ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    serving: Material | None = None

    def _load(self, material: Material) -> None:
        if material == self.serving:
            return
        # The ssl module reads key pairs from files only: a private temporary file, gone at once.
        with tempfile.TemporaryDirectory() as scratch:
            cert, key = Path(scratch) / "tls.crt", Path(scratch) / "tls.key"
            cert.write_bytes(material.tls_crt)
            key.touch(mode=0o600)
            key.write_bytes(material.tls_key)
            self.context.load_cert_chain(cert, key)
        self.serving = material
        log.info("serving a new certificate")

    async def _keep_certificates(self) -> None:
        while True:
            # Any failure is logged and tried again: a dead loop would leave the certificate
            # unrenewed while /readyz still said ready.
            try:
                self._load(await asyncio.to_thread(self.sync.sync))
            except ApiError as exc:
                log.warning("certificates not synced: %s", exc)
            except Exception:
                log.exception("certificates not synced")
            await asyncio.sleep(self.sync_seconds)

    async def mutate(self, request: web.Request) -> web.Response:
        review = await request.json()
        answer = review_response(review)
        req = review.get("request") or {}
        log.info(
            "%s %s/%s by %s: %s",
            req.get("operation"),
            req.get("namespace"),
            req.get("name"),
            (req.get("userInfo") or {}).get("username"),
            "stamped" if "patch" in answer["response"] else "unchanged",
        )
        return web.json_response(answer, dumps=json.dumps)

    async def healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(self, _: web.Request) -> web.Response:
        ready = self.serving is not None
        return web.Response(
            text="ok" if ready else "no certificate yet", status=200 if ready else 503
        )

    async def serve(self) -> None:
        health = web.Application()
        health.router.add_get("/healthz", self.healthz)
        health.router.add_get("/readyz", self.readyz)
        health_runner = web.AppRunner(health)
        await health_runner.setup()
        await web.TCPSite(health_runner, self.bind, self.health_port).start()

        keeper = asyncio.create_task(self._keep_certificates())
        while self.serving is None:
            await asyncio.sleep(0.2)
        app = web.Application()
        app.router.add_post(PATH, self.mutate)
        runner = web.AppRunner(app, shutdown_timeout=10)
        await runner.setup()
        site = web.TCPSite(runner, self.bind, self.port, ssl_context=self.context, reuse_port=True)
        await site.start()
        log.info("requester webhook on https://%s:%d%s", self.bind, self.port, PATH)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping: no new connections, finishing requests in flight")
        keeper.cancel()
        await runner.cleanup()
        await health_runner.cleanup()
