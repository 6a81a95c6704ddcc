"""Pass-rate charts as SVG (no library, no script): one file that is both inlined in compat.html and written next
to compat.md (compat-passrate.svg). The geometry is computed here; the markup is assets/passrate.svg.j2.

Top: one bar per environment (release pair, oldest first), the share of observed outcomes that passed, with
the percentage written above the bar. Below: one row per model family, a square per environment whose shade
and printed number give that family's pass rate there ("-" where nothing was observed).
"""
from __future__ import annotations

from harness.reporting.overview import pass_rates
from harness.reporting.templating import environment

LEFT, TOP, STEP, BAR_H, ROW_H, LABEL_H = 150, 34, 30, 120, 22, 118


def _shade(rate: float | None) -> str:
    """Red (0 %) through amber to green (100 %); grey for no observation. The number is printed as well."""
    if rate is None:
        return "#eeeeee"
    if rate >= 0.999:
        return "#2e9d4f"
    if rate >= 0.9:
        return "#8cc971"
    if rate >= 0.75:
        return "#e7d65a"
    if rate >= 0.5:
        return "#f0a04b"
    return "#d9534f"


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.0f}"


def passrate_model(matrix: dict) -> dict:
    rates = pass_rates(matrix)
    envs = rates["envs"]
    n = len(envs)
    bars = []
    for i, e in enumerate(envs):
        x = LEFT + i * STEP
        h = 0 if e["rate"] is None else round(BAR_H * e["rate"], 1)
        bars.append({"x": x + 4, "w": STEP - 8, "y": TOP + BAR_H - h, "h": h, "cx": x + STEP / 2,
                     "pct": _pct(e["rate"]), "env": e["env"], "label": e["label"],
                     "title": f"{e['env']} ({e['label']}): {e['passed']} of {e['observed']} observed outcomes pass"})
    fam_top = TOP + BAR_H + 16
    families = []
    for j, fam in enumerate(rates["families"]):
        y = fam_top + j * ROW_H
        squares = [{"x": LEFT + i * STEP + 1, "y": y, "w": STEP - 2, "h": ROW_H - 2, "cx": LEFT + i * STEP + STEP / 2,
                    "fill": _shade(r["rate"]), "pct": _pct(r["rate"]),
                    "dark": r["rate"] is not None and (r["rate"] < 0.5 or r["rate"] >= 0.999),
                    "title": f"{fam['family']} on {r['env']}: {r['passed']} of {r['observed']} pass"}
                   for i, r in enumerate(fam["rates"])]
        families.append({"name": fam["family"], "y": y + ROW_H / 2 + 4, "squares": squares})
    labels_top = fam_top + len(families) * ROW_H + 6
    return {"width": LEFT + n * STEP + 60, "height": labels_top + LABEL_H, "left": LEFT, "top": TOP,
            "bar_h": BAR_H, "bottom": TOP + BAR_H, "right": LEFT + n * STEP, "bars": bars, "families": families,
            "labels_top": labels_top, "fam_top": fam_top,
            "grid": [{"y": TOP + BAR_H * (1 - f), "text": f"{int(f * 100)}%"} for f in (0, 0.5, 1)]}


def passrate_svg(matrix: dict) -> str:
    return environment().get_template("passrate.svg.j2").render(**passrate_model(matrix))
