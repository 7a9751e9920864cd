"""``moemix jobs list | status JOB | logs JOB [--follow] | stop JOB | fetch JOB --out FILE``: the jobs
``moemix submit`` sent to a Ray cluster, in the manner of ``ray job``."""

from __future__ import annotations

import argparse
import json
import os
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("jobs", help="list, inspect, follow, stop and fetch submitted Ray jobs")
    sub = p.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)

    def action(name: str, help_text: str, func, job: bool = True) -> argparse.ArgumentParser:
        a = sub.add_parser(name, help=help_text)
        if job:
            a.add_argument("job", metavar="JOB", help="the job's submission id (as submit printed it)")
        a.add_argument(
            "--address",
            default=os.environ.get("RAY_ADDRESS"),
            help="Ray dashboard address, e.g. http://head:8265 (default: $RAY_ADDRESS)",
        )
        a.set_defaults(func=func)
        return a

    a = action("list", "every job of the cluster, newest first", _cmd_list, job=False)
    a.add_argument("--json", action="store_true", help="print the jobs as JSON")
    a = action("status", "a job's status, message and run directory", _cmd_status)
    a.add_argument("--json", action="store_true", help="print the status as JSON")
    a = action("logs", "a job's log", _cmd_logs)
    a.add_argument("--follow", action="store_true", help="stream the log until the job ends")
    action("stop", "stop a job (its run dir keeps what it finished; submit again to resume)", _cmd_stop)
    a = action("fetch", "get a finished job's mixture.json from its log", _cmd_fetch)
    a.add_argument("--out", required=True, help="where to write the mixture.json (atomically)")


def _cmd_list(args: argparse.Namespace) -> int:
    from moemix.ray_jobs.submit import list_jobs

    rows = list_jobs(args.address)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'JOB':<28} {'STATUS':<10} {'STARTED':<19} ENTRYPOINT")
    for r in rows:
        ms = r["start_time"]
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"
        print(f"{r['job']:<28} {r['status']:<10} {started:<19} {r['entrypoint']}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from moemix.ray_jobs.submit import job_info

    info = job_info(args.address, args.job)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"{info['job']}: {info['status']}" + (f" ({info['message']})" if info["message"] else ""))
        if info["out"]:
            print(f"run dir: {info['out']}  (moemix status {info['out']} where the storage is visible)")
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    from moemix.ray_jobs.submit import job_logs

    print(job_logs(args.address, args.job, follow_logs=args.follow), end="")
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    from moemix.ray_jobs.submit import stop_job

    print(f"{args.job}: {stop_job(args.address, args.job)}")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from moemix.ray_jobs.submit import fetch_mixture

    print(f"mixture.json: {fetch_mixture(args.address, args.job, args.out)}")
    return 0
