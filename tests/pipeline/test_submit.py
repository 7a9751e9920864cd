"""`moemix submit` against a real Ray cluster started with `ray start --head` on this machine."""

from __future__ import annotations

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
from moemix.ray_jobs.submit import build_entrypoint, build_runtime_env, submit_pipeline


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
        proc = None
        deadline = time.time() + 90
        while time.time() < deadline:
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "moemix.cli",
                    "submit",
                    "tiny.yaml",
                    "--address",
                    address,
                    "--out",
                    str(tmp_path / "run"),
                ],
                env={**env, "RAY_AUTH_MODE": "token"},
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=400,
            )
            starting = ("cannot reach the Ray cluster", "No available agent")
            if not any(msg in proc.stderr for msg in starting):
                break
            time.sleep(3)  # dashboard or its job agent still starting
        assert proc is not None and proc.returncode == 0, (
            proc.stderr[-2000:] + (tmp_path / "head.log").read_text()[-2000:]
        )
        assert "submitted job" in proc.stdout
        doc = load_mixture(tmp_path / "run" / "mixture.json")
        assert abs(sum(doc.weights.values()) - 1) < 1e-9 and doc.n_proxies == 8 + 2  # + 2 more uniform seeds
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        head_log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)
