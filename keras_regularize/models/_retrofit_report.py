"""The printable report `add_regularization` returns with its model."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Merge:
    """One residual merge found, and what was done to it.

    Attributes:
        name: The merge's layer or operation name (`"conv2_block1_add"`,
            `"add_17"`); `"<sub-model>/<name>"` inside a nested model.
        kind: `"layer"` (a `keras.layers.Add`) or `"op"` (`+`/`ops.add`).
        skip: `"identity"` or `"projection"`: how the shortcut was told
            apart from the residual branch.
        rate: The drop rate given to the branch (`0.0` when `drop_path=0`).
        mode: `"row"` (a `DropPath` on the branch), `"skip"` (the branch
            extracted into a `StochasticResidual(mode="batch")`), or
            `"none"` when `drop_path=0` left the merge alone.
        layer: Name of the inserted `DropPath` or `StochasticResidual`, or
            `None` when nothing was inserted.
        replaced: The existing drop layer on the branch that the new one
            replaced, described, or `None`.
        fallback: Why `drop_path_mode="skip"` fell back to `"row"` for this
            merge, or `None`.
    """

    name: str
    kind: str
    skip: str
    rate: float
    mode: str
    layer: str = None
    replaced: str = None
    fallback: str = None


@dataclasses.dataclass(frozen=True)
class RegularizationReport:
    """What `keras_regularize.models.add_regularization` did, printable.

    Attributes:
        drop_path: The `drop_path` argument (the last merge's rate).
        drop_path_mode: The `drop_path_mode` argument.
        merges: Tuple of `Merge`, in topological order.
        skipped: Tuple of `(name, reason)` for add nodes left alone.
        opaque: Tuple of names of layers whose insides were not searched.
        head: Name of the `Dense` layer that got a `Dropout`, or `None`.
        head_note: Why no head dropout was added, or `None`.
    """

    drop_path: float
    drop_path_mode: str
    merges: tuple = ()
    skipped: tuple = ()
    opaque: tuple = ()
    head: str = None
    head_dropout: float = 0.0
    head_note: str = None

    @property
    def rates(self):
        """The drop rates of the merges, in topological order."""
        return [m.rate for m in self.merges]

    @property
    def fallbacks(self):
        """How many merges fell back from `"skip"` to `"row"`."""
        return sum(m.fallback is not None for m in self.merges)

    def __str__(self):
        lines = [
            f"add_regularization: {len(self.merges)} residual merges, "
            f"drop_path={self.drop_path:g}, "
            f"drop_path_mode={self.drop_path_mode!r}"
        ]
        width = max([len(m.name) for m in self.merges] + [5])
        lines.append(
            f"  {'#':>3}  {'merge':<{width}}  kind   skip        rate   mode"
        )
        for i, m in enumerate(self.merges):
            line = (
                f"  {i:>3}  {m.name:<{width}}  {m.kind:<5}  {m.skip:<10}  "
                f"{m.rate:.3f}  {m.mode}"
            )
            if m.replaced:
                line += f"  (replaces {m.replaced})"
            if m.fallback:
                line += f"  (skip impossible: {m.fallback})"
            lines.append(line)
        if self.drop_path_mode == "skip":
            lines.append(f"skip-mode fallbacks to 'row': {self.fallbacks}")
        for name, reason in self.skipped:
            lines.append(f"left alone: {name}: {reason}")
        if self.opaque:
            lines.append(
                "not searched (subclassed layers): " + ", ".join(self.opaque)
            )
        if self.head:
            lines.append(
                f"head dropout: Dropout({self.head_dropout:g}) before "
                f"'{self.head}'"
            )
        elif self.head_note:
            lines.append(f"head dropout: none ({self.head_note})")
        return "\n".join(lines)
