"""A real headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: the browser
reads NUL-terminated JSON commands on fd 3 and writes replies and events on fd 4). No library and no network
port: the tests open compat.html, run the page's own script, click, read the DOM, take screenshots and read
the browser's paint timing (first paint, first contentful paint).

    with Browser() as b:
        page = b.open(path.as_uri() + "#status=fail")
        page.eval("document.getElementById('count').dataset.shown")
        page.screenshot(tmp_path / "page.png")
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome")
                 if shutil.which(n)), None)


class BrowserError(RuntimeError):
    pass


class Browser:
    def __init__(self, width: int = 1400, height: int = 900, timeout: float = 120):
        if CHROMIUM is None:
            raise BrowserError("no chromium on PATH")
        self.width, self.height, self.timeout = width, height, timeout
        self._id = 0
        self._buffer = b""
        self._events: list[dict] = []

    def __enter__(self):
        # pipe ends at fds >= 10, so that the shell's 3<& / 4>& redirections cannot overwrite one another
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        hi = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_r, from_w)]
        for fd in (to_r, from_w):
            os.close(fd)
        self.profile = tempfile.mkdtemp(prefix="peft-compat-chromium-")
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", f"--user-data-dir={self.profile}",
                f"--window-size={self.width},{self.height}", "--remote-debugging-pipe", "about:blank"]
        script = f'exec "$0" "$@" 3<&{hi[0]} 4>&{hi[1]}'
        self.proc = subprocess.Popen([shutil.which("bash") or "bash", "-c", script, *args], pass_fds=hi, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for fd in hi:
            os.close(fd)
        self._w, self._r = to_w, from_r
        return self

    def __exit__(self, *exc):
        try:
            self._send("Browser.close")
        except Exception:  # noqa: BLE001 - the browser may already be gone
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    # --- protocol ------------------------------------------------------------------------------------------------
    def _send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        return self._id

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("timed out waiting for the browser")
            ready, _, _ = select.select([self._r], [], [], left)
            if ready:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    err = self.proc.stderr.read().decode(errors="replace")[-2000:] if self.proc.stderr else ""
                    raise BrowserError("the browser closed the pipe: " + err)
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        wanted = self._send(method, params, session)
        deadline = time.monotonic() + self.timeout
        while True:
            msg = self._read(deadline)
            if msg.get("id") == wanted:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._events.append(msg)

    def wait_event(self, method: str, session: str | None, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for i, msg in enumerate(self._events):
                if msg.get("method") == method and msg.get("sessionId") == session:
                    return self._events.pop(i)
            self._events.append(self._read(deadline))

    def open(self, url: str) -> "Page":
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        page.call("Page.enable")
        page.call("Network.enable")  # page.requests: every URL the page asked for
        page.call("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                         "deviceScaleFactor": 1, "mobile": False})
        page.navigate(url)
        return page


class Page:
    def __init__(self, browser: Browser, session: str):
        self.browser, self.session = browser, session

    def call(self, method: str, params: dict | None = None) -> dict:
        return self.browser.call(method, params, self.session)

    def navigate(self, url: str) -> None:
        """A new document load (about:blank first: a URL that differs only in its fragment would not reload)."""
        for target in ("about:blank", url):
            self.browser._events.clear()
            self.call("Page.navigate", {"url": target})
            self.browser.wait_event("Page.loadEventFired", self.session)
        self.wait_for("document.body && document.body.dataset.ready === 'yes'")
        self.requests = [m["params"]["request"]["url"] for m in self.browser._events
                         if m.get("method") == "Network.requestWillBeSent" and m.get("sessionId") == self.session]

    def eval(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.eval(f"!!({expression})"):
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {expression}")
            time.sleep(0.05)

    def screenshot(self, path, full_page: bool = False) -> str:
        params = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            size = self.eval("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params["clip"] = {"x": 0, "y": 0, "width": size[0], "height": min(size[1], 16000), "scale": 1}
        data = self.call("Page.captureScreenshot", params)["data"]
        with open(path, "wb") as fh:
            fh.write(base64.b64decode(data))
        return str(path)

    def timing(self) -> dict:
        """Milliseconds from navigation start: first paint, first contentful paint, DOM interactive,
        DOMContentLoaded end, load end."""
        return self.eval("""(() => {
            const out = {};
            for (const e of performance.getEntriesByType('paint')) out[e.name] = e.startTime;
            const n = performance.getEntriesByType('navigation')[0];
            out.domInteractive = n.domInteractive; out.domContentLoaded = n.domContentLoadedEventEnd;
            out.load = n.loadEventEnd; out.transferSize = n.transferSize; out.decodedBodySize = n.decodedBodySize;
            return out; })()""")

    def click(self, selector: str) -> None:
        self.eval(f"document.querySelector({json.dumps(selector)}).click()")


def measure(html, out_dir, fragment: str = "") -> dict:
    """Open a page the way a reader does and report its size, paint timing and requests; keep screenshots of
    the first screen, the heat map, "since when", the cross grid and its busiest square (opened, and timed
    from the click to the frame after the panel is filled) in out_dir.
    `python tests/chromium.py compat.html OUT_DIR`."""
    import pathlib

    html, out_dir = pathlib.Path(html), pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with Browser() as browser:
        start = time.monotonic()
        page = browser.open(html.as_uri() + (f"#{fragment}" if fragment else ""))
        ready_s = time.monotonic() - start
        timing = page.timing()
        shots = [page.screenshot(out_dir / "first-screen.png")]
        page.eval("document.getElementById('heatmap').scrollIntoView()")
        shots.append(page.screenshot(out_dir / "heatmap.png"))
        page.eval("document.getElementById('since').scrollIntoView()")
        shots.append(page.screenshot(out_dir / "since-when.png"))
        page.eval("document.getElementById('cross').scrollIntoView()")
        shots.append(page.screenshot(out_dir / "cross.png"))
        square_ms = None
        if page.eval("!!document.querySelector('#crossgrid td[data-w]')"):
            # open the square with the most reads that did not pass (the number in it): the panel's worst case
            square_ms = page.eval("""(async () => {
                const tds = Array.from(document.querySelectorAll('#crossgrid td[data-w]'));
                const n = td => +(td.textContent.match(/[0-9]+/) || [0])[0];
                const td = tds.reduce((a, b) => n(b) > n(a) ? b : a);
                const t = performance.now();
                const done = new Promise(res => addEventListener('hashchange', () => requestAnimationFrame(res),
                                                                 {once: true}));
                td.querySelector('a').click();
                await done;
                return performance.now() - t; })()""")
            shots.append(page.screenshot(out_dir / "cross-square.png"))
        requests = page.requests
    return {"bytes": html.stat().st_size, "first_paint_ms": timing.get("first-paint"),
            "first_contentful_paint_ms": timing.get("first-contentful-paint"),
            "dom_interactive_ms": timing.get("domInteractive"), "load_ms": timing.get("load"),
            "open_to_ready_s": round(ready_s, 2), "open_cross_square_ms": square_ms, "requests": requests,
            "screenshots": shots}


if __name__ == "__main__":
    import sys

    print(json.dumps(measure(*sys.argv[1:3], *(sys.argv[3:4] or [])), indent=1))
