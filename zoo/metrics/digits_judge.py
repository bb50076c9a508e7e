"""The real-digits judge of the digits benchmarks: a multinomial logistic regression on pixels.

    judge = fit_digits_judge(datamodule)        # seconds: the datamodule's real train split
    judge.held_out_accuracy                     # on its real test split
    judge.probabilities(images)                 # images (N, C, S, S) in [0, 1] -> (N, 10) numpy

Trained on the pixels (in [-1, 1], flattened) of the real digits at the datamodule's resolution, so a
benchmark judges a model's samples at the model's own image size. `benchmarks/ddpm_quality.py` (class
accuracy, and a Fréchet distance of its 10 logits) and `benchmarks/flows_quality.py` (confidence and class
shares of samples, editing success) share it; the figures they report in `benchmarks/RESULTS.md` come from
this classifier (held-out accuracy 0.967 on the default 16x16 split). zoo's metrics use the CNN of
`zoo.metrics.extractors.image_extractor` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def split_arrays(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """A digits split's images as flat pixels in [-1, 1] (N, C*S*S) and its labels (N,)."""
    items = [dataset[i] for i in range(len(dataset))]
    pixels = torch.stack([item["image"] for item in items]).flatten(1).numpy()
    return pixels, torch.stack([item["label"] for item in items]).numpy()


@dataclass
class DigitsJudge:
    """The fitted classifier and the real pixels (in [-1, 1], flat) it was trained and tested on."""

    classifier: Any  # sklearn.linear_model.LogisticRegression
    train_pixels: np.ndarray
    train_labels: np.ndarray
    test_pixels: np.ndarray
    test_labels: np.ndarray
    held_out_accuracy: float

    @staticmethod
    def pixels(images: torch.Tensor) -> np.ndarray:
        """Images (N, C, S, S) in [0, 1] as the classifier's input: flat pixels in [-1, 1]."""
        return (images.detach().float().cpu() * 2 - 1).flatten(1).numpy()

    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        """Class probabilities (N, 10) of images in [0, 1]."""
        return self.classifier.predict_proba(self.pixels(images))

    def predict(self, images: torch.Tensor) -> np.ndarray:
        """The most probable class (N,) of images in [0, 1]."""
        return self.classifier.predict(self.pixels(images))

    def logits(self, images: torch.Tensor) -> np.ndarray:
        """The 10 class scores (N, 10) of images in [0, 1] (the features of a Fréchet distance)."""
        return self.classifier.decision_function(self.pixels(images))


def fit_digits_judge(datamodule: Any, max_iter: int = 3000) -> DigitsJudge:
    """Fit the judge on a digits datamodule's train split; its accuracy on the test split is held out."""
    from sklearn.linear_model import LogisticRegression

    datamodule.setup("fit")
    x_train, y_train = split_arrays(datamodule.train_set)
    x_test, y_test = split_arrays(datamodule.test_set)
    classifier = LogisticRegression(max_iter=max_iter).fit(x_train, y_train)
    accuracy = float(classifier.score(x_test, y_test))
    return DigitsJudge(classifier, x_train, y_train, x_test, y_test, accuracy)


@dataclass
class CNNDigitsJudge:
    """The same interface over zoo's CNN of real digits (`zoo.metrics.extractors.image_extractor`): a
    second opinion that is not linear in the pixels, so a mean-image difference does not fool it as
    it fools the logistic regression (a pixel-space edit toward B reads as B to a linear judge)."""

    network: Any  # zoo.metrics.extractors.ImageClassifier
    held_out_accuracy: float

    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return self.network.logits(images.detach().float().cpu()).softmax(-1).numpy()

    def predict(self, images: torch.Tensor) -> np.ndarray:
        return self.probabilities(images).argmax(-1)


def cnn_digits_judge(image_size: int, channels: int = 1) -> CNNDigitsJudge:
    """zoo's digits CNN at this resolution (trained on first use and cached), as a judge."""
    from zoo.metrics.extractors import image_extractor

    network = image_extractor("digits", image_size, channels)
    return CNNDigitsJudge(network, network.held_out_accuracy)


__all__ = ["CNNDigitsJudge", "DigitsJudge", "cnn_digits_judge", "fit_digits_judge", "split_arrays"]
