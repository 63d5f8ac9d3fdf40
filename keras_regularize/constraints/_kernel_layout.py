"""Which axes of a Keras layer's weight matrices make up one output unit."""

import keras

L = keras.layers

# (layer types, [(constraint attribute, variable attribute, norm axes)]),
# checked in order. Norm axes are those reduced for one unit; `None` means
# all but the last. Kernel layouts in Keras 3 (any `data_format`):
#   Conv*D            (*spatial, in, out)         unit = one output filter
#   Conv*DTranspose   (*spatial, out, in)         unit = one output filter
#   DepthwiseConv*D   (*spatial, in, multiplier)  unit = one (channel,
#                     multiplier) output, fed by a spatial window only
#   SeparableConv*D   depthwise as above, pointwise (1.., in * m, out)
#   Embedding         (vocabulary, dim)           unit = one row
#   EinsumDense       from its equation, see `einsum_reduce_axes`
_RULES = (
    ((L.Conv1DTranspose,), [("kernel_constraint", "kernel", (0, 2))]),
    ((L.Conv2DTranspose,), [("kernel_constraint", "kernel", (0, 1, 3))]),
    ((L.Conv3DTranspose,), [("kernel_constraint", "kernel", (0, 1, 2, 4))]),
    (
        (L.DepthwiseConv1D,),
        [("depthwise_constraint", "kernel", (0,))],
    ),
    (
        (L.DepthwiseConv2D,),
        [("depthwise_constraint", "kernel", (0, 1))],
    ),
    (
        (L.SeparableConv1D,),
        [
            ("depthwise_constraint", "depthwise_kernel", (0,)),
            ("pointwise_constraint", "pointwise_kernel", None),
        ],
    ),
    (
        (L.SeparableConv2D,),
        [
            ("depthwise_constraint", "depthwise_kernel", (0, 1)),
            ("pointwise_constraint", "pointwise_kernel", None),
        ],
    ),
    ((L.Conv1D, L.Conv2D, L.Conv3D), [("kernel_constraint", "kernel", None)]),
    ((L.Dense,), [("kernel_constraint", "kernel", None)]),
    ((L.Embedding,), [("embeddings_constraint", "embeddings", (1,))]),
)

TRANSPOSED_CONVS = (
    L.Conv1DTranspose,
    L.Conv2DTranspose,
    L.Conv3DTranspose,
)


def einsum_reduce_axes(equation):
    """The kernel axes an `EinsumDense` reduces for one output unit.

    The output-unit axes of the kernel are its subscripts that also appear
    in the output; the others are summed over by the einsum and make up a
    unit's fan-in. `"abc,cde->abde"` (a `MultiHeadAttention` query) gives
    `(0,)`; `"abcd,cde->abe"` (its output projection) gives `(0, 1)`.
    """
    spec = equation.replace("...", "").replace(" ", "")
    inputs, output = spec.split("->")
    kernel = inputs.split(",")[1]
    return tuple(i for i, s in enumerate(kernel) if s not in output)


def kernel_units(layer):
    """`[(constraint attribute, variable attribute, norm axes)]` of `layer`.

    `None` when the layer type is not one whose kernel layout is known.
    """
    if isinstance(layer, L.EinsumDense):
        axes = einsum_reduce_axes(layer.equation)
        return [("kernel_constraint", "kernel", axes)]
    for types, slots in _RULES:
        if isinstance(layer, types):
            return slots
    return None
