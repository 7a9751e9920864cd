"""``moemix status RUN_DIR [--json]``: which stages are complete, the swarm's progress, pretraining's
step and loss, the guard's decision and where mixture.json is. Reads files only: works on shared
storage while the run goes on, and after it ended."""

from __future__ import annotations

import argparse
import json

from moemix.pipeline.run_status import format_status, run_status


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "status",
        help="where a run directory stands: stages, proxies done/failed/total, pretraining step and loss",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out directory of moemix run (or of a submit)")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(func=_cmd_status)


def _cmd_status(args: argparse.Namespace) -> int:
    st = run_status(args.run_dir)
    print(json.dumps(st.to_dict(), indent=2) if args.json else format_status(st))
    return 0
