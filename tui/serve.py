"""`tuitrain serve [RUN_DIR]`: the dashboard of a run in a browser.

textual-serve starts one `tuitrain watch RUN_DIR` per browser connection, so
every visitor gets a watcher of the same run (never a training process), and
any number at once is fine: the run never waits for a watcher. This module
reads the command line, checks the run directory with watch's own checks,
binds the address, makes the access token and prints the URL; the web side
(the token guard, the page, ending the watchers) is tui/web_server.py.

Serving ends on SIGINT, SIGTERM or SIGHUP, after every watcher it started has
ended, with 128+N as every tuitrain viewer does. The run goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import ipaddress
import os
import secrets
import shlex
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, Sequence

EXIT_OK, EXIT_USAGE = 0, 2
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: Bytes of randomness in the access token (secrets.token_urlsafe: 43 URL-safe characters).
TOKEN_BYTES = 32

DESCRIPTION = """The dashboard of RUN_DIR in a browser: every page opened gets its own
`tuitrain watch RUN_DIR` (textual-serve), steering the run with the usual keys
unless --read-only. Without RUN_DIR: the most recent run under ./runs.
Only someone with the printed URL (it carries a random token) can open it;
it listens on 127.0.0.1 unless --host says otherwise. Ctrl+C stops serving;
the run keeps training."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one clear line instead of usage + line
        raise ValueError(f"{message} (see tuitrain serve --help)")


def _port(text: str) -> int:
    from tuitrain.tui.cli import _integer

    value = _integer(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return value


def _host(text: str) -> str:
    if not text.strip() or any(c.isspace() or not c.isprintable() for c in text):
        raise argparse.ArgumentTypeError(f"expected a host name or address, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tuitrain serve", description=DESCRIPTION,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="the run to show (default: the newest under ./runs)")
    p.add_argument("--host", type=_host, default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}, this machine only; 0.0.0.0: every "
                        f"network this machine is on)")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT,
                   help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--read-only", action="store_true",
                   help="the pages only watch: the steering keys (pause, LR, save, stop) are off")
    return p


@dataclass(frozen=True)
class Options:
    run_dir: Path
    host: str
    port: int
    read_only: bool


def parse(argv: Sequence[str]) -> Options:
    """The command line, checked: ValueError (one line) for anything wrong, before anything starts."""
    from tuitrain.tui.watch import pick_runs

    args = build_parser().parse_args(list(argv))
    run_dir = pick_runs([args.run_dir] if args.run_dir is not None else [])[0]
    return Options(run_dir=run_dir.resolve(), host=args.host, port=args.port, read_only=args.read_only)


def watch_command(run_dir: Path, read_only: bool) -> str:
    """The shell command textual-serve starts for each page (`exec`: the watcher is our direct child,
    so a signal reaches it and nothing is left behind a shell)."""
    argv = [sys.executable, "-m", "tuitrain.tui.cli", "watch", *(["--read-only"] if read_only else []),
            str(run_dir)]
    return "exec " + shlex.join(argv)


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one); ValueError (one line) if it cannot be."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ValueError(f"--host {host}: cannot resolve it ({exc})") from None
    last: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    reason = last.strerror if last is not None and last.strerror else last
    raise ValueError(f"cannot listen on {host} port {port}: {reason}")


def page_url(host: str, port: int, token: str) -> str:
    """The URL to open: the host as given (a name a browser elsewhere can use for 0.0.0.0 or ::)."""
    shown = host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None and address.is_unspecified:
        shown = socket.gethostname()
    elif address is not None and address.version == 6:
        shown = f"[{host}]"
    return f"http://{shown}:{port}/?token={token}"


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    if any(a in ("-h", "--help") for a in args):
        build_parser().print_help()
        return EXIT_OK
    try:
        options = parse(args)
    except ValueError as exc:
        return _usage_error(str(exc))
    if importlib.util.find_spec("textual_serve") is None:
        return _usage_error("tuitrain serve needs textual-serve: pip install 'tuitrain[serve]'")
    try:
        sock = listen(options.host, options.port)
    except ValueError as exc:
        return _usage_error(str(exc))
    return _serve(options, sock)


def _usage_error(text: str) -> int:
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    print(f"tuitrain: error: {text}", file=sys.stderr)
    return EXIT_USAGE


def _serve(options: Options, sock: socket.socket) -> int:
    from tuitrain.tui.web_server import TokenServer

    # Each watcher draws for xterm.js in a browser, not for this terminal: what we run under (GNU
    # screen turns the dashboard's mouse off) is not what it draws on.
    os.environ.pop("STY", None)
    os.environ["TERM"] = "xterm-256color"
    token = secrets.token_urlsafe(TOKEN_BYTES)
    port = sock.getsockname()[1]
    server = TokenServer(watch_command(options.run_dir, options.read_only), token=token,
                         title=f"tuitrain watch {options.run_dir.name}")

    def listening() -> None:
        mode = "read-only" if options.read_only else "steering with the usual keys"
        print(f"tuitrain serve: the dashboard of {options.run_dir} ({mode}) at\n"
              f"  {page_url(options.host, port, token)}\n"
              f"anyone with this URL can open it; Ctrl+C stops serving (the run keeps training)", flush=True)
        if not ipaddress.ip_address(sock.getsockname()[0]).is_loopback:
            print(f"tuitrain serve: listening on {options.host}, not only this machine: plain HTTP, so use it "
                  f"on a network you trust (or an SSH tunnel to 127.0.0.1)", file=sys.stderr, flush=True)

    try:
        signum = asyncio.run(server.serve_on(sock, listening))
    finally:
        sock.close()
    return 128 + signum
