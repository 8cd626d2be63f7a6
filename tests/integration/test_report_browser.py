"""The HTML report renders its charts in a real browser with no console errors and no network requests.

Drives Debian's headless Chromium over the DevTools protocol on 127.0.0.1; the screenshot is kept
in ``test-artifacts/report.png``. CI installs Chromium (.ci/run); elsewhere the test is skipped
only when no Chromium is installed and CI is not set.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pplink.cli.main import cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--remote-debugging-address=127.0.0.1",
                  "--remote-debugging-port=0", "--window-size=1100,1400"]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is required in CI (.ci/run installs Debian's chromium package)")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    return path


class _Cdp:
    """A minimal DevTools-protocol client over one websocket, with a flattened page session."""

    def __init__(self, ws) -> None:  # type: ignore[no-untyped-def]
        self.ws = ws
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self.next_id += 1
        msg: dict = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = json.loads(self.ws.recv(timeout=timeout))
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)
        raise TimeoutError(method)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while time.monotonic() < deadline:
            event = json.loads(self.ws.recv(timeout=timeout))
            self.events.append(event)
            if event.get("method") == method:
                return event
        raise TimeoutError(method)


def test_report_renders_charts_offline_without_errors(tmp_path: Path) -> None:
    chromium = _chromium()
    work = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--dir", str(work), "--people", "800"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = work / "report.html"
    assert report.is_file() and str(report) in result.output
    proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "about:blank"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        url = None
        deadline = time.monotonic() + 60
        assert proc.stderr is not None
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            match = re.search(r"DevTools listening on (ws://\S+)", line)
            if match:
                url = match.group(1)
        assert url is not None and url.startswith("ws://127.0.0.1:"), "Chromium did not open its DevTools port"
        from websockets.sync.client import connect

        with connect(url, max_size=None, open_timeout=20) as ws:
            cdp = _Cdp(ws)
            target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Network", "Log"):
                cdp.call(f"{domain}.enable", session=session)
            cdp.call("Page.navigate", {"url": report.as_uri()}, session=session)
            cdp.wait_for("Page.loadEventFired")
            time.sleep(0.5)  # let late console messages arrive
            counts = cdp.call("Runtime.evaluate",
                              {"expression": "JSON.stringify({svg: document.querySelectorAll('svg').length,"
                                             " rect: document.querySelectorAll('svg rect').length,"
                                             " interval: document.querySelectorAll('svg .interval').length,"
                                             " h2: [...document.querySelectorAll('h2')].map(h => h.textContent)})",
                               "returnByValue": True}, session=session)
            page = json.loads(counts["result"]["value"])
            shot = cdp.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session)
            ARTIFACTS.mkdir(exist_ok=True)
            (ARTIFACTS / "report.png").write_bytes(base64.b64decode(shot["data"]))
            requests = [e["params"]["request"]["url"] for e in cdp.events
                        if e.get("method") == "Network.requestWillBeSent"]
            errors = [e for e in cdp.events if e.get("method") == "Runtime.exceptionThrown"
                      or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "warning"))
                      or (e.get("method") == "Log.entryAdded"
                          and e["params"]["entry"]["level"] in ("error", "warning"))]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        proc.stderr.close()
    # The only request is the report file itself: nothing fetched from anywhere else.
    assert requests == [report.as_uri()], requests
    assert errors == [], errors
    assert page["svg"] >= 4 and page["rect"] > 20
    assert any("Auditor's verdict: PASS" in h for h in page["h2"])
    assert {"Privacy budget", "Agency overlaps", "Linkage by group"} <= set(page["h2"])
    # Only DP releases on the page, each chart of released figures with its intervals drawn.
    assert not any("Similarity" in h for h in page["h2"])
    assert page["interval"] > 0
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000
