"""`tuitrain serve`: the dashboard of a run in a browser, behind a token in its URL.

Real processes throughout: the installed `tuitrain serve` (textual-serve starting
one `tuitrain watch` per connection), a real run (`--detach`) or a finished one,
HTTP and websocket clients (aiohttp) for the guard, and, where Debian's chromium
and chromedriver are installed, a real headless browser (selenium, which is
pointed at them and never downloads anything). The browser test reads the text
of the page's terminal from xterm.js's buffer: textual-serve draws it on a
canvas, so there is no text in the DOM. Every server, browser and run is ended
in a finally; every wait is on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import pytest

from cli_helpers import Proc, alive, assert_usage_error, in_process, tuitrain
from conftest import wait_until
from dashboard_helpers import (SIZE, FakeSampler, events_named, log_text, run_async, screen_text, step_records,
                               until)
from tuitrain.engine.rundir import pid_alive, read_pid

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform != "linux", reason="Unix sockets, /proc")]

#: Starting a background run (interpreter, torch import, data) takes seconds on a busy machine.
START = 90.0
DEADLINE = 30.0
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
URL = re.compile(r"http://\S+/\?token=[A-Za-z0-9_-]+")


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    return wait_until(predicate, timeout, what, poll=0.05)


# -- fixtures and helpers --------------------------------------------------------------------

@pytest.fixture(scope="module")
def live_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A circles run training in the background for the module's tests; killed at the end."""
    base = tmp_path_factory.mktemp("serve")
    R = base / "R"
    pid = None
    try:
        p = tuitrain("--preset", "circles", "--detach", "--epochs", "100000", "--run-dir", R, cwd=base, timeout=START)
        assert p.returncode == 0, p.stderr
        info = read_pid(R)
        assert info is not None and pid_alive(info["pid"])
        pid = int(info["pid"])
        yield R
    finally:
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def fake_run(folder: Path) -> Path:
    """A folder watch accepts as a run directory (for the checks that need no run)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


class Server:
    """A running `tuitrain serve RUN_DIR --port 0 ...` and the URL it printed."""

    def __init__(self, run_dir: Path, *extra: str, cwd: Path) -> None:
        self.proc = Proc("serve", run_dir, "--port", "0", *extra, cwd=cwd)
        try:
            line = self.proc.wait_for_line(lambda text: URL.search(text) is not None, timeout=DEADLINE)
        except BaseException:
            self.proc.kill()
            raise
        self.url = URL.search(line).group(0)
        self.token = self.url.rsplit("token=", 1)[1]
        self.base = self.url.split("/?", 1)[0]
        self.pid = self.proc.popen.pid

    def watchers(self) -> list[psutil.Process]:
        """The watcher processes serving pages now (zombies not yet reaped have exited)."""
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [c for c in children if alive(c.pid)]

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str, str]:
        if self.proc.popen.poll() is None:
            self.proc.send(sig)
        return self.proc.finish(timeout=DEADLINE)

    def close(self) -> None:
        """Cleanup whatever happened: the server and any watcher left behind."""
        leftovers = self.watchers()
        self.proc.kill()
        for child in leftovers:
            if alive(child.pid):
                child.kill()


def get(url: str) -> tuple[int, dict[str, str], str]:
    """(status, headers, body) of a plain GET."""
    try:
        with urllib.request.urlopen(url, timeout=DEADLINE) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


async def ws_status(url: str) -> int:
    """The HTTP status a websocket handshake on `url` gets (101 when it opens)."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(url):
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


async def read_screen(ws: Any, needle: str, timeout: float = DEADLINE) -> str:
    """Read a page's websocket (the watcher's terminal output) until `needle` has been drawn."""
    import aiohttp

    seen = ""
    deadline = asyncio.get_running_loop().time() + timeout
    while needle not in seen:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            pytest.fail(f"timed out waiting for {needle!r} on the page's websocket; got {seen[-500:]!r}")
        message = await ws.receive(timeout=left)
        if message.type == aiohttp.WSMsgType.BINARY:
            seen += message.data.decode("utf-8", "replace")
        elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            pytest.fail(f"the websocket closed before {needle!r} was drawn; got {seen[-500:]!r}")
    return seen


async def until_closed(ws: Any, timeout: float = DEADLINE) -> None:
    """Read a page's websocket (what is still on its way) until the server closes it."""
    import aiohttp

    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            pytest.fail("the server did not close the page's websocket")
        message = await ws.receive(timeout=left)
        if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            return
        assert message.type == aiohttp.WSMsgType.BINARY, message


# -- bad input -----------------------------------------------------------------------------

def test_serve_refuses_bad_input_in_one_line(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert_usage_error(*in_process("serve")[::2], "no runs under ./runs")
    assert_usage_error(*in_process("serve", "nope")[::2], "no such run directory: nope")
    (here / "plain").mkdir()
    assert_usage_error(*in_process("serve", "plain")[::2], "not a run directory")
    R = fake_run(here / "R")
    assert_usage_error(*in_process("serve", R, "--port", "70000")[::2], "--port", "65535")
    assert_usage_error(*in_process("serve", R, "--port", "eighty")[::2], "--port")
    assert_usage_error(*in_process("serve", R, "--host", "")[::2], "--host")
    assert_usage_error(*in_process("serve", R, "--host", "no-such-host.invalid")[::2], "cannot resolve")
    assert_usage_error(*in_process("serve", R, R)[::2], "unrecognized arguments")
    assert_usage_error(*in_process("serve", R, "--bogus")[::2], "--bogus")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_usage_error(*in_process("serve", R, "--port", port)[::2], f"cannot listen on 127.0.0.1 port {port}")
    real_find_spec = __import__("importlib.util").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec",
                        lambda name, *a: None if name == "textual_serve" else real_find_spec(name, *a))
    assert_usage_error(*in_process("serve", R)[::2], "pip install 'tuitrain[serve]'")
    rc, out, _ = in_process("serve", "--help")
    assert rc == 0 and "--read-only" in out and "127.0.0.1" in out


def test_watch_takes_read_only_and_nothing_else(here: Path) -> None:
    assert_usage_error(*in_process("watch", "--read-only", "nope")[::2], "no such run directory: nope")
    assert_usage_error(*in_process("watch", "--read-only", "--bogus")[::2], "--bogus")


# -- the token, the address, the watchers -------------------------------------------------------

def test_only_the_printed_url_opens_the_page_its_websocket_and_its_files(circles_run: Path, tmp_path: Path) -> None:
    server = Server(circles_run, cwd=tmp_path)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        listening = [c.laddr for c in psutil.Process(server.pid).net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN]
        assert [a.ip for a in listening] == ["127.0.0.1"], listening  # this machine only, by default
        assert listening[0].port == int(server.base.rsplit(":", 1)[1])

        status, headers, page = get(server.url)
        assert status == 200
        assert f'data-session-websocket-url="ws://127.0.0.1:{listening[0].port}/ws/{server.token}"' in page
        assert headers["Referrer-Policy"] == "no-referrer" and headers["Cache-Control"] == "no-store"
        script = f"/static/{server.token}/js/textual.js"
        assert script in page and get(server.base + script)[0] == 200

        wrong = ("y" if server.token[0] == "x" else "x") + server.token[1:]  # a token may start with x
        for refused in ("/", "/?token=", f"/?token={wrong}", f"/?token={server.token}x", "/static/js/textual.js",
                        f"/static/{wrong}/js/textual.js", f"/ws/{wrong}", "/download/key", "/nothing-here",
                        f"/?token=%E2%98%83{server.token}"):
            status, _, body = get(server.base + refused)
            assert status == 403, refused
            assert server.token not in body

        ws = server.base.replace("http:", "ws:") + "/ws/"

        async def sockets() -> None:
            import aiohttp

            assert await ws_status(ws + wrong) == 403
            assert await ws_status(ws.rstrip("/")) == 403
            assert await ws_status(ws + server.token[:-1]) == 403
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"{ws}{server.token}?width=120&height=40") as page_ws:
                    screen = await read_screen(page_ws, "FINISHED")  # the watcher draws the finished run
                    assert "tuitrain" in screen and "circles" in screen

        asyncio.run(sockets())
        wait_for(lambda: not server.watchers(), "the page's watcher to end with its websocket")
        rc, out, err = server.stop(signal.SIGTERM)
        assert rc == 128 + signal.SIGTERM
        assert err.count("a browser connected from 127.0.0.1") == 1 and "(0 open)" in err
    finally:
        server.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_every_watcher_then_the_server(circles_run: Path, tmp_path: Path, sig: int) -> None:
    server = Server(circles_run, "--read-only", cwd=tmp_path)
    try:
        async def two_pages_then_signal() -> tuple[int, list[int]]:
            import aiohttp

            ws = f"{server.base.replace('http:', 'ws:')}/ws/{server.token}?width=100&height=30"
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(ws) as first, session.ws_connect(ws) as second:
                    for page in (first, second):
                        await read_screen(page, "FINISHED")
                    watchers = server.watchers()
                    assert len(watchers) == 2
                    for watcher in watchers:
                        assert "--read-only" in watcher.cmdline() and str(circles_run) in watcher.cmdline()
                    os.kill(server.pid, sig)
                    rc = await asyncio.get_running_loop().run_in_executor(None, server.proc.popen.wait, DEADLINE)
                    for page in (first, second):  # each page is told its session ended
                        await until_closed(page)
                    return rc, [w.pid for w in watchers]

        rc, pids = asyncio.run(two_pages_then_signal())
        assert rc == 128 + sig
        assert not [pid for pid in pids if alive(pid)], "a watcher outlived its server"
    finally:
        server.close()


def test_a_host_other_than_this_machine_is_said_out_loud(circles_run: Path, tmp_path: Path) -> None:
    server = Server(circles_run, "--host", "0.0.0.0", cwd=tmp_path)
    try:
        assert server.url.startswith(f"http://{socket.gethostname()}:")
        listening = [c.laddr.ip for c in psutil.Process(server.pid).net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN]
        assert listening == ["0.0.0.0"]
        wait_for(lambda: any("not only this machine" in line for line in server.proc.err), "the warning")
        assert get(server.url.replace(socket.gethostname(), "127.0.0.1"))[0] == 200
    finally:
        server.close()


# -- read-only watching -----------------------------------------------------------------------

def test_a_read_only_watcher_greys_the_steering_keys_and_p_does_not_pause(live_run: Path) -> None:
    from tuitrain.tui.watch import make_app

    paused_before = len(events_named(live_run, "paused"))

    async def body() -> None:
        app = make_app([live_run], read_only=True, sampler=FakeSampler())
        async with app.run_test(size=SIZE) as pilot:
            remote = app.source.remote
            await until(pilot, lambda: remote.steerable and app.state.step > 0 and remote.history_loaded.is_set(),
                        "the live run, connected", timeout=DEADLINE)
            assert app.state.status == "RUNNING"
            assert not app.source.steerable and app.source.read_only
            for action in ("toggle_pause", "set_lr", "save", "stop"):
                assert app.check_action(action, ()) is None, action  # greyed out, as for a finished run
            assert "read-only viewer" in log_text(app)
            at_press = step_records(live_run)[-1]["step"]
            await pilot.press("p")
            await pilot.press("x")
            # The run trains on well past the boundary where a pause or a stop would have been applied.
            await until(pilot, lambda: step_records(live_run)[-1]["step"] > at_press + 500, "the run to train on",
                        timeout=DEADLINE)
            assert app.state.status == "RUNNING"
            await pilot.press("question_mark")
            await until(pilot, lambda: "read-only: this viewer was started with --read-only" in screen_text(app.screen),
                        "the help's read-only line")
            await pilot.press("escape")
            await pilot.press("q")
            await until(pilot, lambda: not app.is_running, "the watcher to exit")
        assert app.return_code == 0

    run_async(body)
    assert len(events_named(live_run, "paused")) == paused_before
    assert not events_named(live_run, "stopped")


# -- a real browser ---------------------------------------------------------------------------

#: Installed before the page's scripts run: textual-serve keeps its xterm.js Terminal in a field called
#: `terminal` of an object of its own; this setter hands it to the test as window.__tuitrainTerm.
TERMINAL_HOOK = """
Object.defineProperty(Object.prototype, "terminal", {configurable: true, set(value) {
  Object.defineProperty(this, "terminal", {value, writable: true, configurable: true, enumerable: true});
  window.__tuitrainTerm = value;
}});
"""
#: The terminal's text, row by row, as the page shows it (null until the terminal exists).
SCREEN_TEXT = """
const term = window.__tuitrainTerm;
if (!term) return null;
const buffer = term.buffer.active, rows = [];
for (let y = 0; y < term.rows; y++) { const line = buffer.getLine(y); rows.push(line ? line.translateToString(true) : ""); }
return rows.join("\\n");
"""
#: What a plot draws with: plotext's dots and half blocks.
PLOT_GLYPHS = re.compile("[•▀▄▖▗▘▝▚▞⠁-⣿]")


def browser() -> Any:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromedriver (/usr/bin/chromium, /usr/bin/chromedriver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(argument)
    # An explicit driver path: selenium then never runs selenium-manager (which would download one).
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def test_a_browser_shows_the_run_and_a_key_in_the_page_pauses_it(live_run: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    server = driver = None
    try:
        server = Server(live_run, cwd=tmp_path)
        driver = browser()
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": TERMINAL_HOOK})
        driver.get(server.url)

        def screen(*needles: str) -> str | None:
            text = driver.execute_script(SCREEN_TEXT) or ""
            return text if all(n in text for n in needles) else None

        text = wait_for(lambda: screen("RUNNING", "loss", "accuracy", "step"), "the dashboard in the page")
        plot_rows = [row for row in text.splitlines() if "┤" in row]  # rows with a y-axis tick
        assert plot_rows and any(PLOT_GLYPHS.search(row.split("┤", 1)[1]) for row in plot_rows), text
        assert "circles" in text

        paused_before = len(events_named(live_run, "paused"))
        driver.execute_script("document.querySelector('.xterm-helper-textarea').focus()")
        ActionChains(driver).send_keys("p").perform()
        wait_for(lambda: len(events_named(live_run, "paused")) > paused_before, "the paused event in metrics.jsonl")
        wait_for(lambda: screen("PAUSED"), "PAUSED in the page")
        resumed_before = len(events_named(live_run, "resumed"))
        ActionChains(driver).send_keys("p").perform()
        wait_for(lambda: len(events_named(live_run, "resumed")) > resumed_before, "the resumed event")

        wrong = server.url[:-1] + ("a" if server.url[-1] != "a" else "b")
        assert get(wrong)[0] == 403
    finally:
        if driver is not None:
            driver.quit()
        if server is not None:
            server.stop()
            server.close()
