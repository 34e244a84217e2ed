"""``main_backtest.py annotations ...`` in-process on the real BTC/USDT minutes: trades added, frozen as a
named validation set, a (quickly) trained CNN and the fused decision replayed against the set; editing
or deleting the annotations afterwards leaves the frozen set -- and its evaluation -- unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import main_backtest
from core.annotations.store import AnnotationStore
from core.data.store import MarketStore
from core.types import SeriesKey

KEY = SeriesKey("binanceus", "BTC/USDT", "1m")
# three real trades (hand-picked times); direction from the two closes except the forced no-trade span
TRADES = (("2023-03-10T10:00Z", "2023-03-10T10:30Z", None), ("2023-03-10T12:00Z", "2023-03-10T12:20Z", "short"),
          ("2023-03-10T14:00Z", "2023-03-10T14:10Z", "none"))


def ms(iso: str) -> int:
    return int(pd.Timestamp(iso).value // 1_000_000)


@pytest.fixture(scope="module")
def cli(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("ann_cli")
    cfg = tmp / "config.yaml"
    cfg.write_text(f"data:\n  db_path: {tmp / 'cli.duckdb'}\n  exchange: binanceus\n"
                   f"training:\n  models_dir: {tmp / 'models'}\n  runs_dir: {tmp / 'runs'}\n")

    def run(*argv: str) -> int:
        return main_backtest.main(["--config", str(cfg), *argv])

    assert run("data", "import", str(shared_data / "binanceus" / "BTC_USDT-1m.csv")) == 0
    return run, tmp


def _closes(tmp: Path) -> pd.Series:
    with MarketStore(tmp / "cli.duckdb", read_only=True) as s:
        return s.candles(KEY, ms("2023-03-10T09:00Z"), ms("2023-03-10T15:00Z")).set_index("ts")["close"]


def test_freeze_evaluate_a_set_and_edits_leave_it_alone(cli, capsys: pytest.CaptureFixture) -> None:
    run, tmp = cli
    for entry, exit_, d in TRADES:
        assert run("annotations", "add", "--symbol", "BTC/USDT", "--timeframe", "1m", "--entry", entry,
                   "--exit", exit_, *(["--direction", d] if d else [])) == 0
    assert run("annotations", "freeze", "val") == 0
    assert "froze 3 annotation(s) as set 'val'" in capsys.readouterr().out
    assert run("annotations", "freeze", "val") == 1  # a set name is taken once
    assert "already exists" in capsys.readouterr().out
    # a quick CNN trained on the week before (the annotations inside its train part are used as cases)
    assert run("train", "--experts", "cnn", "--annotations", "--epochs", "1", "--max-steps", "10",
               "--from", "2023-03-05", "--to", "2023-03-10T09:00Z", "--no-progress") == 0
    capsys.readouterr()

    report = tmp / "cnn_val.json"
    assert run("annotations", "evaluate", "--model", "cnn", "--set", "val", "--out", str(report)) == 0
    r = json.loads(report.read_text())
    assert r["model"] == "cnn" and r["experts"]["cnn"]["trained"] is True and r["annotations"] == 3
    close = _closes(tmp)
    (e1, x1, _), (e2, x2, _), _ = TRADES
    sign1 = 1 if close[ms(x1)] >= close[ms(e1)] else -1
    # hand-computed from the stored closes: P&L of the trades, the no-trade span 0
    want = [100 * sign1 * (close[ms(x1)] / close[ms(e1)] - 1), -100 * (close[ms(x2)] / close[ms(e2)] - 1), 0.0]
    assert [p["annotated_pnl_pct"] for p in r["per_annotation"]] == pytest.approx(want)
    assert r["annotated_pnl_pct"] == pytest.approx(sum(want))
    assert (r["BUY"]["annotated"], r["SELL"]["annotated"]) == (int(sign1 > 0), 1 + int(sign1 < 0))
    # every annotated bar is counted once: entries 2, exits 2, holds 29 + 19, no-trade 11
    rows = r["confusion"]["rows_annotated_cols_predicted"]
    assert [sum(row) for row in rows] == [2, 29 + 19, 2, 11]
    for side in ("BUY", "SELL"):
        s = r[side]
        assert s["matched"] <= min(s["predicted"], s["annotated"])
        if s["predicted"]:
            assert s["precision"] == pytest.approx(s["matched"] / s["predicted"])

    # edits after freezing: delete one, move another's exit; the set (and its evaluation) stays
    with MarketStore(tmp / "cli.duckdb") as s:
        ann = AnnotationStore(s)
        first, second, _ = ann.list()
        ann.update(second.id, exit_ts=ms("2023-03-10T12:40Z"), exit_price=float(close[ms("2023-03-10T12:40Z")]))
    assert run("annotations", "delete", first.id) == 0
    report2 = tmp / "cnn_val_after_edits.json"
    assert run("annotations", "evaluate", "--model", "cnn", "--set", "val", "--out", str(report2)) == 0
    r2 = json.loads(report2.read_text())
    for k in ("BUY", "SELL", "confusion", "annotated_pnl_pct", "captured_pnl_pct", "per_annotation"):
        assert r2[k] == r[k], k
    # without --set: the current annotations (one deleted, one moved)
    report3 = tmp / "cnn_current.json"
    assert run("annotations", "evaluate", "--model", "cnn", "--out", str(report3)) == 0
    r3 = json.loads(report3.read_text())
    assert [p["id"] for p in r3["per_annotation"]] == [p["id"] for p in r["per_annotation"][1:]]
    assert r3["per_annotation"][0]["exit_ts"] == ms("2023-03-10T12:40Z")

    # the fused decision (every enabled expert through the gate) on the same set
    report4 = tmp / "fused_val.json"
    assert run("annotations", "evaluate", "--model", "fused", "--set", "val", "--out", str(report4)) == 0
    r4 = json.loads(report4.read_text())
    assert r4["model"] == "fused" and {"cnn", "gate"} <= set(r4["experts"])  # untrained experts are left out
    assert r4["annotated_pnl_pct"] == pytest.approx(sum(want))
    assert [sum(row) for row in r4["confusion"]["rows_annotated_cols_predicted"]] == [2, 48, 2, 11]
    capsys.readouterr()
    assert run("annotations", "evaluate", "--set", "nope") == 1
    assert "no annotation set 'nope'" in capsys.readouterr().out
