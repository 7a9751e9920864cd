"""``RUN_DIR/report.html``: one self-contained page about a run (``moemix report RUN_DIR`` rewrites it).

The page has no scripts and loads nothing: styles are inline and the charts are inline SVG drawn by
``moemix.report.svg``, so it opens offline, from shared storage, or as an e-mail attachment. Sections
whose data is not there yet (a run without pretraining, a swarm still training) say so in one line.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from moemix._io import write_text_atomic
from moemix.report import svg
from moemix.report.collect import PRETRAIN_RUNS, STAGES, ReportData, collect

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
# heatmaps of more MoE layers than this show evenly spaced layers (first and last included)
MAX_LOAD_LAYERS = 8

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1180px;padding:0 16px;color:#222}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.meta{color:#666;font-size:12px} .absent{color:#777;font-style:italic}
table{border-collapse:collapse;font-size:12px} th,td{padding:2px 7px;border-bottom:1px solid #eee;
text-align:right;white-space:nowrap} th{background:#f6f6f6;position:sticky;top:0}
td.l,th.l{text-align:left} .scroll{overflow:auto;max-height:420px;border:1px solid #eee}
.grid{display:flex;flex-wrap:wrap;gap:6px} .warn{color:#a40000} .ok{color:#1a7f37}
.failed td{color:#a40000} .cap{color:#555;font-size:12px;max-width:900px}
"""


def _f(v: Any, digits: int = 4) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "–"
    return f"{v:.{digits}f}"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1, cls: Sequence[str] = ()) -> str:
    """An HTML table; the first ``left`` columns are left-aligned. Cells are already escaped."""
    th = "".join(f'<th class="l">{h}</th>' if i < left else f"<th>{h}</th>" for i, h in enumerate(head))
    body = []
    for r_i, row in enumerate(rows):
        tds = "".join(f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>" for i, c in enumerate(row))
        row_cls = f' class="{cls[r_i]}"' if r_i < len(cls) and cls[r_i] else ""
        body.append(f"<tr{row_cls}>{tds}</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# ------------------------------------------------------------------------------------------ sections
def _header(data: ReportData) -> str:
    rows = []
    for name in STAGES:
        st = data.stages.get(name)
        state = "not started" if st is None else ("complete" if st.complete else "running")
        seconds = (st.manifest or {}).get("seconds") if st is not None else None
        rows.append(
            [
                escape(name),
                escape(state),
                escape(st.key) if st is not None else "",
                _f(seconds, 1) + " s" if isinstance(seconds, (int, float)) else "",
            ]
        )
    out = [
        "<h1>moemix run report</h1>",
        f'<p class="meta">{escape(str(data.run_dir))} · generated {escape(data.generated_at)}</p>',
        _table(["stage", "state", "key", "time"], rows, left=3),
    ]
    doc = data.mixture
    if doc:
        base = doc.get("baselines") or {}
        out.append(
            f"<p>Predicted target loss <b>{_f(doc.get('predicted_target_loss'))}</b> "
            f"(uniform {_f(base.get('uniform'))}, natural {_f(base.get('natural'))}); predictor "
            f"{escape(str(doc.get('predictor')))}, CV Spearman {_f(doc.get('cv_spearman'), 3)}, "
            f"{doc.get('n_proxies', 0)} proxies.</p>"
        )
        proposer = doc.get("proposer") or {}
        if proposer.get("name"):
            why = f" — {escape(proposer['why'])}" if proposer.get("why") else ""
            out.append(f"<p>Proposer: <b>{escape(str(proposer['name']))}</b>{why}</p>")
        decision = doc.get("decision") or {}
        if decision:
            why = decision.get("reason") or "the fitted optimum"
            out.append(
                f"<p>Do-no-harm guard: <b>{escape(str(decision.get('action')))}</b> — {escape(why)}</p>"
            )
        check = doc.get("pretrain_check") or {}
        if check.get("verdict"):
            cls = "ok" if check.get("beats_baselines") else "warn"
            out.append(f'<p class="{cls}">Pretraining: {escape(check["verdict"])}</p>')
        for note in doc.get("notes") or []:
            if not note.startswith(("do-no-harm", "pretraining: ")):  # both shown above
                out.append(f'<p class="warn">{escape(note)}</p>')
    return "".join(out)


def _mixture_section(data: ReportData) -> str:
    out = ["<h2>Mixture</h2>"]
    chosen = data.chosen_weights
    if not chosen:
        return out[0] + svg.no_data("No mixture yet: the propose stage has not finished.")
    domains = [d for d in data.domains if d in chosen] or list(chosen)
    groups: dict[str, list[float]] = {
        "chosen": [chosen[d] for d in domains],
        "uniform": [1.0 / len(domains)] * len(domains),
    }
    if data.natural:
        groups["natural"] = [data.natural.get(d, float("nan")) for d in domains]
    out.append(
        svg.bar_chart(
            domains, groups, title="chosen vs uniform vs natural", y_label="weight", plot_id="plot-mixture"
        )
    )
    rows = [[escape(d)] + [_f(groups[g][i]) for g in groups] for i, d in enumerate(domains)]
    out.append(_table(["domain", *groups], rows))
    where = data.mixture_path.relative_to(data.run_dir) if data.mixture_path else "mixture.json"
    out.append(
        f'<p class="cap">From {escape(str(where))}; natural = each domain\'s share of training tokens.</p>'
    )
    return "".join(out)


def _cv_section(data: ReportData) -> str:
    head = "<h2>Predicted vs observed loss (cross-validation)</h2>"
    oof = (data.cv or {}).get("oof") or {}
    if not oof.get("actual"):
        return head + svg.no_data("No cross-validation yet: the fit stage has not finished.")
    cv = data.cv or {}
    plot = svg.scatter(
        oof["actual"],
        oof["predicted"],
        title="out-of-fold prediction per proxy",
        x_label="observed target loss",
        y_label="predicted",
        diagonal=True,
        plot_id="plot-cv",
    )
    cap = (
        f"{escape(str(cv.get('predictor')))}, {escape(str(cv.get('kind')))} CV over {cv.get('folds')} folds "
        f"of {cv.get('n')} proxies: Spearman {_f(cv.get('spearman'), 3)}, "
        f"Pearson {_f(cv.get('pearson'), 3)}, "
        f"MAE {_f(cv.get('mae'))}. Dashed: y = x. Target: {escape(str(cv.get('target')))}."
    )
    return f'{head}{plot}<p class="cap">{cap}</p>'


def _ok_base(data: ReportData) -> list[dict[str, Any]]:
    return [r for r in data.proxies if r.get("status") == "ok" and r.get("scale", "base") == "base"]


def _swarm_section(data: ReportData) -> str:
    head = "<h2>Each domain's loss against its weight across the swarm</h2>"
    runs = _ok_base(data)
    if not runs:
        return head + svg.no_data("No finished proxy yet.")
    panels = []
    for d in data.domains:
        panels.append(
            svg.scatter(
                [r.get("mixture", {}).get(d, float("nan")) for r in runs],
                [r.get("loss", {}).get(d, float("nan")) for r in runs],
                title=d,
                x_label=f"weight of {d}"[:40],
                y_label="loss",
                labels=[str(r.get("run_id", ""))[:10] for r in runs],
                plot_id=f"plot-swarm-{d}",
                size=(270, 230),
            )
        )
    cap = f"One dot per finished base proxy ({len(runs)}); validation loss on the domain, nats/token."
    return f'{head}<div class="grid">{"".join(panels)}</div><p class="cap">{cap}</p>'


def _proxies_section(data: ReportData) -> str:
    head = "<h2>Proxies</h2>"
    if not data.proxies:
        planned = f" ({data.proxies_planned} planned)" if data.proxies_planned else ""
        return head + svg.no_data(f"No proxy has finished yet{planned}.")
    doms = data.domains
    rows, cls = [], []
    for r in data.proxies:
        ok = r.get("status") == "ok"
        mix, loss = r.get("mixture", {}), r.get("loss", {})
        status = "ok" if ok else f'<span title="{escape(str(r.get("error", "")))}">failed</span>'
        rows.append(
            [
                f"<code>{escape(str(r.get('run_id', ''))[:12])}</code>",
                escape(str(r.get("scale", "base"))),
                status,
                str(r.get("seed", "")),
                _f(r.get("target")),
                *[_f(mix.get(d), 3) for d in doms],
                *[_f(loss.get(d)) for d in doms],
            ]
        )
        cls.append("" if ok else "failed")
    head_row = [
        "run id",
        "scale",
        "status",
        "seed",
        "target",
        *(f"w/{d}" for d in doms),
        *(f"loss/{d}" for d in doms),
    ]
    failed = sum(r.get("status") != "ok" for r in data.proxies)
    cap = f"{len(data.proxies)} of {data.proxies_planned or len(data.proxies)} planned proxies finished"
    cap += f", {failed} failed (hover for the error)." if failed else "."
    rounds = data.proxies_rounds or {}
    if rounds.get("run"):
        n = int(rounds["run"])
        cap += f" {n} round{'s' if n > 1 else ''} of proxies"
        cap += f" (rounds: auto, {escape(str(rounds['auto']))})." if rounds.get("auto") else "."
    return (
        f'{head}<p class="cap">{cap}</p><div class="scroll">{_table(head_row, rows, left=3, cls=cls)}</div>'
    )


def _twins(data: ReportData) -> dict[str, str]:
    """Baselines the pretrain stage did not train again: name -> the run they equal."""
    comp = data.comparison or {}
    return {
        n: comp[n]["same_as"]
        for n in PRETRAIN_RUNS
        if isinstance(comp.get(n), dict) and comp[n].get("same_as")
    }


def _pretrain_section(data: ReportData) -> str:
    head = "<h2>Pretraining: chosen vs the baselines</h2>"
    if data.stages.get("pretrain") is None:
        return head + svg.no_data("No pretraining in this run (disabled, or the run stopped before it).")
    if not data.pretrain_metrics:
        return head + svg.no_data("Pretraining has started; no step has been logged yet.")
    twins = _twins(data)
    series = {}
    for name, recs in data.pretrain_metrics.items():
        pts = [
            (r["step"], r["loss"]) for r in recs if "step" in r and isinstance(r.get("loss"), (int, float))
        ]
        also = [n for n, t in twins.items() if t == name]
        label = name + "".join(f" = {n}" for n in also)
        series[label] = ([p[0] for p in pts], [p[1] for p in pts])
    plot = svg.line_chart(
        series,
        title="training loss",
        x_label="step",
        y_label="train loss (nats/token)",
        plot_id="plot-pretrain",
    )
    comp = data.comparison or {}
    rows = []
    for name in PRETRAIN_RUNS:
        res = comp.get(name) if isinstance(comp.get(name), dict) else data.pretrain_results.get(name)
        if not res:
            continue
        tokens = res.get("tokens")
        rows.append(
            [
                escape(name),
                _f(res.get("target_loss")),
                _f(res.get("target_bpb")),
                f"{tokens:,}" if isinstance(tokens, int) else "–",
                escape(twins.get(name, "")),
            ]
        )
    table = _table(["mixture", "target loss", "target bpb", "tokens", "same as"], rows) if rows else ""
    if not rows:
        table = svg.no_data("No final evaluation yet: pretraining is still running.")
    cap = (
        "Training loss as logged every log_every steps (metrics.jsonl); final losses on the validation split."
    )
    return f'{head}{plot}<p class="cap">{cap}</p>{table}'


def _layers_shown(n: int) -> list[int]:
    if n <= MAX_LOAD_LAYERS:
        return list(range(n))
    return sorted({round(i * (n - 1) / (MAX_LOAD_LAYERS - 1)) for i in range(MAX_LOAD_LAYERS)})


def _expert_load_section(data: ReportData) -> str:
    head = "<h2>Expert load per domain</h2>"
    load = data.expert_load
    if load is None:
        if "chosen" in data.pretrain_results:
            return head + svg.no_data(
                "This pretraining did not record expert load (it predates the recording); re-run "
                "pretraining to get it."
            )
        return head + svg.no_data("No pretrained model yet: the load is measured at its final evaluation.")
    counts: Mapping[str, list[list[float]]] = load["counts"]
    domains = [d for d in data.domains if d in counts] or list(counts)
    n_layers = len(next(iter(counts.values())))
    n_experts = len(counts[domains[0]][0]) if n_layers else 0
    if not n_layers or not n_experts:
        return head + svg.no_data("The pretrained model has no routed experts.")
    shares = {}
    for d in domains:
        per_layer = []
        for row in counts[d]:
            total = sum(row)
            per_layer.append([c / total if total else float("nan") for c in row])
        shares[d] = per_layer
    layers = _layers_shown(n_layers)
    v_max = max((v for d in domains for li in layers for v in shares[d][li] if math.isfinite(v)), default=1.0)
    plots = [
        svg.heatmap(
            domains,
            [str(e) for e in range(n_experts)],
            [shares[d][li] for d in domains],
            title=f"MoE layer {li}",
            plot_id=f"plot-load-{li}",
            v_max=v_max,
            cell=max(6.0, min(32.0, 576.0 / n_experts)),  # the grid ~576 px wide, cells 6-32 px
        )
        for li in layers
    ]
    shown = "" if len(layers) == n_layers else f" Layers {', '.join(map(str, layers))} of {n_layers} shown."
    tokens = load.get("tokens") or {}
    lo, hi = min(tokens.values(), default=0), max(tokens.values(), default=0)
    n_tok = f" ({lo:,} tokens per domain)" if lo == hi else f" ({lo:,}–{hi:,} tokens per domain)"
    cap = (
        f"Share of each domain's routed (token, slot) pairs sent to each expert by the chosen mixture's "
        f"model at its final evaluation, on the validation split{n_tok}. Even load is 1/{n_experts} = "
        f"{1 / n_experts:.3f}; darkest = {v_max:.3f}.{shown}"
    )
    return f'{head}<div class="grid">{"".join(plots)}</div><p class="cap">{cap}</p>'


SECTIONS = (
    _mixture_section,
    _cv_section,
    _swarm_section,
    _proxies_section,
    _pretrain_section,
    _expert_load_section,
)


def render(data: ReportData) -> str:
    """The whole page for ``data``."""
    body = [_header(data)] + [section(data) for section in SECTIONS]
    title = f"moemix report · {data.run_dir.name}"
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(run_dir: str | Path, stages: Mapping[str, Path] | None = None) -> Path:
    """Write ``RUN_DIR/report.html`` atomically (``stages``: the exact stage directories to describe;
    default: the ones the published mixture.json came from). Returns its path."""
    run_dir = Path(run_dir)
    path = run_dir / REPORT_NAME
    write_text_atomic(path, render(collect(run_dir, stages)))
    return path
