"""The web side of `tuitrain serve`: textual-serve's Server behind an access token.

textual-serve (textual_serve/server.py) serves a page with xterm.js and, per
websocket connection, starts the command it was given (here `tuitrain watch
RUN_DIR`) as a subprocess under Textual's web driver. This subclass changes
three things and reuses the rest (the websocket handler, the app process
management, the page template and its static files):

- every request must carry the token: the page as `/?token=T`, the websocket
  and the static files in their path (`/ws/T`, `/static/T/...`), because the
  page's JavaScript appends `?width=..&height=..` to the websocket URL it is
  given. A middleware compares it with secrets.compare_digest before any
  handler runs; anything else, unknown paths included, gets 403;
- the page's URLs are built from the request's Host header, not from the
  address we listen on (which may be 0.0.0.0);
- serve() listens on a socket bound beforehand (so `--port 0` knows its port
  before it prints the URL) and, on SIGINT, SIGTERM or SIGHUP, ends every
  watcher it started before it returns the signal.

This module imports textual_serve: tui/serve.py imports it only once it knows
the package is installed.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import socket
import sys
from typing import Any, Awaitable, Callable

import aiohttp_jinja2
import jinja2
from aiohttp import web
from textual_serve.server import Server, to_int

#: The signals that end serving (each ends the process with 128+N, as for every tuitrain viewer).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Seconds the watchers get to leave after SIGTERM (each closes its page's websocket as it goes).
VIEWER_GRACE = 5.0

FORBIDDEN = "403: this page needs the URL with its token, as `tuitrain serve` printed it\n"


class TokenServer(Server):
    """textual-serve's Server where only a request carrying `token` gets an answer other than 403."""

    def __init__(self, command: str, *, token: str, title: str,
                 log: Callable[[str], None] | None = None) -> None:
        super().__init__(command, title=title)
        self.token = token
        self.viewers = 0
        """Browser connections open now (one watcher process each)."""
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._stopping = False

    # -- the routes and the guard ---------------------------------------------------------
    async def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(self.templates_path))
        app.add_routes([
            web.get("/", self.handle_index, name="index"),
            web.get("/ws/{token}", self.handle_websocket, name="websocket"),
            web.static(f"/static/{self.token}", self.statics_path, name="static"),
        ])
        return app

    def presented(self, request: web.Request) -> str:
        """The token this request carries ('' for none): ?token= on the page, the path segment after
        /ws/ or /static/ for the rest."""
        if request.path == "/":
            return request.query.get("token", "")
        parts = request.path.split("/")
        if len(parts) >= 3 and parts[1] in ("ws", "static"):
            return parts[2]
        return ""

    def allowed(self, request: web.Request) -> bool:
        given = self.presented(request).encode("utf-8", "replace")
        return secrets.compare_digest(given, self.token.encode("ascii"))

    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if not self.allowed(request):
            return web.Response(status=403, text=FORBIDDEN)
        response = await handler(request)
        if not response.prepared:
            # The token is in the page's URL: never send it on as a Referer, never keep it in a cache.
            response.headers["Referrer-Policy"] = "no-referrer"
            response.headers["Cache-Control"] = "no-store"
        return response

    async def handle_index(self, request: web.Request) -> web.Response:  # type: ignore[override]
        """The page, with the websocket and static URLs that carry the token, on the host the browser used."""
        context = {
            "font_size": to_int(request.query.get("fontsize", "16"), 16),
            "app_websocket_url": f"ws://{request.host}/ws/{self.token}",
            "config": {"static": {"url": f"/static/{self.token}/"}},
            "application": {"name": self.title},
        }
        return aiohttp_jinja2.render_template("app_index.html", request, context)

    async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
        """textual-serve's handler (one watcher process for this page), with a line in and out."""
        if self._stopping:
            raise web.HTTPServiceUnavailable(text="tuitrain serve is shutting down\n")
        self.viewers += 1
        self._log(f"tuitrain serve: a browser connected from {request.remote} ({self.viewers} open)")
        try:
            return await super().handle_websocket(request)
        finally:
            self.viewers -= 1
            self._log(f"tuitrain serve: a browser left ({self.viewers} open)")

    # -- running ----------------------------------------------------------------------------
    async def serve_on(self, sock: socket.socket, on_listening: Callable[[], None]) -> int:
        """Serve on the bound, listening `sock` until a stop signal; end every watcher; return the signal."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        received: list[int] = []

        def on_signal(signum: int) -> None:
            received.append(signum)
            stop.set()

        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, on_signal, signum)
        runner = web.AppRunner(await self._make_app(), handle_signals=False, access_log=None,
                               shutdown_timeout=VIEWER_GRACE)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
            on_listening()
            await stop.wait()
        finally:
            self._stopping = True
            await end_watchers(VIEWER_GRACE)
            await runner.cleanup()
            await end_watchers(0.0)  # a page that connected during the shutdown
            for signum in STOP_SIGNALS:
                loop.remove_signal_handler(signum)
        return received[0]


async def end_watchers(grace: float) -> None:
    """SIGTERM every process this one started (the watchers: Textual's web driver turns it into an exit,
    and the watcher's page is closed), then SIGKILL what is left after `grace` seconds."""
    import psutil

    me = psutil.Process()
    children = me.children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    deadline = asyncio.get_running_loop().time() + grace
    while children and asyncio.get_running_loop().time() < deadline:
        children = [c for c in children if _running(c)]
        if children:
            await asyncio.sleep(0.05)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def _running(process: Any) -> bool:
    """Alive and not a zombie (asyncio reaps our children; one not reaped yet has exited)."""
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
