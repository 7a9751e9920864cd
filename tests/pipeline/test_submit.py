"""`moemix submit` against a real Ray cluster started with `ray start --head` on this machine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from moemix.mixing.schema import load_mixture
from moemix.ray_jobs.submit import (
    MIXTURE_BEGIN,
    MIXTURE_END,
    build_entrypoint,
    build_runtime_env,
    mixture_from_logs,
    submission_id,
    submit_pipeline,
)


def test_entrypoint_quotes_arguments():
    ep = build_entrypoint("conf dir/c.yaml", "/shared/run 1", ["proxies.sampler.n_mixtures=8"])
    assert (
        ep == "moemix run 'conf dir/c.yaml' --out '/shared/run 1' --quiet --set proxies.sampler.n_mixtures=8"
    )
    env = build_runtime_env(Path("/x"), pip_spec="moemix==0.1.0")
    assert env["working_dir"] == "/x" and env["pip"] == ["moemix==0.1.0"]


def test_unreachable_cluster_is_one_clear_error(tmp_path):
    from moemix.errors import MoemixError

    with pytest.raises(MoemixError, match="cannot reach the Ray cluster at http://127.0.0.1:9"):
        submit_pipeline(None, "http://127.0.0.1:9", str(tmp_path / "run"), [], wait=False)


def test_submission_id_is_the_experiment():
    a = submission_id("cfg: 1", ["x=1"], "/shared/run")
    assert a == submission_id("cfg: 1", ["x=1"], "/shared/run")
    assert (
        len(
            {
                a,
                submission_id("cfg: 2", ["x=1"], "/shared/run"),
                submission_id("cfg: 1", [], "/shared/run"),
                submission_id("cfg: 1", ["x=1"], "/shared/run2"),
            }
        )
        == 4
    )


def test_fetch_reads_the_last_mixture_of_a_log():
    from moemix.errors import MoemixError

    log = f'noise\n{MIXTURE_BEGIN}\n{{"a": 1}}\n{MIXTURE_END}\n{MIXTURE_BEGIN}\n{{"a": 2}}\n{MIXTURE_END}\n'
    assert mixture_from_logs(log, "j") == {"a": 2}
    with pytest.raises(MoemixError, match="job j: its log holds no mixture.json"):
        mixture_from_logs("still running", "j")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_submit_runs_the_pipeline_as_a_ray_job(tmp_path, tiny_config):
    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.exists():
        pytest.skip("ray CLI not installed next to the interpreter")
    cfg = {k: v for k, v in tiny_config.items() if k != "ray"}
    cfg["pretrain"]["enabled"] = False
    cfg["proxies"]["scale_check"]["n_mixtures"] = 0
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    dash = _free_port()
    # Ray's socket paths must stay under the 107-byte AF_UNIX limit: a short temp dir, not tmp_path
    ray_tmp = tempfile.mkdtemp(prefix="mxray", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["PATH"] = f"{ray_bin.parent}{os.pathsep}{env.get('PATH', '')}"
    head_log = open(tmp_path / "head.log", "w")  # noqa: SIM115 - outlives this block, closed in finally
    head = subprocess.Popen(
        [
            str(ray_bin),
            "start",
            "--head",
            "--block",
            "--num-cpus",
            "2",
            "--port",
            str(_free_port()),
            "--dashboard-port",
            str(dash),
            "--include-dashboard",
            "true",
            "--object-store-memory",
            "150000000",
            # own ports for every agent: the test session's Ray already holds the default ones
            "--dashboard-agent-listen-port",
            str(_free_port()),
            "--dashboard-agent-grpc-port",
            str(_free_port()),
            "--metrics-export-port",
            str(_free_port()),
            "--runtime-env-agent-port",
            str(_free_port()),
            "--ray-client-server-port",
            str(_free_port()),
            "--temp-dir",
            ray_tmp,
            "--disable-usage-stats",
        ],
        env=env,
        stdout=head_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=tmp_path,
    )
    try:
        address = f"http://127.0.0.1:{dash}"
        cli_env = {**env, "RAY_AUTH_MODE": "token"}

        def moemix(*argv: str, timeout: float = 400) -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, "-m", "moemix.cli", *argv],
                env=cli_env,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=timeout,
            )

        submit = ["submit", "tiny.yaml", "--address", address, "--out", str(tmp_path / "run"), "--no-wait"]
        proc = None
        deadline = time.time() + 90
        while time.time() < deadline:
            proc = moemix(*submit)
            starting = ("cannot reach the Ray cluster", "No available agent")
            if not any(msg in proc.stderr for msg in starting):
                break
            time.sleep(3)  # dashboard or its job agent still starting
        assert proc is not None and proc.returncode == 0, (
            proc.stderr[-2000:] + (tmp_path / "head.log").read_text()[-2000:]
        )
        job = proc.stdout.split("submitted job ")[1].split()[0]
        assert job.startswith("moemix-")
        # the same experiment again: the same job, not a duplicate
        again = moemix(*submit)
        assert again.returncode == 0 and f"attached to job {job} " in again.stdout, (
            again.stdout + again.stderr
        )
        followed = moemix("jobs", "logs", job, "--follow", "--address", address)
        assert followed.returncode == 0, followed.stderr[-2000:]
        status = moemix("jobs", "status", job, "--address", address, "--json")
        assert json.loads(status.stdout)["status"] == "SUCCEEDED"
        assert json.loads(status.stdout)["out"] == str(tmp_path / "run")
        listed = json.loads(moemix("jobs", "list", "--address", address, "--json").stdout)
        assert [r["job"] for r in listed].count(job) == 1 and len(listed) == 1
        assert "mixture.json" in moemix("jobs", "logs", job, "--address", address).stdout
        fetched = moemix("jobs", "fetch", job, "--address", address, "--out", str(tmp_path / "fetched.json"))
        assert fetched.returncode == 0, fetched.stderr
        doc = load_mixture(tmp_path / "run" / "mixture.json")
        assert abs(sum(doc.weights.values()) - 1) < 1e-9 and doc.n_proxies == 8 + 2  # + 2 more uniform seeds
        assert load_mixture(tmp_path / "fetched.json").weights == doc.weights
        # another experiment, stopped while it runs
        other = moemix(*submit[:4], "--out", str(tmp_path / "run2"), "--no-wait")
        other_job = other.stdout.split("submitted job ")[1].split()[0]
        assert other_job != job
        stopped = moemix("jobs", "stop", other_job, "--address", address)
        assert stopped.returncode == 0 and stopped.stdout.strip() == f"{other_job}: STOPPED", stopped.stdout
        # Ctrl-C while following: the job keeps running, and the command says how to stop it
        following = subprocess.Popen(
            [sys.executable, "-m", "moemix.cli", *submit[:4], "--out", str(tmp_path / "run3")],
            env=cli_env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        first = following.stdout.readline()
        assert first.startswith("submitted job "), first
        third = first.split()[2]
        time.sleep(2)
        following.send_signal(signal.SIGINT)
        _, err = following.communicate(timeout=60)
        assert following.returncode == 2 and f"job {third} keeps running on the cluster" in err, err
        assert f"moemix jobs stop {third}" in err
        assert json.loads(moemix("jobs", "status", third, "--address", address, "--json").stdout)[
            "status"
        ] in (
            "PENDING",
            "RUNNING",
        )
        assert moemix("jobs", "stop", third, "--address", address).stdout.strip() == f"{third}: STOPPED"
        missing = moemix("jobs", "status", "moemix-nope", "--address", address)
        assert missing.returncode == 2 and "no job 'moemix-nope'" in missing.stderr
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        head_log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)
