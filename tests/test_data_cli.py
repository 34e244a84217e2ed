"""``main_backtest.py data ...`` in-process with a temporary config and database."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import main_backtest
from core.data.store import MarketStore
from core.types import SeriesKey


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(f"data:\n  db_path: {tmp_path / 'cli.duckdb'}\n  exchange: binanceus\n")
    return p


def test_import_then_list(shared_data: Path, cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    csv = shared_data / "binanceus" / "BTC_USDT-1m.csv"
    rc = main_backtest.main(["--config", str(cfg), "data", "import", str(csv), "--exchange", "binanceus",
                             "--symbol", "BTC/USDT", "--timeframe", "1m"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "read 30240 rows, stored 30240" in out and "rejected 0" in out
    assert main_backtest.main(["--config", str(cfg), "data", "list"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "BTC/USDT" in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells == ["binanceus", "BTC/USDT", "1m", "30,240", "2023-03-01 00:00", "2023-03-21 23:59", "0", "0"]
    # re-import: nothing new
    main_backtest.main(["--config", str(cfg), "data", "import", str(csv)])  # symbol/timeframe from the name
    assert "stored 0" in capsys.readouterr().out


def test_import_reports_rejections_and_db_override(shared_data: Path, cfg: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    lines = (shared_data / "freqtrade" / "ETH_BTC-5m.csv").read_text().splitlines()
    fields = lines[5].split(",")
    fields[2] = str(float(fields[3]) / 2)  # hand-broken: high below low
    lines[5] = ",".join(fields)
    lines.insert(9, lines[8])  # a duplicated row
    bad = tmp_path / "ETH_BTC-5m.csv"
    bad.write_text("\n".join(lines) + "\n")
    db = tmp_path / "other.duckdb"
    rejects = tmp_path / "rejects.csv"
    assert main_backtest.main(["--config", str(cfg), "data", "import", str(bad), "--db", str(db),
                               "--rejects", str(rejects)]) == 0
    out = capsys.readouterr().out
    assert "read 5761 rows, stored 5759" in out and "rejected 2" in out
    assert "rejected high_below_low: 1" in out and "rejected duplicate_ts: 1" in out
    rej = pd.read_csv(rejects)
    assert rej["reason"].tolist() == ["high_below_low", "duplicate_ts"] and len(rej) == 2
    with MarketStore(db, read_only=True) as s:
        assert s.candle_count(SeriesKey("binanceus", "ETH/BTC", "5m")) == 5759
    assert not (tmp_path / "cli.duckdb").exists()


def test_export_roundtrip_and_trades(shared_data: Path, cfg: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    src = shared_data / "freqtrade" / "XRP_ETH-1m.csv"
    main_backtest.main(["--config", str(cfg), "data", "import", str(src), "--exchange", "binance"])
    main_backtest.main(["--config", str(cfg), "data", "import", str(shared_data / "freqtrade" / "XRP_ETH-trades.csv"),
                        "--exchange", "binance"])
    assert "trades: read 12477 rows, stored 12477" in capsys.readouterr().out
    for ext in ("csv", "parquet"):
        out = tmp_path / f"XRP_ETH-1m.{ext}"
        assert main_backtest.main(["--config", str(cfg), "data", "export", str(out), "--exchange", "binance",
                                   "--symbol", "XRP/ETH", "--timeframe", "1m"]) == 0
        back = pd.read_csv(out) if ext == "csv" else pd.read_parquet(out)
        # same layout and values as ../shared/data (volume is written as a float)
        pd.testing.assert_frame_equal(back, pd.read_csv(src), check_dtype=False)
    assert main_backtest.main(["--config", str(cfg), "data", "list", "--gaps"]) == 0
    assert "gap binance XRP/ETH 1m" in capsys.readouterr().out


def test_unknown_name_needs_flags(cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    f = tmp_path / "candles.csv"
    f.write_text("timestamp,open,high,low,close,volume\n")
    assert main_backtest.main(["--config", str(cfg), "data", "import", str(f)]) == 2
    assert "--symbol" in capsys.readouterr().err
