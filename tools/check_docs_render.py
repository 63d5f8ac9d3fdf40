"""Check the built docs in a headless browser (optional, not used by CI).

Serves a built site on 127.0.0.1, loads pages in headless Chromium and
checks the DOM after the scripts ran:

- the API page: every `>>>` example line sits inside a `<pre><code>`
  block (none left as `&gt;&gt;&gt;` text or `<blockquote>`), and no
  `Bases:` line names a private class;
- each technique page with maths: every `arithmatex` element became
  MathJax output (`mjx-container`), with no raw `\\(` or `\\[` left;
- no page loads a script or stylesheet from another host.

It also writes screenshots (the API page at the DropPath section, and the
dropout technique page) for a person to look at.

Usage (Debian: `apt-get install -y chromium`):

    mkdocs build --strict -d site
    python tools/check_docs_render.py site --screenshots /tmp/docs-shots

Exits non-zero on the first failed check.
"""

import argparse
import contextlib
import functools
import http.server
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    # Lets MathJax (loaded with the page) finish typesetting first.
    "--virtual-time-budget=15000",
)
SCREENSHOTS = {
    "api-droppath.png": "api/#keras_regularize.layers.DropPath",
    "technique-dropout.png": "techniques/dropout/",
}


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("No chromium found: apt-get install -y chromium")


@contextlib.contextmanager
def _serve(site):
    handler = functools.partial(
        _QuietHandler, directory=str(Path(site).resolve())
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _run_chromium(*args):
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    if result.returncode != 0:
        sys.exit(f"chromium failed ({result.returncode}): {result.stderr}")
    return result.stdout


def dump_dom(url):
    return _run_chromium("--dump-dom", url)


def screenshot(url, path):
    _run_chromium(f"--screenshot={path}", "--window-size=1200,2000", url)


class Checks:
    def __init__(self):
        self.failures = 0

    def expect(self, ok, message):
        print(("ok    " if ok else "FAIL  ") + message)
        self.failures += not ok


def _pre_blocks(dom):
    return re.findall(r"<pre\b.*?</pre>", dom, flags=re.S)


def check_api(dom, checks):
    blocks = _pre_blocks(dom)
    outside = dom
    for block in blocks:
        outside = outside.replace(block, "")
    prompts = sum(block.count("&gt;&gt;&gt;") for block in blocks)
    checks.expect(prompts > 20, f"api: {prompts} `>>>` lines in <pre><code>")
    stray = outside.count("&gt;&gt;&gt;") + outside.count("<blockquote>")
    checks.expect(stray == 0, f"api: {stray} `>>>`/<blockquote> outside <pre>")
    highlighted = sum('class="gp"' in block for block in blocks)
    checks.expect(
        highlighted > 10, f"api: {highlighted} highlighted pycon blocks"
    )
    bases = re.findall(r"Bases:(.*?)</p>", dom, flags=re.S)
    private = [b for b in bases if re.search(r'title="[^"]*\._', b)]
    checks.expect(
        bases and not private,
        f"api: {len(bases)} `Bases:` lines, {len(private)} naming a private "
        "class",
    )
    for section in ("Example:", "Call arguments:"):
        count = dom.count(f'<span class="doc-section-title">{section}</span>')
        checks.expect(count > 5, f"api: {count} `{section}` sections")


def check_maths(page, dom, checks):
    spans = re.findall(
        r'<(span|div) class="arithmatex">(.*?)</\1>', dom, flags=re.S
    )
    typeset = sum("<mjx-container" in body for _, body in spans)
    raw = sum(
        ("\\(" in body or "\\[" in body) and "<mjx-container" not in body
        for _, body in spans
    )
    checks.expect(
        spans and typeset == len(spans) and raw == 0,
        f"{page}: {typeset}/{len(spans)} formulas typeset by MathJax, "
        f"{raw} left raw",
    )


def check_no_remote_assets(site, checks):
    remote = []
    for html in Path(site).rglob("*.html"):
        text = html.read_text(encoding="utf-8")
        remote += re.findall(r'<script[^>]+src="(https?://[^"]+)"', text)
        remote += re.findall(
            r'<link[^>]+rel="stylesheet"[^>]+href="(https?://[^"]+)"', text
        )
    checks.expect(not remote, f"no remote scripts or stylesheets {remote}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("site", help="a site built by `mkdocs build`")
    parser.add_argument(
        "--screenshots", help="folder to write PNG screenshots to"
    )
    args = parser.parse_args(argv)
    site = Path(args.site)
    checks = Checks()
    check_no_remote_assets(site, checks)
    maths_pages = sorted(
        p.parent.relative_to(site).as_posix() + "/"
        for p in (site / "techniques").glob("*/index.html")
        if 'class="arithmatex"' in p.read_text(encoding="utf-8")
    )
    checks.expect(bool(maths_pages), f"{len(maths_pages)} pages with maths")
    with _serve(site) as base:
        check_api(dump_dom(base + "api/"), checks)
        for page in maths_pages:
            check_maths(page, dump_dom(base + page), checks)
        if args.screenshots:
            out = Path(args.screenshots)
            out.mkdir(parents=True, exist_ok=True)
            for name, page in SCREENSHOTS.items():
                screenshot(base + page, out / name)
                print(f"wrote {out / name}")
    if checks.failures:
        sys.exit(f"{checks.failures} check(s) failed")
    print("all checks passed")


if __name__ == "__main__":
    main()
