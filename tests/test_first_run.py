"""First run: the untrained-not-traded rule, Kraken / Binance data-portal files, CLI errors as one line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.config import load_config
from core.data.files import load_file
from core.errors import run_cli
from core.execution.executor import Executor
from core.execution.untrained import refusal
from core.types import Action, CandleEvent, Decision, ExpertOutput, SeriesKey, Thresholds

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample" / "BTC_USDT-1m.csv"
KEY = SeriesKey("binanceus", "BTC/USDT", "1m")


def _sample(n: int | None = None) -> pd.DataFrame:
    df = load_file(SAMPLE)
    return df if n is None else df.iloc[:n]


def test_bundled_sample_is_small_real_and_documented(shared_data: Path) -> None:
    assert SAMPLE.stat().st_size < 1_000_000
    mine = load_file(SAMPLE)
    full = load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv")
    assert len(mine) == 4320 and np.all(np.diff(mine["ts"]) == 60_000)
    # cut unchanged from the recorded file
    cut = full[(full["ts"] >= mine["ts"].iat[0]) & (full["ts"] <= mine["ts"].iat[-1])].reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, cut)
    assert "iaqf_analysis" in (SAMPLE.parent / "README.md").read_text()


def _decision(ts: int, action: Action, version: str) -> Decision:
    # hand-written decision (the rule's edge case): one expert's output with the given model version
    out = ExpertOutput("cnn", version, "BTC/USDT", ts, 5, (0.1, 0.1, 0.8), 0.001, 0.7, 1.0)
    return Decision(f"t:{ts}", ts, "BTC/USDT", action, (0.1, 0.1, 0.8), 0.001, {"cnn": 1.0}, Thresholds(),
                    0.5 if action == Action.BUY else 0.0, f"{action}: test", (out,))


@pytest.mark.parametrize("allow", [False, True])
def test_executor_never_trades_decisions_of_untrained_experts(allow: bool) -> None:
    cfg = load_config()
    execution = cfg.execution.model_copy(update={"allow_untrained": allow})
    ex = Executor(execution, cfg.risk, "BTC/USDT", "1m")
    fills = []
    for i, r in enumerate(_sample(40).itertuples(index=False)):
        if i == 5:
            ex.on_decision(_decision(int(r.ts), Action.BUY, "untrained"))
        fills += ex.on_candle(CandleEvent(KEY, int(r.ts), r.open, r.high, r.low, r.close, r.volume))
    if allow:
        assert fills and ex.refused_untrained == 0
    else:
        assert fills == [] and ex.refused_untrained == 1 and ex.last_refusal == "untrained, not traded: cnn"
    # the same decision from a trained version trades
    ex2 = Executor(cfg.execution, cfg.risk, "BTC/USDT", "1m")
    fills2 = []
    for i, r in enumerate(_sample(40).itertuples(index=False)):
        if i == 5:
            ex2.on_decision(_decision(int(r.ts), Action.BUY, "20260101T000000"))
        fills2 += ex2.on_candle(CandleEvent(KEY, int(r.ts), r.open, r.high, r.low, r.close, r.volume))
    assert fills2 and fills2[0].side == "buy"


def test_refusal_ignores_untrained_experts_with_no_weight() -> None:
    d = _decision(0, Action.BUY, "untrained")
    assert refusal(d, False) == "untrained, not traded: cnn"
    assert refusal(replace(d, weights={"cnn": 0.0}), False) is None
    assert refusal(d, True) is None


# ---------------------------------------------------------------- exchange file layouts


def test_kraken_ohlcvt_and_binance_portal_files_import_with_the_right_timestamps(tmp_path: Path) -> None:
    # the real sample candles written in each exchange's export layout; the columns the importer does not
    # read (Kraken's trade count, Binance's close time, quote volume, ...) are derived from them
    df = _sample(300)
    sec = df["ts"] // 1000
    kraken = pd.DataFrame({"t": sec, "o": df.open, "h": df.high, "l": df.low, "c": df.close, "v": df.volume,
                           "n": 1})
    kraken.to_csv(tmp_path / "XBTUSDT_1.csv", header=False, index=False)
    cols = ["open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume", "count",
            "taker_buy_volume", "taker_buy_quote_volume", "ignore"]

    def binance(scale: int) -> pd.DataFrame:
        return pd.DataFrame({"open_time": df["ts"] * scale, "open": df.open, "high": df.high, "low": df.low,
                             "close": df.close, "volume": df.volume, "close_time": (df["ts"] + 59_999) * scale,
                             "quote_volume": df.volume * df.close, "count": 1, "taker_buy_volume": 0.0,
                             "taker_buy_quote_volume": 0.0, "ignore": 0})[cols]

    binance(1).to_csv(tmp_path / "BTCUSDT-1m-2023-03.csv", header=False, index=False)
    binance(1).to_csv(tmp_path / "BTCUSDT-1m-2023-03-h.csv", header=True, index=False)
    binance(1000).to_csv(tmp_path / "BTCUSDT-1m-2025-01.csv", header=False, index=False)  # microseconds (2025+)
    for name in ("XBTUSDT_1.csv", "BTCUSDT-1m-2023-03.csv", "BTCUSDT-1m-2023-03-h.csv", "BTCUSDT-1m-2025-01.csv"):
        got = load_file(tmp_path / name)
        pd.testing.assert_frame_equal(got, df.reset_index(drop=True), check_dtype=False, obj=name)
    assert pd.Timestamp(int(load_file(tmp_path / "XBTUSDT_1.csv")["ts"].iat[0]), unit="ms") == \
        pd.Timestamp("2023-03-12 00:00:00")


def test_unknown_layout_names_the_columns_it_saw_and_the_map(tmp_path: Path) -> None:
    df = _sample(20)
    # hand-written odd layout: 4 headerless columns
    df[["ts", "open", "close", "volume"]].to_csv(tmp_path / "odd.csv", header=False, index=False)
    with pytest.raises(ValueError, match=r"saw 4 columns: col0, col1, col2, col3.*--map ts=<file column>"):
        load_file(tmp_path / "odd.csv")


# ---------------------------------------------------------------- CLI errors are one line


def _config(tmp: Path) -> Path:
    text = (ROOT / "config.yaml").read_text().replace("db_path: data/moe.duckdb", f"db_path: {tmp / 'moe.duckdb'}")
    text = text.replace("reports_dir: reports", f"reports_dir: {tmp / 'reports'}")
    p = tmp / "config.yaml"
    p.write_text(text)
    return p


def _cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    import main_backtest

    try:
        rc = run_cli(main_backtest.main, argv)
    except SystemExit as exc:  # argparse: usage + one "error:" line, exit 2
        rc = int(exc.code or 0)
    return rc, capsys.readouterr().err


def test_every_cli_subcommand_fails_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(_config(tmp_path))
    db = str(tmp_path / "moe.duckdb")
    (tmp_path / "odd.csv").write_text("a,b,c\n1,2,3\n")  # hand-written: wrong columns
    rc, err = _cli(capsys, ["--config", cfg, "data", "import", str(SAMPLE), "--db", db])
    assert rc == 0, err
    base = ["--config", cfg]
    sym = ["--symbol", "BTC/USDT", "--timeframe", "1m"]
    cases = {
        "missing file": ["data", "import", str(tmp_path / "nope.csv"), *sym, "--db", db],
        "wrong columns": ["data", "import", str(tmp_path / "odd.csv"), *sym, "--db", db],
        "unknown symbol (export)": ["data", "export", str(tmp_path / "o.parquet"), "--symbol", "NOPE/USDT",
                                    "--timeframe", "1m", "--db", db],
        "unknown symbol (train)": ["train", "--experts", "cnn", "--symbol", "NOPE/USDT", "--timeframe", "1m",
                                   "--db", db],
        "unknown expert": ["train", "--experts", "nosuch", *sym, "--db", db],
        "unknown expert (run)": ["run", *sym, "--experts", "nosuch", "--db", db],
        "bad dates": ["run", *sym, "--from", "2023-13-45", "--to", "2023-03-12", "--db", db],
        "reversed dates": ["run", *sym, "--from", "2023-03-13", "--to", "2023-03-11", "--db", db],
        "unknown symbol (evaluate)": ["evaluate", "--symbol", "NOPE/USDT", "--timeframe", "1m", "--db", db],
        "unknown symbol (forecast)": ["forecast", "--symbol", "NOPE/USDT", "--timeframe", "1m", "--db", db],
        "unknown report": ["report", "nosuchid", "--db", db],
        "bad timeframe (list)": ["data", "list", "--db", str(tmp_path / "missing.duckdb")],
        "unknown exchange": ["data", "download", "--exchange", "nosuchex", *sym, "--since", "2024-01-01",
                             "--db", db],
    }
    for what, argv in cases.items():
        rc, err = _cli(capsys, base + argv)
        lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith(("20", "usage:", " "))]
        assert rc != 0, f"{what}: exit 0"
        assert "Traceback" not in err, f"{what}: {err}"
        assert len(lines) == 1, f"{what}: not one line: {lines}"


def test_locked_store_names_the_holder(tmp_path: Path) -> None:
    db = tmp_path / "moe.duckdb"
    holder = subprocess.Popen([sys.executable, "-c", f"import duckdb,time; c=duckdb.connect({str(db)!r}); "
                               "print('open', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        t = time.monotonic()
        r = subprocess.run([sys.executable, str(ROOT / "main_backtest.py"), "data", "list", "--db", str(db)],
                           capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert r.stderr.strip().splitlines()[-1] == f"error: process {holder.pid} holds {db}; stop it or pass --db"
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert time.monotonic() - t < 60
    finally:
        holder.kill()


def test_plotly_bundle_is_the_installed_version_with_every_trace_the_pages_draw() -> None:
    """web/assets/plotly-moe.min.js (the first chart's partial bundle) must stay the plotly.js version
    dcc.Graph expects and hold every trace type some page draws (a missing one renders nothing)."""
    import re

    import plotly

    bundle = (ROOT / "web" / "assets" / "plotly-moe.min.js").read_text()
    full = (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_text()[:300]
    version = re.search(r"plotly\.js (v[\d.]+)", full)
    assert version is not None and bundle.startswith(f"/*! plotly.js {version.group(1)},")
    assert len(bundle) < 1_600_000  # the point: about a third of the full bundle
    drawn: set[str] = set()
    for f in (ROOT / "web").rglob("*.py"):
        src = f.read_text()
        drawn |= {m.lower() for m in re.findall(r"go\.([A-Z][A-Za-z0-9]+)\(", src)} - {"figure"}
        drawn |= set(re.findall(r"[\"']type[\"']: ?[\"'](candlestick|scatter|bar|heatmap|histogram2d|parcoords|"
                                r"ohlc|pie|box|violin|histogram|contour|scattergl|table|indicator)[\"']", src))
        drawn |= {"bar" for _ in re.findall(r"\.add_bar\(", src)}
    assert drawn and {"candlestick", "scatter", "bar", "heatmap"} <= drawn
    missing = [t for t in sorted(drawn) if f'moduleType:"trace",name:"{t}"' not in bundle]
    assert not missing, f"traces drawn but not in the bundle: {missing}; add them to web/plotly_bundle/entry.js"
