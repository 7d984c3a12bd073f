import os
import pathlib

import pytest

DATA = pathlib.Path(os.environ.get("APO_TEST_DATA_DIR", pathlib.Path(__file__).parent.parent / "data"))


@pytest.fixture
def data_dir() -> pathlib.Path:
    return DATA


@pytest.fixture
def apo_bin() -> pathlib.Path:
    bin_dir = os.environ.get("APO_BIN_DIR")
    if not bin_dir:
        pytest.fail("APO_BIN_DIR is not set: run the Python tests through ctest")
    return pathlib.Path(bin_dir) / "apo"
