"""report.html: the page builder on hand-written run dirs (fast), and a real run's page rendered in
headless Chromium, where every plot must have drawn what the run's files hold."""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moemix.cli import main
from moemix.report import render
from moemix.report.collect import collect, pretrain_run_dirs
from moemix.report.svg import nice_ticks, scatter

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


class _Plots(HTMLParser):
    """Every ``<svg class="plot">``: its id, declared ``data-marks`` and the ``class="mark"`` elements
    inside it; plus the page's one-line "absent" notes and anything that would load from elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.plots: dict[str, dict] = {}
        self.absent: list[str] = []
        self.external: list[str] = []
        self._svg: dict | None = None
        self._in_absent = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "link", "img", "iframe") or any(k in ("src", "href") for k in a):
            self.external.append(tag)
        classes = (a.get("class") or "").split()
        if tag == "svg" and "plot" in classes:
            self._svg = {"declared": int(a["data-marks"]), "marks": 0, "kind": a.get("data-kind")}
            self.plots[a["id"]] = self._svg
        elif self._svg is not None and "mark" in classes:
            self._svg["marks"] += 1
        if tag == "p" and "absent" in classes:
            self._in_absent = True
            self.absent.append("")

    def handle_endtag(self, tag):
        if tag == "svg":
            self._svg = None
        if tag == "p":
            self._in_absent = False

    def handle_data(self, data):
        if self._in_absent:
            self.absent[-1] += data


def _parse(page: str) -> _Plots:
    p = _Plots()
    p.feed(page)
    return p


# ------------------------------------------------------------------------------------------ fast
def _domains(run: Path) -> list[str]:
    return json.loads((run / "domains" / "dk" / "manifest.json").read_text())["outputs"]["domains"]


def test_page_draws_every_section_of_a_finished_run(synthetic_run):
    domains = _domains(synthetic_run)
    page = render(collect(synthetic_run))
    p = _parse(page)
    assert p.external == [] and "<script" not in page  # self-contained: opens offline
    assert p.absent == [], p.absent
    ok_base = 6 - 1  # proxy 1 failed: in the table, not in the scatter
    expected = {
        "plot-mixture": 3 * len(domains),  # chosen, uniform and natural bars per domain
        "plot-cv": ok_base,
        **{f"plot-swarm-{d}": ok_base for d in domains},
        "plot-pretrain": 3,  # chosen, uniform, natural curves
        "plot-load-0": len(domains) * 4,  # domains x experts cells per MoE layer
        "plot-load-1": len(domains) * 4,
    }
    assert {k: v["marks"] for k, v in p.plots.items()} == expected
    assert all(v["declared"] == v["marks"] for v in p.plots.values())
    # the table lists every proxy, the failed one with its error
    assert page.count("<code>p0") == 6 and 'title="RuntimeError: boom"' in page
    assert "Proposer: <b>constrained</b> — auto: the target leaves out 1 of 3 domains" in page
    assert "2 rounds of proxies (rounds: auto, a second round: a fit of the first swarm would move" in page


def test_partial_runs_say_what_is_missing_in_one_line_each(make_run_dir, tmp_path):
    # a swarm still training: 3 of 6 proxies done, nothing fitted or proposed
    run = make_run_dir(tmp_path / "swarm", proxies_done=3, upto="domains")
    domains = _domains(run)
    p = _parse(render(collect(run)))
    assert {k: v["marks"] for k, v in p.plots.items()} == {f"plot-swarm-{d}": 2 for d in domains}
    assert any("No mixture yet" in a for a in p.absent)
    assert any("No cross-validation yet" in a for a in p.absent)
    assert any("No pretraining in this run" in a for a in p.absent)
    assert any("No pretrained model yet" in a for a in p.absent)
    assert "3 of 6 planned proxies finished, 1 failed" in render(collect(run))

    # a run stopped after propose (--no-pretrain): mixture and CV drawn, pretraining absent
    run = make_run_dir(tmp_path / "nopre", upto="propose")
    p = _parse(render(collect(run)))
    assert {"plot-mixture", "plot-cv"} <= set(p.plots) and "plot-pretrain" not in p.plots
    assert len(p.absent) == 2  # pretraining, expert load

    # pretraining started, nothing logged yet
    pre = run / "pretrain" / "tk2" / "chosen"
    pre.mkdir(parents=True)
    p = _parse(render(collect(run)))
    assert any("no step has been logged yet" in a for a in p.absent)

    # only the domains stage
    p = _parse(render(collect(make_run_dir(tmp_path / "dom", upto="domains"))))
    assert p.plots == {} and len(p.absent) == 6


def test_report_follows_the_published_mixture_not_the_newest_stage_dirs(synthetic_run):
    # a later --mixture pretraining leaves a newer pretrain dir of another origin; the page keeps
    # describing the proposal's own pretraining
    other = synthetic_run / "pretrain" / "given"
    (other / "chosen").mkdir(parents=True)
    (other / "chosen" / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 9.0}) + "\n")
    (other / "manifest.json").write_text(json.dumps({"inputs": {"mixture": "abc", "domains": "dk"}}))
    data = collect(synthetic_run)
    assert data.stages["pretrain"].key == "tk"
    assert [r["loss"] for r in data.pretrain_metrics["chosen"]][0] == pytest.approx(5.5)


def test_pretrain_runs_are_found_through_runs_json_else_in_the_stage(synthetic_run):
    pre = synthetic_run / "pretrain" / "tk"
    assert pretrain_run_dirs(pre)["uniform"].resolve() == (synthetic_run / "pretrain" / "runs" / "r-uniform")
    assert collect(synthetic_run).pretrain_results["uniform"]["target_loss"] == pytest.approx(4.1)
    # a run dir from before the store: each run in the stage directory itself
    (pre / "runs.json").unlink()
    for name in ("chosen", "uniform"):
        shutil.move(synthetic_run / "pretrain" / "runs" / f"r-{name}", pre / name)
    assert sorted(pretrain_run_dirs(pre)) == ["chosen", "uniform"]
    assert collect(synthetic_run).pretrain_results["uniform"]["target_loss"] == pytest.approx(4.1)


def test_moemix_report_writes_the_page_and_refuses_a_non_run_dir(synthetic_run, tmp_path, capsys):
    assert main(["report", str(synthetic_run)]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"report.html: {synthetic_run / 'report.html'} (") and out.count("\n") == 0
    assert _parse((synthetic_run / "report.html").read_text()).plots
    assert not list(synthetic_run.glob(".report.html.*"))  # written through a temp file
    assert main(["report", str(synthetic_run), "--out", str(tmp_path / "share.html")]) == 0

    def undated(path: Path) -> str:
        return re.sub(r"generated [^<]*", "", path.read_text())

    assert undated(tmp_path / "share.html") == undated(synthetic_run / "report.html")
    capsys.readouterr()
    assert main(["report", str(tmp_path)]) == 2
    assert "not a moemix run directory" in capsys.readouterr().err


def test_the_report_needs_neither_ray_nor_torch(synthetic_run):
    # it is made on laptops from copies of run dirs and on shared storage while a run goes on
    code = (
        "import sys; from moemix.report import write_report; write_report(sys.argv[1]); "
        "print([m for m in ('ray', 'torch') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code, str(synthetic_run)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]" and (synthetic_run / "report.html").exists()


def test_the_report_knows_the_pipelines_stages():
    from moemix.pipeline import STAGES
    from moemix.report.collect import STAGES as REPORT_STAGES

    assert REPORT_STAGES == STAGES


def test_chart_helpers_skip_what_is_not_finite_and_never_draw_an_empty_frame():
    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(5.93, 6.21)[0] >= 5.93 and nice_ticks(5.93, 6.21)[-1] <= 6.21
    svg = scatter([1.0, float("nan"), 3.0], [2.0, 1.0, math.inf], title="t")
    assert svg.count('class="mark"') == 1 and 'data-marks="1"' in svg
    empty = scatter([float("nan")], [1.0], title="t")
    assert "<svg" not in empty and 'class="absent"' in empty


# ------------------------------------------------------------------------------------------ Chromium
# Appended to a copy of the page (the page itself has no scripts): on load, every plot reports its
# bounding box and how many of its marks have a non-empty box inside the drawing.
_CHECK = """<script>
window.addEventListener('load', () => {
  const out = [];
  for (const s of document.querySelectorAll('svg.plot')) {
    const box = s.getBBox(), vb = s.viewBox.baseVal, marks = [...s.querySelectorAll('.mark')];
    const drawn = marks.filter(m => { const b = m.getBBox();
      return (b.width > 0 || b.height > 0) && b.x >= -1 && b.y >= -1 &&
             b.x + b.width <= vb.width + 1 && b.y + b.height <= vb.height + 1; }).length;
    out.push({id: s.id, declared: +s.dataset.marks, marks: marks.length, drawn, w: box.width, h: box.height});
  }
  const pre = document.createElement('pre');
  pre.id = 'plot-check';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=180)


def _expected_marks(run: Path) -> dict[str, int]:
    """How many marks each plot must draw, counted from the run's own files (not from the page)."""
    doc = json.loads((run / "mixture.json").read_text())
    domains = [d["name"] for d in doc["domains"]]
    (proxies,) = [p for p in (run / "proxies").iterdir() if (p / "runs.parquet").exists()]
    runs = pd.read_parquet(proxies / "runs.parquet")
    base = runs[(runs["status"] == "ok") & (runs["scale"] == "base")]
    (fit,) = list(run.glob("fit/*/cv.json"))
    (pre,) = [p for p in (run / "pretrain").iterdir() if (p / "comparison.json").exists()]
    chosen = json.loads((pretrain_run_dirs(pre)["chosen"] / "result.json").read_text())
    n_experts = chosen["model_config"]["n_experts"]
    n_moe_layers = len(next(iter(chosen["expert_load"]["counts"].values())))
    trained = [p for p in pretrain_run_dirs(pre).values() if (p / "metrics.jsonl").exists()]
    return {
        "plot-mixture": 3 * len(domains),
        "plot-cv": len(json.loads(fit.read_text())["oof"]["actual"]),
        **{f"plot-swarm-{d}": int(base[f"loss/{d}"].notna().sum()) for d in domains},
        "plot-pretrain": len(trained),
        **{f"plot-load-{i}": len(domains) * n_experts for i in range(n_moe_layers)},
    }


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_real_run_report_renders_every_plot_in_headless_chromium(finished_run, tmp_path):
    run = finished_run
    page_path = run / "report.html"
    assert page_path.exists(), "moemix run did not write report.html"
    expected = _expected_marks(run)
    assert expected["plot-pretrain"] >= 2 and expected["plot-cv"] >= 8  # chosen and uniform; the swarm

    # the expert load was recorded honestly: every evaluated token's top-k slots, each to one expert
    (pre,) = [p for p in (run / "pretrain").iterdir() if (p / "comparison.json").exists()]
    load = json.loads((pretrain_run_dirs(pre)["chosen"] / "result.json").read_text())["expert_load"]
    for d, layers in load["counts"].items():
        assert all(sum(layer) == load["tokens"][d] * load["top_k"] for layer in layers), d

    # `moemix report` finds the same stages from the files alone
    before = _parse(page_path.read_text())
    assert main(["report", str(run)]) == 0
    after = _parse(page_path.read_text())
    assert {k: v["marks"] for k, v in after.plots.items()} == {k: v["marks"] for k, v in before.plots.items()}
    assert after.absent == [] and after.external == []

    checked = tmp_path / "checked.html"
    checked.write_text(page_path.read_text().replace("</body>", _CHECK + "</body>"))
    dom = _chromium(tmp_path, "--dump-dom", "--virtual-time-budget=10000", checked.as_uri())
    m = re.search(r'<pre id="plot-check">(.*?)</pre>', dom.stdout, re.S)
    assert m, f"the check did not run; chromium said: {dom.stderr[-2000:]}"
    plots = {p["id"]: p for p in json.loads(html.unescape(m.group(1)))}
    assert set(plots) == set(expected), (sorted(plots), sorted(expected))
    for pid, want in expected.items():
        got = plots[pid]
        assert got["w"] > 0 and got["h"] > 0, got
        assert got["marks"] == got["declared"] == want and got["drawn"] == want, (pid, got, want)

    shot = tmp_path / "report.png"
    _chromium(
        tmp_path, "--hide-scrollbars", "--window-size=1240,2600", f"--screenshot={shot}", page_path.as_uri()
    )
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    ink = float((pixels != 255).any(axis=1).mean())
    assert ink > 0.03, f"screenshot is nearly blank ({ink:.1%} non-white)"
    # the chosen mixture's bars and curve (#1f77b4) and the uniform ones (#7f7f7f) were painted
    for rgb in ((0x1F, 0x77, 0xB4), (0x7F, 0x7F, 0x7F)):
        assert (pixels == rgb).all(axis=1).sum() > 100, rgb
