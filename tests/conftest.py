"""Shared fixtures (shared functions and tables are in helpers.py).

The parity fixtures live in ../shared/fixtures/parity beside the checkout (override with
LKCONV_PARITY_DIR). In CI (CI=true) a missing fixture directory is a failure; on a user's machine the
tests that need it are skipped with a visible reason. A parametrisation over an empty list is an error
rather than a silent skip.
"""
import os
from pathlib import Path

import pytest
import torch

import lkconv  # noqa: F401  (registers the models)
from helpers import write_toy_imagefolder

REPO_ROOT = Path(__file__).resolve().parents[1]
PARITY_DIR = Path(os.environ.get('LKCONV_PARITY_DIR', REPO_ROOT.parent / 'shared' / 'fixtures' / 'parity'))


def _in_ci() -> bool:
    return os.environ.get('CI', '').lower() in ('1', 'true', 'yes')


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """A test parametrised over an empty list fails (pytest would skip it: nothing would be tested)."""
    for mark in item.iter_markers('skip'):
        if str(mark.kwargs.get('reason', '')).startswith('got empty parameter set'):
            pytest.fail(f'parametrised over an empty list: {mark.kwargs["reason"]}', pytrace=False)


@pytest.fixture(scope='session')
def parity_dir() -> Path:
    if not PARITY_DIR.is_dir():
        message = f'parity fixtures not found at {PARITY_DIR} (set LKCONV_PARITY_DIR)'
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return PARITY_DIR


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP's spinning threads slow small ops down 10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def toy_data(tmp_path_factory) -> Path:
    """A two-class image folder of 32x32 images (helpers.write_toy_imagefolder), one per test module."""
    return write_toy_imagefolder(tmp_path_factory.mktemp('toy'))
