"""Image metrics on feature matrices: FID, KID, IS (torchmetrics) and k-NN precision/recall (by hand).

The torchmetrics classes are fed *features*, not images, through an identity "feature network":
features are extracted once per sample set and shared by every metric, and the metric states
(sums and covariances for FID, feature lists for KID/IS/precision-recall) still reduce over DDP
processes exactly as torchmetrics defines. Random subsets (KID) and split shuffles (IS) draw from
a generator seeded with `seed`, leaving the caller's random state untouched.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.utilities.data import dim_zero_cat

from zoo.metrics.extractors import _seeded
from zoo.metrics.registry import MetricContext, register_metric


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence torchmetrics' notes that do not apply here (feature buffers, the std of one split)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")
        warnings.filterwarnings("ignore", message=".*degrees of freedom is <= 0.*")
        yield


class FeatureIdentity(nn.Module):
    """The 'feature network' of a torchmetrics image metric that is given features already."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


class FrechetDistance(FrechetInceptionDistance):
    """torchmetrics' FID (its states, update and DDP reduction) with a faster, symmetric `compute`.

    torchmetrics takes Tr((S_r S_f)^(1/2)) from the eigenvalues of the non-symmetric S_r S_f
    (`torch.linalg.eigvals`); here it is Tr((A S_f A)^(1/2)) with A = S_r^(1/2), the same value from two
    symmetric eigendecompositions (`eigh`), several times faster at D = 2048 and never complex.
    """

    def compute(self) -> Tensor:
        n_r, n_f = self.real_features_num_samples, self.fake_features_num_samples
        if n_r < 2 or n_f < 2:
            raise RuntimeError("FID needs at least two real and two generated samples")
        mean_r = self.real_features_sum / n_r
        mean_f = self.fake_features_sum / n_f
        cov_r = (self.real_features_cov_sum - n_r * torch.outer(mean_r, mean_r)) / (n_r - 1)
        cov_f = (self.fake_features_cov_sum - n_f * torch.outer(mean_f, mean_f)) / (n_f - 1)
        values, vectors = torch.linalg.eigh(cov_r)
        root_r = (vectors * values.clamp_min(0).sqrt()) @ vectors.T
        middle = root_r @ cov_f @ root_r
        trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
        fid = (mean_r - mean_f).square().sum() + cov_r.trace() + cov_f.trace() - 2 * trace_sqrt
        return fid.to(getattr(self, "orig_dtype", torch.float64))


def fid_metric(num_features: int, **kwargs: Any) -> FrechetDistance:
    """torchmetrics' FID over precomputed features (update(features, real=...)); syncs over DDP."""
    return FrechetDistance(feature=FeatureIdentity(num_features), **kwargs)


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature matrices (N, D):
    |mu_r - mu_f|^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)), in float64 (see FrechetDistance)."""
    _check_features(real, fake)
    metric = fid_metric(real.shape[1])
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kid_subset_size(requested: int, num_real: int, num_fake: int, subsets: int = 100) -> int:
    """The subset size KID uses: `requested` when it is smaller than both sets, else half the smaller
    set (at least 2). Subsets are drawn without replacement, so a subset as large as its set is the
    whole set every time: every subset would give the same value and `kid_std` would be 0 (1e-16).
    Each subset's MMD^2 is unbiased at any size, so the mean keeps its expectation. One subset
    (`subsets=1`) may hold every sample: that is the unbiased MMD^2 of the whole sets."""
    smaller = min(num_real, num_fake)
    if subsets == 1:
        return min(requested, smaller)
    return requested if requested < smaller else max(2, smaller // 2)


def kernel_distance(
    real: Tensor,
    fake: Tensor,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: the unbiased MMD^2 with the kernel k(x, y) = (gamma x.y + coef)^degree (gamma = 1/D by
    default), averaged over `subsets` random subsets of `subset_size` (see `kid_subset_size` for a size
    not smaller than the sets). Returns (mean, std) over subsets (torchmetrics' KernelInceptionDistance)."""
    _check_features(real, fake)
    subset_size = kid_subset_size(subset_size, len(real), len(fake), subsets)
    with _quiet():
        metric = KernelInceptionDistance(
            feature=FeatureIdentity(real.shape[1]), subsets=subsets, subset_size=subset_size,
            degree=degree, gamma=gamma, coef=coef,
        )  # fmt: skip
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with _seeded(seed):
        mean, std = metric.compute()
    return float(mean), float(std)


def inception_score(logits: Tensor, *, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) from class logits (N, K), per split of the (shuffled) samples;
    (mean, std) over splits (torchmetrics' InceptionScore)."""
    with _quiet():
        metric = InceptionScore(feature=FeatureIdentity(logits.shape[1]), splits=splits)
    metric.update(logits.double())
    with _seeded(seed), _quiet():
        mean, std = metric.compute()
    return float(mean), float(0.0 if splits == 1 else std)


class KNNPrecisionRecall(Metric):
    """Improved precision and recall (Kynkäänniemi et al. 2019) on feature matrices.

    Each set's manifold is the union of balls around its points with radius the distance to the k-th
    nearest other point of the same set. Precision: the fraction of fake points inside the real
    manifold; recall: the fraction of real points inside the fake manifold. States are feature lists,
    gathered over DDP processes.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, k: int = 3, chunk: int = 1024, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.k = k
        self.chunk = chunk
        self.add_state("real_features", [], dist_reduce_fx="cat")
        self.add_state("fake_features", [], dist_reduce_fx="cat")

    def update(self, features: Tensor, real: bool) -> None:
        (self.real_features if real else self.fake_features).append(features.double())

    def _radii(self, x: Tensor) -> Tensor:
        radii = []
        for start in range(0, len(x), self.chunk):
            d = torch.cdist(x[start : start + self.chunk], x)
            # the k+1-th smallest distance: the point itself is at distance 0
            radii.append(d.kthvalue(self.k + 1, dim=1).values)
        return torch.cat(radii)

    def _coverage(self, points: Tensor, centres: Tensor, radii: Tensor) -> Tensor:
        inside = []
        for start in range(0, len(points), self.chunk):
            d = torch.cdist(points[start : start + self.chunk], centres)
            inside.append((d <= radii[None, :]).any(dim=1))
        return torch.cat(inside).double().mean()

    def compute(self) -> tuple[Tensor, Tensor]:
        real, fake = dim_zero_cat(self.real_features), dim_zero_cat(self.fake_features)
        if min(len(real), len(fake)) <= self.k:
            raise ValueError(f"precision/recall with k={self.k} needs more than {self.k} samples of each set")
        precision = self._coverage(fake, real, self._radii(real))
        recall = self._coverage(real, fake, self._radii(fake))
        return precision, recall


def precision_recall(real: Tensor, fake: Tensor, *, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of Kynkäänniemi et al. 2019 with k nearest neighbours; see KNNPrecisionRecall."""
    _check_features(real, fake)
    metric = KNNPrecisionRecall(k=k)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    p, r = metric.compute()
    return float(p), float(r)


def _check_features(real: Tensor, fake: Tensor) -> None:
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"expected two feature matrices (N, D) of the same width; got {tuple(real.shape)} and {tuple(fake.shape)}"
        )
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"need at least 2 samples in each set, got {len(real)} real and {len(fake)} fake")


# --- registered metrics ------------------------------------------------------------------------


@register_metric("fid", modalities=("image",), higher_is_better=False)
def _fid(ctx: MetricContext) -> dict[str, float]:
    """Fréchet distance between the extractor's features of real and generated images."""
    return {"fid": frechet_distance(ctx.features("real"), ctx.features("fake"))}


@register_metric("kid", modalities=("image",), higher_is_better=False)
def _kid(ctx: MetricContext) -> dict[str, float]:
    """Kernel distance (unbiased polynomial-kernel MMD^2) over random subsets; also its std."""
    mean, std = kernel_distance(
        ctx.features("real"),
        ctx.features("fake"),
        subsets=int(ctx.options.get("kid_subsets", 100)),
        subset_size=int(ctx.options.get("kid_subset_size", 1000)),
        seed=ctx.seed,
    )
    return {"kid": mean, "kid_std": std}


@register_metric("is", modalities=("image",), needs=("fake", "extractor"), higher_is_better=True)
def _is(ctx: MetricContext) -> dict[str, float]:
    """Inception Score on the extractor's class logits of the generated images; also its std over splits."""
    mean, std = inception_score(
        ctx.logits("fake"), splits=int(ctx.options.get("is_splits", 10)), seed=ctx.seed
    )
    return {"is": mean, "is_std": std}


@register_metric("precision_recall", modalities=("image",), higher_is_better=True)
def _precision_recall(ctx: MetricContext) -> dict[str, float]:
    """k-NN precision and recall (Kynkäänniemi et al. 2019) in the extractor's feature space."""
    p, r = precision_recall(ctx.features("real"), ctx.features("fake"), k=int(ctx.options.get("pr_k", 3)))
    return {"precision": p, "recall": r}


@register_metric("per_frame_fid", modalities=("video",), higher_is_better=False)
def _per_frame_fid(ctx: MetricContext) -> dict[str, float]:
    """FID over all frames of real and generated videos (N, T, C, H, W), with an image extractor."""
    ctx.require("real", "fake", "extractor", metric="per_frame_fid")
    frames = MetricContext(
        real=ctx.real.flatten(0, 1), fake=ctx.fake.flatten(0, 1), extractor=ctx.extractor,
        batch_size=ctx.batch_size, device=ctx.device,
    )  # fmt: skip
    return {"per_frame_fid": frechet_distance(frames.features("real"), frames.features("fake"))}


def compute_image_metrics(
    real_images: Tensor | None,
    fake_images: Tensor,
    metrics: list[str] | str,
    extractor: nn.Module,
    *,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    **options: Any,
) -> dict[str, float]:
    """Image metrics between `real_images` and `fake_images`, float (N, C, H, W) in [0, 1].

    `metrics`: registered image metric names (`fid`, `kid`, `is`, `precision_recall`, ...) as a list or
    a comma-separated string; `extractor`: e.g. `image_extractor("shapes", 32, 3)` or
    `inception_extractor(path)`. Features are extracted once and shared. `options`: `kid_subsets`,
    `kid_subset_size`, `is_splits`, `pr_k`. Returns {value name: value}, e.g. {"fid": ..., "kid": ...,
    "kid_std": ..., "precision": ..., "recall": ...}.
    """
    from zoo.metrics.registry import get_metric

    names = [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else list(metrics)
    ctx = MetricContext(
        modality="image", real=real_images, fake=fake_images, extractor=extractor,
        seed=seed, batch_size=batch_size, device=device, options=options,
    )  # fmt: skip
    results: dict[str, float] = {}
    for name in names:
        spec = get_metric(name, "image")
        results.update(spec.fn(ctx))
    return results
