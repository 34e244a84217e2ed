"""Backtest page: pick a range, experts, thresholds and the mode (fast | event); run in a background
thread with progress; list, view and compare stored reports (JSON reports in ``backtest.reports_dir``).

The run itself is ``core.backtest.runner.run_backtest``, the same call as ``main_backtest.py run``, in
fast or event mode (the page's choice, ``backtest.mode`` by default); this page only schedules it on a
thread and reads the reports it writes.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dash_bootstrap_components as dbc
import pandas as pd
from dash import Dash, Input, Output, State, dcc, html, no_update

from core.backtest.report import read_json
from core.backtest.runner import MODES, RunRequest, run_backtest
from core.types import Thresholds
from web import figures
from web.pages import research

log = logging.getLogger(__name__)
# runner(request, progress(fraction, message)) -> the saved report's JSON path
Runner = Callable[[RunRequest, Callable[[float, str], None]], Path | None]


@dataclass
class BacktestJob:
    id: str
    request: RunRequest
    progress: float = 0.0
    message: str = "queued"
    done: bool = False
    error: str | None = None
    report: str | None = None
    started: float = field(default_factory=time.time)


class BacktestJobs:
    """At most one backtest at a time on a daemon thread (the machine is small; the engine keeps
    trading meanwhile)."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._lock = threading.Lock()
        self.jobs: dict[str, BacktestJob] = {}

    def running(self) -> BacktestJob | None:
        with self._lock:
            return next((j for j in self.jobs.values() if not j.done), None)

    def submit(self, request: RunRequest) -> BacktestJob:
        with self._lock:
            if any(not j.done for j in self.jobs.values()):
                raise RuntimeError("a backtest is already running; wait for it to finish")
            job = BacktestJob(id=f"bt{len(self.jobs) + 1}-{int(time.time())}", request=request)
            self.jobs[job.id] = job
        threading.Thread(target=self._run, args=(job,), name=f"backtest-{job.id}", daemon=True).start()
        return job

    def _run(self, job: BacktestJob) -> None:
        def progress(frac: float, msg: str = "") -> None:
            job.progress, job.message = max(0.0, min(1.0, float(frac))), msg or job.message

        job.message = "running"
        try:
            out = self._runner(job.request, progress)
            job.report = str(out) if out is not None else None
            job.progress = 1.0
            job.message = "finished"
        except Exception as exc:  # noqa: BLE001 - a failed backtest is shown, never crashes the UI
            job.error = f"{type(exc).__name__}: {exc}"
            job.message = "failed"
            traceback.print_exc()
        finally:
            job.done = True


def default_runner(wctx: Any) -> Runner:
    """Runs ``core.backtest.runner.run_backtest`` (the one ``main_backtest.py run`` uses) on the
    engine's store for the page's request: same report (JSON + HTML + backtest_runs row), either mode."""

    def run(request: RunRequest, progress: Callable[[float, str], None]) -> Path | None:
        cfg, models, store = wctx.cfg, wctx.models_cfg, wctx.store
        if store is None or models is None or wctx.backtest_components is None:
            raise RuntimeError("backtests need the engine's store, models.yml and the composition root's "
                               "experts (start via main_dashboard.py)")

        def on_progress(stage: str, done: int, total: int) -> None:
            progress(done / total if total else 0.0, f"{stage} {done}/{total}")

        report = run_backtest(request, cfg=cfg, models=models, store=store, components=wctx.backtest_components,
                              reports_dir=_reports_dir(wctx), progress=on_progress)
        return report.json_path

    return run


# ---------------------------------------------------------------- stored reports


def list_reports(reports_dir: Path) -> pd.DataFrame:
    """Stored JSON reports, newest first: run_id, path, symbol, timeframe, start, end, key metrics."""
    rows = []
    if reports_dir.is_dir():
        import json

        for p in sorted(reports_dir.rglob("*.json"), key=lambda q: q.stat().st_mtime, reverse=True):
            try:
                r = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(r, dict) or "series" not in r:
                continue
            spec, m = r.get("spec", {}), r.get("metrics", {})
            rows.append({"run_id": r.get("run_id", p.stem), "path": str(p), "symbol": spec.get("symbol"),
                         "timeframe": spec.get("timeframe"), "mode": spec.get("mode"),
                         "start": r.get("start"), "end": r.get("end"), "bars": r.get("bars"),
                         **{k: v for k, v in m.items() if isinstance(v, int | float)}})
    return pd.DataFrame(rows)


MAX_REPORT_BYTES = 64 * 1024 * 1024  # a year of 1m bars is ~20 MB of JSON


def report_path(path: str, reports_dir: Path) -> Path:
    """``path`` (sent by the browser) as a regular ``.json`` file inside ``reports_dir``, size-capped;
    ValueError otherwise (traversal, absolute paths elsewhere, device files, links out of the folder)."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise ValueError("report path must be a non-empty string")
    root = reports_dir.resolve()
    p = (root / path).resolve()  # an absolute path stays absolute; .. and symlinks are resolved
    if not p.is_relative_to(root) or p.suffix != ".json":
        raise ValueError(f"report {path!r} is not a .json file inside {root}")
    st = p.stat()
    import stat

    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"report {path!r} is not a regular file")
    if st.st_size > MAX_REPORT_BYTES:
        raise ValueError(f"report {path!r} is {st.st_size} bytes (limit {MAX_REPORT_BYTES})")
    return p


def report_equity(path: str, reports_dir: Path) -> pd.DataFrame:
    """The equity curve of a stored report; only files inside ``reports_dir`` are read."""
    import json

    r = json.loads(report_path(path, reports_dir).read_text())
    s = r["series"]
    return pd.DataFrame({"ts": s["ts"], "equity": s["equity"]}).dropna()


# ---------------------------------------------------------------- layout


def layout(wctx: Any) -> Any:
    snap = wctx.engine.snapshot()
    experts = list(snap.experts) or list((wctx.models_cfg.experts if wctx.models_cfg else {}) or [])
    t = snap.thresholds
    # default selection: trained experts, else the feature experts (an untrained Kronos cannot run)
    chosen = [n for n, s in snap.experts.items() if s.trained] or \
        [n for n, s in snap.experts.items() if s.input_kind == "features"] or experts
    start, end = stored_range(wctx, snap.symbol, snap.timeframe)
    has_reports = len(list_reports(_reports_dir(wctx))) > 0
    form = dbc.Card(dbc.CardBody([
        dbc.Row([
            dbc.Col([dbc.Label("Range (UTC dates)"),
                     dcc.DatePickerRange(id="bt-range", start_date=start, end_date=end)], width=4),
            dbc.Col([dbc.Label("Experts"), dbc.Checklist(id="bt-experts", options=experts, value=chosen,
                                                         inline=True)], width=3),
            dbc.Col([dbc.Label("Thresholds buy / sell / min conf"), dbc.InputGroup([
                dbc.Input(id="bt-buy", type="number", min=0, max=1, step=0.01, value=t.buy),
                dbc.Input(id="bt-sell", type="number", min=0, max=1, step=0.01, value=t.sell),
                dbc.Input(id="bt-minconf", type="number", min=0, max=1, step=0.01, value=t.min_confidence),
            ], size="sm")], width=3),
            # fast: batched experts + compiled loop; event: the live orchestrator bar by bar (~50 bars/s)
            dbc.Col([dbc.Label("Mode"), dbc.RadioItems(id="bt-mode", options=list(MODES), inline=True,
                                                       value=wctx.cfg.backtest.mode)], width=2),
        ]),
        dbc.Button("Run backtest", id="bt-run", color="primary", size="sm", className="mt-2"),
        html.Div(id="bt-submit-msg", className="small mt-1"),
        dbc.Progress(id="bt-progress", value=0, className="mt-1", style={"height": "18px"}),
        html.Div(id="bt-job-msg", className="small"),
    ]), className="mb-2")
    return html.Div([
        html.H4("Backtest"), form,
        dbc.Card([dbc.CardHeader("Stored reports (select to compare)"),
                  dbc.CardBody([dcc.Checklist(id="bt-compare", options=[], value=[],
                                              labelStyle={"display": "block"}, className="small"),
                                html.Div(id="bt-table"),
                                dcc.Graph(id="bt-compare-graph", figure=figures.compare_figure(
                                    {}, figures.COMPARE_EMPTY if has_reports else figures.COMPARE_NONE)),
                                # the first selected report's threshold preview (core/backtest/thresholds.py)
                                dcc.Graph(id="bt-threshold-graph", figure=figures.threshold_heatmap(None))])]),
        research_cards(wctx),
        dcc.Interval(id="bt-tick", interval=1000),
    ])


def _sweeps_dir(wctx: Any) -> Path:
    return wctx.cfg.resolve(wctx.cfg.data.db_path).parent / "sweeps"


def research_cards(wctx: Any) -> Any:
    """Sweeps (trials, parallel coordinates, heatmap; survivors of the deflated-Sharpe correction marked)
    and walk-forward runs side by side (metrics, P&L by expert)."""
    sweeps = research.list_sweeps(_sweeps_dir(wctx))
    wfs = research.list_walkforwards(_reports_dir(wctx))
    return html.Div([
        dbc.Card([dbc.CardHeader("Sweeps"), dbc.CardBody([
            dcc.Dropdown(id="bt-sweep", options=[s["name"] for s in sweeps],
                         value=sweeps[0]["name"] if sweeps else None, placeholder="no sweeps yet "
                         "(main_backtest.py sweep SPACE.yml)"),
            html.Div(id="bt-sweep-info", className="small mt-1"),
            dcc.Graph(id="bt-sweep-parcoords"), dcc.Graph(id="bt-sweep-heatmap"),
            html.Div(id="bt-sweep-table")])], className="mt-2"),
        dbc.Card([dbc.CardHeader("Walk-forward runs (select one for its folds, several to compare)"),
                  dbc.CardBody([
                      dcc.Checklist(id="bt-wf", options=[{"label": f"{r['run_id']} · {len(r['folds'])} folds",
                                                          "value": r["path"]} for r in wfs],
                                    value=[wfs[0]["path"]] if wfs else [], labelStyle={"display": "block"},
                                    className="small"),
                      html.Div(id="bt-wf-table"), dcc.Graph(id="bt-wf-attr")])], className="mt-2"),
    ])


def stored_range(wctx: Any, symbol: str, timeframe: str) -> tuple[str | None, str | None]:
    """First and last stored day of the series (UTC dates as YYYY-MM-DD), for the default range."""
    if wctx.store is None or not symbol:
        return None, None
    row = wctx.store.query_one("SELECT min(ts), max(ts) FROM candles WHERE exchange = ? AND symbol = ? "
                               "AND timeframe = ?", [wctx.cfg.data.exchange, symbol, timeframe])
    if not row or row[0] is None:
        return None, None
    day = lambda ms: pd.Timestamp(int(ms), unit="ms").strftime("%Y-%m-%d")  # noqa: E731
    return day(row[0]), day(row[1])


def _reports_dir(wctx: Any) -> Path:
    return wctx.cfg.resolve(wctx.cfg.backtest.reports_dir)


def register(app: Dash, wctx: Any) -> None:
    jobs: BacktestJobs = wctx.extra.setdefault("backtests", BacktestJobs(default_runner(wctx)))

    @app.callback(Output("bt-submit-msg", "children"), Input("bt-run", "n_clicks"),
                  State("bt-range", "start_date"), State("bt-range", "end_date"), State("bt-experts", "value"),
                  State("bt-buy", "value"), State("bt-sell", "value"), State("bt-minconf", "value"),
                  State("bt-mode", "value"), prevent_initial_call=True)
    def _submit(_n: int, start: str | None, end: str | None, experts: list[str], buy: Any, sell: Any,
                minc: Any, mode: str | None) -> Any:
        try:
            thr = Thresholds(buy=float(buy), sell=float(sell), min_confidence=float(minc))
        except (TypeError, ValueError) as exc:
            return html.Span(f"not started: thresholds must be numbers in [0, 1] ({exc})", className="text-danger")
        if not experts:
            return html.Span("not started: pick at least one expert", className="text-danger")
        if not start or not end or pd.Timestamp(start) >= pd.Timestamp(end):
            return html.Span("not started: pick a range with start before end", className="text-danger")
        if mode not in MODES:
            return html.Span(f"not started: pick a mode ({' or '.join(MODES)})", className="text-danger")
        snap = wctx.engine.snapshot()
        request = RunRequest(symbol=snap.symbol, timeframe=snap.timeframe,
                             start_ms=int(pd.Timestamp(start, tz="UTC").value // 1_000_000),
                             end_ms=int(pd.Timestamp(end, tz="UTC").value // 1_000_000),
                             experts=tuple(experts), thresholds=thr, mode=mode, source="dashboard")
        try:
            job = jobs.submit(request)
        except RuntimeError as exc:
            return html.Span(str(exc), className="text-warning")
        return f"started {job.id}"

    @app.callback(Output("bt-progress", "value"), Output("bt-progress", "label"), Output("bt-job-msg", "children"),
                  Output("bt-compare", "options"), Output("bt-table", "children"),
                  Input("bt-tick", "n_intervals"), State("bt-compare", "options"))
    def _poll(_n: int | None, old_opts: list | None) -> Any:
        job = jobs.running() or (list(jobs.jobs.values())[-1] if jobs.jobs else None)
        msg = "" if job is None else (f"{job.id}: {job.message}" + (f" — {job.error}" if job.error else "")
                                      + (f" — report {job.report}" if job.report else ""))
        rep = list_reports(_reports_dir(wctx))
        opts = [{"label": f"{r.run_id} · {r.symbol} {r.timeframe} · {r.start} → {r.end}", "value": r.path}
                for r in rep.itertuples()]
        table = (dbc.Table.from_dataframe(rep.drop(columns=["path"]).head(20).round(4), size="sm", striped=True,
                                          className="small")
                 if len(rep) else html.Div(figures.COMPARE_NONE, className="text-muted small"))
        pct = int(100 * job.progress) if job else 0
        if old_opts is not None and opts == old_opts and (_n or 0) > 1:
            return pct, f"{pct}%", msg, no_update, no_update
        return pct, f"{pct}%", msg, opts, table

    @app.callback(Output("bt-sweep-info", "children"), Output("bt-sweep-parcoords", "figure"),
                  Output("bt-sweep-heatmap", "figure"), Output("bt-sweep-table", "children"),
                  Input("bt-sweep", "value"))
    def _sweep(name: str | None) -> Any:
        s = next((x for x in research.list_sweeps(_sweeps_dir(wctx)) if x["name"] == name), None)
        if s is None:
            return "", research.sweep_parcoords({}), research.sweep_heatmap({}), ""
        df = research.sweep_table(s)
        info = (f"{s['trials']} trials, PBO {s['pbo'] if s['pbo'] is not None else 'n/a'}, "
                f"{len(s['survivors'])} survive the deflated Sharpe (>= {s['dsr_threshold']}) with >= "
                f"{s['min_trades']} trades")
        rows = [html.Tr([html.Td(v if not isinstance(v, float) else f"{v:.4g}") for v in r],
                        className="" if r[-1] == "survives" else "text-muted")
                for r in df.sort_values("sharpe", ascending=False).head(50).itertuples(index=False)]
        table = dbc.Table([html.Thead(html.Tr([html.Th(c) for c in df.columns])), html.Tbody(rows)],
                          size="sm", className="small")
        return info, research.sweep_parcoords(s), research.sweep_heatmap(s), table

    @app.callback(Output("bt-wf-table", "children"), Output("bt-wf-attr", "figure"), Input("bt-wf", "value"))
    def _walkforwards(paths: list[str] | None) -> Any:
        reps = [r for r in research.list_walkforwards(_reports_dir(wctx)) if r["path"] in (paths or [])]
        if not reps:
            return html.Div("no walk-forward selected", className="text-muted small"), research.attribution_figure([])
        df = research.compare_walkforwards(reps)
        return (dbc.Table.from_dataframe(df.reset_index(names="figure").round(4), size="sm", className="small"),
                research.attribution_figure(reps))

    @app.callback(Output("bt-compare-graph", "figure"), Input("bt-compare", "value"))
    def _compare(paths: list[str] | None) -> Any:
        curves = {}
        for p in (paths or [])[:20] if isinstance(paths, list) else []:
            try:
                curves[Path(str(p)).stem] = report_equity(p, _reports_dir(wctx))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        has = len(list_reports(_reports_dir(wctx))) > 0
        return figures.compare_figure(curves, figures.COMPARE_EMPTY if has else figures.COMPARE_NONE)

    @app.callback(Output("bt-threshold-graph", "figure"), Input("bt-compare", "value"))
    def _thresholds(paths: list[str] | None) -> Any:
        for p in paths or []:
            try:
                doc = read_json(Path(p))
            except (OSError, ValueError):
                continue
            t = doc.get("spec", {}).get("thresholds") or {}
            return figures.threshold_heatmap(doc.get("threshold_preview"), t.get("buy"), t.get("sell"))
        return figures.threshold_heatmap(None)
