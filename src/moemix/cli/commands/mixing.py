"""CLI: ``moemix fit``, ``moemix predict``, ``moemix propose`` (also the pipeline's fit/propose steps).

The lead's CLI calls ``register(subparsers)`` and then ``args.func(args)``; errors are raised as
MoemixError and printed as one line by the main CLI.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from moemix.cli.lazy_choices import LazyChoices
from moemix.errors import MoemixError


def _csv_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise MoemixError("--weights: empty column list")
    return items


def _read_mapping(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise MoemixError(f"{path}: file not found")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            obj = json.loads(text)
        else:
            import yaml

            obj = yaml.safe_load(text)
    except Exception as e:  # any parse failure is bad user input
        raise MoemixError(
            f"{path}: cannot parse ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
        ) from None
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise MoemixError(f"{path}: expected a mapping at the top level")
    return obj


def _per_domain(obj: Any, domains: list[str], key: str, where: str) -> np.ndarray:
    """A per-domain vector given as a mapping {domain: value} or a list in domain order."""
    if isinstance(obj, dict):
        unknown = [k for k in obj if k not in domains]
        if unknown:
            raise MoemixError(f"{where}: {key}: unknown domain {unknown[0]!r}")
        missing = [d for d in domains if d not in obj]
        if missing:
            raise MoemixError(f"{where}: {key}: missing domain {missing[0]!r}")
        vals = [obj[d] for d in domains]
    elif isinstance(obj, list):
        if len(obj) != len(domains):
            raise MoemixError(f"{where}: {key}: has {len(obj)} entries, expected {len(domains)}")
        vals = obj
    else:
        raise MoemixError(f"{where}: {key}: expected a mapping of domain -> value")
    try:
        arr = np.asarray(vals, dtype=np.float64)
    except (TypeError, ValueError):
        raise MoemixError(f"{where}: {key}: values must be numbers") from None
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise MoemixError(f"{where}: {key}: values must be finite and >= 0")
    return arr


def cmd_fit(args: argparse.Namespace) -> int:
    from moemix.mixing.fit import FitConfig, fit_runs
    from moemix.mixing.runs import read_table, resolve_weight_cols

    df = read_table(args.runs)
    where = str(args.runs)
    cols = resolve_weight_cols(df, args.weights_prefix, _csv_list(args.weights), where)
    cfg = FitConfig(
        predictor=args.predictor,
        cv_folds=args.cv_folds,
        seed=args.seed,
        target_mode=args.target_mode,
        weight_sum_tol=args.weight_sum_tol,
        weights_prefix=args.weights_prefix or "w/",
        nested_cv=args.nested_cv,
        plots=not args.no_plots,
    )
    prior = None
    if args.prior:
        from moemix.mixing.runs import domain_name

        domains = [domain_name(c, cfg.weights_prefix) for c in cols]
        prior = _per_domain(_read_mapping(args.prior), domains, "prior", str(args.prior))
    res = fit_runs(df, args.target, cols, cfg, args.out, prior=prior, where=where)
    cv = res.cv
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    print(
        f"fit {res.cv.get('predictor')} on {res.n_used}/{res.n_rows} runs "
        f"(skipped {sum(res.skipped.values())}: {res.skipped}); CV spearman={fmt(cv.get('spearman'))} "
        f"pearson={fmt(cv.get('pearson'))} mae={fmt(cv.get('mae'))} -> {args.out}"
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from moemix._io import atomic_path
    from moemix.mixing.fit import load_fit
    from moemix.mixing.runs import mixtures_matrix, read_table

    fit = load_fit(args.fitdir)
    df = read_table(args.mixtures)
    W = mixtures_matrix(df, fit.weight_cols, str(args.mixtures), args.weight_sum_tol)
    mean, std = fit.predictor.predict_with_std(W)
    out = df.copy()
    out["predicted"] = mean
    if std is not None:
        out["std"] = std
    path = Path(args.out)
    with atomic_path(path) as tmp:
        if path.suffix.lower() in (".parquet", ".pq"):
            out.to_parquet(tmp, index=False)
        else:
            out.to_csv(tmp, index=False)
    print(f"predicted {len(out)} mixtures -> {path}")
    return 0


def build_propose_config(obj: dict[str, Any], where: str) -> tuple[Any, dict[str, Any]]:
    """Split a constraints mapping into a ProposeConfig and the context keys (tokens, prior)."""
    from moemix.configtools import from_dict
    from moemix.mixing.propose import ProposeConfig

    ctx_keys = ("domain_tokens", "target_tokens", "prior")
    ctx = {k: obj[k] for k in ctx_keys if k in obj}
    cfg = from_dict(ProposeConfig, {k: v for k, v in obj.items() if k not in ctx_keys}, where)
    return cfg, ctx


def cmd_propose(args: argparse.Namespace) -> int:
    from moemix.mixing.export import write_proposal
    from moemix.mixing.fit import load_fit
    from moemix.mixing.propose import propose

    fit = load_fit(args.fitdir)
    raw = _read_mapping(args.constraints) if args.constraints else {}
    where = str(args.constraints) if args.constraints else "propose"
    if args.method:
        raw["method"] = args.method
    if args.seed is not None:
        raw["seed"] = args.seed
    cfg, ctx = build_propose_config(raw, where)
    domain_tokens = (
        _per_domain(ctx["domain_tokens"], fit.domains, "domain_tokens", where)
        if "domain_tokens" in ctx
        else None
    )
    target_tokens = ctx.get("target_tokens")
    if raw.get("max_epochs") is not None and target_tokens is None:
        # the default cap applies only where the budget is known; one asked for must have one
        raise MoemixError(f"{where}: max_epochs: needs target_tokens, the token budget it caps repetition at")
    if target_tokens is not None and (
        isinstance(target_tokens, bool) or not isinstance(target_tokens, (int, float))
    ):
        raise MoemixError(f"{where}: target_tokens: expected a number")
    prior = _per_domain(ctx["prior"], fit.domains, "prior", where) if "prior" in ctx else None
    prop = propose(fit, prior, cfg, domain_tokens, None if target_tokens is None else int(target_tokens))

    out = Path(args.out)
    tokens = domain_tokens.astype(np.int64) if domain_tokens is not None else None
    notes = [f"prior: {'given in constraints' if prior is not None else fit.prior_source}"]
    write_proposal(out, prop, fit, natural=prior, domain_tokens=tokens, notes=notes)
    print(
        f"proposed ({prop.method}) predicted {fit.target.name}={prop.predicted_loss:.4f} vs natural "
        f"{prop.baselines['natural']:.4f}, uniform {prop.baselines['uniform']:.4f} -> {out}"
    )
    return 0


def _add_weight_sum_tol(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weight-sum-tol",
        type=float,
        default=1e-3,
        help="rows whose weights sum to 1 within this (or within what rounding to the row's decimals "
        "explains) are renormalised; others are an error",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("fit", help="fit a predictor of loss from mixture weights on a runs table")
    p.add_argument("runs", help="runs table (.csv or .parquet)")
    p.add_argument(
        "--target",
        default="target",
        help="target column, COL1:W1,COL2:W2 (weighted sum) or PREFIX* (mean); default 'target'",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--weights-prefix", default="w/", help="weight columns start with this (default 'w/')")
    g.add_argument("--weights", default=None, help="comma-separated weight columns")
    p.add_argument(
        "--predictor",
        default="auto",
        choices=LazyChoices("moemix.mixing.predictors", "PREDICTOR_NAMES"),
        metavar="PREDICTOR",
        help="predictor family, one of %(choices)s (auto: the best by cross-validated Spearman)",
    )
    p.add_argument(
        "--target-mode",
        default="combined",
        choices=["combined", "separate"],
        help="separate: one predictor per target column, combined with the target weights",
    )
    p.add_argument("--cv-folds", type=int, default=5, help="cross-validation folds (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds and the predictors (default: 0)")
    _add_weight_sum_tol(p)
    p.add_argument(
        "--prior", default=None, help="YAML/JSON mapping domain -> natural weight (stored for propose)"
    )
    p.add_argument(
        "--nested-cv", action="store_true", help="auto: unbiased nested CV (costs folds x the fit)"
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--out", required=True, help="fit directory to write")
    p.set_defaults(func=cmd_fit)

    p = subparsers.add_parser("predict", help="predict the target loss of mixtures with a fitted predictor")
    p.add_argument("fitdir", help="a directory written by moemix fit")
    p.add_argument("mixtures", help="table (.csv or .parquet) with the fit's weight columns")
    _add_weight_sum_tol(p)
    p.add_argument(
        "--out", required=True, help="output table (.csv or .parquet): the mixtures plus a prediction column"
    )
    p.set_defaults(func=cmd_predict)

    p = subparsers.add_parser(
        "propose", help="propose the best mixture from a fitted predictor (writes mixture.json)"
    )
    p.add_argument("fitdir", help="a directory written by moemix fit")
    p.add_argument(
        "--constraints",
        default=None,
        help="YAML/JSON: ProposeConfig keys (method, kl_weight, min_weight, max_weight, max_epochs, ...) "
        "plus domain_tokens, target_tokens, prior. Without a prior the one stored at fit time is used "
        "(fit --prior, else the mean of the training mixtures)",
    )
    p.add_argument(
        "--method",
        default=None,
        choices=LazyChoices("moemix.mixing.config", "METHODS"),
        metavar="METHOD",
        help="search method, one of %(choices)s (default: the constraints' method, else auto: simulate "
        "for a target that weighs every domain, constrained otherwise)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed of the search (default: the constraints')")
    p.add_argument("--out", required=True, help="mixture.json path")
    p.set_defaults(func=cmd_propose)
