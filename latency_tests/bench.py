"""`voice bench`: placeholder replaced below."""
from __future__ import annotations
import argparse
def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8000")
async def run_bench(args: argparse.Namespace) -> int:
    return 1
