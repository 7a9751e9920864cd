"""``moemix status RUN_DIR``: read from the run dir's files alone, during and after a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from moemix.errors import MoemixError
from moemix.pipeline.config import load_config
from moemix.pipeline.run_lock import RunLock
from moemix.pipeline.run_status import format_status, run_status
from moemix.pipeline.stages import domains_stage, proxies_stage
from moemix.proxies.run import run_sequential


class _Stop(Exception):
    pass


@pytest.mark.slow
def test_status_counts_a_swarm_in_flight_then_the_finished_stages(tmp_path, small_swarm_config):
    cfg, run = load_config(small_swarm_config), tmp_path / "run"
    domains = domains_stage(cfg, run, progress=False)

    def three_then_crash(specs):  # a swarm killed after 3 of its 8 proxies
        run_sequential(specs[:3])
        raise _Stop

    with pytest.raises(_Stop):
        proxies_stage(cfg, run, domains, three_then_crash)
    st = run_status(run)
    by = {s.name: s for s in st.stages}
    assert by["domains"].state == "complete" and by["domains"].detail["domains"] == len(domains.domains)
    assert by["proxies"].state == "running"
    assert by["proxies"].detail == {"ok": 3, "failed": 0, "total": 8, "rounds": 1}
    assert by["fit"].state == "not started" and st.mixture is None and st.lock is None
    assert "3/8 proxies done" in format_status(st)

    proxies_stage(cfg, run, domains, run_sequential)
    st = run_status(run)
    proxies = next(s for s in st.stages if s.name == "proxies")
    assert proxies.state == "complete" and proxies.detail == {"ok": 8, "failed": 0, "total": 8}


def test_pretraining_progress_and_the_lock_holder(tmp_path):
    run = tmp_path / "run"
    chosen = run / "pretrain" / "abc123" / "chosen"
    chosen.mkdir(parents=True)
    rows = [{"step": 50, "loss": 6.9}, {"step": 100, "loss": 5.68}]
    (chosen / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 1')
    (run / "mixture.json").write_text(json.dumps({"decision": {"action": "baseline", "reason": "r"}}))
    with RunLock(run):
        st = run_status(run)
        assert st.lock is not None and str(os.getpid()) in st.lock
    pre = next(s for s in st.stages if s.name == "pretrain")
    assert pre.state == "running"
    assert pre.detail["runs"]["chosen"] == {"step": 100, "steps": None, "loss": 5.68, "done": False}
    assert st.decision == {"action": "baseline", "baseline": None, "reason": "r"}
    assert run_status(run).lock is None  # released


def test_cli_status_json_and_one_line_errors(tmp_path):
    (tmp_path / "run" / "domains").mkdir(parents=True)
    out = subprocess.run(
        [sys.executable, "-m", "moemix.cli", "status", str(tmp_path / "run"), "--json"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert [s["state"] for s in json.loads(out.stdout)["stages"]] == ["not started"] * 5
    bad = subprocess.run(
        [sys.executable, "-m", "moemix.cli", "status", str(tmp_path)], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "not a moemix run directory" in bad.stderr
    with pytest.raises(MoemixError, match="no such run directory"):
        run_status(tmp_path / "nope")
