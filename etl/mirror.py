"""A loopback HTTP server that stands in for the SDSS archive.

It serves a local folder of spec-lite files laid out as the release lays them,
``<run2d>/<path>`` with ``<path>`` the manifest's ``[object] path`` (SDSS-I–IV:
``<run2d>/<plate:04d>/spec-….fits``; DR20: ``v6_2_1/015XXX/015023/59232/spec-….fits``), at
exactly the URL paths the release's templates produce (the path part of
``release.spec_lite_url(...)``), so ``specetl fetch --base-url <mirror.base_url>`` downloads from
it as it would from data.sdss.org. ``specetl demo`` serves the bundled sample with it; tests and
benchmarks use its two hooks:

- ``latency``: seconds slept before answering every request (a WAN round trip on loopback);
- ``faults``: a callable ``(url_path, attempt) -> Fault | None`` consulted on every request
  (``attempt`` counts from 1 per path), so a test can say "the first two requests for this file
  get a 503" without the server knowing anything about tests. :class:`FaultPlan` is the usual one.

The route table is built once from the folder, so a request can only ever reach a file that was
indexed: no path from the network is joined onto the file system.

A mirror can also be a folder with no server at all: :class:`etl.file_mirror.FileResponse`
answers a ``file://`` URL the way the downloader reads an HTTP response.
"""

from __future__ import annotations

import logging
import re
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from etl.release import Release

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fault:
    """One misbehaviour of the server for one request.

    ``kind``:
      - ``"status"``: answer ``status`` with ``headers`` and ``body`` instead of the file
        (503 + Retry-After, 404, or 200 with an HTML error page);
      - ``"reset"``: send the headers and ``at_bytes`` of the body, then reset the connection;
      - ``"short"``: announce the full Content-Length, send ``at_bytes`` bytes, close cleanly;
      - ``"delay"``: sleep ``seconds`` before answering (beyond the client's read timeout);
      - ``"substitute"``: serve the bytes of ``other`` (a url path) under this name.
    """

    kind: str
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    at_bytes: int = 0
    seconds: float = 0.0
    other: str = ""


FaultHook = Callable[[str, int], "Fault | None"]


class FaultPlan:
    """Faults per url path (or per file name), one per attempt; afterwards the file is served.

    ``FaultPlan({"spec-0266-51602-0001.fits": [Fault("status", 503, {"Retry-After": "1"})]})``
    fails the first request for that file and serves the second. ``always=True`` repeats the
    last fault forever (a permanently broken file).
    """

    def __init__(self, plan: Mapping[str, list[Fault]], always: bool = False):
        self.plan = dict(plan)
        self.always = always

    def __call__(self, path: str, attempt: int) -> Fault | None:
        faults = self.plan.get(path) or self.plan.get(path.rsplit("/", 1)[-1])
        if not faults:
            return None
        if attempt <= len(faults):
            return faults[attempt - 1]
        return faults[-1] if self.always else None


class ArchiveMirror:
    """Serve spectra (and any extra files) over HTTP/1.1 keep-alive on 127.0.0.1.

    ``root``: folder with ``<run2d>/<path>`` files (the release's layout); files whose run2d the
    release has no template for are skipped (logged). ``port=0`` picks a free port. Use as a context manager;
    ``base_url`` is what to pass as ``--base-url``.
    """

    def __init__(
        self,
        root: str | Path | None,
        release: Release,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        faults: FaultHook | None = None,
        prefix: str = "/sas",
    ):
        self.release = release
        self.latency = latency
        self.faults = faults
        self.prefix = prefix.rstrip("/")
        self.hits: Counter[str] = Counter()  #: requests per url path (all attempts)
        self.served: Counter[str] = Counter()  #: complete, unfaulted bodies per url path
        self._lock = threading.Lock()
        self.routes: dict[str, Path] = {}
        self._server = _Server((host, port), _make_handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None
        if root is not None:
            self.add_tree(root)

    @property
    def base_url(self) -> str:
        """Archive root to pass as ``base_url`` (replaces ``https://data.sdss.org/sas``)."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{self.prefix}"

    def url_path(self, run2d: str, *key: int) -> str:
        """The path part of the release's URL for the object with this key."""
        return urlsplit(self.release.spec_lite_url(run2d, *key, base_url=self.base_url)).path

    def add_tree(self, root: str | Path) -> int:
        """Index every ``<run2d>/…/spec-*.fits`` below ``root``; return how many.

        A file is served at the URL its release template gives its path below ``<run2d>/``
        (the template's ``{path}``), so the tree must be in the release's layout.
        """
        n = 0
        root = Path(root)
        for path in sorted(root.glob("*/**/spec-*.fits")):
            rel = path.relative_to(root)
            run2d = rel.parts[0]
            template = self.release.archive.spec_lite.get(run2d)
            if template is None:
                log.debug("mirror: skipping %s (run2d %s not in the manifest)", path, run2d)
                continue
            below = Path(*rel.parts[1:]).as_posix()
            url = template.format(sas=self.base_url, run2d=run2d, path=below)
            self.routes[urlsplit(url).path] = path
            n += 1
        return n

    def add_file(self, url_path: str, path: str | Path) -> str:
        """Serve ``path`` at ``url_path`` (below the prefix); return the full URL."""
        url_path = f"{self.prefix}/{url_path.lstrip('/')}"
        self.routes[url_path] = Path(path)
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{url_path}"

    def start(self) -> ArchiveMirror:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ArchiveMirror:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _attempt(self, path: str) -> int:
        with self._lock:
            self.hits[path] += 1
            return self.hits[path]


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        # a client that drops a keep-alive connection (an aborted download: a full disk, a
        # killed fetch) is normal for an archive: no traceback on stderr
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("mirror: %s dropped the connection", client_address)
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


def _make_handler(mirror: ArchiveMirror) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: one TCP connection serves many files

        def log_message(self, fmt: str, *args: object) -> None:
            log.debug("mirror: " + fmt, *args)

        def do_HEAD(self) -> None:
            self._guarded(head=True)

        def do_GET(self) -> None:
            self._guarded(head=False)

        def _guarded(self, head: bool) -> None:
            try:
                self._serve(head)
            except (BrokenPipeError, ConnectionResetError) as err:
                # the client gave up (its timeout, or a killed fetch): normal for an archive
                log.debug("mirror: client went away during %s (%s)", self.path, err)
                self.close_connection = True

        def _send(self, status: int, body: bytes, headers: Mapping[str, str] = {}) -> None:  # noqa: B006
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _serve(self, head: bool) -> None:
            path = urlsplit(self.path).path
            attempt = mirror._attempt(path)
            if mirror.latency:
                time.sleep(mirror.latency)
            fault = mirror.faults(path, attempt) if mirror.faults else None
            local = mirror.routes.get(path)
            if fault is not None and fault.kind == "delay":
                time.sleep(fault.seconds)
                fault = None
            if fault is not None and fault.kind == "status":
                self._send(fault.status, b"" if head else fault.body, fault.headers)
                return
            if fault is not None and fault.kind == "substitute":
                local = mirror.routes.get(fault.other)
            if local is None:
                self._send(404, b"" if head else b"not found\n", {"Content-Type": "text/plain"})
                return
            data = local.read_bytes()
            start, status, extra = 0, 200, {"Accept-Ranges": "bytes"}
            # "bytes=N-" (resuming) and "bytes=N-M" (DESI's per-HDU range reads), inclusive
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            end = len(data)
            if m and int(m.group(1)) < len(data):
                start, status = int(m.group(1)), 206
                if m.group(2):
                    end = min(len(data), int(m.group(2)) + 1)
                extra["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
            body = data[start:end]
            self.send_response(status)
            self.send_header("Content-Type", "application/fits")
            for k, v in extra.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if head:
                return
            if fault is not None and fault.kind in ("reset", "short"):
                self.wfile.write(body[: fault.at_bytes])
                self.wfile.flush()
                self.close_connection = True
                if fault.kind == "reset":
                    # SO_LINGER 0 turns close() into a TCP RST: a genuine "connection reset".
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                return
            self.wfile.write(body)
            with mirror._lock:
                mirror.served[path] += 1

    return Handler
