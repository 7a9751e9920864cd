"""``moemix plan [CONFIG] [--set KEY=VALUE]``: per-device memory of the proxy and pretraining runs.

Prints what one device holds (GiB) for one proxy (a single process) and for one pretraining worker
(``pretrain.num_workers`` ranks under ``pretrain.parallel``), and whether pretraining fits
``pretrain.device_memory_gb``; when it does not, the one-line reason and exit code 2, as
``moemix run`` would refuse it. CONFIG is a YAML file or a preset's name (``cluster-gpu``): a plan
reads no data, so a preset's source paths need not exist on this machine.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moemix.training.memory_plan import MemoryPlan

# memory_plan imports torch (~2 s on a slow machine): imported where a plan is made, not when every
# moemix command builds its parser


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plan",
        help="per-device memory of the proxy and pretraining runs; refuses a pretraining run that cannot fit",
        description="Per-device bytes of parameters, gradients, optimizer state and activations for the "
        "proxy and pretraining models under the configured mesh, micro-batch and checkpointing.",
    )
    p.add_argument("config", nargs="?", help="config YAML or preset name (default: the demo preset)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.set_defaults(func=_cmd_plan)


def _count(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _bytes(n: int) -> str:
    """GiB from 1 GiB up (two decimals, as the refusal line rounds), else MiB / KiB."""
    from moemix.training.memory_plan import GIB

    if n == 0:
        return "0"
    if n >= GIB:
        return f"{n / GIB:.2f} GiB"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    return f"{n / 1024:.0f} KiB"


def _rows(plan: MemoryPlan) -> list[tuple[str, str]]:
    from moemix.training.memory_plan import TRAIN_PARTS

    g = _bytes
    rep, shard = plan.mesh
    micro = f"{plan.micro_batch} x {plan.seq_len} tok, {plan.micro_batches}/step"
    rows = [
        ("parameters", _count(plan.n_params)),
        ("world (replicate x shard)", f"{plan.world_size} ({rep} x {shard})"),
        ("expert parallel (ep)", str(plan.ep)),
        ("micro-batch per rank", micro),
        ("checkpointing", plan.checkpointing),
        ("compute / gathered dtype", f"{plan.compute_dtype} / {plan.gathered_dtype}"),
        ("attention / experts", f"{plan.attention} / {plan.experts_kernel}"),
    ]
    rows += [(name, g(getattr(plan, name))) for name in TRAIN_PARTS]
    rows += [
        ("  (saved at end of forward)", g(plan.saved_activations)),
        ("train total", g(plan.train_total)),
        ("final evaluation", g(plan.eval_peak)),
        ("needs", g(plan.total)),
    ]
    return rows


def format_plans(plans: dict[str, MemoryPlan], limits: dict[str, float | None]) -> str:
    """The plans side by side (GiB per device), with each one's declared memory and verdict."""
    from moemix.training.memory_plan import GIB

    table = {name: _rows(p) for name, p in plans.items()}
    labels = [label for label, _ in next(iter(table.values()))]
    for name, plan in plans.items():
        limit = limits.get(name)
        if limit is None:
            table[name] += [("device memory", "not declared"), ("fits", "-")]
        else:
            spare = limit - plan.total / GIB
            verdict = f"yes, {spare:.1f} GiB spare" if spare >= 0 else f"NO, {-spare:.1f} GiB over"
            table[name] += [("device memory", f"{limit:g} GiB"), ("fits", verdict)]
    labels += ["device memory", "fits"]
    width = max(len(s) for s in labels) + 2
    cols = {name: max(len(name), *(len(v) for _, v in rows)) + 2 for name, rows in table.items()}
    lines = ["per device".ljust(width) + "".join(n.rjust(cols[n]) for n in plans)]
    for i, label in enumerate(labels):
        lines.append(label.ljust(width) + "".join(table[n][i][1].rjust(cols[n]) for n in plans))
    return "\n".join(lines)


def _cmd_plan(args: argparse.Namespace) -> int:
    from moemix.cli.main import _parse_set
    from moemix.errors import MoemixError
    from moemix.pipeline.config import load_config_or_preset
    from moemix.pipeline.memory import pretrain_plan, proxy_plan
    from moemix.training.memory_plan import fit_problem

    cfg = load_config_or_preset(args.config, _parse_set(args.set))
    plans = {"proxy": proxy_plan(cfg), "pretrain": pretrain_plan(cfg)}
    limit = cfg.pretrain.device_memory_gb
    print(format_plans(plans, {"pretrain": limit}))
    problem = fit_problem(plans["pretrain"], limit, "pretrain") if cfg.pretrain.enabled else None
    if problem is not None:
        raise MoemixError(problem)
    return 0
