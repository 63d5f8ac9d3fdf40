"""MkDocs hook: ship MathJax inside the built site, so maths renders offline.

The MathJax 3 files come from the `django-static-mathjax` wheel on PyPI
(MathJax 3.2.2, Apache-2.0, no dependencies; it installs the importable
package `mathjax` holding MathJax's `es5/` build). Only what the pages need
is added to the site, under `assets/mathjax/`: the `tex-chtml.js` component
(TeX input, HTML output, menu), the TeX extensions it may autoload, its
web fonts and MathJax's license (about 2.5 MB). No file is vendored in this
repository, and the built site loads nothing from the network.
"""

import importlib.util
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

DEST = "assets/mathjax"
PARTS = ("tex-chtml.js", "input/tex/extensions", "output/chtml/fonts/woff-v2")


def _mathjax_root():
    spec = importlib.util.find_spec("mathjax")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            root = Path(location) / "static" / "mathjax"
            if (root / "es5" / PARTS[0]).is_file():
                return root
    raise PluginError(
        "MathJax files not found: install the docs dependency group "
        "(it holds `django-static-mathjax`, which carries MathJax 3)."
    )


def on_files(files, config):
    root = _mathjax_root()
    es5 = root / "es5"
    sources = {f"{DEST}/LICENSE": root / "LICENSE"}
    for part in PARTS:
        path = es5 / part
        for source in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if source.is_file():
                rel = source.relative_to(es5).as_posix()
                sources[f"{DEST}/{rel}"] = source
    for uri, source in sources.items():
        files.append(File.generated(config, uri, abs_src_path=str(source)))
    return files
