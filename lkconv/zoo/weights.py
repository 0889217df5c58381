"""Where a model's published weights come from, and a failed download said in one line.

`timm.create_model(name, pretrained=True)` fetches weights from the Hugging Face hub (or a URL); without
network that ends in a long hub traceback. Commands wrap the call in `explain_download_failure(name)`,
which turns it into `WeightsUnavailable` with one message: what could not be fetched, from where, and
the offline alternatives.
"""
from contextlib import contextmanager
from typing import Iterator

__all__ = ['WeightsUnavailable', 'weights_source', 'explain_download_failure']


class WeightsUnavailable(RuntimeError):
    pass


def weights_source(name: str) -> str:
    """'the Hugging Face hub repository R, file F' (or the URL) of a model's default or tagged weights."""
    import timm
    cfg = timm.models.get_pretrained_cfg(name) if timm.is_model(name.split('.')[0]) else None
    if cfg is None:
        return f'the published weights of {name}'
    if cfg.hf_hub_id:
        return f"the Hugging Face hub repository '{cfg.hf_hub_id}', file '{cfg.hf_hub_filename or 'model weights'}'"
    if cfg.url:  # a URL, or (URL, the file name it is kept under)
        return f"'{cfg.url if isinstance(cfg.url, str) else cfg.url[0]}'"
    if cfg.file:
        return f"the file '{cfg.file}'"
    return f'the published weights of {name}'


@contextmanager
def explain_download_failure(name: str) -> Iterator[None]:
    """Re-raise a failed weight download (no network, unknown file) as `WeightsUnavailable`."""
    try:
        yield
    except OSError as e:  # hub and URL downloads fail as OSError subclasses (no network, 404, missing cache)
        text = str(e).strip()
        reason = text.splitlines()[0].split('. ')[0] if text else type(e).__name__  # its first sentence
        raise WeightsUnavailable(
            f'cannot load the pretrained weights of {name} from {weights_source(name)} ({reason}); '
            f'offline, download the file elsewhere and pass it: --checkpoint FILE, or in Python '
            f'timm.create_model({name!r}, pretrained=True, pretrained_cfg_overlay=dict(file=FILE))') from None
