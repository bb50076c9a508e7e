"""zoo.metrics: image, video, audio and text metrics, their feature extractors, and the metric registry.

Public API
- `image_extractor(data, image_size, channels)`: a frozen zoo-trained CNN for an embedded image
  datamodule (`shapes`, `digits`), images (B, C, H, W) in [0, 1] -> features (B, 128); `logits()`;
  `held_out_accuracy`. Trained on first use (~15 s on 2 CPU cores) and cached under `$ZOO_CACHE`.
- `inception_extractor(weights=None)`: the FID InceptionV3 (2048 features, 1008 logits) from a local
  file (`weights`, `$ZOO_INCEPTION_WEIGHTS` or `$ZOO_CACHE/weights/pt_inception-2015-12-05-6726825d.pth`).
- On feature matrices (N, D): `frechet_distance(real, fake) -> float`, `kernel_distance(real, fake)
  -> (mean, std)`, `precision_recall(real, fake, k=3) -> (precision, recall)`; on logits (N, K):
  `inception_score(logits) -> (mean, std)`.
- `compute_image_metrics(real_images, fake_images, metrics, extractor) -> {name: value}`: any
  registered image metrics, features extracted once.
- `clip_score(images, captions, clip)`, `ClipScore`: 100 * max(cos, 0) with a local CLIP.
- Audio: `multi_resolution_stft_l1`, `mel_l1`, `si_snr`, `frechet_audio_distance`.
- Video: `video_extractor("moving_shapes", frames, image_size, channels)`: a zoo-trained 3D-conv
  classifier, clips (N, T, C, H, W) in [0, 1] -> features (N, 128), for an FVD-style Fréchet distance.
- Text: `perplexity`, `perplexity_from_nll`, `distinct_n`, `self_bleu`, `sentence_bleu`.
- Registry: `register_metric(name, modalities=..., needs=...)` (a decorator; one line registers a
  metric), `get_metric`, `metrics_for(modality)`, `METRICS`, `MetricContext`, `METRIC_MODULES`.
  See zoo.metrics.registry for the hook that lets a metric use the model and prompts.
"""

from zoo.metrics.audio import frechet_audio_distance, mel_l1, multi_resolution_stft_l1, si_snr
from zoo.metrics.clip import ClipScore, clip_score
from zoo.metrics.extractors import (
    ImageClassifier,
    InceptionWeightsError,
    image_extractor,
    inception_extractor,
    train_image_classifier,
)
from zoo.metrics.image import (
    KNNPrecisionRecall,
    compute_image_metrics,
    frechet_distance,
    inception_score,
    kernel_distance,
    precision_recall,
)
from zoo.metrics.registry import (
    METRIC_MODULES,
    METRICS,
    MetricContext,
    MetricSpec,
    get_metric,
    metrics_for,
    register_metric,
)
from zoo.metrics.text import distinct_n, perplexity, perplexity_from_nll, self_bleu, sentence_bleu
from zoo.metrics.video_extractor import VideoClassifier, video_extractor

__all__ = [
    "METRICS",
    "METRIC_MODULES",
    "ClipScore",
    "ImageClassifier",
    "InceptionWeightsError",
    "KNNPrecisionRecall",
    "MetricContext",
    "MetricSpec",
    "VideoClassifier",
    "clip_score",
    "compute_image_metrics",
    "distinct_n",
    "frechet_audio_distance",
    "frechet_distance",
    "get_metric",
    "image_extractor",
    "inception_extractor",
    "inception_score",
    "kernel_distance",
    "mel_l1",
    "metrics_for",
    "multi_resolution_stft_l1",
    "perplexity",
    "perplexity_from_nll",
    "precision_recall",
    "register_metric",
    "self_bleu",
    "sentence_bleu",
    "si_snr",
    "train_image_classifier",
    "video_extractor",
]
