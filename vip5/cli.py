"""The `vip5` command: one CLI, subcommands contributed by each package.

Each package that offers commands has a `cli.py` with `register(commands, bench)`; it adds its
subcommands to `commands` and its benchmarks to `bench` (`vip5 bench <name>`) with
`runtime.cli.add_command`. Handlers import heavy modules lazily so `vip5 --help` stays fast.

Convention for every subcommand: `--json` prints exactly one JSON object on stdout; logs and
progress go to stderr. A handler returns a dict (the result) and an exit status.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from runtime import logs

# Packages that contribute commands, in --help order. A module missing here is skipped.
COMMAND_MODULES = (
    "vip5.commands", "vip5.demo", "vip5.subscribe", "vip5.bench_pipeline", "vip5.bench_faults",
    "vip5.bench_replay", "vip5.bench_streams",
    "streams.cli",
    "index.cli",
    "model_worker.cli", "model_worker.serve_cli", "model_worker.trainer_cli", "model_worker.bench_adapters",
    "vip5.train_cli", "vip5.retriever_cli",
)

def emit(result: dict, *, as_json: bool) -> None:
    """Print a command's result: one JSON object with --json, else `key: value` lines."""
    if as_json:
        sys.stdout.write(json.dumps(result, default=str) + "\n")
        return
    for key, value in result.items():
        sys.stdout.write(f"{key}: {value}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vip5", description="Streaming multimodal recommendation with VIP5.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    bench_parser = commands.add_parser("bench", help="benchmarks that print numbers (use --json)")
    bench = bench_parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue
        module.register(commands, bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_format, verbose=args.verbose)
    threads = os.environ.get("VIP5_TORCH_THREADS")
    if threads:  # several workers on one machine: one thread each beats oversubscribed thread pools
        import torch

        torch.set_num_threads(int(threads))
    result = args.handler(args)
    status = int(result.pop("exit_status", 0)) if isinstance(result, dict) else 0
    if result:
        emit(result, as_json=getattr(args, "json", False))
    return status


if __name__ == "__main__":
    sys.exit(main())
