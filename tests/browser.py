"""A page as headless Chromium renders it: errors, what each plotly figure drew, the table after sorting.

`render(page)` loads a copy of the page with a probe script first in its head. The probe records
console errors, uncaught errors, failed loads (the network is cut: a page that loads anything from
outside fails here) and, once the page has loaded, what each plotly figure holds (its traces as
plotly.js has them, the axes' types, the shapes, the SVG and canvas elements drawn), whether the page
reloads itself, and the leaderboard's first rows after clicking a header once and twice.
"""
import html
import json
import re
import shutil
import subprocess

import pytest

PROBE = """<script>
window.__errors = [];
const __error = console.error;
console.error = (...a) => { window.__errors.push(a.map(String).join(" ")); __error(...a); };
window.addEventListener("error", e => window.__errors.push("error: " + (e.message || (e.target && (e.target.src || e.target.href)))), true);
window.addEventListener("unhandledrejection", e => window.__errors.push("rejection: " + e.reason));
// a parcoords trace's lines as [its value on the last axis, the colour its number picks on the colour scale]
const parcoordsLines = t => t.line.color.map((v, i) => {
  const f = (v - (t.line.cmin || 0)) / ((t.line.cmax || 1) - (t.line.cmin || 0));
  const stop = Array.isArray(t.line.colorscale) ? t.line.colorscale.find(s => Math.abs(s[0] - f) < 1e-9) : null;
  return [t.dimensions[t.dimensions.length - 1].values[i], stop ? stop[1] : null];
});
window.addEventListener("load", () => setTimeout(() => {
  const plots = {};
  document.querySelectorAll(".plotly-graph-div").forEach(d => {
    const layout = d._fullLayout || {};
    plots[d.id] = {
      traces: (d.data || []).map(t => ({name: t.name, type: t.type, xaxis: t.xaxis || "x", legendgroup: t.legendgroup,
                                        points: (t.x || []).length,
                                        dims: t.dimensions ? t.dimensions.map(x => [x.label, x.values.length]) : null,
                                        colour: t.line && typeof t.line.color === "string" ? t.line.color : null,
                                        lines: t.type === "parcoords" ? parcoordsLines(t) : null})),
      axes: Object.fromEntries(Object.keys(layout).filter(k => /^[xy]axis[0-9]*$/.test(k)).map(k => [k, layout[k].type])),
      shapes: ((d.layout || {}).shapes || []).map(s => s.y0),
      drawn: d.querySelectorAll("g.trace, canvas").length};
  });
  const table = document.querySelector("table.sortable"), sorted = {};
  if (table) {
    const heads = Array.from(table.tHead.rows[0].cells), jobCol = heads.findIndex(h => h.textContent === "job");
    const th = heads.find(h => h.textContent === "val_loss");
    const firstJobs = () => Array.from(table.tBodies[0].rows).map(r => r.cells[jobCol].textContent);
    th.click(); sorted.asc = firstJobs(); th.click(); sorted.desc = firstJobs();
  }
  const out = document.createElement("pre");
  out.id = "nplm-probe";
  out.textContent = JSON.stringify({errors: window.__errors, plots, sorted,
                                    reloads: !!document.querySelector("meta[http-equiv=refresh]")});
  document.body.appendChild(out);
}, 300));
</script>"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("no Chromium here (apt-get install chromium)")
    return found


def render(page, tmp_path) -> dict:
    """Load `page` in headless Chromium, offline; return what the probe recorded."""
    text = page.read_text()
    probed = tmp_path / f"probed-{page.name}"
    probed.write_text(text.replace("<head>", "<head>" + PROBE, 1))
    # the copy sits elsewhere: links are not followed here, and the page's own files are not touched
    proc = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", "--host-resolver-rules=MAP * ~NOTFOUND",
                           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1400,1000",
                           "--virtual-time-budget=15000", "--dump-dom", probed.as_uri()],
                          capture_output=True, text=True, timeout=180)
    found = re.search(r'<pre id="nplm-probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"the page did not finish loading in Chromium:\n{proc.stderr[-3000:]}"
    return json.loads(html.unescape(found.group(1)))
