from __future__ import annotations

import argparse
import json

import pandas as pd
import pytest
from mixing_synth import runs_table

from moemix.cli.commands.mixing import register
from moemix.errors import MoemixError
from moemix.mixing.schema import load_mixture


def _run(*argv):
    ap = argparse.ArgumentParser(prog="moemix")
    register(ap.add_subparsers(required=True))
    args = ap.parse_args([str(a) for a in argv])
    return args.func(args)


def test_fit_predict_propose_end_to_end(tmp_path):
    df = runs_table(30, seed=11)
    df.loc[2, "status"] = "failed"
    df.to_parquet(tmp_path / "runs.parquet")
    fitdir = tmp_path / "fit"
    assert _run("fit", tmp_path / "runs.parquet", "--predictor", "linear", "--out", fitdir) == 0
    mixes = runs_table(7, seed=12).drop(columns=["target"])
    mixes.to_csv(tmp_path / "mix.csv", index=False)
    assert _run("predict", fitdir, tmp_path / "mix.csv", "--out", tmp_path / "pred.csv") == 0
    pred = pd.read_csv(tmp_path / "pred.csv")
    assert len(pred) == 7 and list(pred["run_id"]) == list(mixes["run_id"])
    assert pred["predicted"].notna().all() and (pred["std"] > 0).all()
    (tmp_path / "c.yaml").write_text("method: constrained\nn_samples: 2000\nmax_weight: {web: 0.3}\n")
    out = tmp_path / "prop" / "mixture.json"
    assert _run("propose", fitdir, "--constraints", tmp_path / "c.yaml", "--out", out) == 0
    doc = load_mixture(out)
    assert doc.weights["web"] <= 0.3 + 1e-9 and doc.n_failed_proxies == 1
    assert doc.proposer.name == "constrained"
    assert set(doc.plots) == {"mixture", "pred_vs_actual"}
    for rel in doc.plots.values():
        assert (out.parent / rel).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out.parent / doc.reports["cv"]).read_text())["n"] == 29
    assert "values" in json.loads((out.parent / doc.reports["explain"]).read_text())
    assert json.loads((fitdir / "cv.json").read_text())["skipped"]["failed"] == 1


def test_cli_errors_are_moemix_errors(tmp_path):
    df = runs_table(20, seed=1)
    df.to_csv(tmp_path / "runs.csv", index=False)
    with pytest.raises(MoemixError, match="prefix 'x/'"):
        _run("fit", tmp_path / "runs.csv", "--weights-prefix", "x/", "--out", tmp_path / "f")
    with pytest.raises(MoemixError, match="'w/nope'"):
        _run("fit", tmp_path / "runs.csv", "--weights", "w/web,w/nope", "--out", tmp_path / "f")
    with pytest.raises(MoemixError, match="unsupported table format"):
        (tmp_path / "runs.xlsx").write_text("x")
        _run("fit", tmp_path / "runs.xlsx", "--out", tmp_path / "f")
    with pytest.raises(MoemixError, match="not a complete fit directory"):
        _run("propose", tmp_path, "--out", tmp_path / "m.json")
    _run("fit", tmp_path / "runs.csv", "--predictor", "linear", "--no-plots", "--out", tmp_path / "f")
    (tmp_path / "bad.yaml").write_text("kl_weigth: 1\n")
    with pytest.raises(MoemixError, match="unknown key 'kl_weigth'"):
        _run("propose", tmp_path / "f", "--constraints", tmp_path / "bad.yaml", "--out", tmp_path / "m.json")
    (tmp_path / "cap.yaml").write_text(
        "max_epochs: 2\ndomain_tokens: {web: 9, code: 9, math: 9, books: 9, wiki: 9}\n"
    )
    with pytest.raises(MoemixError, match="cap.yaml: max_epochs: needs target_tokens"):
        _run("propose", tmp_path / "f", "--constraints", tmp_path / "cap.yaml", "--out", tmp_path / "m.json")
    pd.DataFrame({"w/web": [1.0]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(MoemixError, match="'w/code'"):
        _run("predict", tmp_path / "f", tmp_path / "m.csv", "--out", tmp_path / "p.csv")
