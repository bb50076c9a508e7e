"""zoo.metrics against independent formulas written here with numpy / scipy (and nltk, torchaudio when present)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

import zoo.metrics as zm
from zoo.metrics.registry import METRICS, MetricContext, get_metric, register_metric


def _features(seed: int, n: int = 300, d: int = 12, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) / math.sqrt(d)
    return rng.normal(size=(n, d)) @ mixing * scale + shift


# --- FID ---------------------------------------------------------------------------------------


def _fid_reference(x: np.ndarray, y: np.ndarray) -> float:
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.mark.parametrize("shift,scale", [(0.0, 1.0), (0.7, 1.0), (0.2, 2.5), (3.0, 0.3)])
def test_fid_equals_scipy_sqrtm_reference(shift, scale):
    x, y = _features(0), _features(1, shift=shift, scale=scale)
    ours = zm.frechet_distance(torch.from_numpy(x), torch.from_numpy(y))
    ref = _fid_reference(x, y)
    assert ours == pytest.approx(ref, rel=1e-3, abs=1e-6)


def test_fid_of_a_set_with_itself_is_zero_and_shape_errors_are_clear():
    x = torch.from_numpy(_features(0))
    assert abs(zm.frechet_distance(x, x)) < 1e-6
    with pytest.raises(ValueError, match="same width"):
        zm.frechet_distance(x, x[:, :5])


# --- KID ---------------------------------------------------------------------------------------


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )


def test_kid_equals_unbiased_polynomial_mmd():
    x, y = _features(2, n=120), _features(3, n=120, shift=0.4)
    # one subset holding every sample: the subset's order does not change the unbiased MMD
    mean, std = zm.kernel_distance(torch.from_numpy(x), torch.from_numpy(y), subsets=1, subset_size=120)
    assert mean == pytest.approx(_mmd2_unbiased(x, y), rel=1e-6)
    assert std == 0.0


def test_kid_subsets_are_seeded_and_leave_the_global_rng_alone():
    x, y = torch.from_numpy(_features(2, n=200)), torch.from_numpy(_features(3, n=200, shift=0.4))
    before = torch.get_rng_state()
    a = zm.kernel_distance(x, y, subsets=5, subset_size=50, seed=1)
    assert torch.equal(before, torch.get_rng_state())
    assert a == zm.kernel_distance(x, y, subsets=5, subset_size=50, seed=1)
    assert a != zm.kernel_distance(x, y, subsets=5, subset_size=50, seed=2)


# --- IS ----------------------------------------------------------------------------------------


def test_inception_score_equals_exp_mean_kl_by_hand():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(200, 7)) * 2
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    marginal = p.mean(0)
    reference = math.exp(np.mean(np.sum(p * (np.log(p) - np.log(marginal)), axis=1)))
    mean, _ = zm.inception_score(torch.from_numpy(logits), splits=1)
    assert mean == pytest.approx(reference, rel=1e-9)


def test_inception_score_bounds():
    confident = torch.eye(10).repeat(20, 1) * 50  # every class equally often, each image certain
    assert zm.inception_score(confident, splits=1)[0] == pytest.approx(10.0, rel=1e-6)
    assert zm.inception_score(torch.zeros(50, 10), splits=1)[0] == pytest.approx(1.0)


# --- precision / recall ------------------------------------------------------------------------


def _pr_reference(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(x):
        d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    def coverage(points, centres, r):
        d = np.sqrt(((points[:, None] - centres[None]) ** 2).sum(-1))
        return float(np.mean(np.any(d <= r[None, :], axis=1)))

    return coverage(fake, real, radii(real)), coverage(real, fake, radii(fake))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_equals_brute_force_knn(k):
    real, fake = _features(5, n=150, d=6), _features(6, n=130, d=6, shift=0.5, scale=0.6)
    ours = zm.precision_recall(torch.from_numpy(real), torch.from_numpy(fake), k=k)
    assert ours == pytest.approx(_pr_reference(real, fake, k), abs=1e-12)
    # a narrow fake set sits inside the real manifold (precision high) but covers little of it
    assert ours[0] > ours[1]


# --- CLIP score --------------------------------------------------------------------------------


class FixedClip:
    """A stand-in CLIP: images embed as their mean colour per channel plus a bias; texts from a table."""

    def __init__(self) -> None:
        self.table = {
            "red": [1.0, 0.0, 0.0, 0.2],
            "green": [0.0, 1.0, 0.0, 0.2],
            "dark": [-1.0, -1.0, -1.0, 0.0],
        }

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        colour = images.mean(dim=(2, 3))
        return torch.cat([colour, torch.full_like(colour[:, :1], 0.3)], dim=1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([self.table[t] for t in texts])


def test_clip_score_is_100_times_max_cos_0_per_pair():
    rng = np.random.default_rng(7)
    # on the 8-bit grid, as CLIP processors take images as 0..255
    images = torch.from_numpy(np.round(rng.uniform(size=(9, 3, 4, 4)) * 255) / 255).float()
    captions = ["red", "green", "dark"] * 3
    clip = FixedClip()
    a = clip.encode_image(images).numpy().astype(np.float64)
    b = clip.encode_text(captions).numpy().astype(np.float64)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert (cos < 0).any()  # the "dark" pairs are negative and clipped
    reference = float(np.mean(100 * np.maximum(cos, 0)))
    assert zm.clip_score(images, captions, clip, batch_size=4) == pytest.approx(reference, rel=1e-5)


def test_clip_score_needs_an_encoder():
    with pytest.raises(TypeError, match="encode_image"):
        zm.ClipScore(object())


# --- text --------------------------------------------------------------------------------------


def test_distinct_n_by_hand():
    texts = ["the cat sat", "the cat ran", "a dog ran"]
    # unigrams: the cat sat the cat ran a dog ran -> 9 total, distinct {the cat sat ran a dog} = 6
    assert zm.distinct_n(texts, 1) == pytest.approx(6 / 9)
    # bigrams: (the cat)(cat sat)(the cat)(cat ran)(a dog)(dog ran) -> 6 total, 5 distinct
    assert zm.distinct_n(texts, 2) == pytest.approx(5 / 6)


def test_sentence_bleu_by_hand_and_self_bleu_identical_texts():
    # hypothesis 4 tokens, reference 5 tokens: p1 = 3/4, p2 = 1/3, brevity exp(1 - 5/4)
    hyp, ref = "a b c d", "a b x c e"
    expected = math.exp(1 - 5 / 4) * math.sqrt(3 / 4 * 1 / 3)
    assert zm.sentence_bleu(hyp, [ref], max_n=2, smoothing=None) == pytest.approx(expected)
    assert zm.self_bleu(["one two three four five"] * 3) == pytest.approx(1.0)


def test_self_bleu_matches_nltk():
    nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")
    texts = [
        "a red circle left of a blue square",
        "a red circle above a green triangle",
        "a small blue square and a red circle",
        "the green triangle is below the circle",
        "a red square",
    ]
    smooth = nltk_bleu.SmoothingFunction().method1
    tokens = [t.split() for t in texts]
    reference = np.mean(
        [
            nltk_bleu.sentence_bleu(tokens[:i] + tokens[i + 1 :], tokens[i], smoothing_function=smooth)
            for i in range(5)
        ]
    )
    assert zm.self_bleu(texts) == pytest.approx(reference, rel=1e-9)


def test_perplexity_from_logits_and_from_nll():
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(2, 5, 11))
    targets = rng.integers(0, 11, size=(2, 5))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, targets[..., None], -1).sum()
    expected = math.exp(nll / targets.size)
    # torchmetrics accumulates in float32
    assert zm.perplexity(torch.from_numpy(logits), torch.from_numpy(targets)) == pytest.approx(
        expected, rel=1e-6
    )
    assert zm.perplexity_from_nll(float(nll), targets.size) == pytest.approx(expected)


# --- audio -------------------------------------------------------------------------------------


def test_si_snr_by_hand():
    rng = np.random.default_rng(9)
    target = rng.normal(size=(3, 800))
    pred = 0.5 * target + 0.3 * rng.normal(size=(3, 800))
    values = []
    for p, t in zip(pred, target, strict=True):
        p, t = p - p.mean(), t - t.mean()
        s = (p @ t) / (t @ t) * t
        values.append(10 * np.log10((s @ s) / ((p - s) @ (p - s))))
    assert zm.si_snr(torch.from_numpy(pred), torch.from_numpy(target)) == pytest.approx(
        np.mean(values), rel=1e-6
    )


def test_stft_l1_by_hand_with_numpy_fft():
    from zoo.metrics.audio import multi_resolution_stft_l1

    rng = np.random.default_rng(10)
    a, b = rng.normal(size=(2, 1024)), rng.normal(size=(2, 1024))

    def magnitude(x, n_fft, hop):
        window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
        padded = np.pad(x, ((0, 0), (n_fft // 2, n_fft // 2)), mode="reflect")
        frames = 1 + (padded.shape[1] - n_fft) // hop
        return np.stack(
            [
                np.abs(np.fft.rfft(padded[:, i * hop : i * hop + n_fft] * window, axis=1))
                for i in range(frames)
            ],
            -1,
        )

    resolutions = ((128, 32, 128), (256, 64, 256))
    expected = np.mean(
        [
            np.abs(
                np.log(np.maximum(magnitude(a, n, h), 1e-5)) - np.log(np.maximum(magnitude(b, n, h), 1e-5))
            ).mean()
            for n, h, _ in resolutions
        ]
    )
    ours = multi_resolution_stft_l1(torch.from_numpy(a), torch.from_numpy(b), resolutions)
    assert ours == pytest.approx(expected, rel=1e-6)


def test_mel_l1_is_the_shared_front_ends_log_mel_distance():
    from zoo.audio import log_mel

    x, y = torch.randn(2, 4096), torch.randn(2, 4096)
    assert zm.mel_l1(x, x, 22050) == 0.0
    expected = (log_mel(x, 22050) - log_mel(y, 22050)).abs().mean()
    assert zm.mel_l1(x, y, 22050) == pytest.approx(float(expected), rel=1e-6)


# --- registry ----------------------------------------------------------------------------------


def test_registering_a_metric_is_one_line_and_it_can_use_model_and_prompts():
    try:

        @register_metric("prompt_count", modalities=("image",), needs=("model", "prompts"))
        def prompt_count(ctx: MetricContext) -> dict[str, float]:
            images = ctx.generate(ctx.prompts)
            return {"prompt_count": float(len(images))}

        spec = get_metric("prompt_count", "image")
        ctx = MetricContext(
            prompts=["a", "b", "c"], generate_fn=lambda conditions, n: torch.zeros(len(conditions), 3, 2, 2)
        )
        assert spec.fn(ctx) == {"prompt_count": 3.0}
    finally:
        METRICS.pop("prompt_count", None)


def test_a_metric_of_another_modality_names_the_ones_that_fit():
    with pytest.raises(ValueError) as err:
        get_metric("fid", "text")
    assert "distinct_n" in str(err.value) and "self_bleu" in str(err.value)
    with pytest.raises(ValueError, match="did you mean fid"):
        get_metric("fdi", "image")
    assert {"fid", "kid", "is", "precision_recall", "clip_score"} <= set(zm.metrics_for("image"))


def test_compute_image_metrics_extracts_once_and_matches_the_feature_functions():
    calls = []

    class Flatten(torch.nn.Module):
        name, num_features, held_out_accuracy = "flatten", 12, float("nan")

        def forward(self, x):
            calls.append(len(x))
            return x.flatten(1)

        def logits(self, x):
            return x.flatten(1)[:, :5] * 10

    rng = np.random.default_rng(11)
    real = torch.from_numpy(rng.uniform(size=(80, 3, 2, 2))).float()
    fake = torch.from_numpy(rng.uniform(size=(70, 3, 2, 2)) ** 2).float()
    out = zm.compute_image_metrics(real, fake, "fid,kid,precision_recall,is", Flatten(), kid_subset_size=50)
    assert sum(calls) == 150  # each image through the extractor once
    fid = _fid_reference(real.flatten(1).double().numpy(), fake.flatten(1).double().numpy())
    assert out["fid"] == pytest.approx(fid, rel=1e-3)
    assert set(out) == {"fid", "kid", "kid_std", "precision", "recall", "is", "is_std"}
