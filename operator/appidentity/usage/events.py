"""Reading audit Events (`audit.k8s.io/v1`) in bounded memory: JSON lines as the API server's
log backend writes them, or a v1 EventList (one document, as `kubectl get --raw` or an export
might give), plain or gzipped, from files or stdin.

Only one ServiceAccount's Events are decoded. Every other line is skipped after a substring
test on its bytes, so the reader's speed is that of reading the file; the window the log
covers is taken from each block's stage timestamps with one regular-expression pass."""

from __future__ import annotations

import codecs
import gzip
import io
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, cast

from .. import SELF_CHECK_USER_AGENT
from ..rbac import Request

BLOCK = 1 << 22  # 4 MiB read at a time: memory stays at a few blocks whatever the log's size
STAMP = re.compile(rb'"stageTimestamp":"([^"]+)"')
ITEMS = re.compile(rb'"items"\s*:\s*\[')
# Events that a request can produce more than once (ResponseStarted, then ResponseComplete, for
# watches and streams): the ids of the started ones are kept to count each request once.
MAX_STARTED = 65_536


@dataclass(frozen=True)
class Seen:
    """One request of the ServiceAccount, as the audit log recorded it."""

    request: Request
    code: int
    at: str  # RFC 3339, as written by the API server (requestReceivedTimestamp)
    self_check: bool


@dataclass
class Tally:
    """What the reader saw besides the ServiceAccount's requests."""

    events: int = 0
    first: str = ""
    last: str = ""
    size: int = 0
    unreadable: int = 0
    sources: list[str] = field(default_factory=list)

    def stamp(self, stamps: list[bytes]) -> None:
        if not stamps:
            return
        low, high = min(stamps).decode(), max(stamps).decode()
        self.first = low if not self.first or low < self.first else self.first
        self.last = high if high > self.last else self.last


def open_source(path: str) -> IO[bytes]:
    """A file, or stdin for `-`."""
    return sys.stdin.buffer if path == "-" else open(path, "rb")


def decompressed(raw: IO[bytes]) -> IO[bytes]:
    """The stream, gunzipped when it starts with gzip's magic bytes."""
    peekable: Any = raw if hasattr(raw, "peek") else io.BufferedReader(cast(Any, raw))
    if peekable.peek(2)[:2] == b"\x1f\x8b":
        return cast(IO[bytes], gzip.GzipFile(fileobj=peekable))
    return cast(IO[bytes], peekable)


def blocks(stream: IO[bytes], tally: Tally) -> Iterator[bytes]:
    while block := stream.read(BLOCK):
        tally.size += len(block)
        yield block


def _lines_with(chunks: Iterator[bytes], needle: bytes, tally: Tally) -> Iterator[dict[str, Any]]:
    """JSON lines: each block is counted and time-stamped whole; only the lines holding the
    needle are cut out and decoded."""
    rest = b""
    for chunk in chunks:
        data = rest + chunk
        cut = data.rfind(b"\n") + 1
        body, rest = data[:cut], data[cut:]
        yield from _block_lines(body, needle, tally)
    if rest.strip():
        yield from _block_lines(rest + b"\n", needle, tally)


def _block_lines(body: bytes, needle: bytes, tally: Tally) -> Iterator[dict[str, Any]]:
    tally.events += body.count(b"\n")
    tally.stamp(STAMP.findall(body))
    pos = body.find(needle)
    while pos >= 0:
        start = body.rfind(b"\n", 0, pos) + 1
        end = body.find(b"\n", pos)
        try:
            event = json.loads(body[start:end])
        except ValueError:  # a line cut short (a live log's last, a truncated copy)
            tally.unreadable += 1
            event = None
        if isinstance(event, dict):
            yield event
        pos = body.find(needle, end)


def _event_list(chunks: Iterator[bytes], tally: Tally) -> Iterator[dict[str, Any]]:
    """An EventList's items, decoded one at a time (never the whole document at once)."""
    buffer = b""
    while not (start := ITEMS.search(buffer)):
        more = next(chunks, b"")
        if not more:
            raise ValueError(f"not audit Events (no JSON lines, no EventList): {buffer[:60]!r}")
        buffer += more
    utf8 = codecs.getincrementaldecoder("utf-8")()
    text, pos, decoder = utf8.decode(buffer[start.end() :]), 0, json.JSONDecoder()
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if text.startswith("]", pos):
            return
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            more = next(chunks, b"")
            if not more:
                raise ValueError("audit EventList: truncated") from None
            text, pos = text[pos:] + utf8.decode(more), 0
            continue
        tally.events += 1
        stamp = str(item.get("stageTimestamp", "")).encode()
        tally.stamp([stamp] if stamp else [])
        yield item


def events_of(stream: IO[bytes], username: str, tally: Tally) -> Iterator[dict[str, Any]]:
    """The Events of one user (or made while impersonating them), whichever shape the stream
    holds; a few other Events may slip through (the name quoted in a message): check the user."""
    chunks = blocks(decompressed(stream), tally)
    first = next(chunks, b"")
    line = first[: first.find(b"\n")] if b"\n" in first else first
    rejoined = _prepend(first, chunks)
    # An Event per line ends its first line with `}`; an EventList has `"items": [` on its
    # first line (one-line form) or no `}` there at all (pretty-printed).
    if not ITEMS.search(line) and (line.rstrip().endswith(b"}") or not first.strip()):
        yield from _lines_with(rejoined, json.dumps(username).encode(), tally)
    else:
        yield from _event_list(rejoined, tally)


def _prepend(first: bytes, chunks: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from chunks


def _user(event: dict[str, Any]) -> str:
    impersonated = event.get("impersonatedUser") or {}
    return str(impersonated.get("username") or (event.get("user") or {}).get("username", ""))


def request_of(event: dict[str, Any]) -> Request:
    """The authorization question the request asked, in RBAC's terms."""
    ref = event.get("objectRef")
    verb = str(event.get("verb", ""))
    if not ref:
        return Request(verb=verb, url=str(event.get("requestURI", "")).split("?", 1)[0])
    return Request(
        verb=verb,
        group=str(ref.get("apiGroup", "")),
        resource=str(ref.get("resource", "")),
        subresource=str(ref.get("subresource", "")),
        namespace=str(ref.get("namespace", "")),
        name=str(ref.get("name", "")),
    )


def seen(events: Iterable[dict[str, Any]], username: str) -> Iterator[Seen]:
    """Each request of the user once: a request audited when its response started and again
    when it completed (watches, logs, exec) counts at its start."""
    started: dict[str, None] = {}
    for event in events:
        if _user(event) != username:
            continue
        stage, audit_id = event.get("stage"), str(event.get("auditID", ""))
        if stage == "ResponseStarted":
            started[audit_id] = None
            if len(started) > MAX_STARTED:
                del started[next(iter(started))]
        elif stage in ("ResponseComplete", "Panic"):
            if started.pop(audit_id, 0) is None:
                continue
        else:
            continue
        yield Seen(
            request=request_of(event),
            code=int((event.get("responseStatus") or {}).get("code", 0)),
            at=str(event.get("requestReceivedTimestamp", "")),
            self_check=str(event.get("userAgent", "")).startswith(SELF_CHECK_USER_AGENT),
        )
