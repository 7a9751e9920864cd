"""``moemix submit``: send the same ``moemix run`` entrypoint to a Ray cluster as a Ray job.

Inside the job, ``ray.init()`` attaches through RAY_ADDRESS (set by the job supervisor), so the
laptop and cluster paths run identical code. The run directory must be on storage every node sees.
With token auth (Ray's default), export the cluster's token and RAY_AUTH_MODE=token before submitting.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from pathlib import Path

from moemix import __version__
from moemix.errors import MoemixError

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


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


def submit_pipeline(
    config: str | None,
    address: str | None,
    out: str,
    overrides: list[str],
    working_dir: str | None = None,
    wait: bool = True,
    pip_spec: str | None = None,
) -> str:
    if not address:
        raise MoemixError("submit: no cluster address; pass --address http://HEAD:8265 or set RAY_ADDRESS")
    config_name = None
    if config is not None:
        cfg_path = Path(config)
        if not cfg_path.exists():
            raise MoemixError(f"config file not found: {cfg_path}")
        wd = Path(working_dir) if working_dir else cfg_path.resolve().parent
        try:
            config_name = str(cfg_path.resolve().relative_to(wd.resolve()))
        except ValueError:
            raise MoemixError(f"submit: config {cfg_path} is not inside --working-dir {wd}") from None
    else:
        wd = Path(working_dir) if working_dir else Path.cwd()
    from ray.job_submission import JobSubmissionClient

    try:
        client = JobSubmissionClient(address)
    except Exception as e:  # connection refused, auth, bad URL: one line for the user
        raise MoemixError(
            f"submit: cannot reach the Ray cluster at {address}: {str(e).splitlines()[0]}"
        ) from None
    try:
        job_id = client.submit_job(
            entrypoint=build_entrypoint(config_name, out, overrides),
            runtime_env=build_runtime_env(wd, pip_spec),
            metadata={"moemix_version": __version__},
        )
    except Exception as e:  # e.g. HTTP 500 "No available agent to submit job" while the head is starting
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        raise MoemixError(
            f"submit: the cluster at {address} refused the job: {lines[-1] if lines else e!r}"
        ) from None
    if wait:
        _follow(client, job_id)
    return job_id


def _follow(client, job_id: str) -> None:  # ray type, imported lazily
    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="")

    try:
        asyncio.run(tail())
    except Exception:
        # log streaming is best effort; fall back to polling the status
        while client.get_job_status(job_id).value not in TERMINAL:
            time.sleep(5)
    status = client.get_job_status(job_id).value
    if status != "SUCCEEDED":
        raise MoemixError(f"submit: job {job_id} ended {status}; see `ray job logs {job_id}`")
