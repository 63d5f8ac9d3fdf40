"""Property tests of the mixing layers: exact CutMix areas, no self-pairs."""

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from keras_regularize.layers import CutMixLayer
from keras_regularize.layers import MixupLayer
from keras_regularize.layers import RandomMix
from keras_regularize.layers._mixing_math import make_partners
from keras_regularize.layers._mixing_ops import KerasOps
from tests import harness
from tests.layers.cut_mix_layer_test import check_exact_boxes
from tests.layers.mixup_layer_test import TF_DATA

LAYERS = {
    "mixup": lambda mode, seed: MixupLayer(mode=mode, seed=seed),
    "cutmix": lambda mode, seed: CutMixLayer(
        mode=mode, data_format="channels_last", seed=seed
    ),
    "random": lambda mode, seed: RandomMix(
        mode=mode, data_format="channels_last", seed=seed
    ),
}


@settings(max_examples=12, deadline=None)
@given(
    spatial=st.lists(st.integers(1, 9), min_size=1, max_size=3).map(tuple),
    data_format=st.sampled_from(["channels_last", "channels_first"]),
    mode=st.sampled_from(["batch", "pair", "elem"]),
    batch=st.sampled_from([1, 2, 5]),
    alpha=st.floats(0.1, 4.0),
    minmax=st.sampled_from([None, (0.2, 0.8), (0.5, 1.0)]),
    seed=st.integers(0, 2**16),
)
def test_cutmix_label_weight_is_exactly_the_pasted_area(
    spatial, data_format, mode, batch, alpha, minmax, seed
):
    layer = CutMixLayer(
        alpha=alpha,
        mode=mode,
        minmax=minmax,
        data_format=data_format,
        seed=seed,
    )
    check_exact_boxes(layer, spatial, data_format, batch=batch)


@settings(max_examples=12, deadline=None)
@given(
    mode=st.sampled_from(["batch", "elem"]),
    batch=st.integers(2, 64),
    seed=st.integers(0, 2**16),
)
def test_partners_never_self_pair(mode, batch, seed):
    xp = KerasOps(keras.random.SeedGenerator(seed))
    partner = harness.to_numpy(make_partners(xp, batch, mode))
    assert sorted(partner.tolist()) == list(range(batch))
    assert np.all(partner != np.arange(batch)), partner


@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_mixing_layers_never_self_pair(kind, mode):
    layer = LAYERS[kind](mode, 0)
    for batch in (2, 7):
        _, _, partner = layer.mix_images(np.zeros((batch, 4, 4, 1), "float32"))
        partner = harness.to_numpy(partner)
        assert sorted(partner.tolist()) == list(range(batch))
        assert np.all(partner != np.arange(batch)), partner


@settings(max_examples=10, deadline=None)
@given(batch=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_pair_mode_is_an_involution_leaving_only_an_odd_one_alone(batch, seed):
    xp = KerasOps(keras.random.SeedGenerator(seed))
    partner = harness.to_numpy(make_partners(xp, batch, "pair"))
    np.testing.assert_array_equal(partner[partner], np.arange(batch))
    assert int(np.sum(partner == np.arange(batch))) == batch % 2


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_no_self_pairs_over_many_draws(mode):
    # The permutation this replaced left about one sample per batch
    # unmixed; every draw here must leave none.
    xp = KerasOps(keras.random.SeedGenerator(0))
    for batch in (2, 3, 5, 32):
        counts = np.zeros((batch, batch))
        for _ in range(60):
            partner = harness.to_numpy(make_partners(xp, batch, mode))
            assert sorted(partner.tolist()) == list(range(batch))
            counts[np.arange(batch), partner] += 1
        assert np.trace(counts) == 0
        if batch == 3:
            # Each partner is uniform over the other samples.
            off = counts[~np.eye(batch, dtype=bool)]
            assert off.min() > 15, counts


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_a_batch_of_one_or_none(mode):
    xp = KerasOps(keras.random.SeedGenerator(0))
    assert harness.to_numpy(make_partners(xp, 1, mode)).tolist() == [0]
    assert harness.to_numpy(make_partners(xp, 0, mode)).size == 0
    two = harness.to_numpy(make_partners(xp, 2, mode)).tolist()
    assert two == [1, 0]


@pytest.mark.parametrize("jit", harness.jit_modes())
def test_no_self_pairs_inside_a_compiled_step_with_unknown_batch(jit):
    class Partners(keras.layers.Layer):
        def __init__(self, mixer):
            super().__init__()
            self.mixer = mixer

        def call(self, x):
            return self.mixer.mix_images(x)[2]

    inputs = keras.Input((3,))
    model = keras.Model(inputs, Partners(MixupLayer(mode="elem"))(inputs))
    model.compile(jit_compile=jit)
    for batch in (2, 7):
        x = np.zeros((batch, 3), "float32")
        partner = model.predict(x, batch_size=batch, verbose=0)
        assert np.all(partner != np.arange(batch))


@TF_DATA
def test_no_self_pairs_in_tf_data(pipeline):
    tf = pytest.importorskip("tensorflow")
    n = 40
    layer = MixupLayer(alpha=1.0, num_classes=n, mode="elem", seed=3)
    ids = np.arange(n)
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.zeros((n, 2), "float32"), ids)
    )
    for batch in (2, 5, 8):
        for k, (_, labels) in enumerate(
            dataset.batch(batch).map(layer).as_numpy_iterator()
        ):
            own = ids[k * batch : (k + 1) * batch]
            weight = labels[np.arange(len(own)), own]
            # Own weight 1 only when lambda is 1; a partner always exists.
            assert np.all((labels > 0).sum(axis=1) == 2) or np.all(weight < 1.0)
            others = labels.copy()
            others[np.arange(len(own)), own] = 0
            assert np.all(others.sum(axis=1) > 0)
