"""Bad input ends with one line naming the problem and a non-zero exit, and corrupts nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from moemix.cli import main


def _run(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("proxies: [unclosed\n", "malformed YAML (line 2, column 1)"),
        ("proxies:\n  bogus_key: 1\n", "unknown key 'bogus_key'"),
        ("seed: many\n", "seed: expected an integer"),
        ("proxies:\n  rounds: three\n", "proxies.rounds: expected an integer or 'auto', got 'three'"),
        ("proxies:\n  rounds: 0\n", "proxies: rounds must be >= 1"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("domains:\n  sources:\n    - path: does/not/exist.jsonl\n", "no such file or directory"),
        ("preset: nonesuch\n", "unknown preset 'nonesuch'"),
    ],
)
def test_bad_config_is_one_line(tmp_path, capsys, yaml_text, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    code, err = _run(capsys, ["config", str(cfg)])
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith("moemix: error: ") and needle in err[0], err[0]


def test_missing_config_file(capsys, tmp_path):
    code, err = _run(capsys, ["run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "run")])
    assert code == 2 and err == [f"moemix: error: config file not found: {tmp_path / 'nope.yaml'}"]
    assert not (tmp_path / "run").exists()


def test_bad_set_override(capsys):
    code, err = _run(capsys, ["config", "--set", "proxies.sampler.n_mixtures"])
    assert code == 2 and "expected KEY=VALUE" in err[0]


def test_demo_preset_resolves(capsys):
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "proxies:" in out and "pretrain:" in out


def test_console_script_exit_code(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("nonsense_section: {}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "moemix.cli", "config", str(cfg)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"moemix: error: {cfg}: unknown key 'nonsense_section' (allowed: domains, fit, pretrain, propose, "
        "proxies, ray, seed, tracking)"
    ]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("", "empty"),
        ('{"content": "hello world"}\n{"content": "more text"}\n', "'text'"),
    ],
)
def test_bad_corpus_is_one_line_and_keeps_previous_outputs(tmp_path, capsys, content, needle):
    data = tmp_path / "corpus.jsonl"
    data.write_text(content)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"domains:\n  sources:\n    - path: {data}\n      label: web\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "mixture.json").write_text('{"previous": true}')
    code, err = _run(capsys, ["run", str(cfg), "--out", str(run_dir), "--quiet"])
    assert code == 2
    assert len(err) == 1 and err[0].startswith("moemix: error: "), err
    assert needle in err[0] and str(data) in err[0], err[0]
    assert (run_dir / "mixture.json").read_text() == '{"previous": true}'


def _tiny_two_domain_config(tmp_path, proxies_extra: str = "", tail: str = ""):
    """A 200-document corpus labelled into domains 'a' and 'b', and a config whose swarm is small enough
    that, were a pre-swarm check gone, the run would reach propose in seconds."""
    rng = np.random.default_rng(0)
    vocab = ["".join(rng.choice(list("abcdefghij"), 5)) for _ in range(500)]
    data = tmp_path / "corpus.jsonl"
    data.write_text(
        "".join(
            json.dumps({"text": " ".join(rng.choice(vocab, 60)), "id": str(i), "src": "ab"[i % 2]}) + "\n"
            for i in range(200)
        )
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"domains:\n  sources:\n    - {{path: {data}, text_column: text, id_column: id, label_column: src}}\n"
        "proxies:\n  sampler: {n_mixtures: 3}\n  train: {steps: 2, batch_size: 2, seq_len: 16}\n"
        + proxies_extra
        + tail
    )
    return cfg


def test_a_corpus_too_small_for_the_pretraining_budget_stops_before_the_swarm(tmp_path, capsys):
    """At most propose.max_epochs passes over the corpus fit the budget: one line after the domains
    stage, not a failed propose stage after every proxy has trained."""
    cfg = _tiny_two_domain_config(tmp_path)
    run_dir = tmp_path / "run"
    code, err = _run(capsys, ["run", str(cfg), "--out", str(run_dir), "--quiet"])
    assert code == 2
    assert len(err) == 1 and err[0].startswith("moemix: error: propose.max_epochs: "), err
    assert "raise propose.max_epochs" in err[0]
    assert not (run_dir / "proxies").exists()


def test_a_target_naming_an_unknown_domain_stops_before_the_swarm(tmp_path, capsys):
    """The target is applied at fit time, but a typo in it is one line after the domains stage, not a
    failed fit after every proxy has trained."""
    cfg = _tiny_two_domain_config(
        tmp_path, proxies_extra="  target: {domains: {a: 1, c: 1}}\n", tail="pretrain: {enabled: false}\n"
    )
    run_dir = tmp_path / "run"
    code, err = _run(capsys, ["run", str(cfg), "--out", str(run_dir), "--quiet"])
    assert code == 2
    assert len(err) == 1 and err[0].startswith("moemix: error: proxies.target: "), err
    assert "unknown domain 'c'" in err[0] and "known: a, b" in err[0], err[0]
    assert not (run_dir / "proxies").exists()
