"""Missing parity fixtures: a loud failure in CI, a visible skip on a user's machine."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

PARITY_TEST = 'tests/test_unireplknet.py::test_parity_logits_and_stages'


def _run_without_fixtures(tmp_path: Path, ci: bool):
    env = {k: v for k, v in os.environ.items() if k != 'CI'}
    env['LKCONV_PARITY_DIR'] = str(tmp_path / 'missing')
    if ci:
        env['CI'] = 'true'
    return subprocess.run(
        [sys.executable, '-m', 'pytest', PARITY_TEST, '-rs', '-q', '-p', 'no:cacheprovider'],
        cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True)


@pytest.mark.parametrize('ci', [True, False])
def test_missing_fixtures(tmp_path, ci):
    result = _run_without_fixtures(tmp_path, ci)
    output = result.stdout + result.stderr
    assert 'parity fixtures not found' in output, output
    if ci:
        assert result.returncode == 1 and ('1 error' in output or '1 failed' in output), output
    else:
        assert result.returncode == 0 and '1 skipped' in output, output
