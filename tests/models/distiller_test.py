"""Tests for keras_regularize.models.Distiller."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops

import keras_regularize
from keras_regularize.models import Distiller
from tests import harness
from tests.harness import BACKEND
from tests.harness import jit_modes
from tests.harness import to_numpy
from tests.losses.distillation_loss_test import reference

N, D, C = 32, 6, 4


class Counter(keras.layers.Layer):
    """Test-only identity layer counting samples seen (in a variable)."""

    def __init__(self, only_training=False, **kwargs):
        super().__init__(**kwargs)
        self.only_training = only_training
        self.count = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="count"
        )

    def call(self, x, training=False):
        if training or not self.only_training:
            n = ops.cast(ops.shape(x)[0], "float32")
            self.count.assign_add(n)
        return x


def mlp(hidden, name, counter=None, bn=False, dropout=0.0, seed=0):
    init = keras.initializers.GlorotUniform(seed)
    layers = [keras.Input((D,))]
    if counter is not None:
        layers.append(counter)
    layers.append(keras.layers.Dense(hidden, "relu", kernel_initializer=init))
    if bn:
        layers.append(keras.layers.BatchNormalization())
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(C, kernel_initializer=init))
    return keras.Sequential(layers, name=name)


def data(n=N, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(loc=2.0, size=(n, D)).astype("float32")
    y = rng.integers(0, C, size=n)
    return x, y


def weights(model):
    return [np.array(to_numpy(w)) for w in model.weights]


@pytest.mark.parametrize("jit", jit_modes())
@pytest.mark.parametrize("ensemble", [1, 2])
def test_one_step_loss_equals_formula(jit, ensemble):
    teachers = [
        mlp(16, f"t{i}", bn=True, dropout=0.5, seed=i + 1)
        for i in range(ensemble)
    ]
    student = mlp(8, "s")
    d = Distiller(
        student=student,
        teacher=teachers if ensemble > 1 else teachers[0],
        temperature=3.0,
        alpha=0.6,
    )
    d.compile(optimizer="sgd", metrics=["accuracy"], jit_compile=jit)
    x, y = data()
    w = np.random.default_rng(5).uniform(0, 2, N).astype("float32")
    s_out = to_numpy(student(x, training=True))
    t_out = [to_numpy(t(x, training=False)) for t in teachers]
    total, soft, hard = reference(s_out, t_out, y, 3.0, 0.6, w)
    logs = d.train_on_batch(x, y, sample_weight=w, return_dict=True)
    np.testing.assert_allclose(logs["loss"], total, rtol=1e-5)
    np.testing.assert_allclose(logs["distillation_loss"], soft, rtol=1e-5)
    np.testing.assert_allclose(logs["student_loss"], hard, rtol=1e-5)
    assert "accuracy" in logs


@pytest.mark.parametrize("jit", jit_modes())
def test_class_weight_weights_both_terms(jit):
    student, teacher = mlp(8, "s"), mlp(16, "t", seed=3)
    d = Distiller(student=student, teacher=teacher, temperature=2.0, alpha=0.5)
    d.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    x, y = data()
    class_weight = {0: 0.5, 1: 2.0, 2: 1.0, 3: 0.0}
    w = np.array([class_weight[int(c)] for c in y])
    total, soft, hard = reference(
        to_numpy(student(x)), [to_numpy(teacher(x))], y, 2.0, 0.5, w
    )
    h = d.fit(
        x,
        y,
        batch_size=N,
        epochs=1,
        shuffle=False,
        verbose=0,
        class_weight=class_weight,
    ).history
    np.testing.assert_allclose(h["loss"][0], total, rtol=1e-5)
    np.testing.assert_allclose(h["distillation_loss"][0], soft, rtol=1e-5)
    np.testing.assert_allclose(h["student_loss"][0], hard, rtol=1e-5)


@pytest.mark.parametrize("jit", jit_modes())
def test_teachers_frozen_bit_identical_and_student_runs_once(jit):
    counter = Counter(only_training=True)
    student = mlp(8, "s", counter=counter)
    teachers = [
        mlp(16, "t0", bn=True, dropout=0.3, seed=1),
        mlp(12, "t1", bn=True, seed=2),
    ]
    before = [weights(t) for t in teachers]
    d = Distiller(student=student, teacher=teachers)
    d.compile(optimizer="adam", jit_compile=jit)
    assert {id(v) for v in d.trainable_variables} == {
        id(v) for v in student.trainable_variables
    }
    assert not any(t.trainable for t in teachers)
    x, y = data()
    d.fit(x, y, batch_size=8, epochs=2, verbose=0)
    for t, b in zip(teachers, before):
        for new, old in zip(weights(t), b):
            np.testing.assert_array_equal(new, old)
    # Student forward once per step: 2 epochs x 32 samples.
    assert float(to_numpy(counter.count)) == 2 * N
    # The optimizer holds state for the student's variables only.
    n_student = sum(int(np.prod(v.shape)) for v in student.trainable_variables)
    n_opt = sum(
        int(np.prod(v.shape)) for v in d.optimizer.variables if len(v.shape)
    )
    assert n_opt == 2 * n_student  # Adam: two moments per student weight.


@pytest.mark.parametrize("jit", jit_modes())
def test_teacher_cache_calls_teacher_once_per_sample(jit):
    x, y = data()
    results = {}
    for cache in (False, True):
        keras.utils.set_random_seed(0)
        counter = Counter()
        teacher = mlp(16, "t", counter=counter, seed=1)
        d = Distiller(
            student=mlp(8, "s"), teacher=teacher, cache_teacher_outputs=cache
        )
        # lr 0: weights never move, so with shuffling the epoch means must
        # agree between cached and uncached runs only if rows stay paired.
        d.compile(optimizer=keras.optimizers.SGD(0.0), jit_compile=jit)
        h = d.fit(x, y, batch_size=8, epochs=3, verbose=0, shuffle=True)
        results[cache] = (float(to_numpy(counter.count)), h.history)
    assert results[False][0] == 3 * N
    assert results[True][0] == N
    for key in ("loss", "distillation_loss", "student_loss"):
        np.testing.assert_allclose(
            results[True][1][key], results[False][1][key], rtol=1e-5
        )


def test_teacher_cache_refuses_datasets_and_generators():
    d = Distiller(
        student=mlp(8, "s"), teacher=mlp(16, "t"), cache_teacher_outputs=True
    )
    d.compile(optimizer="sgd")
    x, y = data()

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return x[8 * i : 8 * i + 8], y[8 * i : 8 * i + 8]

    with pytest.raises(ValueError, match="argument `x`.*in-memory arrays"):
        d.fit(Batches(), epochs=1, verbose=0)


def test_cache_with_validation_split_and_eval_reports_student():
    x, y = data()
    student = mlp(8, "s")
    d = Distiller(
        student=student, teacher=mlp(16, "t"), cache_teacher_outputs=True
    )
    d.compile(optimizer="sgd", metrics=["accuracy"])
    h = d.fit(x, y, batch_size=8, epochs=1, verbose=0, validation_split=0.25)
    assert "val_loss" in h.history and "val_accuracy" in h.history
    assert "val_distillation_loss" not in h.history
    logs = d.evaluate(x, y, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "student_loss", "accuracy"}
    student.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    alone = student.evaluate(x, y, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["loss"], alone["loss"], rtol=1e-5)
    np.testing.assert_allclose(logs["accuracy"], alone["accuracy"])
    np.testing.assert_allclose(
        to_numpy(d.predict(x, verbose=0)), to_numpy(student(x)), rtol=1e-5
    )
    np.testing.assert_allclose(to_numpy(d(x)), to_numpy(student(x)))


def test_alpha_set_by_a_callback_reaches_the_compiled_step():
    class ZeroAlpha(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.model.alpha = 0.0 if epoch == 1 else 1.0

    d = Distiller(student=mlp(8, "s"), teacher=mlp(16, "t"))
    d.compile(optimizer=keras.optimizers.SGD(0.0), jit_compile=jit_modes()[-1])
    x, y = data()
    h = d.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[ZeroAlpha()])
    h = h.history
    np.testing.assert_allclose(h["loss"][0], h["distillation_loss"][0], 1e-5)
    np.testing.assert_allclose(h["loss"][1], h["student_loss"][1], 1e-5)
    assert d.alpha == 0.0 and float(to_numpy(d.alpha_variable)) == 0.0


def test_early_stopping_restores_student_weights():
    d = Distiller(student=mlp(8, "s"), teacher=mlp(16, "t"))
    d.compile(optimizer=keras.optimizers.SGD(0.5))
    x, y = data()
    stop = keras.callbacks.EarlyStopping(
        "loss", patience=1, restore_best_weights=True
    )
    h = d.fit(x, y, batch_size=8, epochs=4, verbose=0, callbacks=[stop])
    assert len(h.history["loss"]) >= 1


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    keras.config.set_dtype_policy(policy)
    student, teacher = mlp(8, "s"), mlp(16, "t", bn=True)
    d = Distiller(student=student, teacher=teacher)
    d.compile(optimizer="adam", jit_compile=jit_modes()[-1])
    x, y = data()
    h = d.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert all(np.isfinite(h[k][0]) for k in h)
    assert ops.dtype(d(x)) == policy.split("_")[1]


def _check_loaded(d, loaded, x, y):
    assert type(loaded) is Distiller and loaded.compiled
    # JSON form: tuples in the nested model configs come back as lists.
    assert json.dumps(loaded.get_config(), sort_keys=True) == json.dumps(
        d.get_config(), sort_keys=True
    )
    for a, b in zip(loaded.weights, d.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    assert int(to_numpy(loaded.optimizer.iterations)) == int(
        to_numpy(d.optimizer.iterations)
    )
    np.testing.assert_allclose(
        to_numpy(loaded.predict(x, verbose=0)),
        to_numpy(d.predict(x, verbose=0)),
        rtol=1e-6,
    )
    assert not any(t.trainable for t in loaded.teachers)
    h = loaded.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert {"loss", "student_loss", "distillation_loss"} <= set(h)
    assert np.isfinite(h["loss"][0])


@pytest.mark.parametrize("ensemble", [1, 2])
def test_save_load_continues_fit_without_compile(tmp_path, ensemble):
    teachers = [mlp(16, f"t{i}", bn=True, seed=i) for i in range(ensemble)]
    d = Distiller(
        student=mlp(8, "s"),
        teacher=teachers if ensemble > 1 else teachers[0],
        temperature=2.0,
        alpha=0.4,
        cache_teacher_outputs=ensemble > 1,
    )
    d.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit_modes()[-1],
    )
    x, y = data()
    d.fit(x, y, batch_size=8, epochs=1, verbose=0)
    json.dumps(d.get_config())
    path = str(tmp_path / "d.keras")
    d.save(path)
    _check_loaded(d, keras.saving.load_model(path), x, y)


def test_student_loads_without_keras_regularize(tmp_path):
    d = Distiller(student=mlp(8, "s"), teacher=mlp(16, "t"))
    d.compile(optimizer="sgd")
    x, y = data()
    d.fit(x, y, epochs=1, verbose=0)
    path = str(tmp_path / "student.keras")
    d.student.save(path)
    np.save(tmp_path / "x.npy", x)
    expected = to_numpy(d.student(x))
    code = (
        "import sys; sys.modules['keras_regularize'] = None\n"
        "import keras, numpy as np\n"
        f"m = keras.saving.load_model({path!r})\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, "
        "keras.ops.convert_to_numpy(m(x)))\n"
    )
    env = dict(os.environ, KERAS_BACKEND=BACKEND)
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, 1e-6)


def test_self_distill_fresh_copy_of_the_architecture():
    teacher = mlp(16, "t", bn=True, seed=1)
    teacher.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = data()
    teacher.fit(x, y, epochs=2, verbose=0)
    d = Distiller.self_distill(teacher, temperature=2.0, alpha=0.5)
    assert d.teacher is teacher and d.student is not teacher
    assert [type(x) for x in d.student.layers] == [
        type(x) for x in teacher.layers
    ]
    assert [tuple(w.shape) for w in d.student.weights] == [
        tuple(w.shape) for w in teacher.weights
    ]
    assert not np.array_equal(
        to_numpy(d.student.weights[0]), to_numpy(teacher.weights[0])
    )
    assert d.student.trainable and not teacher.trainable
    d.compile(optimizer="adam", jit_compile=jit_modes()[-1])
    h = d.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert np.isfinite(h["loss"][0])


def test_self_distill_of_a_former_teacher_trains_the_student():
    # A Distiller froze `model` as its teacher; distilling it into a copy of
    # itself must still give a student with weights to train.
    model = mlp(16, "m", seed=3)
    Distiller(student=mlp(16, "s", seed=4), teacher=model)
    assert not model.trainable
    d = Distiller.self_distill(model)
    assert d.student.trainable_weights
    before = [to_numpy(w).copy() for w in d.student.trainable_weights]
    d.compile(optimizer="sgd")
    x, y = data()
    d.fit(x, y, batch_size=8, epochs=1, verbose=0)
    after = [to_numpy(w) for w in d.student.trainable_weights]
    assert any(not np.array_equal(a, b) for a, b in zip(after, before))


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "torch", reason="jit covered by jit_modes")
def test_torch_jit_compile():
    d = Distiller(
        student=mlp(8, "s"), teacher=[mlp(16, "t0"), mlp(16, "t1", seed=2)]
    )
    d.compile(optimizer="adam", jit_compile=True)
    x, y = data()
    h = d.fit(x, y, batch_size=8, epochs=2, verbose=0).history
    assert np.all(np.isfinite(h["loss"]))


# Unbuilt models: shapes are checked, and teachers built, at the first call.


def unbuilt(units, hidden=8):
    return keras.Sequential(
        [keras.layers.Dense(hidden, "relu"), keras.layers.Dense(units)]
    )


class SubclassedNet(keras.Model):
    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(8, "relu")
        self.out = keras.layers.Dense(units)

    def call(self, x):
        return self.out(self.hidden(x))


def _fit(d, jit, y=None, epochs=1):
    x, labels = data()
    d.compile(optimizer="sgd", jit_compile=jit)
    y = labels if y is None else y
    return d.fit(x, y, batch_size=8, epochs=epochs, verbose=0).history


@pytest.mark.parametrize("jit", jit_modes())
@pytest.mark.parametrize("built_teacher", [True, False])
def test_unbuilt_student_against_teacher_of_another_shape_raises(
    jit, built_teacher
):
    teacher = (
        keras.Sequential([keras.Input((D,)), keras.layers.Dense(1)])
        if built_teacher
        else unbuilt(1)
    )
    d = Distiller(student=unbuilt(C), teacher=teacher)
    with pytest.raises(
        ValueError,
        match=r"`teacher`.*student's output shape \(None, 4\).*teacher\[0\] "
        r"with output shape \(None, 1\)",
    ):
        _fit(d, jit)


@pytest.mark.parametrize("jit", jit_modes())
def test_every_unbuilt_ensemble_teacher_is_checked(jit):
    d = Distiller(
        student=mlp(8, "s"), teacher=[unbuilt(C), SubclassedNet(C + 1)]
    )
    with pytest.raises(ValueError, match=r"teacher\[1\] with output shape"):
        _fit(d, jit)


@pytest.mark.parametrize("jit", jit_modes())
def test_cached_unbuilt_teacher_of_another_shape_raises(jit):
    d = Distiller(
        student=unbuilt(C), teacher=unbuilt(C - 1), cache_teacher_outputs=True
    )
    with pytest.raises(ValueError, match=r"output shape \(None, 3\)"):
        _fit(d, jit)


def test_predict_and_evaluate_check_unbuilt_shapes_too():
    x, y = data()
    with pytest.raises(ValueError, match=r"output shape \(None, 3\)"):
        Distiller(student=unbuilt(C), teacher=unbuilt(C - 1)).predict(
            x, verbose=0
        )
    d = Distiller(student=unbuilt(C), teacher=unbuilt(C - 1))
    d.compile(optimizer="sgd")
    with pytest.raises(ValueError, match=r"output shape \(None, 3\)"):
        d.evaluate(x, y, verbose=0)


@pytest.mark.parametrize("jit", jit_modes())
@pytest.mark.parametrize(
    "make", [unbuilt, SubclassedNet], ids=["sequential", "subclassed"]
)
@pytest.mark.parametrize("which", ["teacher", "student", "both"])
def test_unbuilt_models_train_and_teachers_stay_frozen(jit, make, which):
    student = make(C) if which != "teacher" else mlp(8, "s")
    teacher = make(C) if which != "student" else mlp(16, "t")
    ensemble = [teacher, make(C)]
    d = Distiller(student=student, teacher=ensemble)
    h = _fit(d, jit)
    assert all(np.isfinite(h[k][0]) for k in h)
    assert all(t.built and not t.trainable for t in ensemble)
    before = [weights(t) for t in ensemble]
    _fit(d, jit)
    for t, b in zip(ensemble, before):
        for new, old in zip(weights(t), b):
            np.testing.assert_array_equal(new, old)


@pytest.mark.parametrize("jit", jit_modes())
def test_unbuilt_teacher_with_cache_and_mixed_precision(jit):
    keras.config.set_dtype_policy("mixed_float16")
    d = Distiller(
        student=unbuilt(C), teacher=unbuilt(C), cache_teacher_outputs=True
    )
    h = _fit(d, jit)
    assert all(np.isfinite(h[k][0]) for k in h)


def test_first_direct_call_builds_an_unbuilt_teacher():
    x, _ = data()
    student, teacher = unbuilt(C), unbuilt(C)
    d = Distiller(student=student, teacher=teacher)
    np.testing.assert_allclose(to_numpy(d(x)), to_numpy(student(x)))
    assert teacher.built


@pytest.mark.parametrize("jit", jit_modes())
def test_column_and_one_hot_labels_give_the_flat_label_loss(jit):
    _, y = data()
    losses = []
    for labels in (y, y[:, None], np.eye(C, dtype="float32")[y]):
        keras.utils.set_random_seed(0)
        d = Distiller(student=mlp(8, "s"), teacher=mlp(16, "t"))
        d.compile(optimizer=keras.optimizers.SGD(0.0), jit_compile=jit)
        x, _ = data()
        logs = d.train_on_batch(x, labels, return_dict=True)
        losses.append(logs["student_loss"])
    np.testing.assert_allclose(losses, losses[0], rtol=1e-6)


@pytest.mark.parametrize("jit", jit_modes())
def test_labels_of_a_wrong_shape_raise(jit):
    d = Distiller(student=mlp(8, "s"), teacher=mlp(16, "t"))
    with pytest.raises(ValueError, match=r"`y`.*y.shape=\(8, 2\)"):
        _fit(d, jit, y=np.zeros((N, 2), "float32"))


@pytest.mark.parametrize("jit", jit_modes())
@pytest.mark.parametrize("bad", [C, -1])
def test_out_of_range_hard_label_raises_or_gives_nan(jit, bad):
    _, y = data()
    y[5] = bad
    d = Distiller(student=mlp(8, "s"), teacher=mlp(16, "t"))
    try:
        h = _fit(d, jit, y=y)
    except harness.data_errors() as error:
        # Eager steps (torch, jax without jit) see the values, and
        # TensorFlow graphs assert on them.
        harness.assert_error_names_value(error, "y", bad)
    else:
        # Traced steps cannot raise on data: NaN, never a finite wrong loss.
        assert np.isnan(h["loss"][0]) and np.isnan(h["student_loss"][0])
        assert np.isfinite(h["distillation_loss"][0])


def test_empty_batch_gives_zero_losses():
    d = Distiller(student=mlp(8, "s"), teacher=mlp(16, "t"))
    d.compile(optimizer="sgd")
    x, y = data()
    logs = d.train_on_batch(x[:0], y[:0], return_dict=True)
    assert logs["loss"] == 0.0 and logs["distillation_loss"] == 0.0


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_alpha_zero_or_one_trains_on_one_term(alpha):
    d = Distiller(student=mlp(8, "s"), teacher=mlp(16, "t"), alpha=alpha)
    d.compile(optimizer=keras.optimizers.SGD(0.0))
    x, y = data()
    logs = d.train_on_batch(x, y, return_dict=True)
    term = "distillation_loss" if alpha else "student_loss"
    np.testing.assert_allclose(logs["loss"], logs[term], rtol=1e-6)


def test_student_and_teacher_must_be_models():
    with pytest.raises(ValueError, match="argument `student`"):
        Distiller(student="not_a_model", teacher=mlp(16, "t"))
    with pytest.raises(ValueError, match=r"argument `teacher\[0\]`"):
        Distiller(student=mlp(8, "s"), teacher="not_a_model")
    with pytest.raises(ValueError, match="argument `teacher`"):
        Distiller(student=mlp(8, "s"), teacher=[])


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "torch", reason="jit covered by jit_modes")
def test_torch_compiled_fit_with_unbuilt_models_and_bad_labels():
    d = Distiller(student=unbuilt(C), teacher=[unbuilt(C), SubclassedNet(C)])
    h = _fit(d, True)
    assert all(np.isfinite(h[k][0]) for k in h)
    _, y = data()
    y[3] = C
    with pytest.raises(ValueError, match=f"y={C}"):
        _fit(Distiller(student=mlp(8, "s"), teacher=mlp(16, "t")), True, y=y)


# Bad arguments: a clear error naming the argument and the value.


BAD_NUMBERS = [float("inf"), float("-inf"), float("nan"), True, "1", None]


@pytest.mark.parametrize("temperature", [0.0, -2.0] + BAD_NUMBERS)
def test_bad_temperature(temperature):
    with pytest.raises(ValueError, match="`temperature`.*temperature="):
        Distiller(
            student=mlp(8, "s"), teacher=mlp(16, "t"), temperature=temperature
        )


@pytest.mark.parametrize("alpha", [-0.5, 1.01] + BAD_NUMBERS)
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match=r"`alpha`.*\[0, 1\].*alpha="):
        Distiller(student=mlp(8, "s"), teacher=mlp(16, "t"), alpha=alpha)


@pytest.mark.parametrize("value", [0.0, -1.0] + BAD_NUMBERS)
def test_bad_hyperparameter_assignment_keeps_the_old_value(value):
    d = Distiller(
        student=mlp(8, "s"), teacher=mlp(16, "t"), temperature=3.0, alpha=0.5
    )
    with pytest.raises(ValueError, match=r"temperature="):
        d.temperature = value
    if value != 0.0:
        with pytest.raises(ValueError, match=r"alpha="):
            d.alpha = value
    assert d.temperature == 3.0 and d.alpha == 0.5
    assert float(to_numpy(d.temperature_variable)) == 3.0
    assert float(to_numpy(d.alpha_variable)) == 0.5


@pytest.mark.parametrize("name", ["from_logits", "cache_teacher_outputs"])
@pytest.mark.parametrize("value", [1, 0, "no", None])
def test_bool_arguments_take_bools_only(name, value):
    with pytest.raises(ValueError, match=rf"`{name}`.*{name}="):
        Distiller(student=mlp(8, "s"), teacher=mlp(16, "t"), **{name: value})


def test_bad_alpha_assignment():
    d = Distiller(student=mlp(8, "s"), teacher=mlp(16, "t"))
    with pytest.raises(ValueError, match="`alpha`"):
        d.alpha = 2.0


def test_output_shape_mismatch_shows_both_shapes():
    teacher = keras.Sequential([keras.Input((D,)), keras.layers.Dense(5)])
    with pytest.raises(
        ValueError,
        match=r"`teacher`.*\(None, 4\).*teacher\[0\] with output shape "
        r"\(None, 5\)",
    ):
        Distiller(student=mlp(8, "s"), teacher=teacher)


def test_ensemble_shape_mismatch():
    odd = keras.Sequential([keras.Input((D,)), keras.layers.Dense(5)])
    with pytest.raises(ValueError, match=r"teacher\[1\].*\(None, 5\)"):
        Distiller(student=mlp(8, "s"), teacher=[mlp(16, "t"), odd])


def test_student_is_teacher():
    model = mlp(8, "s")
    with pytest.raises(ValueError, match="`teacher`.*self_distill"):
        Distiller(student=model, teacher=model)
    with pytest.raises(ValueError, match="`teacher`"):
        Distiller(student=model, teacher=[mlp(16, "t"), model])


def test_not_a_model():
    with pytest.raises(ValueError, match="`teacher\\[0\\]`.*keras.Model"):
        Distiller(student=mlp(8, "s"), teacher=lambda x: x)


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((0, 1), {}),
        ((1, 0), {}),
        ((0,), {"teacher": 1}),
        ((0, 1), {"temperature": 2.0}),
    ],
    ids=["student-teacher", "teacher-student", "one", "with-keywords"],
)
def test_positional_models_are_refused_with_the_reason(args, kwargs):
    models = [mlp(8, "s"), mlp(16, "t")]
    kwargs = {k: models[v] if k == "teacher" else v for k, v in kwargs.items()}
    with pytest.raises(TypeError) as info:
        Distiller(*(models[i] for i in args), **kwargs)
    message = str(info.value)
    assert "keyword arguments only" in message
    assert "Distiller(student=..., teacher=...)" in message
    assert "`(student, teacher)`" in message
    assert "keras.distillation.Distiller" in message
    assert "`(teacher, student)`" in message
    received = ", ".join(repr(models[i].name) for i in args)
    assert f"Received {len(args)} positional argument(s): {received}" in (
        message
    )
    # Nothing was frozen: the call failed before any teacher was touched.
    assert all(m.trainable for m in models)


def test_keywords_in_either_order_give_the_same_distiller():
    student, teacher = mlp(8, "s"), mlp(16, "t")
    a = Distiller(student=student, teacher=teacher)
    b = Distiller(teacher=teacher, student=student)
    assert a.student is b.student is student
    assert a.teacher is b.teacher is teacher


def test_student_and_teacher_are_required():
    with pytest.raises(TypeError, match="teacher"):
        Distiller(student=mlp(8, "s"))
    with pytest.raises(TypeError, match="student"):
        Distiller(teacher=mlp(16, "t"))


def test_config_round_trip_with_keyword_only_models():
    d = Distiller(
        student=mlp(8, "s"), teacher=[mlp(16, "t0"), mlp(16, "t1")], alpha=0.2
    )
    clone = Distiller.from_config(d.get_config())
    assert [t.name for t in clone.teachers] == ["t0", "t1"]
    assert clone.student.name == "s" and clone.alpha == pytest.approx(0.2)


def test_subclass_names_itself_in_the_positional_error():
    class MyDistiller(Distiller):
        pass

    with pytest.raises(TypeError, match="MyDistiller\\(student=..."):
        MyDistiller(mlp(8, "s"), mlp(16, "t"))
    d = MyDistiller(student=mlp(8, "s"), teacher=mlp(16, "t"))
    assert isinstance(d, MyDistiller)


def test_fit_before_compile():
    d = Distiller(student=mlp(8, "s"), teacher=mlp(16, "t"))
    x, y = data()
    with pytest.raises(ValueError, match=r"before compile\(\)"):
        d.fit(x, y, verbose=0)


def test_registered_under_the_package():
    assert keras.saving.get_registered_name(Distiller) == (
        "keras_regularize>Distiller"
    )
    assert keras_regularize.models.Distiller is Distiller


@pytest.mark.slow
def test_digits_distilled_student_at_least_matches_student_alone():
    # scikit-learn's bundled 8x8 digits (no download): 500 training images.
    # A 2x512 teacher (input noise, dropout) is trained once; a 64-256-10
    # student (the benchmark student shape, 16x fewer weights than
    # the teacher) is then trained alone and distilled (T=4, alpha=0.7)
    # with the same optimizer, initial weights, epochs and batches, over 4
    # seeds, and the mean accuracy on the 1,297 held-out digits compared.
    # Measured on jax: +0.004 on each of seeds 0-2. A much narrower student
    # (64-16-10) converges more slowly on soft targets and loses this race
    # at a 100-epoch budget; see docs/techniques/distillation.md.
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:500], order[500:]

    def net(hidden, seed, dropout=0.0):
        init = keras.initializers.GlorotUniform(seed)
        layers = [keras.Input((64,))]
        for units in hidden:
            layers.append(
                keras.layers.Dense(units, "relu", kernel_initializer=init)
            )
            if dropout:
                layers.append(keras.layers.Dropout(dropout))
        layers.append(keras.layers.Dense(10, kernel_initializer=init))
        return keras.Sequential(layers)

    scce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    teacher = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.GaussianNoise(0.3, seed=1),
            net([512, 512], 100, dropout=0.3),
        ]
    )
    teacher.compile(optimizer=keras.optimizers.Adam(1e-3), loss=scce)
    teacher.fit(x[train], y[train], batch_size=32, epochs=60, verbose=0)

    def accuracy(seed, distill):
        keras.utils.set_random_seed(seed)
        student = net([256], seed)
        if distill:
            model = Distiller(
                student=student,
                teacher=teacher,
                temperature=4.0,
                alpha=0.7,
                cache_teacher_outputs=True,
            )
            model.compile(optimizer=keras.optimizers.Adam(3e-3))
        else:
            model = student
            model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=scce)
        model.fit(x[train], y[train], batch_size=100, epochs=100, verbose=0)
        pred = to_numpy(student.predict(x[test], verbose=0)).argmax(-1)
        return float(np.mean(pred == y[test]))

    seeds = range(4)
    alone = np.mean([accuracy(s, False) for s in seeds])
    distilled = np.mean([accuracy(s, True) for s in seeds])
    assert distilled >= alone, (distilled, alone)
