"""Command line: data, train, evaluate, forecast, run (backtest), report.

Each area registers its own sub-commands (``register(subparsers)`` in the modules of CLI_MODULES),
so this file stays a thin dispatcher. Every command takes --config / --models.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from core.config import ConfigError

# module -> provides register(subparsers); order = order in --help
CLI_MODULES: list[str] = [
    "core.data.cli",  # data import|download|list|export
    "NN.training.cli",  # train | evaluate (experts, MoE gate)
    "core.backtest.cli",  # run (backtest) | report ID
    "NN.experts.kronos.cli",  # forecast (Kronos Monte-Carlo paths, summary, fan chart)
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="main_backtest.py", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="config.yaml path (default: ./config.yaml)")
    parser.add_argument("--models", default=None, help="models.yml path (default: ./models.yml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in CLI_MODULES:
        importlib.import_module(name).register(sub)
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
    sys.exit(main())
