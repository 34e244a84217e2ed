"""main_dashboard.py end to end: a subprocess replays shared BTC/USDT data into a temporary store,
prints "Dashboard ready", serves the API, and shuts down cleanly on Ctrl-C (SIGINT)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _read_until(proc: subprocess.Popen, needle: str, timeout: float) -> str:
    """Lines of ``proc``'s stdout until one contains ``needle`` (a reader thread: several lines may
    arrive in one read)."""
    lines: queue.Queue[str] = queue.Queue()
    if not hasattr(proc, "_reader"):
        def pump() -> None:
            for line in iter(proc.stdout.readline, ""):
                lines.put(line)
        proc._lines = lines  # type: ignore[attr-defined]
        proc._reader = threading.Thread(target=pump, daemon=True)  # type: ignore[attr-defined]
        proc._reader.start()  # type: ignore[attr-defined]
    q = proc._lines  # type: ignore[attr-defined]
    out = ""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            line = q.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None and q.empty():
                break
            continue
        out += line
        if needle in line:
            return out
    raise AssertionError(f"{needle!r} not printed within {timeout}s; output:\n{out[-3000:]}")


def test_replay_serves_and_stops_on_ctrl_c(shared_data, tmp_path) -> None:
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["data"]["db_path"] = str(tmp_path / "moe.duckdb")
    cfg["training"]["runs_dir"] = str(tmp_path / "runs")
    cfg["training"]["models_dir"] = str(tmp_path / "models")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k != "DASHBOARD_TOKEN"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "main_dashboard.py"), "--config", str(tmp_path / "config.yaml"),
         "--replay", str(shared_data / "binanceus" / "BTC_USDT-1m.csv"), "--speed", "60", "--port", "0",
         "--no-training"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        out = _read_until(proc, "Dashboard ready", 120)
        assert "imported" in out
        url = out.strip().splitlines()[-1].split("Dashboard ready at ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        # no DASHBOARD_TOKEN: a random token, printed once inside a login URL, and required
        assert "No DASHBOARD_TOKEN set" in out
        login = next(ln.strip() for ln in out.splitlines() if "?token=" in ln)
        token = login.split("?token=", 1)[1]
        assert login.startswith(url) and len(token) >= 32
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url + "api/status", timeout=10)
        assert err.value.code == 401
        req = urllib.request.Request(url + "api/status", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            status = json.loads(r.read())
            assert r.headers["Server"] == "moe-trader"  # waitress, not werkzeug's development server
            assert r.headers["X-Frame-Options"] == "DENY"
        assert status["mode"] == "replay" and status["symbol"] == "BTC/USDT"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        rest = ""
        while not proc._lines.empty():  # type: ignore[attr-defined]
            rest += proc._lines.get()  # type: ignore[attr-defined]
        proc._reader.join(5)  # type: ignore[attr-defined]
        while not proc._lines.empty():  # type: ignore[attr-defined]
            rest += proc._lines.get()  # type: ignore[attr-defined]
        assert proc.returncode == 0, rest
        assert "stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
