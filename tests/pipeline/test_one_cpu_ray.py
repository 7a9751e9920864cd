"""On a 1-CPU Ray (a small VM or container) every Ray stage finishes, or refuses at once in one line:
work that needs more CPUs at a time than the cluster has would otherwise wait forever, silently."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml

SCRIPT = """
import json, sys
from moemix.errors import MoemixError
from moemix.pipeline.config import load_config
from moemix.ray_jobs.pipeline import run_pipeline
path, out = sys.argv[1], sys.argv[2]
def attempt(name, overrides, **kw):
    run_dir = f"{out}/{'swarm' if name == 'swarm' else 'run'}"
    try:
        res = run_pipeline(load_config(path, overrides=overrides), run_dir, progress=False, **kw)
        print(json.dumps({name: "finished", "mixture": str(res.mixture_path)}), flush=True)
    except MoemixError as e:
        print(json.dumps({name: "refused", "message": str(e)}), flush=True)
attempt("swarm", {"proxies": {"num_cpus_per_proxy": 2}}, until="proxies")
# the same run dir twice: the second attempt reuses the swarm and fit of the first
attempt("pretrain", {"pretrain": {"num_workers": 2}})
attempt("whole", {})
"""


@pytest.mark.slow
def test_every_ray_stage_finishes_or_refuses_on_one_cpu(tmp_path, tiny_config):
    tiny_config["ray"]["num_cpus"] = 1
    tiny_config["proxies"]["scale_check"] = {"n_mixtures": 0}
    tiny_config["proxies"]["uniform_seeds"] = 1
    # one baseline is enough to see the pretrain stage through on one CPU (each run is a Ray Train job)
    tiny_config["pretrain"]["compare_natural"] = False
    path = tmp_path / "one_cpu.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path), str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    swarm, pretrain, whole = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert swarm["swarm"] == "refused", swarm
    assert swarm["message"].startswith("proxies: needs 2 CPUs at a time but the Ray cluster has 1 CPUs")
    assert "proxies.num_cpus_per_proxy" in swarm["message"] and "\n" not in swarm["message"]
    assert pretrain["pretrain"] == "refused", pretrain
    assert pretrain["message"].startswith("pretrain (2 workers): needs 2 CPUs at a time but the Ray cluster")
    assert whole["whole"] == "finished" and whole["mixture"].endswith("mixture.json"), whole
    assert time.time() - start < 800
