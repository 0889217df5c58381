"""Shared test set-up: where the parity fixtures are, and how their absence is reported.

The parity fixtures live in ../shared/fixtures/parity beside the checkout (override with
LKCONV_PARITY_DIR). In CI (CI=true) a missing fixture directory is a failure; on a user's machine the
tests that need it are skipped with a visible reason.
"""
import os
from pathlib import Path

import pytest
import torch

import lkconv  # noqa: F401  (registers the models)

REPO_ROOT = Path(__file__).resolve().parents[1]
PARITY_DIR = Path(os.environ.get('LKCONV_PARITY_DIR', REPO_ROOT.parent / 'shared' / 'fixtures' / 'parity'))


@pytest.fixture(scope='session')
def parity_dir() -> Path:
    if not PARITY_DIR.is_dir():
        message = f'parity fixtures not found at {PARITY_DIR} (set LKCONV_PARITY_DIR)'
        if os.environ.get('CI', '').lower() in ('1', 'true', 'yes'):
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
