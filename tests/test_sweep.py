"""Sweeps over a real walk-forward's cached predictions (BTC/USDT 1m): 20 trials on 2 local Ray workers,
killed after ~10 trials and resumed -> exactly 20 distinct trials; SPACE.yml errors are one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core.backtest.engine import spec_from_config
from core.backtest.retune import SIGNAL_OF_CODE, evaluate_trial, load_cached, retrade
from core.backtest.sweep import SweepError, load_space, open_study, run_sweep, sweep_paths
from core.backtest.walkforward import make_folds, parse_duration, run_walkforward
from core.config import load_config, load_models
from core.data.files import load_file
from core.types import SeriesKey, Thresholds
from NN.training.walkforward import FoldTrainerNN

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent

DRIVER = """
import sys, time
from pathlib import Path
from core.backtest.sweep import load_space, run_sweep, sweep_paths
from core.config import load_config
cfg = load_config()
space = load_space(Path(sys.argv[1]), cfg)
# the test's stand-in for slow trials: the driver pauses after each result, so the kill lands mid-sweep
run_sweep(space, cfg, n_trials=20, workers=2, paths=sweep_paths(Path(sys.argv[2]), "killed"), name="killed",
          on_trial=lambda n: time.sleep(0.4))
"""


@pytest.fixture(scope="module")
def wf_dir(shared_data, tmp_path_factory):
    cfg, models = load_config(), load_models()
    feats = models.features.model_copy(update={"timeframes": ["1m", "5m", "1h"], "window": 32, "norm_window": 200})
    candles = load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[12_000:12_000 + 720 + 240]
    trainer = FoldTrainerNN(models, cfg, SeriesKey("binanceus", "BTC/USDT", "1m"), ["cnn"], epochs=1, max_steps=3,
                            features=feats)
    spec = spec_from_config(cfg, models, exchange="binanceus", symbol="BTC/USDT", timeframe="1m",
                            thresholds=Thresholds(), mode="fast")
    folds = make_folds(candles["ts"].to_numpy(), "1m", parse_duration("12h"), parse_duration("2h"))
    out = tmp_path_factory.mktemp("wf")
    run_walkforward(candles, folds, trainer, spec, cfg.execution, cfg.risk, cache_dir=out)
    return out


def _space(tmp_path: Path, wf_dir: Path, sampler: str = "tpe") -> Path:
    p = tmp_path / "space.yml"
    p.write_text(f"""predictions: {wf_dir}
sampler: {sampler}
min_trades: 2
params:
  buy_threshold: {{low: 0.15, high: 0.5}}
  sell_threshold: {{low: 0.15, high: 0.5}}
  min_confidence: {{low: 0.0, high: 0.3}}
  stop_loss_pct: {{low: 0.0, high: 0.02}}
""")
    return p


def test_threshold_trial_on_cached_predictions_retrades_the_walkforward(wf_dir):
    """Re-trading the cached predictions at the walk-forward's own thresholds reproduces its equity."""

    cfg = load_config()
    c = load_cached(wf_dir)
    rep = json.loads((wf_dir / "report.json").read_text())
    r = evaluate_trial(c, {}, cfg, 525_600.0)
    assert r["total_return"] == pytest.approx(rep["metrics"]["total_return"], abs=1e-12)
    lo = evaluate_trial(c, {"buy_threshold": 0.15, "sell_threshold": 0.9}, cfg, 525_600.0)
    assert lo["decisions_buy"] > r["decisions_buy"]
    assert sum(lo["block_n"]) == len(c.ts) == 240


def test_redecision_is_byte_identical_to_the_fast_backtester_on_real_predictions(wf_dir):
    """The one re-decision code (thresholds.Redecider, used by sweeps and the threshold preview) gives the
    walk-forward's own codes, kernel signal and equity byte for byte, and decide_codes' codes (HOLD where
    no expert spoke) at any thresholds; the vectorised preview counts equal a direct count."""
    from core.backtest.thresholds import Redecider, threshold_preview
    from core.backtest.walkforward import trade
    from core.execution import kernel as K
    from core.orchestrator import decide_codes

    cfg, models = load_config(), load_models()
    c = load_cached(wf_dir, cfg)
    d = np.load(wf_dir / "predictions.npz")
    spec = spec_from_config(cfg, models, exchange="binanceus", symbol="BTC/USDT", timeframe="1m",
                            thresholds=Thresholds(), mode="fast")
    params = K.params_from_config(cfg.execution, cfg.risk)
    codes, equity, state = retrade(c, Thresholds(), params, cfg.execution.initial_cash)
    assert codes.tobytes() == d["codes"].tobytes()
    assert SIGNAL_OF_CODE[codes + 1].tobytes() == d["signal"].tobytes()
    bars = pd.read_parquet(wf_dir / "candles.parquet")
    eq, _pos, fills, st = trade(bars, d["signal"], spec, params)
    assert equity.tobytes() == eq.tobytes() and state.tobytes() == st.tobytes()
    live = d["mask"].any(axis=1)
    # at thresholds that trade: the fast backtester's steps (decide_codes, HOLD without experts, its
    # signal mapping, the walk-forward's kernel pass) against one retrade
    t = Thresholds(buy=0.2, sell=0.45)
    ref = decide_codes(d["fused"], d["confidence"], t)
    ref[~live] = 0
    sig = np.where(ref == 1, 1.0, np.where(ref == -1, -1.0, np.nan))
    eq, _pos, fills, st = trade(bars, sig, spec, params)
    codes, equity, state = retrade(c, t, params, cfg.execution.initial_cash)
    assert codes.tobytes() == ref.tobytes() and equity.tobytes() == eq.tobytes() and state.tobytes() == st.tobytes()
    assert len(fills) >= 4 and (codes == 1).any() and (codes == -1).any()
    grid = np.quantile(np.r_[d["fused"][:, 0], d["fused"][:, 2]], [0.1, 0.3, 0.5, 0.7, 0.9, 0.99])
    fwd = np.r_[np.log(c.close[5:] / c.close[:-5]), np.full(5, np.nan)]
    prev = threshold_preview(d["fused"], d["confidence"], fwd, grid, grid[::-1], min_confidence=0.05)
    crossed = 0
    for i, b in enumerate(grid):
        for j, s in enumerate(grid[::-1]):
            t = Thresholds(buy=float(b), sell=float(s), min_confidence=0.05)
            ref = decide_codes(d["fused"], d["confidence"], t)
            assert Redecider(d["fused"], d["confidence"]).codes(t).tobytes() == ref.tobytes()
            ref_live = np.where(live, ref, 0).astype(np.int8)
            assert c.redecider.codes(t).tobytes() == ref_live.tobytes()
            isb, iss, known = ref == 1, ref == -1, np.isfinite(fwd)
            assert (prev.n_buy[i, j], prev.n_sell[i, j]) == (isb.sum(), iss.sum())
            assert prev.buy_hits[i, j] == (isb & (fwd > 0)).sum() and prev.sell_hits[i, j] == (iss & (fwd < 0)).sum()
            assert prev.matured[i, j] == ((isb | iss) & known).sum()
            crossed += int(isb.sum() > 0) + int(iss.sum() > 0)
    assert crossed > 10, "the grid should make real BUYs and SELLs"


def test_sweep_killed_after_about_10_trials_resumes_to_exactly_20_distinct(wf_dir, tmp_path):
    space = _space(tmp_path, wf_dir)
    db = tmp_path / "moe.duckdb"
    paths = sweep_paths(db, "killed")
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(space), str(db)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cfg = load_config()
    sp = load_space(space, cfg)
    done = 0
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if paths.journal.exists():
                done = sum(t.state.name == "COMPLETE" for t in open_study(sp, paths, "killed").get_trials())
                if done >= 10:
                    break
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        proc.wait()
    assert 10 <= done < 20, f"the kill should land mid-sweep (completed {done})"
    study = open_study(sp, paths, "killed")
    before = {t.number: t.state.name for t in study.get_trials()}
    assert any(s == "RUNNING" for s in before.values()), "trials were in flight when killed"

    summary = run_sweep(sp, cfg, n_trials=20, workers=2, paths=paths, name="killed")
    trials = open_study(sp, paths, "killed").get_trials()
    assert len(trials) == 20 and summary["trials"] == 20
    assert sorted(t.number for t in trials) == list(range(20))
    assert all(t.state.name == "COMPLETE" for t in trials)
    for t in trials:  # completed before the kill: kept as they were (not repeated)
        if before.get(t.number) == "COMPLETE":
            assert t.user_attrs["stats"]["bars"] == 240
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 20  # 20 distinct parameter sets
    best = summary["best"][0]
    assert 0.0 <= best["dsr"] <= 1.0 or np.isnan(best["dsr"])
    assert summary["pbo"] is not None and 0.0 <= summary["pbo"] <= 1.0
    assert paths.result.exists() and paths.journal.parent == db.parent / "sweeps"


def test_random_and_grid_samplers_inline(wf_dir, tmp_path):
    cfg = load_config()
    sp = load_space(_space(tmp_path, wf_dir, "random"), cfg)
    s = run_sweep(sp, cfg, n_trials=5, workers=0, paths=sweep_paths(tmp_path / "x.duckdb", "r"), name="r")
    assert s["trials"] == 5
    g = tmp_path / "grid.yml"
    g.write_text(f"predictions: {wf_dir}\nsampler: grid\nparams:\n  buy_threshold: {{values: [0.2, 0.3]}}\n"
                 "  sell_threshold: {values: [0.3, 0.6]}\n")
    s = run_sweep(load_space(g, cfg), cfg, n_trials=4, workers=0, paths=sweep_paths(tmp_path / "x.duckdb", "g"),
                  name="g")
    assert sorted((r["params"]["buy_threshold"], r["params"]["sell_threshold"]) for r in s["all"]) == [
        (0.2, 0.3), (0.2, 0.6), (0.3, 0.3), (0.3, 0.6)]


@pytest.mark.parametrize("text, needle", [
    ("params: {buy_threshold: {low: 0.2, high: 0.3}}\n", "'predictions'"),
    ("predictions: x\nparams: {horizon: {low: 1, high: 5}}\n", "need retraining"),
    ("predictions: x\nparams: {buy_threshold: {low: 0.5, high: 0.3}}\n", "low 0.5 must be below"),
    ("predictions: x\nsampler: cmaes\nparams: {buy_threshold: {low: 0.2, high: 0.3}}\n", "sampler 'cmaes'"),
])
def test_bad_space_files_fail_with_one_line(tmp_path, text, needle):
    p = tmp_path / "bad.yml"
    p.write_text(text)
    with pytest.raises(SweepError) as e:
        load_space(p)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_backtest_page_research_views_on_a_real_sweep_and_walkforward(wf_dir, tmp_path):
    import shutil

    from web.pages import research

    cfg = load_config()
    sp = load_space(_space(tmp_path, wf_dir, "random"), cfg)
    paths = sweep_paths(tmp_path / "moe.duckdb", "page")
    s = run_sweep(sp, cfg, n_trials=6, workers=0, paths=paths, name="page")
    assert [x["name"] for x in research.list_sweeps(paths.result.parent)] == ["page"]
    df = research.sweep_table(s)
    assert len(df) == 6 and set(df["verdict"]) <= {"survives", "fails DSR", "too few trades"}
    assert (df["verdict"] == "survives").sum() == len(s["survivors"])
    pc = research.sweep_parcoords(s)
    assert [d.label for d in pc.data[0].dimensions][:4] == ["buy_threshold", "sell_threshold", "min_confidence",
                                                             "stop_loss_pct"]
    hm = research.sweep_heatmap(s)
    assert hm.data[0].histfunc == "avg" and len(hm.data[1].x) + len(hm.data[2].x) == 6
    # two walk-forward runs side by side (the same run stored twice under two ids)
    for rid in ("a", "b"):
        d = tmp_path / "reports" / "walkforward" / rid
        d.mkdir(parents=True)
        rep = json.loads((wf_dir / "report.json").read_text())
        rep["run_id"] = rid
        (d / "report.json").write_text(json.dumps(rep))
    reps = research.list_walkforwards(tmp_path / "reports")
    cmp = research.compare_walkforwards(reps)
    assert sorted(cmp.columns) == ["a", "b"] and "pnl cnn" in cmp.index
    assert cmp.loc["total_return", "a"] == cmp.loc["total_return", "b"]
    assert len(research.attribution_figure(reps).data) == 2  # cnn + unattributed, one bar per run
    assert len(research.attribution_figure(reps[:1]).data[0].x) == 2  # one run: its folds
    shutil.rmtree(tmp_path / "reports")


def test_cli_sweep_runs_inline_and_errors_are_one_line(wf_dir, tmp_path, capsys):
    from main_backtest import main

    space = _space(tmp_path, wf_dir, "random")
    db = tmp_path / "moe.duckdb"
    assert main(["sweep", str(space), "--trials", "3", "--workers", "0", "--name", "cli", "--db", str(db)]) == 0
    assert "sweep cli:" in capsys.readouterr().out and (tmp_path / "sweeps" / "cli.json").exists()
    # resuming a finished 3-trial sweep to 4 adds exactly one trial
    assert main(["sweep", str(space), "--trials", "4", "--workers", "0", "--resume", "cli", "--db", str(db)]) == 0
    assert json.loads((tmp_path / "sweeps" / "cli.json").read_text())["trials"] == 4
    for argv, needle in ((["sweep", str(tmp_path / "nope.yml")], "no such file"),
                         (["sweep", str(space), "--resume", "ghost", "--db", str(db)], "no sweep named 'ghost'"),
                         (["walkforward", "--train", "7x", "--db", str(db)], "duration '7x'")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert needle in str(e.value) and "\n" not in str(e.value)
