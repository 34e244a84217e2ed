"""Command line: data, train, evaluate, forecast, run (backtest), report, walkforward, sweep, book.

Each area registers its own sub-commands (``register(subparsers)`` in its cli module, see
``register_commands``), so this file stays a thin dispatcher. Every command takes --config / --models. Every failure ends with one line on stderr and a non-zero exit
(``-v`` also prints the traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys

from core.config import ConfigError


def register_commands(sub: argparse._SubParsersAction) -> None:
    """Each area registers its own sub-commands (order = order in --help); the backtester gets its
    experts from the composition root (compose.py), since core never imports NN."""
    import compose
    from core.annotations import cli as annotations_cli
    from core.backtest import cli as backtest_cli
    from core.backtest import research_cli
    from core.data import book_cli
    from core.data import cli as data_cli
    from NN.experts.kronos import cli as kronos_cli
    from NN.training import cli as training_cli

    data_cli.register(sub)  # data import|download|list|export
    training_cli.register(sub)  # train | evaluate (experts, MoE gate)
    backtest_cli.register(sub, compose.backtest_components)  # run (backtest) | report ID
    research_cli.register(sub, compose.walkforward_trainer, compose.sweep_training_trial)  # walkforward | sweep
    kronos_cli.register(sub)  # forecast (Kronos Monte-Carlo paths, summary, fan chart)
    book_cli.register(sub)  # book record|replay|stats (consolidated order books)
    annotations_cli.register(sub, compose.backtest_components)  # annotations list|add|...|evaluate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="main_backtest.py", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="config.yaml path (default: ./config.yaml)")
    parser.add_argument("--models", default=None, help="models.yml path (default: ./models.yml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    register_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    from core.errors import run_cli

    sys.exit(run_cli(main))
