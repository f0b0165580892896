"""Headless Chromium driven through the DevTools protocol over a pipe, for the MLflow UI tests.

``--screenshot`` alone renders one URL after a fixed time budget; the UI's chart view needs more:
a page state set in its localStorage, then a wait until the chart has drawn (a condition, not a
time). ``--remote-debugging-pipe`` serves the protocol on the browser's fds 3 (commands in) and 4
(replies out), NUL-separated JSON, so no websocket client is needed. One page, one session.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio"]


def _above_4(fd: int) -> int:
    """``fd`` moved to a number above 4 (the original closed)."""
    if fd > 4:
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 5)
    os.close(fd)
    return moved


class DevToolsError(RuntimeError):
    """A protocol error, the browser gone, or a reply that did not come in time."""


class Browser:
    """``with Browser(chromium, profile) as b: b.goto(url); b.wait_for(js); b.screenshot(path)``."""

    def __init__(self, executable: str, profile: Path, width: int = 1600, height: int = 1000,
                 timeout: float = 120):
        self.timeout = timeout
        cmd_r, self._cmd_w = os.pipe()  # we write commands; the browser reads them on fd 3
        self._out_r, out_w = os.pipe()  # the browser writes replies on fd 4; we read them
        cmd_r, out_w = (_above_4(fd) for fd in (cmd_r, out_w))  # so moving them to 3, 4 clobbers none
        args = [*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                "--remote-debugging-pipe", "about:blank"]
        self.log = Path(profile).with_suffix(".log")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["bash", "-c", f'exec "$0" "$@" 3<&{cmd_r} 4>&{out_w} {cmd_r}<&- {out_w}>&-',
                 executable, *args], pass_fds=(cmd_r, out_w), stdout=log, stderr=log,
                start_new_session=True)
        os.close(cmd_r)
        os.close(out_w)
        self._buffer = b""
        self._next_id = 0
        self.session: str | None = None
        self.size = (width, height)

    def __enter__(self) -> Browser:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Emulation.setDeviceMetricsOverride", {"width": self.size[0], "height": self.size[1],
                                                         "deviceScaleFactor": 1, "mobile": False})
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.send("Browser.close", session=False, timeout=10)
        except DevToolsError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=30)
        os.close(self._cmd_w)
        os.close(self._out_r)

    # ---- the protocol ------------------------------------------------------------------------
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.time()
            if left <= 0:
                raise DevToolsError("no reply from the browser in time")
            ready, _, _ = select.select([self._out_r], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self._out_r, 1 << 20)
                if not chunk:
                    raise DevToolsError(f"the browser exited: {self.log.read_text(errors='replace')[-2000:]}")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: bool = True,
             timeout: float | None = None) -> dict:
        """Send one command (to the page's session unless ``session`` is False) and return its
        result; events that arrive meanwhile are dropped."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(message).encode() + b"\0")
        deadline = time.time() + (timeout or self.timeout)
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise DevToolsError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})

    # ---- what a test does with a page ----------------------------------------------------------
    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression[:80]}: {result['exceptionDetails'].get('text')} "
                                f"{result['exceptionDetails'].get('exception', {}).get('description', '')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 120, poll: float = 0.25) -> Any:
        """Poll ``expression`` until it is truthy; return its value, or fail naming ``what``."""
        end = time.time() + timeout
        value = None
        while time.time() < end:
            try:
                value = self.evaluate(expression)
            except DevToolsError:  # the page is navigating: its context is gone for a moment
                value = None
            if value:
                return value
            time.sleep(poll)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {value!r})")

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))
        return path
