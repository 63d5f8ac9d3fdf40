"""Root conftest: per-test seeding, doctest namespace and a report header."""

import os

# Under pytest-xdist every worker process is one test stream: give each
# framework one compute thread, so N workers on N cores do not oversubscribe
# them (torch's spinning thread pool slows a suite ten-fold otherwise).
# Set before any framework starts.
_XDIST = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1
if _XDIST:
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, "1")
    # XLA's LLVM backend optimizations are off too: the suite's tensors are
    # tiny, so compiling takes most of a compiled test's time (a third less
    # with this flag on JAX and TensorFlow). Single-process runs (`pytest`
    # without `-n`) keep XLA's default optimization level.
    os.environ.setdefault(
        "XLA_FLAGS",
        "--xla_cpu_multi_thread_eigen=false --xla_backend_optimization_level=0",
    )

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck  # noqa: E402
from hypothesis import settings  # noqa: E402

import keras_regularize  # noqa: E402

if _XDIST and keras.backend.backend() == "torch":
    import torch

    torch.set_num_threads(1)
elif _XDIST and keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)


# Property tests: derandomized and bounded by default, so CI runs the same
# examples every time; `HYPOTHESIS_PROFILE=explore` searches more widely.
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    max_examples=25,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("explore", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_report_header(config):
    return (
        f"keras {keras.__version__}, backend {keras.backend.backend()}, "
        f"keras_regularize {keras_regularize.__version__}"
    )


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    keras.utils.clear_session()
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    doctest_namespace["keras"] = keras
    doctest_namespace["np"] = np
    doctest_namespace["keras_regularize"] = keras_regularize


# Modules that spend most of their time in worker subprocesses (engines,
# fault injection, the demo's command line, the 0.1.0 files): collected
# first, so that under `pytest -n 2 --dist loadfile` they start early and
# no core idles at the end of the run waiting for one of them.
_FIRST = (
    "tests/distributed/engines_test.py",
    "tests/callbacks/early_stopping_restore_faults_test.py",
    "tests/main_test.py",
    "tests/launcher_test.py",
    "tests/fixture_v0_1_0_test.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        path = item.nodeid.split("::")[0]
        return _FIRST.index(path) if path in _FIRST else len(_FIRST)

    items.sort(key=rank)
