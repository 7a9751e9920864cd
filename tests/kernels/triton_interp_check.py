"""Run by test_triton_interpret.py in a subprocess: TRITON_INTERPRET must be set before triton is
imported, and setting it in the pytest process would leak into every other test.

Prints one JSON object: max abs error of every output/gradient per case, vs the reference impl.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from test_moe_ffn import CASES, NAMES, make_case, run  # noqa: E402

from moemix.moe_model import MoEConfig, MoETransformer  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    report: dict[str, dict[str, float]] = {}
    for case, kw in CASES.items():
        args = make_case(**kw)
        ref = run("reference", *args)
        got = run("triton", *args)
        report[case] = {
            n: (g - r).abs().max().item() / max(r.abs().max().item(), 1e-6)
            for n, r, g in zip(NAMES, ref, got)
        }
    # bf16 storage (fp32 accumulation) vs the fp32 reference: relative Frobenius error
    x, idx, w, w1, w2 = make_case(t=40, d=32, f=32, e=4, k=2)
    ref = run("reference", x, idx, w, w1, w2)
    got = run("triton", x.bfloat16(), idx, w, w1.bfloat16(), w2.bfloat16())
    report["bf16"] = {n: ((g.float() - r).norm() / r.norm()).item() for n, r, g in zip(NAMES, ref, got)}
    # whole model: triton impl == reference impl
    outs = {}
    for impl in ("reference", "triton"):
        torch.manual_seed(0)
        cfg = MoEConfig(
            vocab_size=64,
            max_seq_len=16,
            d_model=32,
            n_heads=2,
            n_experts=4,
            top_k=2,
            d_expert=16,
            kernel_impl=impl,
        )
        model = MoETransformer(cfg)
        ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
        out = model(ids, ids, return_logits=True)
        out.loss.backward()
        outs[impl] = (out.logits.detach(), model.blocks[0].ffn.experts.w_down.grad)
    report["model"] = {
        n: (g - r).abs().max().item() / r.abs().max().item()
        for n, r, g in zip(("logits", "dw_down"), outs["reference"], outs["triton"])
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
