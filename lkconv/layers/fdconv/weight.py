"""Fourier Disjoint Weight (FDConv, CVPR 2025): a conv weight stored as its 2-D real spectrum.

A weight W of shape (Cout, Cin, k, k) is laid out as the matrix M = W.permute(0, 2, 1, 3) of shape
(Cout*k) x (Cin*k) (rows: out-channel and kernel row; columns: in-channel and kernel column). Its
parameters are rfft2(M) (unnormalised), stored as [real, imag] in a trailing dim, divided by
m = min(Cout, Cin) // 2 and held `param_ratio` (P) times: shape (P, Cout*k, (Cin*k)//2 + 1, 2).

The frequencies are ranked by their distance to DC and cut into `kernel_num` contiguous bands; a
per-sample attention value scales each band, and the inverse transform gives that sample's weight
(n frequency-disjoint kernels mixed by attention).
"""
import functools

import torch

__all__ = ['spatial_to_fourier', 'fourier_to_spatial', 'fourier_scale', 'frequency_groups', 'synthesize_weight']


def fourier_scale(out_chs: int, in_chs: int) -> int:
    """m = min(Cout, Cin) // 2: the spectrum is stored divided by m and rescaled by m at synthesis."""
    m = min(out_chs, in_chs) // 2
    if m < 1:
        raise ValueError(f'a Fourier weight needs at least 2 input and output channels, got {in_chs} -> {out_chs}')
    return m


def spatial_to_fourier(weight: torch.Tensor, param_ratio: int = 1) -> torch.Tensor:
    """Fourier parameters (P, Cout*k, (Cin*k)//2+1, 2), float32, of a spatial weight.

    `weight` is a conv weight (Cout, Cin, k, k) or a linear weight (Cout, Cin) (a 1x1 conv). Each of the
    P copies holds rfft2(M) / (m * P), so that `synthesize_weight` with every band attention at its
    neutral value gives back `weight` exactly (up to FFT rounding). For P = 1 this is the official
    converter's output (`tools/convert_to_fdconv.py`).
    """
    if weight.dim() == 2:
        weight = weight[:, :, None, None]
    if weight.dim() != 4 or weight.shape[-1] != weight.shape[-2]:
        raise ValueError(
            f'expected a square conv weight (Cout, Cin, k, k) or a linear weight, got {tuple(weight.shape)}')
    out_chs, in_chs, k, _ = weight.shape
    matrix = weight.float().permute(0, 2, 1, 3).reshape(out_chs * k, in_chs * k)
    spectrum = torch.view_as_real(torch.fft.rfft2(matrix))
    spectrum = spectrum / (fourier_scale(out_chs, in_chs) * param_ratio)
    return spectrum.unsqueeze(0).repeat(param_ratio, 1, 1, 1)


def fourier_to_spatial(spectrum: torch.Tensor, in_chs: int, kernel_size: int) -> torch.Tensor:
    """Inverse of the layout: complex spectra (B, Cout*k, W') -> spatial weights (B, Cout, Cin, k, k).

    Unscaled: the caller applies the 1/m (or attention) factors. The output width Cin*k is passed
    explicitly, so an odd Cin*k is reconstructed correctly.
    """
    batch, rows, k = spectrum.shape[0], spectrum.shape[1], kernel_size
    matrix = torch.fft.irfft2(spectrum, s=[rows, in_chs * k])
    return matrix.reshape(batch, rows // k, k, in_chs, k).transpose(2, 3)


@functools.lru_cache(maxsize=64)
def _frequency_groups_cpu(rows: int, cols: int, kernel_num: int) -> torch.Tensor:
    freq_rows = torch.fft.fftfreq(rows, device='cpu')
    freq_cols = torch.fft.rfftfreq(cols, device='cpu')
    grid = torch.stack(torch.meshgrid(freq_rows, freq_cols, indexing='ij'), dim=-1)
    order = torch.sort(torch.norm(grid, dim=-1).flatten()).indices  # ties broken as the official CPU sort
    count = order.numel()
    # band j holds ranks [floor(j*N/n), floor((j+1)*N/n)): the official equal chunks when n divides N
    band_of_rank = (torch.arange(count, device='cpu') * kernel_num).div(count, rounding_mode='floor')
    groups = torch.empty(count, dtype=torch.int32, device='cpu')
    groups[order] = band_of_rank.to(torch.int32)
    return groups.reshape(rows, cols // 2 + 1)


def frequency_groups(rows: int, cols: int, kernel_num: int, device=None) -> torch.Tensor:
    """Band index (int32, shape (rows, cols//2+1)) of every coefficient of an rfft2 over a rows x cols grid.

    Coefficients are ranked by the Euclidean norm of their normalised frequency (fftfreq over rows,
    rfftfreq over columns, float32) with torch.sort on CPU, so that ties fall as in the official layer.
    """
    if kernel_num < 1:
        raise ValueError(f'kernel_num must be >= 1, got {kernel_num}')
    return _frequency_groups_cpu(rows, cols, kernel_num).to(device)


def synthesize_weight(
        fourier_weight: torch.Tensor,
        band_attention: torch.Tensor,
        groups: torch.Tensor,
        in_chs: int,
        kernel_size: int,
) -> torch.Tensor:
    """Per-sample spatial weights (B, Cout, Cin, k, k), float32, from the Fourier parameters.

    `band_attention` (B, P, n) already includes the synthesis gain m*n*P; every coefficient is scaled by
    the attention of its band (`groups`), the P copies are summed and transformed back.
    """
    batch, copies = band_attention.shape[0], band_attention.shape[1]
    rows, cols = groups.shape[0], groups.shape[1]
    # gather each coefficient's band attention: (B*P, n) -> (B*P, rows*cols)
    scale = band_attention.float().reshape(batch * copies, -1).index_select(1, groups.flatten())
    # scaled and summed as [real, imag] pairs: complex tensors only meet the inverse FFT, which keeps
    # the graph exportable (ONNX has no complex dtype; exporters map only FFTs onto pairs)
    scale = scale.reshape(batch, copies, rows, cols, 1)
    spectrum = (fourier_weight.float() * scale).sum(1) if copies > 1 else fourier_weight[0].float() * scale[:, 0]
    # contiguous: a model moved to channels_last stores the 4-D Fourier parameter with a strided last dim
    return fourier_to_spatial(torch.view_as_complex(spectrum.contiguous()), in_chs, kernel_size)
