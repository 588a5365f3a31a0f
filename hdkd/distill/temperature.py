"""Temperature scaling (Guo et al. 2017): one scalar T > 0 dividing the logits, fitted on the
validation split to minimise its negative log-likelihood. Argmax, and so accuracy, is unchanged;
only the confidence moves. hdkd checkpoints keep it under "temperature" (absent: 1.0)."""
from __future__ import annotations

import os
import warnings

import numpy as np

# T is searched on log T in this range: wide enough for any plausible network, finite so that a
# separable validation split (NLL falling towards T = 0) still gives an answer.
LOG_T_RANGE = (np.log(0.05), np.log(20.0))


def scaled_probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature) over the last axis, in float64."""
    from scipy.special import softmax

    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=-1)


def scaled_nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    from scipy.special import log_softmax

    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels) -> float:
    """The T minimising the NLL of softmax(logits / T) against labels (a 1-D bounded search)."""
    from scipy.optimize import minimize_scalar

    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(f"fit_temperature: expected N x classes logits and N labels (N > 0), "
                         f"got {logits.shape} and {labels.shape}")
    result = minimize_scalar(lambda log_t: scaled_nll(logits, labels, float(np.exp(log_t))),
                             bounds=LOG_T_RANGE, method="bounded", options={"xatol": 1e-5})
    temperature = float(np.exp(result.x))
    low, high = np.exp(LOG_T_RANGE)
    if not low * 1.01 < temperature < high / 1.01:
        warnings.warn(f"temperature scaling: T = {temperature:.4g} is at the edge of the search "
                      f"range [{low:g}, {high:g}]; the {len(labels)} validation images are too few "
                      f"or too easy to fit it, so treat the calibrated numbers with care",
                      stacklevel=2)
    return temperature


def store_temperature(path: str | os.PathLike, temperature: float, fitted_on: str) -> None:
    """Write temperature into the hdkd checkpoint at path (atomically; the rest unchanged)."""
    from . import checkpoint as ckpt

    state = ckpt.read_checkpoint(path)
    if not ckpt.is_hdkd_checkpoint(state):
        raise ValueError(f"cannot store a temperature in {str(path)!r}: it is not an hdkd "
                         f"checkpoint (convert it first with `hdkd convert --to hdkd`)")
    state.update(temperature=float(temperature), temperature_fitted_on=fitted_on)
    ckpt.save_atomic(state, path)


def reliability_diagrams(labels, logits, temperature: float = 1.0) -> dict:
    """hdkd.report.plot_reliability's input: the bins at temperature 1 and, when it differs, at
    the fitted temperature."""
    from ..metrics import reliability_bins

    diagrams = {"uncalibrated" if temperature != 1.0 else "model":
                reliability_bins(labels, scaled_probabilities(logits))}
    if temperature != 1.0:
        diagrams[f"temperature {temperature:.2f}"] = reliability_bins(
            labels, scaled_probabilities(logits, temperature))
    return diagrams
