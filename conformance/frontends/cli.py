"""The ``attnspec`` command line.

Each command lives in its own module exposing ``register(subparsers)``, which adds an argparse
sub-parser whose ``func(args) -> int`` is the command. Exit codes: 0 success (every applicable case
passed), 1 a case failed or errored, 2 usage error or bad input.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (command modules registered at top level, bench modules registered under `attnspec bench`)
COMMAND_MODULES = [
    "attnspec.conformance.frontends.cli_conform",
    "attnspec.conformance.frontends.cli_audit",
    "attnspec.conformance.frontends.cli_instances",
    "attnspec.conformance.frontends.cli_publish",
]
BENCH_MODULES: list[str] = [
    "attnspec.bench.softmax_attention",
    "attnspec.bench.polynomial_attention",
    "attnspec.bench.tensor_attention",
    "attnspec.bench.dynamic_attention",
    "attnspec.bench.reductions_hmv",
    "attnspec.bench.reductions_maxip",
    "attnspec.bench.heavy_keys",
    "attnspec.bench.distributed",
    "attnspec.bench.streaming_attention",
    "attnspec.bench.judge",
    "attnspec.bench.tolerance",
]


def build_parser() -> argparse.ArgumentParser:
    from attnspec import __version__

    parser = argparse.ArgumentParser(prog="attnspec", description="Certified attention semantics and conformance checks.")
    parser.add_argument("--version", action="version", version=f"attnspec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    if BENCH_MODULES:
        bench = sub.add_parser("bench", help="benchmarks: method and baseline side by side")
        bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")
        for name in BENCH_MODULES:
            importlib.import_module(name).register(bench_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
