"""The ``moemix`` command: a thin layer over functions that take and return typed objects.

Every user-facing failure is a MoemixError printed as one line (``moemix: error: ...``) with exit code 2.
Subcommands owned by other modules register themselves through ``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from moemix import __version__
from moemix.errors import MoemixError
from moemix.pipeline import STAGES

# modules that add their own subcommands (fit/predict/propose, assign, plan)
COMMAND_MODULES = (
    "moemix.cli.commands.mixing",
    "moemix.cli.commands.assign",
    "moemix.cli.commands.plan",
    "moemix.cli.commands.status",
    "moemix.cli.commands.jobs",
    "moemix.cli.commands.report",
)


def _parse_set(items: list[str] | None) -> dict[str, Any]:
    """``--set proxies.sampler.n_mixtures=8`` -> nested dict (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise MoemixError(f"--set {item!r}: expected KEY=VALUE, e.g. proxies.sampler.n_mixtures=8")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def _default_out(config: str | None) -> str:
    return str(Path("runs") / (Path(config).stem if config else "demo"))


def _add_pipeline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="config YAML (default: the built-in demo preset)")
    p.add_argument("--out", help="run directory (default: runs/<config name>)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _cmd_run(args: argparse.Namespace) -> int:
    from moemix.pipeline.config import load_config
    from moemix.ray_jobs.pipeline import run_pipeline

    cfg = load_config(args.config, overrides=_parse_set(args.set))
    # stages depend on each other in a line, so "run stage X" means "run up to X" (finished ones are cached)
    until = getattr(args, "until", None) or "pretrain"
    if getattr(args, "no_pretrain", False) and until == "pretrain":
        until = "propose"
    out = Path(args.out or _default_out(args.config))
    result = run_pipeline(
        cfg, out, until=until, progress=not args.quiet, mixture=getattr(args, "mixture", None)
    )
    _print_summary(result)
    if os.environ.get("MOEMIX_SUBMITTED") and result.mixture_path is not None:
        from moemix.ray_jobs.submit import print_mixture_for_fetch  # for `moemix jobs fetch`

        print_mixture_for_fetch(result.mixture_path)
    return 0


def _print_summary(result: Any) -> None:
    """What a person wants to see at the end of a run; the mixture.json path comes last."""
    if result.domains is not None:
        print(f"domains ({len(result.domains.domains)}): {', '.join(result.domains.domains)}")
    if result.proxies is not None:
        print(f"proxies: {result.proxies.n_ok} ok, {result.proxies.n_failed} failed")
    if result.mixture_path is None:
        if result.pretrain is not None:  # pretrained on a given mixture
            _print_pretrain(result.pretrain.comparison)
            print(f"pretrain verdict: {result.pretrain.comparison['verdict']['verdict']}")
            print(f"comparison: {result.pretrain.stage.path / 'comparison.json'}")
        return
    from moemix.mixing.schema import load_mixture

    doc = load_mixture(result.mixture_path)
    cv = "n/a" if doc.cv_spearman is None else f"{doc.cv_spearman:.3f}"
    print(f"predictor: {doc.predictor} (CV Spearman {cv})")
    if doc.proposer is not None:
        print(f"proposer: {doc.proposer.name}" + (f" ({doc.proposer.why})" if doc.proposer.why else ""))
    print(
        "mixture: "
        + ", ".join(f"{d.name} {d.weight:.3f}" for d in sorted(doc.domains, key=lambda d: -d.weight))
    )

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    print(
        f"predicted target loss {fmt(doc.predicted_target_loss)} "
        f"(uniform {fmt(doc.baselines.uniform)}, natural {fmt(doc.baselines.natural)})"
    )
    if doc.scale_transfer is not None and doc.scale_transfer.warning:
        print(f"warning: {doc.scale_transfer.warning}")
    if doc.decision is not None and doc.decision.action != "optimum":
        print(f"do-no-harm guard: {doc.decision.reason}")
    if result.pretrain is not None:
        _print_pretrain(result.pretrain.comparison)
        if doc.pretrain_check is not None:
            print(f"pretrain verdict: {doc.pretrain_check.verdict}")
    print(f"mixture.json: {result.mixture_path}")


def _print_pretrain(comp: dict[str, Any]) -> None:
    line = f"pretrain target loss: chosen {comp['chosen']['target_loss']:.4f}"
    others = [f"{n} {comp[n]['target_loss']:.4f}" for n in ("uniform", "natural") if n in comp]
    if others:
        line += f" vs {', '.join(others)} (same {comp['chosen']['tokens']:,} tokens)"
    print(line)


def _cmd_stage(stage: str):
    def run(args: argparse.Namespace) -> int:
        args.until = stage
        return _cmd_run(args)

    return run


def _cmd_config(args: argparse.Namespace) -> int:
    from moemix.pipeline.config import dump_config, load_config_or_preset

    cfg = load_config_or_preset(args.config, overrides=_parse_set(args.set))
    sys.stdout.write(dump_config(cfg))
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    from moemix.ray_jobs.submit import EntrypointResources, submit_pipeline

    memory = None if args.entrypoint_memory_gb is None else int(args.entrypoint_memory_gb * 2**30)
    submit_pipeline(
        config=args.config,
        address=args.address,
        out=args.out or _default_out(args.config),
        overrides=args.set or [],
        working_dir=args.working_dir,
        wait=not args.no_wait,
        resources=EntrypointResources(args.entrypoint_num_cpus, args.entrypoint_num_gpus, memory),
        stop_on_interrupt=args.stop_on_interrupt,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moemix",
        description="Choose pretraining data mixtures with proxy MoE swarms and pretrain MoE models on them.",
    )
    parser.add_argument("--version", action="version", version=f"moemix {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run the whole pipeline (resumes; finished stages are skipped)")
    _add_pipeline_args(p)
    p.add_argument("--until", choices=STAGES, help="stop after this stage")
    p.add_argument("--no-pretrain", action="store_true", help="stop after mixture.json")
    p.set_defaults(func=_cmd_run)

    for stage in ("domains", "proxies", "pretrain"):
        p = sub.add_parser(stage, help=f"run the {stage} stage of a config (earlier stages as needed)")
        _add_pipeline_args(p)
        if stage == "pretrain":
            p.add_argument(
                "--mixture",
                metavar="FILE",
                help="pretrain on this mixture instead of the proposed one: a mixture.json from any run, or "
                'a JSON mapping {"domain": weight}; only the domains stage runs before it',
            )
        p.set_defaults(func=_cmd_stage(stage))

    p = sub.add_parser("config", help="print the resolved config (validates it)")
    p.add_argument("config", nargs="?", help="config YAML or preset name (default: the demo preset)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("submit", help="submit the pipeline as a Ray job to a cluster")
    p.add_argument(
        "config",
        nargs="?",
        help="config YAML, shipped with the working dir; it may start from a preset with `preset: NAME` "
        "(default: the demo preset)",
    )
    p.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray dashboard address, e.g. http://head:8265",
    )
    p.add_argument("--out", help="run directory on the cluster's shared storage")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--working-dir", help="directory shipped to the cluster (default: the config's directory)")
    p.add_argument(
        "--no-wait", action="store_true", help="return after submitting instead of following the logs"
    )
    p.add_argument(
        "--stop-on-interrupt",
        action="store_true",
        help="Ctrl-C while following stops the job (by default it keeps running and the command says how "
        "to stop it)",
    )
    p.add_argument("--entrypoint-num-cpus", type=float, help="CPUs the job's driver reserves")
    p.add_argument("--entrypoint-num-gpus", type=float, help="GPUs the job's driver reserves")
    p.add_argument("--entrypoint-memory-gb", type=float, help="memory the job's driver reserves (GiB)")
    p.set_defaults(func=_cmd_submit)

    for mod_name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name != mod_name:
                raise
            continue
        mod.register(sub)
    return parser


def _close_progress_bars() -> None:
    """End any progress bar the failure interrupted, so the error starts on a line of its own."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    for bar in list(getattr(tqdm, "_instances", [])):
        bar.close()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MoemixError as e:
        _close_progress_bars()
        print(f"moemix: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("moemix: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
