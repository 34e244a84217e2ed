"""`evaluate --orderbook-ablation` end to end on the recorded Binance books and trades: 1 s candles from the
recorded spot trades and the replayed book summary in a DuckDB store, the same samples scored with and
without the order-book block. 11 minutes of data: this proves the comparison runs on real rows, not that
the block helps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from core.config import load_config
from core.data.book_buckets import Consolidator
from core.data.book_engine import BookEngine, VenueSymbol
from core.data.book_replay import read_capture
from core.data.book_store import BookWriter
from core.data.store import MarketStore
from core.types import SeriesKey
from main_backtest import main as cli_main


def _candles(ob: Path) -> pd.DataFrame:
    tr = pd.read_csv(ob / "reference" / "binance_spot_BTCUSDT_trades.csv")
    tr["ts"] = (tr["local_timestamp"] // 1_000_000) * 1000
    g = tr.groupby("ts")
    c = pd.DataFrame({"open": g["price"].first(), "high": g["price"].max(), "low": g["price"].min(),
                      "close": g["price"].last(), "volume": g["amount"].sum()}).reset_index()
    grid = pd.DataFrame({"ts": np.arange(c.ts.min(), c.ts.max() + 1000, 1000, dtype=np.int64)})
    c = grid.merge(c, on="ts", how="left")
    c["close"] = c["close"].ffill()  # a second without trades: a flat bar at the last price
    for col in ("open", "high", "low"):
        c[col] = c[col].fillna(c["close"])
    c["volume"] = c["volume"].fillna(0.0)
    return c[["ts", "open", "high", "low", "close", "volume"]]


def test_evaluate_orderbook_ablation_on_recorded_books(shared_data: Path, tmp_path: Path, capsys) -> None:
    ob = shared_data / "orderbook" / "binance-2024-08-08"
    db = tmp_path / "m.duckdb"
    store = MarketStore(db)
    store.upsert_candles(SeriesKey("binance", "BTC/USDT", "1s"), _candles(ob))
    writer = BookWriter(store, "BTC/USDT", batch_seconds=120)
    eng = BookEngine("BTC/USDT", [VenueSymbol("binance", "BTC/USDT")], Consolidator(10.0, 20), sink=writer)
    for m in read_capture(ob / "raw", ["binance"]):
        eng.on_message(m)
    writer.flush()
    store.close()
    models_yml = (Path(__file__).resolve().parent.parent / "models.yml").read_text()
    models_yml = models_yml.replace("  window: 64 ", "  window: 16 ").replace("timeframes: [1m, 5m, 1h, 1d]", "timeframes: [1s]")
    models_yml = models_yml.replace("  norm_window: 500 ", "  norm_window: 20 ").replace("  orderbook: false", "  orderbook: true")
    models_yml = models_yml.replace("  gap_bars: 60", "  gap_bars: 10")
    mp = tmp_path / "models.yml"
    mp.write_text(models_yml)
    assert load_config() is not None
    rc = cli_main(["--models", str(mp), "evaluate", "--orderbook-ablation", "--db", str(db), "--exchange", "binance",
                   "--symbol", "BTC/USDT", "--timeframe", "1s"])
    out = capsys.readouterr().out
    assert rc == 0, out
    res = json.loads(out)
    assert res["n_train"] > 300 and res["n_test"] > 50
    assert res["book_coverage_test"] > 0.9  # the books cover the test part: a real comparison
    for k in ("with_orderbook", "without_orderbook"):
        assert 0 < res[k]["log_loss"] < 3 and 0 <= res[k]["accuracy"] <= 1
    assert res["delta_log_loss"] == round(res["with_orderbook"]["log_loss"] - res["without_orderbook"]["log_loss"], 5)
    # without the block configured: a one-line refusal
    mp.write_text(models_yml.replace("  orderbook: true", "  orderbook: false"))
    assert cli_main(["--models", str(mp), "evaluate", "--orderbook-ablation", "--db", str(db), "--exchange",
                     "binance", "--symbol", "BTC/USDT", "--timeframe", "1s"]) == 1
    assert "features.orderbook: true" in capsys.readouterr().out
