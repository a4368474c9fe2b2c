"""Read a Snakemake HTML report the way a reader does: in headless Chromium.

The report is a React app whose results appear only when a reader opens a category (the list
of its results) and then a result (its caption). `rendered_report` copies the report and adds
a script that makes those clicks through the app's own `app.setView` / `app.showResultInfo`
(what its menu, category and result buttons call), collecting the page's visible text
(innerText) after each; Chromium's `--dump-dom` then hands back the page with that text in it.
Nothing is read from the report's embedded data except the names of categories and results to
click on.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

# Runs after the app's first render; setTimeout pauses let React render each view.
DRIVER = """
<script>
window.addEventListener("load", () => setTimeout(async () => {
  const pause = () => new Promise(resolve => setTimeout(resolve, 300));
  const seen = {listed: {}, opened: {}};
  for (const category of Object.keys(categories)) {
    for (const subcategory of Object.keys(categories[category])) {
      app.setView({navbarMode: "menu"});  // back to the menu, as a reader goes
      await pause();
      app.setView({navbarMode: "subcategory", category: category, subcategory: subcategory});
      await pause();
      seen.listed[category + " / " + subcategory] = document.body.innerText;
    }
  }
  for (const path of Object.keys(results)) {
    app.showResultInfo(path);
    await pause();
    seen.opened[path] = document.body.innerText;
  }
  const out = document.createElement("pre");
  out.id = "ess-report-check";
  out.textContent = JSON.stringify(seen);
  document.body.appendChild(out);
}, 1000));
</script>
"""
CHECK = re.compile(r'<pre id="ess-report-check">(.*?)</pre>', re.DOTALL)


def chromium() -> str | None:
    """The Chromium binary (Debian's `chromium` package), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def rendered_report(report: Path, scratch: Path, timeout: int = 300) -> dict[str, dict[str, str]]:
    """{"listed": {category / subcategory: visible text}, "opened": {result: visible text}}."""
    page = scratch / "report-driven.html"
    head, body_end, tail = report.read_text().rpartition("</body>")  # the page's own, the last
    page.write_text(head + DRIVER + body_end + tail)
    run = subprocess.run(
        [
            chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={scratch / 'chromium-profile'}",
            "--virtual-time-budget=600000",  # virtual ms: the pauses cost no real time
            "--dump-dom", page.resolve().as_uri(),
        ],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    found = CHECK.search(run.stdout)
    if run.returncode != 0 or found is None:
        raise RuntimeError(f"chromium did not render the report: {run.stderr[-2000:]}")
    return json.loads(html.unescape(found[1]))


def words(text: str) -> str:
    """Whitespace collapsed, for comparing rendered text with its source."""
    return " ".join(text.split())
