"""Conversions between what a network predicts: the noise eps, the velocity v or the clean sample x0.

With x_t = a x0 + s eps, a = sqrt(alpha_bar_t), s = sqrt(1 - alpha_bar_t) (Ho et al. 2020, eq. 4):
- eps-prediction: x0 = (x_t - s eps) / a                                   (Ho et al., eq. 15)
- v-prediction:   v = a eps - s x0, so x0 = a x_t - s v, eps = s x_t + a v (Salimans & Ho 2022, section 4)
- the score:      grad log q(x_t) = -E[eps | x_t] / s                      (Song et al. 2021, eq. 7 / Tweedie)

`alpha_bar` is a float, or a tensor (B,) broadcast over the trailing dimensions of x_t.
Coefficients are computed in float64 and applied in x_t's dtype.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "PREDICTIONS",
    "Prediction",
    "convert_prediction",
    "merged_x0",
    "predict_eps",
    "predict_v",
    "predict_x0",
    "score_from_eps",
]

Prediction = Literal["epsilon", "v_prediction", "sample"]
PREDICTIONS = ("epsilon", "v_prediction", "sample")


def _coefficients(alpha_bar: float | Tensor, like: Tensor) -> tuple[float | Tensor, float | Tensor]:
    """(sqrt(alpha_bar), sqrt(1 - alpha_bar)), as floats, or as tensors shaped (B, 1, ..., 1) like `like`."""
    if isinstance(alpha_bar, Tensor) and alpha_bar.ndim > 0:
        ab = alpha_bar.to(torch.float64).reshape(-1, *([1] * (like.ndim - 1)))
        return ab.sqrt().to(like), (1 - ab).sqrt().to(like)
    ab = float(alpha_bar)
    return ab**0.5, (1 - ab) ** 0.5


def _check(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; known: {PREDICTIONS}")


def predict_x0(output: Tensor, x_t: Tensor, alpha_bar: float | Tensor, prediction: Prediction) -> Tensor:
    """The clean sample x0 implied by a network output of kind `prediction` at x_t."""
    _check(prediction)
    a, s = _coefficients(alpha_bar, x_t)
    if prediction == "epsilon":
        return (x_t - s * output) / a
    if prediction == "v_prediction":
        return a * x_t - s * output
    return output


def merged_x0(output: Tensor, x_t: Tensor, alpha_bar: float | Tensor, prediction: Prediction) -> Tensor:
    """Salimans & Ho (2022, sec. 4)'s merge of two heads, x0 = s^2 x~ + a^2 x0(head), for `output` of twice
    x_t's channels: a head of kind `prediction` (x0(head) by `predict_x0`) and an x head x~ after it
    (`UNet.add_x_head`). It is x~ where the noise is high, where an eps head's x0 is its error over a, and
    the head's x0 where the noise is low. a^2 x0(head) is formed without dividing by a."""
    head, x_head = output.chunk(2, dim=1)
    a, s = _coefficients(alpha_bar, x_t)
    if prediction == "epsilon":
        own = a * (x_t - s * head)  # a^2 (x_t - s eps) / a
    else:
        own = a**2 * predict_x0(head, x_t, alpha_bar, prediction)
    return s**2 * x_head + own


def predict_eps(output: Tensor, x_t: Tensor, alpha_bar: float | Tensor, prediction: Prediction) -> Tensor:
    """The noise eps implied by a network output of kind `prediction` at x_t."""
    _check(prediction)
    a, s = _coefficients(alpha_bar, x_t)
    if prediction == "epsilon":
        return output
    if prediction == "v_prediction":
        return s * x_t + a * output
    return (x_t - a * output) / s


def predict_v(output: Tensor, x_t: Tensor, alpha_bar: float | Tensor, prediction: Prediction) -> Tensor:
    """The velocity v = a eps - s x0 implied by a network output of kind `prediction` at x_t."""
    _check(prediction)
    if prediction == "v_prediction":
        return output
    a, s = _coefficients(alpha_bar, x_t)
    x0 = predict_x0(output, x_t, alpha_bar, prediction)
    eps = predict_eps(output, x_t, alpha_bar, prediction)
    return a * eps - s * x0


def convert_prediction(
    output: Tensor, x_t: Tensor, alpha_bar: float | Tensor, source: Prediction, target: Prediction
) -> Tensor:
    """Re-express a network output of kind `source` as kind `target`."""
    fn = {"epsilon": predict_eps, "v_prediction": predict_v, "sample": predict_x0}[target]
    return fn(output, x_t, alpha_bar, source)


def score_from_eps(eps: Tensor, alpha_bar: float | Tensor) -> Tensor:
    """The score grad_x log q_t(x) = -eps / sqrt(1 - alpha_bar) of the VP marginal, from an eps estimate."""
    _, s = _coefficients(alpha_bar, eps)
    return -eps / s
