"""Griffe extension: render Keras-style docstrings with mkdocstrings.

The package writes its docstrings the way Keras does (the house style's
docstring template): an `Example:` header followed by a blank line and
unindented `>>>` doctests, and a `Call arguments:` block.
Griffe's Google parser knows neither: it reads `Example:` with unindented
content as plain text (the `>>>` lines then become nested Markdown quotes,
one grey paragraph) and `Call arguments:` as an admonition whose items run
together. This extension rewrites the docstring text before griffe parses
it, so the source keeps the Keras layout (and its doctests) unchanged:

- `Example:` / `Examples:` with unindented content becomes a Google
  `Examples` section (content indented up to the next section header), so
  each `>>>` block renders as a highlighted `pycon` code block with its
  output;
- `Call arguments:` becomes an "other parameters" section titled
  `Call arguments:`, rendered like `Args:`;
- attributes declared as `ScalarVariable(check, doc)` get `doc` as their
  docstring, so run-time hyperparameters render as documented attributes;
- private base classes (a `_`-prefixed module or class) are flattened: the
  documented members a public class inherits from them are shown on the
  class, and `Bases:` lists the first public ancestors instead.

Used from `mkdocs.yml` (`plugins.mkdocstrings.handlers.python.options.
extensions`); not part of the package, not needed by the tests.
"""

import ast
import re

import griffe

_HEADER = re.compile(r"^(?P<indent> *)(?P<title>[A-Z][\w -]*):\s*$")
_EXAMPLE_TITLES = ("Example", "Examples")
_SCALAR_VARIABLE = "keras_regularize._variables.ScalarVariable"


def _indent(line):
    return len(line) - len(line.lstrip(" "))


def _is_section_start(lines, i):
    """A header line whose next non-blank line is indented below it."""
    match = _HEADER.match(lines[i])
    if match is None:
        return False
    for line in lines[i + 1 :]:
        if line.strip():
            return _indent(line) > len(match["indent"])
    return False


def rewrite_docstring(text):
    """The docstring `text` with Keras-style sections made Google-style."""
    lines = text.split("\n")
    out = []
    i = 0
    while i < len(lines):
        match = _HEADER.match(lines[i])
        if match is None:
            out.append(lines[i])
            i += 1
            continue
        indent, title = match["indent"], match["title"]
        if title in _EXAMPLE_TITLES:
            # `Examples:` is griffe's section; the title keeps the author's
            # word.
            out.append(f"{indent}Examples: {title}:")
            i += 1
            while i < len(lines) and not lines[i].strip():
                i += 1  # griffe skips a section with a blank line below it
            body = []
            while i < len(lines) and not (
                _indent(lines[i]) <= len(indent) and _is_section_start(lines, i)
            ):
                body.append(lines[i])
                i += 1
            while body and not body[-1].strip():
                body.pop()
            nested = bool(body) and _indent(body[0]) > len(indent)
            pad = "" if nested else "    "
            out.extend(pad + line if line.strip() else "" for line in body)
            if i < len(lines):
                out.append("")
        elif title == "Call arguments":
            out.append(f"{indent}Other parameters: Call arguments:")
            i += 1
        else:
            out.append(lines[i])
            i += 1
    return "\n".join(out)


def _scalar_variable_doc(attribute):
    """The `doc` of `name = ScalarVariable(check, doc)`, or `None`."""
    value = attribute.value
    if not isinstance(value, griffe.ExprCall):
        return None
    function = value.function
    path = getattr(function, "canonical_path", str(function))
    if path != _SCALAR_VARIABLE and not path.endswith(".ScalarVariable"):
        if str(function) != "ScalarVariable":
            return None
    doc = None
    positional = [
        a for a in value.arguments if not isinstance(a, griffe.ExprKeyword)
    ]
    if len(positional) >= 2:
        doc = positional[1]
    for argument in value.arguments:
        if isinstance(argument, griffe.ExprKeyword) and argument.name == "doc":
            doc = argument.value
    if doc is None:
        return None
    try:
        return ast.literal_eval(str(doc))
    except (ValueError, SyntaxError):
        return None


_SCALAR_NOTE = (
    "Held in a non-trainable float32 variable: assigning a new value (for "
    "example from a callback) is validated and reaches already compiled "
    "training steps."
)


def _is_private(path):
    return any(part.startswith("_") for part in path.split("."))


class KerasDocstrings(griffe.Extension):
    """See the module docstring."""

    def __init__(self):
        super().__init__()
        self._scalar_docs = {}

    def on_attribute_instance(self, *, attr, **kwargs):
        # `self.rate = rate` in `__init__` replaces the class attribute
        # `rate = ScalarVariable(...)` when it comes later in the source:
        # remember the doc by path, and give it to whichever object wins.
        doc = _scalar_variable_doc(attr)
        if doc is not None:
            self._scalar_docs[attr.path] = doc
        doc = self._scalar_docs.get(attr.path)
        if doc is not None and attr.docstring is None:
            attr.docstring = griffe.Docstring(
                doc + "\n\n" + _SCALAR_NOTE, parent=attr
            )

    def on_package(self, *, pkg, **kwargs):
        for obj in _walk(pkg):
            if obj.is_attribute and obj.path in self._scalar_docs:
                # Shown as `rate: float`, not as its implementation
                # (`rate = ScalarVariable(...)` or `rate = rate`).
                obj.value = None
                obj.annotation = griffe.ExprName("float")
                obj.labels = {"writable"}
            if obj.docstring is not None:
                obj.docstring.value = rewrite_docstring(obj.docstring.value)
        for obj in _walk(pkg):
            if obj.is_class and not _is_private(obj.path):
                _flatten_private_bases(obj)


def _walk(obj):
    yield obj
    for member in list(obj.members.values()):
        if member.is_alias:
            continue
        yield from _walk(member)


def _public_bases(cls, inherited):
    """`cls`'s bases with private ones replaced by their own bases."""
    bases = []
    resolved = {}
    try:
        for base in cls.resolved_bases:
            resolved[base.path] = base
    except Exception:  # an unresolvable base is kept as written
        pass
    for expr in cls.bases:
        path = getattr(expr, "canonical_path", str(expr))
        base = resolved.get(path)
        if base is not None and _is_private(path):
            for name, member in base.members.items():
                inherited.setdefault(name, member)
            bases.extend(_public_bases(base, inherited))
        else:
            bases.append(expr)
    return bases


def _flatten_private_bases(cls):
    inherited = {}
    bases = _public_bases(cls, inherited)
    if not inherited:
        return
    cls.bases = bases
    for name, member in inherited.items():
        if name.startswith("_") or name in cls.members:
            continue
        cls.set_member(name, griffe.Alias(name, member, parent=cls))
