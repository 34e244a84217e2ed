"""Engine + web UI in one command: live public data, paper trading, or a replay of stored data.

    python main_dashboard.py                                   # live data from config data.exchange
    python main_dashboard.py --replay ../shared/data/binanceus/BTC_USDT-1m.csv --speed 60
    python main_dashboard.py --replay-db --speed 600           # replay what the store holds
    python main_dashboard.py --sample                          # replay the bundled sample (data/sample)
    python main_dashboard.py --replay-db --book ../shared/data/orderbook/binance-2024-08-08/raw  # + order books
    python main_dashboard.py                                   # execution.broker: ccxt + sandbox: testnet
    python main_dashboard.py --live                            # REAL money: also execution.live + keys in env

Without internet and without --replay/--replay-db it replays the bundled sample (a real 3-day BTC/USDT
1m slice in data/sample/): the first two days are history Train now learns from, the third is replayed.

Prints the URL and one line containing "Dashboard ready" (before it, without DASHBOARD_TOKEN, a one-time
login URL with a random token); served by waitress; Ctrl-C stops the engine (sources closed, ledger
flushed) and the server.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import AppConfig, ConfigError, ModelsConfig, Secrets, load_config, load_models
from core.errors import one_line

if TYPE_CHECKING:
    from core.engine import Engine

log = logging.getLogger("main_dashboard")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="main_dashboard.py", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="config.yaml path (default: ./config.yaml)")
    p.add_argument("--models", default=None, help="models.yml path (default: ./models.yml)")
    p.add_argument("--symbol", default=None, help="symbol to stream, e.g. BTC/USDT (default: data.symbols[0])")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--replay", metavar="PATH", default=None,
                     help="import this candle file (CSV/Parquet/feather) into the store, then replay it")
    src.add_argument("--replay-db", action="store_true", help="replay what the store already holds")
    src.add_argument("--sample", action="store_true",
                     help="replay the bundled sample (data/sample/BTC_USDT-1m.csv; the default offline)")
    p.add_argument("--speed", type=float, default=None,
                   help="replay speed, N x real time (default: dashboard.replay_speed)")
    p.add_argument("--host", default=None, help="bind address (default: dashboard.host, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: dashboard.port, 8050)")
    p.add_argument("--no-training", action="store_true", help="never start live training")
    p.add_argument("--live", action="store_true",
                   help="trade REAL money: also needs config execution.live: true, an exchange broker "
                        "(execution.broker: ccxt|alpaca) and keys in the environment; refused otherwise")
    p.add_argument("--db", default=None, help="DuckDB file (default: data.db_path)")
    p.add_argument("--book", metavar="PATH", default=None,
                   help="order book page: 'live' (orderbook.venues' public streams, recorded to orderbook.record_dir "
                        "and stored) or a raw book capture to replay (folder or file)")
    p.add_argument("--book-speed", type=float, default=1.0, help="book replay speed, N x real time (default 1)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def exchange_host(exchange: str) -> str:
    """The REST host of a ccxt exchange (first https URL of its ``urls['api']``)."""
    from urllib.parse import urlparse

    import ccxt

    try:
        api = getattr(ccxt, exchange)().urls.get("api")
    except AttributeError:
        raise SystemExit(f"unknown ccxt exchange {exchange!r} (config data.exchange)") from None
    stack = [api]
    while stack:
        v = stack.pop(0)
        if isinstance(v, str) and v.startswith("https://"):
            return urlparse(v).hostname or v
        if isinstance(v, dict):
            stack.extend(v.values())
    return "api.binance.us"


SAMPLE = Path(__file__).resolve().parent / "data" / "sample" / "BTC_USDT-1m.csv"
SAMPLE_HISTORY_MS = 2 * 86_400_000  # the sample's first two days are history; the third is replayed


def sample_start_ms(path: Path = SAMPLE) -> int:
    """Where the replay of the bundled sample starts: two days after its first candle."""
    import pandas as pd

    first = pd.read_csv(path, nrows=1)["timestamp"].iat[0]
    return int(pd.Timestamp(first).value // 1_000_000) + SAMPLE_HISTORY_MS


def internet_reachable(host: str = "api.binance.us", port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def build_engine(cfg: AppConfig, models: ModelsConfig, *, symbol: str | None = None,
                 replay_path: Path | None = None, replay_db: bool = False, speed: float | None = None,
                 training: bool = True, db: str | None = None, live_flag: bool = False,
                 secrets: Secrets | None = None, start_ms: int | None = None) -> Engine:
    """The Engine for live data, or a replay of the store (after importing ``replay_path``), built by
    the composition root from the command line's choices."""
    import compose
    from core.engine import ReplayConfig

    replay = None
    if replay_path is not None or replay_db:
        replay = ReplayConfig(speed=speed or cfg.dashboard.replay_speed, start_ms=start_ms)
    return compose.build_engine(cfg, models, symbol=symbol, replay_path=replay_path, replay=replay,
                                training=training, db=db, live_flag=live_flag, secrets=secrets)


def _mode_words(engine: Engine) -> str:
    """What the engine trades, in the words of the UI banner (never 'live' unless it is real money)."""
    mode = getattr(engine, "mode", "paper")
    if mode == "replay":
        return "replay"
    if mode == "live":
        return f"LIVE: real money through {engine.broker_name}"
    if mode == "testnet":
        return f"TESTNET through {engine.broker_name}"
    return "live data, PAPER account"


def _is_stock(cfg: AppConfig, symbol: str | None) -> bool:
    from core.market import market_for

    try:
        return market_for(cfg, symbol or cfg.data.symbols[0], cfg.data.exchange).is_stock
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    logging.getLogger("waitress").setLevel(logging.WARNING)
    try:
        cfg = load_config(args.config)
        models = load_models(args.models)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    host = args.host or cfg.dashboard.host
    port = cfg.dashboard.port if args.port is None else args.port
    secrets = Secrets.from_env()
    from web.auth import BindRefused, check_bind

    try:
        check_bind(host, secrets.dashboard_token)
    except BindRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    replay_path = Path(args.replay) if args.replay else None
    from core.execution.modes import trading_mode

    sample = bool(args.sample)
    try:  # the switches first: a refused --live never reaches the network or the store
        trading_mode(cfg.execution, live_flag=args.live, secrets=secrets,
                     replay=replay_path is not None or args.replay_db or sample,
                     stock=_is_stock(cfg, args.symbol))
    except RuntimeError as exc:  # LiveTradingRefused
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if replay_path is None and not args.replay_db and not sample \
            and not internet_reachable(exchange_host(cfg.data.exchange)):
        print(f"offline: the exchange {cfg.data.exchange} cannot be reached, so there is no live data; "
              f"replaying the bundled sample instead ({SAMPLE.relative_to(SAMPLE.parents[2])}). "
              "Other data: --replay FILE or --replay-db.", flush=True)
        sample = True
    start_ms = None
    if sample:
        if not SAMPLE.is_file():
            print(f"error: the bundled sample {SAMPLE} is missing (a partial checkout?)", file=sys.stderr)
            return 3
        replay_path, start_ms = SAMPLE, sample_start_ms()
    if replay_path is not None and not replay_path.is_file():
        print(f"error: --replay {replay_path}: no such file", file=sys.stderr)
        return 2
    try:
        engine = build_engine(cfg, models, symbol=args.symbol, replay_path=replay_path, replay_db=args.replay_db,
                              speed=args.speed, training=not args.no_training, db=args.db, live_flag=args.live,
                              secrets=secrets, start_ms=start_ms)
    except (ValueError, ConfigError, RuntimeError, OSError) as exc:  # RuntimeError: LiveTradingRefused, ...
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    if sample:
        engine.source_label = "replay of bundled sample (data/sample/BTC_USDT-1m.csv)"

    from web.app import create_app
    from web.server import DashboardServer

    if replay_path is not None or args.replay_db:
        src = f"imported {replay_path.name if sample else replay_path} into the store; " if replay_path else ""
        print(f"{src}replaying {engine.symbol} {engine.timeframe} at "
              f"{args.speed or cfg.dashboard.replay_speed:g}x", flush=True)
    book, book_stop, live_books = None, None, None
    if args.book == "live":  # the configured venues' public streams, recorded and stored
        from core.data.book_engine import engine_from_config
        from core.data.book_live import LiveBooks
        from core.data.book_store import BookWriter

        writer = BookWriter(engine.store, cfg.orderbook.symbol, cfg.orderbook.batch_seconds,
                            cfg.orderbook.retention_days) if getattr(engine, "store", None) is not None else None
        try:
            book = engine_from_config(cfg.orderbook, sink=writer)
        except ValueError as exc:
            print(f"error: orderbook: {exc}", file=sys.stderr)
            return 2
        live_books = LiveBooks(book, record_dir=cfg.resolve(cfg.orderbook.record_dir))
        live_books.start()
    elif args.book:
        from core.data.book_engine import engine_for_capture, start_replay

        try:
            book = engine_for_capture(Path(args.book), cfg.orderbook)
        except (OSError, ValueError) as exc:
            print(f"error: --book {args.book}: {exc}", file=sys.stderr)
            return 2
        _, book_stop = start_replay(book, Path(args.book), args.book_speed)
    if book is not None and engine.builder.orderbook:  # live decisions read the books of this process
        engine.builder.book_rows = book.summary_rows
    engine.start()
    server = None
    try:
        import compose

        app = create_app(engine, cfg, models_cfg=models, host=host, secrets=secrets,
                         backtest_components=compose.backtest_components, book=book)
        server = DashboardServer(app.server, host, port, threads=cfg.dashboard.server_threads)
        stop = threading.Event()

        def _stop(signum: int, _frame: Any) -> None:
            stop.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        base = f"http://{shown}:{server.server_port}/"
        policy = app.server.extensions["moe_auth"]
        if policy.generated:  # Jupyter's model: the one-time login URL sets a session cookie
            print("No DASHBOARD_TOKEN set: made a random token for this run. Open this URL to log in "
                  f"(it sets a session cookie):\n    {base}?token={policy.token}", flush=True)
        else:
            print("Log in with your DASHBOARD_TOKEN (API: 'Authorization: Bearer <token>').", flush=True)
        print(f"Dashboard ready at {base} "
              f"({_mode_words(engine)}; Ctrl-C to stop)", flush=True)
        server.serve_forever()
    finally:
        print("stopping: closing sources, flushing the ledger ...", flush=True)
        engine.stop()
        if book_stop is not None:
            book_stop.set()
        if live_books is not None:
            live_books.stop()
        if server is not None:
            server.server_close()
        print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    from core.errors import run_cli

    sys.exit(run_cli(main))
