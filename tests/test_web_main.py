"""main_dashboard.py end to end: a subprocess replays shared BTC/USDT data into a temporary store,
prints "Dashboard ready", serves the API, and shuts down cleanly on Ctrl-C (SIGINT)."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _read_until(proc: subprocess.Popen, needle: str, timeout: float) -> str:
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    out = ""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            out += proc.stdout.read() or ""
            break
        for _ in sel.select(timeout=0.5):
            line = proc.stdout.readline()
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
        with urllib.request.urlopen(url + "api/status", timeout=10) as r:
            status = json.loads(r.read())
        assert status["mode"] == "replay" and status["symbol"] == "BTC/USDT"
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, rest
        assert "stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
