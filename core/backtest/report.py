"""Backtest reports: the typed ``Report`` of a run, its JSON file (metrics + the series behind them),
its self-contained HTML page (plotly inlined: equity and drawdown, price with trade markers,
calibration, gate weights over time) and its row in the DuckDB table ``backtest_runs``.

The JSON alone is enough to regenerate the HTML (``main_backtest.py report ID``); the Backtest page
lists and compares the JSON files.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.backtest.metrics import compute_metrics
from core.backtest.thresholds import forward_log_returns, preview_json, threshold_preview
from core.labels import UP, make_labels
from core.types import Thresholds

if TYPE_CHECKING:
    from core.backtest.engine import BacktestResult
    from core.data.store import MarketStore

REPORT_VERSION = 1

RUNS_DDL = """
CREATE TABLE IF NOT EXISTS backtest_runs (
    run_id VARCHAR PRIMARY KEY, created_at TIMESTAMP, kind VARCHAR, mode VARCHAR, exchange VARCHAR,
    symbol VARCHAR, timeframe VARCHAR, start_ts BIGINT, end_ts BIGINT, bars BIGINT, experts VARCHAR,
    thresholds VARCHAR, fees_bps DOUBLE, slippage_bps DOUBLE, metrics VARCHAR, json_path VARCHAR,
    html_path VARCHAR
)"""


# ---------------------------------------------------------------- the typed report


@dataclass(frozen=True)
class ReportSpec:
    """What was run: the report's ``spec`` object (mode "signals" for an external signal file)."""

    exchange: str
    symbol: str
    timeframe: str
    mode: str  # "fast" | "event" | "signals"
    thresholds: Thresholds
    fees_bps: float
    slippage_bps: float
    fill_at: str
    db: str | None = None  # the store the candles came from
    source: str | None = None  # who asked ("dashboard"); None from the CLI
    signals: str | None = None  # the signals CSV of a "signals" run

    def to_dict(self) -> dict[str, Any]:
        t = self.thresholds
        d: dict[str, Any] = {
            "exchange": self.exchange, "symbol": self.symbol, "timeframe": self.timeframe, "mode": self.mode,
            "thresholds": {"buy": t.buy, "sell": t.sell, "min_confidence": t.min_confidence},
            "fees_bps": self.fees_bps, "slippage_bps": self.slippage_bps, "fill_at": self.fill_at}
        d.update({k: v for k, v in (("db", self.db), ("source", self.source), ("signals", self.signals))
                  if v is not None})
        return d


@dataclass(frozen=True)
class ReportSeries:
    """Per-bar series of a run (all of length ``bars``); NaN p_up where no decision was made."""

    ts: np.ndarray  # int64 ms, candle open times
    close: np.ndarray
    equity: np.ndarray
    p_up: np.ndarray  # fused P(up)
    realised_up: np.ndarray  # 1 up, 0 not up, -1 unknown (calibration)
    weights: dict[str, np.ndarray]  # gate weight per expert


@dataclass(frozen=True)
class Report:
    """One backtest run: what ``run_backtest`` returns and what the JSON file holds (``to_dict``)."""

    run_id: str
    kind: str  # "experts" | "signals"
    spec: ReportSpec
    metrics: dict[str, Any]  # figure name -> number (None where undefined)
    experts: dict[str, dict[str, Any]]  # name -> {version, trained, input_kind}
    horizon: int
    bars: int
    start: str  # ISO minutes, UTC
    end: str
    created_at: str
    fills: pd.DataFrame  # ts, side, amount, price, fee, reason
    series: ReportSeries
    errors: list[tuple[int, str, str]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)  # stage timings of a fast run
    # what each (buy, sell) threshold pair would have done over this run's fused outputs
    # (core/backtest/thresholds.py preview_json); None for runs without fused probabilities
    threshold_preview: dict[str, Any] | None = None
    json_path: Path | None = None  # set once saved
    html_path: Path | None = None

    @property
    def untrained(self) -> list[str]:
        """Experts that ran without a registered checkpoint (the gate aside)."""
        return [n for n, i in self.experts.items() if not i.get("trained") and n != "gate"]

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (before ``_clean``): the format the HTML, the web and ``report ID`` read."""
        s = self.series
        return {
            "run_id": self.run_id, "kind": self.kind, "spec": self.spec.to_dict(), "metrics": self.metrics,
            "experts": self.experts, "horizon": self.horizon, "bars": self.bars, "start": self.start,
            "end": self.end, "created_at": self.created_at, "errors": [list(e) for e in self.errors],
            "stats": self.stats, "fills": self.fills.to_dict(orient="records"),
            "series": {"ts": s.ts, "close": s.close, "equity": s.equity, "p_up": s.p_up,
                       "realised_up": s.realised_up, "weights": s.weights},
            "threshold_preview": self.threshold_preview,
        }


def realised_up(close: np.ndarray, horizon: int, dead_zone: float) -> np.ndarray:
    """1 where the move over the next ``horizon`` bars was 'up', 0 otherwise, -1 unknown (calibration)."""
    y = make_labels(close, horizon, dead_zone)
    return np.where(y < 0, -1.0, (y == UP).astype(np.float64))


def build_report(run_id: str, kind: str, spec: ReportSpec, candles: pd.DataFrame, equity: np.ndarray,
                 fills: pd.DataFrame, metrics: dict[str, Any], *, p_up: np.ndarray,
                 weights: dict[str, np.ndarray], experts: dict[str, dict[str, Any]], horizon: int,
                 dead_zone: float, errors: list[tuple[int, str, str]] | None = None,
                 stats: dict[str, Any] | None = None) -> Report:
    close = candles["close"].to_numpy(np.float64)
    ts = candles["ts"].to_numpy(np.int64)
    return Report(
        run_id=run_id, kind=kind, spec=spec, metrics=metrics, experts=experts, horizon=horizon,
        bars=int(len(candles)), start=iso_minutes(int(ts[0])), end=iso_minutes(int(ts[-1])),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"), fills=fills,
        series=ReportSeries(ts=ts, close=close, equity=equity, p_up=p_up,
                            realised_up=realised_up(close, horizon, dead_zone), weights=weights),
        errors=list(errors or []), stats=stats or {})


def result_report(res: BacktestResult, spec: ReportSpec) -> Report:
    """The report of an experts run (either mode) from the backtester's result."""
    metrics = compute_metrics(res.candles, res.equity, res.position, res.fills, res.state,
                              res.spec.initial_cash, spec.timeframe, res.codes, res.spec.horizon,
                              decided=res.decided, fused=res.fused, dead_zone=res.spec.dead_zone,
                              periods_per_year=res.spec.bars_per_year if res.spec.calendar is not None else None)
    metrics["elapsed_s"] = float(res.elapsed_s)
    w = {n: res.weights[:, i] for i, n in enumerate(res.names)}
    rep = build_report(res.run_id, "experts", spec, res.candles, res.equity, res.fills, metrics,
                       p_up=np.where(res.decided, res.fused[:, 2], np.nan), weights=w, experts=res.info,
                       horizon=res.spec.horizon, dead_zone=res.spec.dead_zone, errors=res.errors,
                       stats=res.stats)
    d = np.asarray(res.decided, dtype=bool)
    if not d.any():
        return rep
    fwd = forward_log_returns(res.candles["close"].to_numpy(np.float64), res.spec.horizon)
    return dataclasses.replace(rep, threshold_preview=preview_json(threshold_preview(
        res.fused[d], res.confidence[d], fwd[d], min_confidence=res.spec.thresholds.min_confidence)))


def iso_minutes(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="minutes")


# ---------------------------------------------------------------- saving and finding runs


def save_report(store: MarketStore, report: Report, reports_dir: Path) -> Report:
    """Write ``backtest_<id>.json`` and ``.html`` to ``reports_dir`` and upsert the run's
    ``backtest_runs`` row; returns the report with its paths."""
    doc = report.to_dict()
    jp = write_json(doc, reports_dir / f"backtest_{report.run_id}.json")
    hp = write_html(doc, reports_dir / f"backtest_{report.run_id}.html")
    s = report.spec
    store.execute(RUNS_DDL)
    row = pd.DataFrame([{
        "run_id": report.run_id, "created_at": datetime.now(UTC).replace(tzinfo=None), "kind": report.kind,
        "mode": s.mode, "exchange": s.exchange, "symbol": s.symbol, "timeframe": s.timeframe,
        "start_ts": int(report.series.ts[0]), "end_ts": int(report.series.ts[-1]), "bars": report.bars,
        "experts": json.dumps(report.experts), "thresholds": json.dumps(doc["spec"]["thresholds"]),
        "fees_bps": s.fees_bps, "slippage_bps": s.slippage_bps, "metrics": json.dumps(_clean(report.metrics)),
        "json_path": str(jp), "html_path": str(hp)}])
    store.write_df("backtest_runs", row, mode="upsert")
    return replace(report, json_path=jp, html_path=hp)


def report_path(run_id: str, reports_dir: Path, store: MarketStore | None) -> Path:
    """Where run ``run_id``'s JSON is: in ``reports_dir``, else where its ``backtest_runs`` row says
    (it may have been written to another directory); the ``reports_dir`` path when neither knows."""
    jp = reports_dir / f"backtest_{run_id}.json"
    if jp.exists() or store is None:
        return jp
    has_runs = store.query_one("SELECT count(*) FROM information_schema.tables WHERE table_name = 'backtest_runs'")
    row = store.query_one("SELECT json_path FROM backtest_runs WHERE run_id = ?", [run_id]) \
        if has_runs and has_runs[0] else None
    return Path(row[0]) if row else jp


# ---------------------------------------------------------------- JSON and HTML files


def _clean(v: Any) -> Any:
    """JSON-safe: numpy -> python, NaN/inf -> None (JSON has no NaN)."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    if isinstance(v, np.ndarray):
        return _clean(v.tolist())
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_json(report: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_clean({"report_version": REPORT_VERSION, **report}), indent=None))
    tmp.replace(path)
    return path


def read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"backtest report not found: {path}")
    return json.loads(path.read_text())


def calibration_table(p_up: np.ndarray, realised_up: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Predicted P(up) binned against the realised frequency of 'up' (rows with an unknown outcome,
    realised < 0, are ignored)."""
    p_up = np.asarray(p_up, dtype=np.float64)
    r = np.asarray(realised_up, dtype=np.float64)
    ok = np.isfinite(p_up) & (r >= 0)
    p_up, r = p_up[ok], r[ok]
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p_up, edges) - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        m = idx == b
        if m.any():
            rows.append((float(p_up[m].mean()), float(r[m].mean()), int(m.sum())))
    return pd.DataFrame(rows, columns=["predicted", "realised", "count"])


def build_html(report: dict[str, Any]) -> str:
    s = report["series"]
    ts = pd.to_datetime(np.asarray(s["ts"], dtype="int64"), unit="ms", utc=True)
    equity = np.asarray(s["equity"], dtype=np.float64)
    peak = np.maximum.accumulate(equity)
    dd = equity / peak - 1.0
    figs: list[go.Figure] = []

    f1 = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3], vertical_spacing=0.04,
                       subplot_titles=("Equity", "Drawdown"))
    f1.add_trace(go.Scattergl(x=ts, y=equity, name="equity", line={"width": 1.2}), row=1, col=1)
    f1.add_trace(go.Scattergl(x=ts, y=dd * 100, name="drawdown %", fill="tozeroy",
                              line={"width": 1, "color": "#c0392b"}), row=2, col=1)
    f1.update_layout(height=520, margin={"t": 40, "b": 20})
    figs.append(f1)

    f2 = go.Figure()
    f2.add_trace(go.Scattergl(x=ts, y=s["close"], name="close", line={"width": 1, "color": "#555"}))
    fills = pd.DataFrame(report.get("fills", []))
    if len(fills):
        ft = pd.to_datetime(fills["ts"].astype("int64"), unit="ms", utc=True)
        for side, color, sym in (("buy", "#27ae60", "triangle-up"), ("sell", "#c0392b", "triangle-down")):
            m = (fills["side"] == side).to_numpy()
            f2.add_trace(go.Scattergl(x=ft[m], y=fills["price"][m], mode="markers", name=side,
                                      marker={"symbol": sym, "size": 9, "color": color}))
    f2.update_layout(title="Price and trades", height=420, margin={"t": 40, "b": 20})
    figs.append(f2)

    cal = calibration_table(np.asarray(s["p_up"], dtype=np.float64),
                            np.asarray(s["realised_up"], dtype=np.float64))
    f3 = go.Figure()
    f3.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect",
                            line={"dash": "dash", "color": "#999"}))
    f3.add_trace(go.Scatter(x=cal["predicted"], y=cal["realised"], mode="lines+markers",
                            name="fused P(up)", text=[f"n={c}" for c in cal["count"]]))
    f3.update_layout(title=f"Calibration of fused P(up) at horizon {report.get('horizon', '?')} bars",
                     xaxis_title="predicted", yaxis_title="realised frequency", height=420,
                     margin={"t": 40, "b": 20})
    figs.append(f3)

    f4 = go.Figure()
    step = max(1, len(ts) // 5000)  # stacked areas are SVG: thin them to keep the page light
    for name, w in s.get("weights", {}).items():
        w = np.asarray(w, dtype=np.float64)
        f4.add_trace(go.Scatter(x=ts[::step], y=w[::step], name=name, mode="lines", stackgroup="w"))
    f4.update_layout(title="Gate weights over time", height=380, margin={"t": 40, "b": 20},
                     yaxis={"range": [0, 1]})
    figs.append(f4)

    m = report.get("metrics", {})
    rows = "".join(f"<tr><td>{k}</td><td>{fmt_value(v)}</td></tr>" for k, v in m.items())
    experts = "".join(
        f"<tr><td>{n}</td><td>{info.get('version')}</td><td>{'trained' if info.get('trained') else 'untrained'}"
        f"</td></tr>" for n, info in report.get("experts", {}).items())
    spec = report.get("spec", {})
    head = (f"<h1>Backtest {report['run_id']}</h1><p>{spec.get('exchange')} {spec.get('symbol')} "
            f"{spec.get('timeframe')} · mode {spec.get('mode')} · {report.get('bars')} bars · "
            f"{report.get('start')} → {report.get('end')}</p>"
            f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>"
            f"<h3>Experts</h3><table><tr><th>expert</th><th>version</th><th>state</th></tr>{experts}</table>")
    parts = [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs)]
    style = ("body{font-family:sans-serif;margin:20px}table{border-collapse:collapse;margin:8px 0}"
             "td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Backtest {report['run_id']}</title>"
            f"<style>{style}</style></head><body>{head}{''.join(parts)}</body></html>")


def fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_html(report: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(build_html(report), encoding="utf-8")
    tmp.replace(path)
    return path
