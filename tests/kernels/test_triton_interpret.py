"""Triton kernels under the CPU interpreter (fp32, small shapes), in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moemix.kernels import resolve_impl

HERE = Path(__file__).parent


@pytest.mark.slow
def test_triton_matches_reference_under_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, str(HERE / "triton_interp_check.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(report) >= {"empty_expert", "all_to_one", "k1", "odd_T", "model", "bf16"}
    for case, errs in report.items():
        bar = 2e-2 if case == "bf16" else 1e-5  # bf16: relative Frobenius error of bf16-stored results
        for name, rel in errs.items():
            assert rel < bar, f"{case}/{name}: relative error {rel:.3g}"


def test_triton_not_imported_in_this_process_and_auto(monkeypatch):
    assert os.environ.get("TRITON_INTERPRET", "0") != "1"  # the subprocess did not leak it
    import moemix.kernels.api as api

    monkeypatch.setattr(api, "triton_available", lambda: True)
    assert api.resolve_impl("auto", "cuda") == "grouped"  # verified on a GPU, but grouped_mm is faster
    monkeypatch.setattr(api, "TRITON_FASTER_ON_GPU", True)
    assert api.resolve_impl("auto", "cuda") == "triton"
    monkeypatch.setattr(api, "TRITON_VERIFIED_ON_GPU", False)
    assert api.resolve_impl("auto", "cuda") == "grouped"  # never picked unless verified
    monkeypatch.setattr(api, "TRITON_VERIFIED_ON_GPU", True)
    monkeypatch.setattr(api, "triton_available", lambda: False)
    assert api.resolve_impl("auto", "cuda") == "grouped"
    assert resolve_impl("auto", "cpu") == "grouped"


def test_triton_impl_refuses_cpu_without_interpreter():
    pytest.importorskip("triton")
    code = (
        "import torch; from moemix.kernels import moe_ffn\n"
        "x=torch.randn(4,8); i=torch.zeros(4,1,dtype=torch.long); w=torch.ones(4,1)\n"
        "try:\n  moe_ffn(x,i,w,torch.randn(2,8,8),torch.randn(2,4,8),impl='triton')\n"
        "except RuntimeError as e:\n  assert 'CUDA' in str(e); print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
