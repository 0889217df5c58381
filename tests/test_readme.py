"""The README's task sections run as written (published weights replaced by random ones: no downloads in CI)."""
import re
from pathlib import Path

import pytest
import timm

README = Path(__file__).resolve().parents[1] / 'README.md'
TASK_SECTIONS = ('Classification', 'Feature extraction', 'Segmentation', 'Deployment')


def python_blocks(section: str):
    text = README.read_text()
    match = re.search(rf'^## {re.escape(section)}\n(.*?)(?=^## )', text, re.MULTILINE | re.DOTALL)
    assert match, f'README has no section {section!r}'
    return re.findall(r'^```python\n(.*?)^```', match.group(1), re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize('section', TASK_SECTIONS)
def test_readme_section_runs(section, tmp_path, monkeypatch, capsys):
    create_model = timm.create_model

    def offline_create_model(*args, pretrained=False, **kwargs):
        return create_model(*args, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, 'create_model', offline_create_model)
    monkeypatch.chdir(tmp_path)  # files the snippets write land here
    blocks = python_blocks(section)
    assert blocks, f'README section {section!r} has no Python snippet'
    namespace = {'__name__': f'readme_{section}'}
    for block in blocks:
        exec(compile(block, f'README.md ({section})', 'exec'), namespace)
    printed = capsys.readouterr().out
    assert printed.strip(), 'the snippets print their results'
    if section == 'Deployment':
        errors = [float(line) for line in printed.split()]
        assert len(errors) == 2 and max(errors) <= 1e-4 and (tmp_path / 'unireplknet_a.onnx').exists()
