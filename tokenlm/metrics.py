"""Metrics shared by the evaluations and training probes: signal fidelity and unit/sequence statistics.

Signal metrics take 1-D float signals of one sample rate (numpy arrays; torch tensors are read as
numpy). Unit metrics take frame-aligned integer sequences.
"""

from __future__ import annotations

import numpy as np

# --------------------------------------------------------------------------- signals


def align(ref: np.ndarray, deg: np.ndarray, max_lag: int = 800) -> np.ndarray:
    """Shift ``deg`` by the lag (|lag| <= ``max_lag`` samples; 50 ms at 16 kHz) that maximises its
    correlation with ``ref``; the result has ``ref``'s length. For systems with a coding delay."""
    n = len(ref)
    deg = np.pad(deg[:n], (0, max(0, n - len(deg))))
    spec = np.fft.rfft(ref, 2 * n) * np.conj(np.fft.rfft(deg, 2 * n))
    corr = np.fft.irfft(spec)
    lags = np.concatenate([corr[: max_lag + 1], corr[-max_lag:]])
    lag = int(np.argmax(lags))
    lag = lag if lag <= max_lag else lag - len(lags)
    return np.roll(deg, lag) if lag >= 0 else np.concatenate([deg[-lag:], np.zeros(-lag, deg.dtype)])


def si_sdr(est, ref) -> float:
    """Scale-invariant SDR in dB of 1-D signals ``est`` and ``ref`` [N] (Le Roux et al., 2019)."""
    ref, est = _numpy(ref), _numpy(est)
    ref, est = ref - ref.mean(), est - est.mean()
    target = (est @ ref) / (ref @ ref + 1e-9) * ref  # the part of est along ref
    return float(10 * np.log10((target @ target) / ((est - target) @ (est - target) + 1e-9) + 1e-9))


def mel_distance(est: np.ndarray, ref: np.ndarray, sample_rate: int = 16000) -> float:
    """Mean L1 between log10 mel spectrograms (1024-point STFT, hop 256, 80 mels) of 1-D signals."""
    import torch

    # the codec's own STFT and filterbank, so the metric and the training loss see the same mels
    from tokenlm.codecs.codec.losses import _mel_basis, stft

    fb = _mel_basis(sample_rate, 1024, 80)
    m = [torch.log10((fb @ stft(torch.from_numpy(v)[None], 1024, 256).abs()).clamp_min(1e-5)) for v in (est, ref)]
    return float((m[0] - m[1]).abs().mean())


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


# --------------------------------------------------------------------------- units and sequences


def pnmi_stats(units: np.ndarray, phones: list[str]) -> dict[str, float]:
    """Frame-aligned ``units`` [F] int and ``phones`` [F] -> pnmi, phone_purity, cluster_purity.

    From the joint distribution ``P(phone, unit)`` over frames (HuBERT, Hsu et al. 2021, V-B): phone
    purity ``sum_u max_p P(p, u)``; cluster purity ``sum_p max_u P(p, u)``; PNMI ``I(phone; unit) / H(phone)``.
    """
    if len(units) != len(phones) or len(units) == 0:
        raise ValueError(f"need equal non-empty lengths, got {len(units)} units and {len(phones)} phones")
    names, p_idx = np.unique(np.asarray(phones), return_inverse=True)
    u_names, u_idx = np.unique(np.asarray(units), return_inverse=True)
    joint = np.zeros((len(names), len(u_names)))
    np.add.at(joint, (p_idx, u_idx), 1.0)
    joint /= joint.sum()
    pp, pu = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    mi = float((joint[nz] * np.log(joint[nz] / (pp @ pu)[nz])).sum())
    h = float(-(pp[pp > 0] * np.log(pp[pp > 0])).sum())
    return {
        "pnmi": mi / h if h > 0 else 0.0,
        "phone_purity": float(joint.max(0).sum()),
        "cluster_purity": float(joint.max(1).sum()),
    }


def dedup(seq: np.ndarray) -> np.ndarray:
    """Collapse runs of the same unit (``1 1 5 5 5 2 -> 1 5 2``)."""
    seq = np.asarray(seq)
    return seq[np.r_[True, seq[1:] != seq[:-1]]] if len(seq) else seq


def edit_distance(a: np.ndarray, b: np.ndarray) -> int:
    """Levenshtein distance between two integer sequences (row-by-row DP, one numpy row per step)."""
    prev = np.arange(len(b) + 1)
    for i, x in enumerate(a, 1):
        sub = prev[:-1] + (np.asarray(b) != x)
        cur = np.empty_like(prev)
        cur[0] = i
        best = np.minimum(sub, prev[1:] + 1)
        for j in range(1, len(b) + 1):  # insertion depends on the left neighbour: a short scalar pass
            cur[j] = min(best[j - 1], cur[j - 1] + 1)
        prev = cur
    return int(prev[-1])


def norm_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Edit distance of the de-duplicated sequences over the longer one's length, in [0, 1]."""
    a, b = dedup(a), dedup(b)
    return edit_distance(a, b) / max(len(a), len(b), 1)
