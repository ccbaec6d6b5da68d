"""`edgeseg demo --serve HOST:PORT`: watch the demo from a browser, for boards without a screen.

One page (overlay video, legend, live FPS and stage times, mode and alpha switches) and three endpoints:
/stream.mjpg (the rendered frames as MJPEG, which every browser plays in an <img>), /stats (JSON, polled by the
page) and /control (POST mode and alpha). Standard library only: http.server, one thread per viewer.

Viewers must not slow inference. The output thread only hands its rendered image over (`FrameBroadcaster.publish`
stores a reference, never blocks); one encoder thread turns the newest image into a JPEG once, however many
viewers there are, and only while someone watches. Each viewer's thread sends the newest JPEG when its socket
can take it, so a slow viewer skips frames instead of holding anyone up.

Binds 127.0.0.1 unless told otherwise: the stream shows what the camera sees, so exposing it on the network must
be a deliberate `--serve 0.0.0.0:8080`.
"""

from __future__ import annotations

import html
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Callable
from urllib.parse import parse_qs

import cv2
import numpy as np

from edgeseg.errors import UsageError

if TYPE_CHECKING:
    from edgeseg.demo.render import RenderStyle

DEFAULT_HOST = "127.0.0.1"
BOUNDARY = "edgesegframe"
_WAIT_S = 0.5  # how often waiting threads look at the closed flag


def parse_address(text: str) -> tuple[str, int]:
    """'HOST:PORT', ':PORT' or 'PORT' (host 127.0.0.1); port 0 picks a free one."""
    host, _, port = str(text).strip().rpartition(":")
    host = host.strip("[]") or DEFAULT_HOST
    if not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--serve {text!r}: give HOST:PORT, e.g. 127.0.0.1:8080 (or 0.0.0.0:8080 to let other "
                         "machines watch)")
    return host, int(port)


class FrameBroadcaster:
    """The newest rendered frame, JPEG-encoded once for all viewers by its own thread."""

    def __init__(self, quality: int = 80) -> None:
        self.quality = quality
        self._changed = threading.Condition()
        self._pending: np.ndarray | None = None  # newest image not yet encoded
        self._jpeg: bytes | None = None
        self.sequence = 0  # number of the newest JPEG
        self.encoded = 0  # JPEGs made (at most one per rendered frame)
        self.sent = 0  # JPEGs written to viewers, all viewers together
        self.viewers = 0
        self._closed = False
        self._thread = threading.Thread(target=self._encode_loop, name="edgeseg-demo-encode", daemon=True)
        self._thread.start()

    def publish(self, image: np.ndarray) -> None:
        """Called by the output thread for each rendered frame; keeps a reference (the demo draws a new image
        each frame) and returns at once. Nothing is encoded while nobody watches."""
        with self._changed:
            if self.viewers:
                self._pending = image
                self._changed.notify_all()

    def next_jpeg(self, after: int) -> tuple[int, bytes] | None:
        """Wait for a JPEG newer than number `after`; the newest one, or None once closed."""
        with self._changed:
            while not self._closed and (self._jpeg is None or self.sequence <= after):
                self._changed.wait(_WAIT_S)
            return None if self._closed else (self.sequence, self._jpeg)

    def count_sent(self) -> None:
        with self._changed:
            self.sent += 1

    def attach(self) -> None:
        with self._changed:
            self.viewers += 1

    def detach(self) -> None:
        with self._changed:
            self.viewers -= 1

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join(timeout=2.0)

    def _encode_loop(self) -> None:
        params = [cv2.IMWRITE_JPEG_QUALITY, self.quality]
        while True:
            with self._changed:
                while self._pending is None and not self._closed:
                    self._changed.wait(_WAIT_S)
                if self._closed:
                    return
                image, self._pending = self._pending, None
            ok, encoded = cv2.imencode(".jpg", image, params)  # outside the lock: publish() never waits on it
            if ok:
                with self._changed:
                    self._jpeg = encoded.tobytes()
                    self.sequence += 1
                    self.encoded += 1
                    self._changed.notify_all()


class LiveControls:
    """Mode and alpha as switched from the page; the output thread reads `style` for each frame."""

    def __init__(self, make_style: Callable[[str, float], RenderStyle], mode: str, alpha: float) -> None:
        self._make_style = make_style  # (mode, alpha) -> RenderStyle; raises UsageError for bad values
        self._lock = threading.Lock()
        self.mode, self.alpha = mode, alpha
        self.style = make_style(mode, alpha)

    def update(self, mode: str | None = None, alpha: float | None = None) -> dict:
        with self._lock:
            mode = self.mode if mode is None else mode
            alpha = self.alpha if alpha is None else alpha
            self.style = self._make_style(mode, alpha)  # validates before anything changes
            self.mode, self.alpha = mode, alpha
            return self.state()

    def state(self) -> dict:
        return {"mode": self.mode, "alpha": self.alpha}


class DemoServer:
    """The HTTP server, run in a background thread for as long as the demo runs."""

    def __init__(self, address: tuple[str, int], *, broadcaster: FrameBroadcaster, controls: LiveControls,
                 stats: Callable[[], dict], legend: list[tuple[str, tuple[int, int, int]]], modes: tuple[str, ...],
                 title: str = "edgeseg demo") -> None:
        self.broadcaster, self.controls, self.stats = broadcaster, controls, stats
        self.page = render_page(title, legend, modes, controls.state()).encode()
        handler = type("DemoHandler", (_Handler,), {"demo": self})
        try:
            self.httpd = ThreadingHTTPServer(address, handler)
        except OSError as exc:
            raise UsageError(f"--serve {address[0]}:{address[1]}: cannot listen there ({exc.strerror or exc})") from exc
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="edgeseg-demo-http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    def start(self) -> "DemoServer":
        self._thread.start()
        return self

    def close(self) -> None:
        self.broadcaster.close()  # ends the viewers' stream loops
        if self._thread.ident is not None:  # shutdown() waits for serve_forever, which must have started
            self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    demo: DemoServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name); quiet: the demo has its own log
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", self.demo.page)
        elif path == "/stats":
            self._send_json(200, {**self.demo.stats(), **self.demo.controls.state(),
                                  "viewers": self.demo.broadcaster.viewers,
                                  "jpegs_encoded": self.demo.broadcaster.encoded,
                                  "jpegs_sent": self.demo.broadcaster.sent})
        elif path == "/stream.mjpg":
            self._stream()
        else:
            self._send(404, "text/plain", b"not found\n")

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] != "/control":
            self._send(404, "text/plain", b"not found\n")
            return
        length = int(self.headers.get("Content-Length") or 0)
        fields = {key: values[-1] for key, values in parse_qs(self.rfile.read(length).decode()).items()}
        try:
            alpha = float(fields["alpha"]) if "alpha" in fields else None
            state = self.demo.controls.update(fields.get("mode"), alpha)
        except (UsageError, ValueError) as exc:
            self._send_json(400, {"error": str(exc)})
            return
        self._send_json(200, state)

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, data: dict) -> None:
        self._send(status, "application/json", json.dumps(data).encode())

    def _stream(self) -> None:
        broadcaster = self.demo.broadcaster
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        broadcaster.attach()
        try:
            sent = 0
            while True:
                newest = broadcaster.next_jpeg(sent)
                if newest is None:
                    return
                sent, jpeg = newest  # frames made while this viewer was still sending are skipped
                self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                                 .encode() + jpeg + b"\r\n")
                self.wfile.flush()
                broadcaster.count_sent()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            return  # the viewer went away
        finally:
            broadcaster.detach()


def render_page(title: str, legend: list[tuple[str, tuple[int, int, int]]], modes: tuple[str, ...],
                state: dict) -> str:
    """The viewer page. The legend is written in (the classes do not change during a run); the figures are
    fetched from /stats twice a second."""
    items = "\n".join(f'<li><span class="swatch" style="background:rgb({r},{g},{b})"></span>{html.escape(name)}</li>'
                      for name, (b, g, r) in legend)  # legend colours are BGR
    options = "".join(f'<option value="{mode}"{" selected" if mode == state["mode"] else ""}>{mode}</option>'
                      for mode in modes)
    return _PAGE.format(title=html.escape(title), legend=items, options=options, alpha=state["alpha"])


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: sans-serif; background: #111; color: #eee; margin: 1em; }}
main {{ display: flex; gap: 1em; flex-wrap: wrap; align-items: flex-start; }}
#video {{ max-width: 100%; background: #000; }}
#legend {{ list-style: none; padding: 0; margin: 0; }}
#legend li {{ margin: 2px 0; }}
.swatch {{ display: inline-block; width: 1em; height: 1em; margin-right: .4em; vertical-align: middle; }}
#stats {{ font-family: monospace; white-space: pre; }}
</style></head>
<body>
<h1>{title}</h1>
<main>
<img id="video" src="stream.mjpg" alt="segmented video">
<aside>
<form id="controls">
<label>mode <select id="mode" name="mode">{options}</select></label>
<label>alpha <input id="alpha" name="alpha" type="range" min="0" max="1" step="0.05" value="{alpha}"></label>
</form>
<div id="stats">waiting for the first frames...</div>
<h2>Legend</h2>
<ul id="legend">
{legend}
</ul>
</aside>
</main>
<script>
function show(value, digits) {{ return value === null || value === undefined ? "--" : value.toFixed(digits); }}
async function refresh() {{
  try {{
    const s = await (await fetch("stats", {{cache: "no-store"}})).json();
    const w = s.window, run = s.whole_run;
    const stages = w.stage_ms ? Object.entries(w.stage_ms).map(([k, v]) => k + " " + show(v, 1)).join("  ")
                              : "no frame yet";
    document.getElementById("stats").textContent =
      show(w.fps, 1) + " FPS (" + w.label + "), " + show(run.fps, 1) + " FPS (" + run.label + ")\\n" +
      "ms per frame (" + w.label + "): " + stages + "\\n" +
      s.frames + " frames, dropped " + s.dropped + ", " + s.backend + ", fit " + s.fit + ", viewers " + s.viewers;
  }} catch (error) {{
    document.getElementById("stats").textContent = "demo stopped";
  }}
}}
async function control() {{
  const body = new URLSearchParams({{mode: document.getElementById("mode").value,
                                     alpha: document.getElementById("alpha").value}});
  await fetch("control", {{method: "POST", body: body}});
}}
document.getElementById("mode").addEventListener("change", control);
document.getElementById("alpha").addEventListener("change", control);
setInterval(refresh, 500);
refresh();
</script>
</body></html>
"""
