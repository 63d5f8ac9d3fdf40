// MathJax 3 settings for pymdownx.arithmatex (generic mode): typeset only
// the `arithmatex` spans and divs. The MathJax files ship with the site
// (tools/mkdocs_mathjax.py), so maths renders offline too.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};

// MathJax typesets the first page itself. Material's instant navigation
// (not enabled today) swaps pages without a reload: typeset those again,
// after MathJax's own start-up (clearing its cache mid-typeset would lose
// the font rules).
if (typeof document$ !== "undefined") {
  let firstPage = true;
  document$.subscribe(() => {
    if (firstPage) {
      firstPage = false;
      return;
    }
    MathJax.startup.promise = MathJax.startup.promise.then(() => {
      MathJax.startup.output.clearCache();
      MathJax.typesetClear();
      MathJax.texReset();
      return MathJax.typesetPromise();
    });
  });
}
