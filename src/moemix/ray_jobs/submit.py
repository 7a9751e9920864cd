"""``moemix submit`` and ``moemix jobs``: the pipeline as a Ray job, over Ray's ``JobSubmissionClient``.

Inside the job, ``ray.init()`` attaches through RAY_ADDRESS (set by the job supervisor), so the
laptop and cluster paths run identical code. The run directory must be on storage every node sees.
With token auth (Ray's default), export the cluster's token and RAY_AUTH_MODE=token before submitting.

The submission id is derived from the experiment (the config's content, the overrides and the run
dir), so submitting the same experiment again attaches to its job instead of starting a duplicate; a
job of it that failed or was stopped is followed by a fresh one (``-r2``, ``-r3``, ...), which resumes
from what the run dir holds. A submitted run prints its mixture.json between two marker lines at the
end of its log, which is how ``moemix jobs fetch`` gets it to a machine that cannot see the storage.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moemix import __version__
from moemix._io import atomic_path, stable_hash
from moemix.errors import MoemixError

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
MIXTURE_BEGIN = "----- moemix mixture.json begin -----"
MIXTURE_END = "----- moemix mixture.json end -----"


@dataclass(frozen=True)
class EntrypointResources:
    """What the driver process of the job reserves on the cluster (``ray job submit --entrypoint-*``)."""

    num_cpus: float | None = None
    num_gpus: float | None = None
    memory: int | None = None  # bytes

    def as_kwargs(self) -> dict[str, Any]:
        out = {
            "entrypoint_num_cpus": self.num_cpus,
            "entrypoint_num_gpus": self.num_gpus,
            "entrypoint_memory": self.memory,
        }
        return {k: v for k, v in out.items() if v is not None}


def build_entrypoint(config_name: str | None, out: str, overrides: list[str]) -> str:
    parts = ["moemix", "run"]
    if config_name:
        parts.append(config_name)
    parts += ["--out", out, "--quiet"]
    for item in overrides:
        parts += ["--set", item]
    return " ".join(shlex.quote(p) for p in parts)


def build_runtime_env(working_dir: Path, pip_spec: str | None = None) -> dict:
    env: dict = {"working_dir": str(working_dir), "env_vars": {"MOEMIX_SUBMITTED": "1"}}
    # Clusters usually already have moemix in their image; otherwise install this version on the fly.
    if pip_spec:
        env["pip"] = [pip_spec]
    return env


def submission_id(config_text: str, overrides: list[str], out: str) -> str:
    """The experiment's job id: the same config content, overrides and run dir give the same id."""
    return "moemix-" + stable_hash({"config": config_text, "overrides": list(overrides), "out": out}, 12)


def connect(address: str | None):  # -> JobSubmissionClient
    if not address:
        raise MoemixError("no cluster address; pass --address http://HEAD:8265 or set RAY_ADDRESS")
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as e:  # connection refused, auth, bad URL: one line for the user
        raise MoemixError(f"cannot reach the Ray cluster at {address}: {str(e).splitlines()[0]}") from None


def _status(client, job_id: str) -> str | None:
    """The job's status, or None when the cluster has no such job."""
    try:
        return client.get_job_status(job_id).value
    except RuntimeError as e:  # the SDK's "Request failed with status code 404"
        if "404" in str(e) or "does not exist" in str(e):
            return None
        raise


@dataclass(frozen=True)
class Submission:
    job_id: str
    attached: bool  # an existing job of this experiment, not a new one


def submit_pipeline(
    config: str | None,
    address: str | None,
    out: str,
    overrides: list[str],
    working_dir: str | None = None,
    wait: bool = True,
    pip_spec: str | None = None,
    resources: EntrypointResources | None = None,
    stop_on_interrupt: bool = False,
    echo: Callable[[str], None] = print,
) -> Submission:
    config_name, config_text = None, "<demo preset>"
    if config is not None:
        cfg_path = Path(config)
        if not cfg_path.exists():
            raise MoemixError(f"config file not found: {cfg_path}")
        config_text = cfg_path.read_text()
        wd = Path(working_dir) if working_dir else cfg_path.resolve().parent
        try:
            config_name = str(cfg_path.resolve().relative_to(wd.resolve()))
        except ValueError:
            raise MoemixError(f"submit: config {cfg_path} is not inside --working-dir {wd}") from None
    else:
        wd = Path(working_dir) if working_dir else Path.cwd()
    try:
        client = connect(address)
    except MoemixError as e:
        raise MoemixError(f"submit: {e}") from None
    base = submission_id(config_text, overrides, out)
    job_id, status = base, None
    for attempt in range(1, 100):
        job_id = base if attempt == 1 else f"{base}-r{attempt}"
        status = _status(client, job_id)
        if status not in ("FAILED", "STOPPED"):  # free, or pending/running/succeeded: this experiment's
            break
    attached = status is not None
    if attached:
        echo(f"attached to job {job_id} ({status}): the same experiment was submitted before")
    else:
        try:
            client.submit_job(
                entrypoint=build_entrypoint(config_name, out, overrides),
                submission_id=job_id,
                runtime_env=build_runtime_env(wd, pip_spec),
                metadata={"moemix_version": __version__, "moemix_out": out},
                **(resources or EntrypointResources()).as_kwargs(),
            )
        except Exception as e:  # e.g. HTTP 500 "No available agent to submit job" while the head starts
            lines = [ln for ln in str(e).splitlines() if ln.strip()]
            raise MoemixError(
                f"submit: the cluster at {address} refused the job: {lines[-1] if lines else e!r}"
            ) from None
        echo(f"submitted job {job_id}")
    if wait:
        follow(client, job_id, address, stop_on_interrupt=stop_on_interrupt)
    return Submission(job_id, attached)


def follow(client, job_id: str, address: str | None, stop_on_interrupt: bool = False) -> str:
    """Stream the job's logs until it ends; Ctrl-C stops following (and the job, if asked)."""

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    try:
        try:
            asyncio.run(tail())
        except KeyboardInterrupt:
            raise
        except Exception:
            # log streaming is best effort; fall back to polling the status
            while client.get_job_status(job_id).value not in TERMINAL:
                time.sleep(5)
    except KeyboardInterrupt:
        if stop_on_interrupt:
            client.stop_job(job_id)
            raise MoemixError(f"interrupted: stopped job {job_id}") from None
        raise MoemixError(
            f"interrupted: job {job_id} keeps running on the cluster; follow it with "
            f"`moemix jobs logs {job_id} --follow --address {address}`, stop it with "
            f"`moemix jobs stop {job_id} --address {address}`"
        ) from None
    status = client.get_job_status(job_id).value
    if status != "SUCCEEDED":
        raise MoemixError(f"job {job_id} ended {status}; see `moemix jobs logs {job_id} --address {address}`")
    return status


# ---------------------------------------------------------------- moemix jobs
def list_jobs(address: str | None) -> list[dict[str, Any]]:
    """Every job of the cluster, newest first, with what ``moemix jobs list`` prints."""
    client = connect(address)
    rows = []
    for j in client.list_jobs():
        rows.append(
            {
                "job": j.submission_id or j.job_id,
                "status": j.status.value,
                "start_time": j.start_time,
                "entrypoint": j.entrypoint,
                "moemix": bool((j.metadata or {}).get("moemix_version")),
            }
        )
    return sorted(rows, key=lambda r: r["start_time"] or 0, reverse=True)


def job_info(address: str | None, job_id: str) -> dict[str, Any]:
    client = connect(address)
    if _status(client, job_id) is None:
        raise MoemixError(f"no job {job_id!r} on the cluster at {address}")
    info = client.get_job_info(job_id)
    return {
        "job": job_id,
        "status": info.status.value,
        "message": info.message,
        "entrypoint": info.entrypoint,
        "start_time": info.start_time,
        "end_time": info.end_time,
        "out": (info.metadata or {}).get("moemix_out"),
    }


def job_logs(address: str | None, job_id: str, follow_logs: bool = False) -> str:
    client = connect(address)
    if _status(client, job_id) is None:
        raise MoemixError(f"no job {job_id!r} on the cluster at {address}")
    if follow_logs:
        follow(client, job_id, address)
        return ""
    return client.get_job_logs(job_id)


def stop_job(address: str | None, job_id: str) -> str:
    """Ask the cluster to stop ``job_id``; returns its status once it has ended (or after 60 s)."""
    client = connect(address)
    status = _status(client, job_id)
    if status is None:
        raise MoemixError(f"no job {job_id!r} on the cluster at {address}")
    if status not in TERMINAL:
        client.stop_job(job_id)
        deadline = time.time() + 60
        while time.time() < deadline and (status := _status(client, job_id)) not in TERMINAL:
            time.sleep(1)
    return status


def mixture_from_logs(logs: str, job_id: str) -> dict[str, Any]:
    """The mixture.json a submitted run printed at the end of its log (the last one, if it ran twice)."""
    end = logs.rfind(MIXTURE_END)
    begin = logs.rfind(MIXTURE_BEGIN, 0, end if end >= 0 else None)
    if begin < 0 or end < 0:
        raise MoemixError(f"job {job_id}: its log holds no mixture.json (has the run reached it?)")
    try:
        return json.loads(logs[begin + len(MIXTURE_BEGIN) : end])
    except ValueError as e:
        raise MoemixError(f"job {job_id}: the mixture.json in its log is not valid JSON ({e})") from None


def fetch_mixture(address: str | None, job_id: str, out: str | Path) -> Path:
    """Write the job's mixture.json to ``out`` (validated against the schema first)."""
    from moemix.mixing.schema import load_mixture

    obj = mixture_from_logs(job_logs(address, job_id), job_id)
    out = Path(out)
    with atomic_path(out) as tmp:  # an existing file is replaced only by a valid mixture
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
        try:
            load_mixture(tmp)
        except MoemixError as e:
            raise MoemixError(f"job {job_id}: the mixture.json in its log is invalid: {e}") from None
    return out


def print_mixture_for_fetch(mixture_path: Path) -> None:
    """Inside a submitted job: put mixture.json into the log between the markers ``fetch`` looks for."""
    print(MIXTURE_BEGIN)
    print(Path(mixture_path).read_text().strip())
    print(MIXTURE_END, flush=True)
