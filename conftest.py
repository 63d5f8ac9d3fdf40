"""Root conftest: per-test seeding, doctest namespace and a report header."""

import keras
import numpy as np
import pytest

import keras_regularize


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
