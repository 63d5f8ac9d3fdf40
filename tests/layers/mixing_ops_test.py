"""Parity of the two mixing operation sets: `KerasOps` and `TFOps`.

Every operation of `_mixing_ops.OPERATIONS` runs through both sets on the
same inputs: deterministic ones must agree (exactly, or to float
tolerance), random ones in shape, dtype and statistics. Runs wherever
TensorFlow is importable, under any Keras backend (under jax or torch,
`TFOps` is what a `tf.data` pipeline uses).
"""

import keras
import numpy as np
import pytest
from scipy import stats

from keras_regularize.layers import _mixing_math
from keras_regularize.layers._mixing_ops import OPERATIONS
from keras_regularize.layers._mixing_ops import KerasOps
from keras_regularize.layers._mixing_ops import TFDataState
from keras_regularize.layers._mixing_ops import TFOps
from tests import harness

tf = pytest.importorskip("tensorflow")

pytestmark = pytest.mark.tf_data

RNG = np.random.default_rng(0)
X = RNG.normal(size=(4, 5)).astype("float32")
POSITIVE = np.abs(X) + 0.1
HALVES = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.3, -0.7], "float32")
FLAGS = X > 0
IDS = np.array([3, 0, 2, 1], "int32")

# Each case: the operation's name and the arguments, built by `arrays(set)`
# from NumPy inputs, so both sets get the same values.
CASES = {
    "cast": lambda a: (a(X), "int32"),
    "convert": lambda a: (a(X),),
    "arange": lambda a: (5,),
    "ones": lambda a: ((2, 3),),
    "one_hot": lambda a: (a(IDS), 4),
    "reshape": lambda a: (a(X), (5, 4)),
    "take": lambda a: (a(X), a(IDS)),
    "take_along_axis": lambda a: (a(X), a(np.argsort(X, axis=0)), 0),
    "argsort": lambda a: (a(X[0]),),
    "argmax": lambda a: (a(X), 0),
    "where": lambda a: (a(FLAGS), a(X), 0.0),
    "log": lambda a: (a(POSITIVE),),
    "sqrt": lambda a: (a(POSITIVE),),
    "sigmoid": lambda a: (a(X),),
    "floor": lambda a: (a(HALVES),),
    "round": lambda a: (a(HALVES),),
    "minimum": lambda a: (a(X), a(X.T.reshape(4, 5))),
    "maximum": lambda a: (a(X), 0.25),
    "clip": lambda a: (a(X), -0.5, 0.5),
    "power": lambda a: (a(POSITIVE), 1.0 / 3.0),
    "logical_and": lambda a: (a(FLAGS), a(X < 0.5)),
    "logical_not": lambda a: (a(FLAGS),),
    "blend": lambda a: (a(X), a(-X), a(np.array([[0], [1], [0.25], [1]], "f"))),
}
RANDOM = ("uniform", "normal")
SPECIAL = ("shape", "dtype", "scalar", "require")


def keras_ops():
    values = {"alpha": 0.4}

    def scalar(name):
        return keras.ops.convert_to_tensor(values[name], "float32")

    return KerasOps(keras.random.SeedGenerator(0), scalar)


def tf_ops():
    return TFDataState().ops(0, {"alpha": 0.4}.__getitem__)


def keras_array(x):
    return keras.ops.convert_to_tensor(np.asarray(x, dtype=x.dtype))


def tf_array(x):
    return tf.constant(x)


def numpy(x):
    if isinstance(x, (tf.Tensor, tf.Variable)):
        return x.numpy()
    return harness.to_numpy(x)


def test_both_sets_implement_exactly_the_interface():
    for ops in (KerasOps, TFOps):
        public = {n for n in dir(ops) if not n.startswith("_")}
        public -= {"seed_generator", "generator", "scalars", "tf"}
        assert public == set(OPERATIONS), ops
    covered = set(CASES) | set(RANDOM) | set(SPECIAL)
    assert covered == set(OPERATIONS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_deterministic_operations_agree(name):
    got_keras = getattr(keras_ops(), name)(*CASES[name](keras_array))
    got_tf = getattr(tf_ops(), name)(*CASES[name](tf_array))
    a, b = numpy(got_keras), numpy(got_tf)
    assert a.shape == b.shape
    # Index outputs may be int32 or int64 by backend; floats must match.
    assert a.dtype.kind == b.dtype.kind
    if a.dtype.kind in "fb":
        assert a.dtype == b.dtype
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_shape_dtype_and_scalar_agree():
    k, t = keras_ops(), tf_ops()
    assert tuple(k.shape(keras_array(X))) == tuple(t.shape(tf_array(X)))
    for x in (X, IDS, FLAGS, X.astype("uint8")):
        assert k.dtype(keras_array(x)) == t.dtype(tf_array(x))
    np.testing.assert_allclose(
        numpy(k.scalar("alpha")), numpy(t.scalar("alpha"))
    )


def test_tf_shape_is_dynamic_only_where_unknown():
    t = tf_ops()

    @tf.function(input_signature=[tf.TensorSpec((None, 5))])
    def sizes(x):
        batch, width = t.shape(x)
        assert width == 5  # static: a Python int
        return batch

    assert int(sizes(tf.zeros((3, 5)))) == 3


@pytest.mark.parametrize("set_name", ["keras", "tf"])
def test_require_raises_the_same_error(set_name):
    xp, array = (
        (keras_ops(), keras_array)
        if set_name == "keras"
        else (tf_ops(), tf_array)
    )
    ids = array(np.array([0, 5, 1], "int32"))
    valid = array(np.array([True, False, True]))
    with pytest.raises(ValueError, match="argument `labels`.*labels=5"):
        xp.require(valid, ids, "labels", "ids in [0, 3)", guard=ids)
    ok = array(np.array([True, True, True]))
    assert xp.require(ok, ids, "labels", "ids", guard=ids) is ids


def test_tf_require_asserts_inside_a_graph():
    t = tf_ops()

    @tf.function
    def check(ids):
        valid = ids < 3
        return t.require(valid, ids, "labels", "ids in [0, 3)", guard=ids)

    np.testing.assert_array_equal(check(tf.constant([0, 2])).numpy(), [0, 2])
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels=\\] \\[5"):
        check(tf.constant([0, 5]))


@pytest.mark.parametrize("name", RANDOM)
def test_random_draws_agree_in_shape_dtype_and_distribution(name):
    draws = []
    for xp in (keras_ops(), tf_ops()):
        x = numpy(getattr(xp, name)((20000,)))
        assert x.shape == (20000,) and x.dtype == np.float32
        draws.append(x.astype("float64"))
    if name == "uniform":
        for x in draws:
            assert x.min() >= 0.0 and x.max() < 1.0
            assert stats.kstest(x, "uniform").pvalue > 1e-3
    else:
        for x in draws:
            assert stats.kstest(x, "norm").pvalue > 1e-3
    assert stats.ks_2samp(*draws).pvalue > 1e-3


def test_the_maths_agrees_on_both_sets():
    # Beta draws and partners through each set follow the same laws.
    for xp in (keras_ops(), tf_ops()):
        lam = numpy(_mixing_math.sample_beta(xp, 0.4, 20000))
        assert stats.kstest(lam, stats.beta(0.4, 0.4).cdf).pvalue > 1e-3
        for mode in ("batch", "pair"):
            partner = numpy(_mixing_math.make_partners(xp, 7, mode))
            assert sorted(partner.tolist()) == list(range(7))
            assert np.sum(partner == np.arange(7)) == (mode == "pair")


def test_tf_state_is_created_once_and_follows_assign():
    state = TFDataState()
    first = state.ops(3, {"alpha": 0.5}.__getitem__)
    np.testing.assert_allclose(numpy(first.scalar("alpha")), 0.5)
    state.assign("alpha", 0.9)
    second = state.ops(3, {"alpha": 0.1}.__getitem__)
    assert second.generator is first.generator
    np.testing.assert_allclose(numpy(second.scalar("alpha")), 0.9)
    state.assign("unused", 1.0)  # no copy yet: nothing to update
    assert "unused" not in state.variables
