"""The run report: ``RUN_DIR/report.html``, one self-contained page (inline SVG, no scripts)."""

from moemix.report.html import REPORT_NAME, render, write_report

__all__ = ["REPORT_NAME", "render", "write_report"]
