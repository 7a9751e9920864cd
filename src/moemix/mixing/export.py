"""Write a proposal as a self-contained mixture directory (what the CLI and the pipeline publish).

    OUT_DIR/mixture.json
    OUT_DIR/plots/mixture.png          chosen vs natural vs uniform
    OUT_DIR/plots/pred_vs_actual.png   copied from the fit (out-of-fold predictions)
    OUT_DIR/reports/cv.json, explain.json   copied from the fit (CV metrics, coefficients/importances)

Paths inside mixture.json are relative to it, so the directory can be moved or archived whole.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from moemix._io import atomic_path
from moemix.mixing.fit import FitResult
from moemix.mixing.propose import Proposal, proposal_to_doc
from moemix.mixing.report import plot_mixture
from moemix.mixing.schema import MixtureDoc, write_mixture


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def write_proposal(
    path: str | Path,
    proposal: Proposal,
    fit: FitResult,
    natural: np.ndarray | None = None,
    **doc_kwargs: Any,
) -> MixtureDoc:
    """Plots + copied fit reports + validated mixture.json at ``path``; returns the written doc.

    ``doc_kwargs`` go to ``proposal_to_doc`` (domain_tokens, domains_fingerprint, scale_transfer, notes, ...).
    """
    path = Path(path)
    out = path.parent
    nat = fit.prior_array() if natural is None else np.asarray(natural, dtype=np.float64)
    nat = nat / nat.sum()
    plots: dict[str, str] = {}
    title = (
        f"{proposal.method}: predicted {proposal.predicted_loss:.4f} "
        f"(natural {proposal.baselines['natural']:.4f}, uniform {proposal.baselines['uniform']:.4f})"
    )
    plot_mixture(fit.domains, proposal.weights, nat, out / "plots" / "mixture.png", title)
    plots["mixture"] = "plots/mixture.png"
    reports: dict[str, str] = {}
    if fit.out_dir is not None:
        for name, rel in fit.plots.items():
            src = fit.out_dir / rel
            if src.exists():
                _copy(src, out / "plots" / src.name)
                plots[name] = f"plots/{src.name}"
        for name in ("cv", "explain"):
            src = fit.out_dir / f"{name}.json"
            if src.exists():
                _copy(src, out / "reports" / src.name)
                reports[name] = f"reports/{src.name}"
    doc = proposal_to_doc(proposal, fit, plots=plots, **doc_kwargs)
    doc.reports = reports or None
    write_mixture(path, doc)
    return doc
