"""``moemix report RUN_DIR``: (re)write ``RUN_DIR/report.html`` from the run dir's files alone.

Works on a finished run, on one still going (shared storage) and on one that stopped part-way; the
page says which sections have no data yet. ``moemix run`` writes the same page when it finishes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from moemix.errors import MoemixError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="write RUN_DIR/report.html: one self-contained page about a run (opens offline)"
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out directory of moemix run (or of a submit)")
    p.add_argument(
        "--out", metavar="FILE", help="write the page here instead of RUN_DIR/report.html (e.g. to share it)"
    )
    p.set_defaults(func=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from moemix._io import write_text_atomic
    from moemix.pipeline.run_status import check_run_dir
    from moemix.report import REPORT_NAME, render
    from moemix.report.collect import collect

    run_dir = check_run_dir(args.run_dir)  # one line when it is not a run dir
    started = time.perf_counter()
    out = Path(args.out) if args.out else run_dir / REPORT_NAME
    page = render(collect(run_dir))
    try:
        write_text_atomic(out, page)
    except OSError as e:
        raise MoemixError(f"{out}: cannot write the report ({e.strerror or e})") from None
    print(f"report.html: {out} ({len(page.encode()) / 1024:.0f} KB, {time.perf_counter() - started:.2f} s)")
    return 0
