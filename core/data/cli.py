"""``main_backtest.py data import|download|list|export``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import pandas as pd

from core.config import load_config
from core.data.alpaca_source import AlpacaSource
from core.data.ccxt_source import ExchangeUnavailableError, unavailable_message
from core.data.clean import clean_candles
from core.data.files import load_file, load_trades, parse_series_exchange, parse_series_name, to_ms
from core.data.sources import source_for
from core.data.store import MarketStore
from core.data.validate import validate_trades
from core.market import Calendar, market_for
from core.types import SeriesKey, timeframe_ms


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="market data: import, download, list, export")
    sub = p.add_subparsers(dest="data_command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--db", default=None, help="DuckDB file (default: data.db_path of the config)")

    imp = sub.add_parser("import", help="import a candle or trades file (CSV, JSON, Parquet, Feather)")
    imp.add_argument("path")
    imp.add_argument("--exchange", default=None, help="exchange id (default: data.exchange)")
    imp.add_argument("--symbol", default=None, help="e.g. BTC/USDT (default: from a name like BTC_USDT-1m.csv)")
    imp.add_argument("--timeframe", default=None, help="e.g. 1m, or 'trades' (default: from the file name)")
    imp.add_argument("--map", action="append", default=[], metavar="COL=FILECOL",
                     help="column mapping, e.g. --map ts=open_time (repeatable)")
    imp.add_argument("--rejects", default=None, metavar="PATH",
                     help="write every rejected row with its reason to this CSV")
    common(imp)
    imp.set_defaults(func=cmd_import)

    dl = sub.add_parser("download", help="download candles by REST (fetch_ohlcv pagination)")
    dl.add_argument("--exchange", default=None)
    dl.add_argument("--symbol", required=True)
    dl.add_argument("--timeframe", default="1m")
    dl.add_argument("--since", required=True, help="ISO date/time (UTC) or epoch ms")
    dl.add_argument("--until", default=None, help="ISO date/time (UTC) or epoch ms (default: now)")
    common(dl)
    dl.set_defaults(func=cmd_download)

    ls = sub.add_parser("list", help="coverage table: rows, first, last, gaps per series")
    ls.add_argument("--gaps", action="store_true", help="also list every gap")
    common(ls)
    ls.set_defaults(func=cmd_list)

    ex = sub.add_parser("export", help="export one series to CSV or Parquet")
    ex.add_argument("out", help="output file (.csv or .parquet)")
    ex.add_argument("--exchange", default=None)
    ex.add_argument("--symbol", required=True)
    ex.add_argument("--timeframe", default="1m")
    ex.add_argument("--since", default=None)
    ex.add_argument("--until", default=None)
    common(ex)
    ex.set_defaults(func=cmd_export)


def _db_path(args: argparse.Namespace) -> tuple[Path, str]:
    cfg = load_config(getattr(args, "config", None))
    path = Path(args.db) if args.db else cfg.resolve(cfg.data.db_path)
    return path, cfg.data.exchange


def _time_arg(v: str | None) -> int | None:
    if v is None:
        return None
    return int(to_ms(pd.Series([v]))[0])


def _iso(ms: int) -> str:
    return pd.Timestamp(int(ms), unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M")


def cmd_import(args: argparse.Namespace) -> int:
    db, default_ex = _db_path(args)
    path = Path(args.path)
    sym_guess, tf_guess = parse_series_name(path)
    symbol, timeframe = args.symbol or sym_guess, args.timeframe or tf_guess
    if symbol is None or timeframe is None:
        print(f"data import: cannot tell the {'symbol' if symbol is None else 'timeframe'} from the name "
              f"{path.name}; pass --symbol/--timeframe", file=sys.stderr)
        return 2
    try:
        market = market_for(load_config(getattr(args, "config", None)), symbol,
                            args.exchange or parse_series_exchange(path))
    except ValueError as exc:
        print(f"data import: {exc}", file=sys.stderr)
        return 2
    # a stock goes to its venue (alpaca); a pair to --exchange or data.exchange, as before
    exchange = market.exchange if market.is_stock else (args.exchange or default_ex)
    mapping = dict(m.split("=", 1) for m in args.map) if args.map else None
    filtered = ""
    with MarketStore(db) as store:
        if timeframe == "trades":
            raw = load_trades(path, mapping)
            res = validate_trades(raw, source=str(path.name))
            stored = store.upsert_trades(exchange, symbol, res.valid, validate=False)
        else:
            timeframe_ms(timeframe)
            raw = load_file(path, mapping)
            cleaned = clean_candles(raw, timeframe, market.calendar, source=str(path.name))
            res = cleaned.validation
            stored = store.upsert_candles(SeriesKey(exchange, symbol, timeframe), cleaned.candles, validate=False)
            if cleaned.session.filtered:
                filtered = f", {cleaned.filtered_text()}"
    print(f"{path.name}: {exchange} {symbol} {timeframe}: read {len(raw)} rows, stored {stored} "
          f"(new or changed), rejected {res.n_rejected}{filtered}")
    for reason, n in sorted(res.counts.items()):
        print(f"  rejected {reason}: {n}")
    if args.rejects and res.n_rejected:
        Path(args.rejects).parent.mkdir(parents=True, exist_ok=True)
        res.rejected.to_csv(args.rejects, index=False)
        print(f"  rejected rows written to {args.rejects}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    db, default_ex = _db_path(args)
    cfg = load_config(getattr(args, "config", None))
    try:
        market = market_for(cfg, args.symbol, args.exchange)
    except ValueError as exc:
        print(f"data download: {exc}", file=sys.stderr)
        return 2
    exchange = market.exchange if market.is_stock else (args.exchange or default_ex)
    if not market.is_stock and exchange != market.exchange:
        market = market_for(cfg, args.symbol, exchange)
    since, until = _time_arg(args.since), _time_arg(args.until)
    key = SeriesKey(exchange, args.symbol, args.timeframe)
    tf = timeframe_ms(args.timeframe)
    try:
        src = source_for(cfg, market, args.timeframe, websocket=False)
    except ValueError as exc:
        print(f"data download: {exc}", file=sys.stderr)
        return 2
    assert since is not None
    end = until or int(pd.Timestamp.now(tz="UTC").value // 1_000_000)
    total_bars = max(1, (end - since) // tf)
    counts = {"stored": 0, "rejected": 0, "read": 0, "filtered": 0}
    with MarketStore(db) as store, Progress(
        TextColumn(f"{exchange} {args.symbol} {args.timeframe}"), BarColumn(),
        TextColumn("{task.completed}/{task.total} bars"), TimeRemainingColumn()
    ) as progress:
        task = progress.add_task("download", total=total_bars)

        def on_batch(df: pd.DataFrame) -> None:
            cleaned = clean_candles(df, args.timeframe, market.calendar, source=exchange)
            counts["read"] += len(df)
            counts["rejected"] += cleaned.validation.n_rejected
            counts["filtered"] += cleaned.session.filtered
            counts["stored"] += store.upsert_candles(key, cleaned.candles, validate=False)
            progress.update(task, completed=min(total_bars, (int(df["ts"].iat[-1]) + tf - since) // tf))

        async def go() -> None:
            try:
                await src.fetch_range(args.symbol, since, until, on_batch)
            finally:
                if isinstance(src, AlpacaSource):
                    await src.close()
                else:
                    await src.exchange.close()

        try:
            asyncio.run(go())
        except ExchangeUnavailableError as exc:
            print(f"data download: {exc}", file=sys.stderr)
            return 3
        except Exception as exc:  # ccxt/Alpaca errors: say what and suggest another exchange when relevant
            msg = unavailable_message(exchange, exc) or f"{type(exc).__name__}: {exc}"
            print(f"data download: {msg}", file=sys.stderr)
            return 3
    extra = f", filtered {counts['filtered']} outside the {market.session} session" if counts["filtered"] else ""
    print(f"downloaded {counts['read']} candles, stored {counts['stored']} (new or changed), "
          f"rejected {counts['rejected']}{extra}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    db, _ = _db_path(args)
    if not db.exists():
        print(f"data list: no database at {db}", file=sys.stderr)
        return 1
    cfg = load_config(getattr(args, "config", None))

    def calendar(key: SeriesKey) -> Calendar:  # stocks: nights, weekends and holidays are no gaps
        return market_for(cfg, key.symbol, key.exchange).calendar

    with MarketStore(db) as store:
        cov = store.coverage(calendar)
        table = Table(title=f"candles in {db}")
        for c in ("exchange", "symbol", "timeframe", "rows", "first", "last", "gaps", "missing bars"):
            table.add_column(c, justify="right" if c in ("rows", "gaps", "missing bars") else "left")
        for r in cov.itertuples(index=False):
            table.add_row(r.exchange, r.symbol, r.timeframe, f"{r.rows:,}", _iso(r.first), _iso(r.last),
                          f"{r.gaps:,}", f"{r.missing_bars:,}")
        Console(width=140).print(table)
        if args.gaps:
            for key in store.series():
                try:
                    cal: Calendar | None = calendar(key)
                except ValueError:
                    cal = None
                for g in store.gaps(key, cal):
                    print(f"gap {key.exchange} {key.symbol} {key.timeframe}: {_iso(g.start_ms)} .. "
                          f"{_iso(g.end_ms)} ({g.missing_bars} missing)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    db, default_ex = _db_path(args)
    key = SeriesKey(args.exchange or default_ex, args.symbol, args.timeframe)
    with MarketStore(db, read_only=True) as store:
        df = store.candles(key, _time_arg(args.since), _time_arg(args.until))
    if df.empty:
        print(f"data export: no candles for {key.exchange} {key.symbol} {key.timeframe}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df = df.assign(timestamp=pd.to_datetime(df["ts"], unit="ms", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    df = df[["timestamp", "open", "high", "low", "close", "volume"]]
    if out.suffix.lower() in (".parquet", ".pq"):
        df.to_parquet(out, index=False)
    elif out.suffix.lower() == ".csv":
        df.to_csv(out, index=False)
    else:
        print(f"data export: unknown format {out.suffix!r}; use .csv or .parquet", file=sys.stderr)
        return 2
    print(f"exported {len(df)} candles to {out}")
    return 0
