"""zoo.diffusion guidance, conditioning dropout and image editing (img2img, inpainting, outpainting)."""

from __future__ import annotations

import pytest
import torch

from zoo.diffusion import (
    SAMPLERS,
    NoiseSchedule,
    classifier_free_guidance,
    drop_condition,
    guided_denoiser,
    outpaint_canvas,
    sample,
    sampling_options,
)

SCHEDULE = NoiseSchedule.make("linear", 1000)


class CountingModel:
    """model_fn(x, t, cond): a cond-dependent function, counting calls and batch sizes."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        shift = cond.float().reshape(cond.shape[0], -1).mean(1).view(-1, 1, 1, 1)
        return torch.tanh(x * (1 + shift) + t.view(-1, 1, 1, 1) / 1000) + shift


@pytest.mark.parametrize("cond_kind", ["labels", "embeddings"])
def test_cfg_equals_two_call_formula_in_one_call(cond_kind):
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(4, 3, 5, 5, generator=g), torch.tensor([999.0, 500.0, 10.0, 0.0])
    if cond_kind == "labels":
        cond, uncond = torch.tensor([1, 2, 3, 4]), torch.tensor([10])  # a null class, batch 1, expanded
    else:
        cond, uncond = torch.randn(4, 7, 16, generator=g), torch.zeros(4, 7, 16)
    model = CountingModel()
    guided = classifier_free_guidance(model, cond, uncond, scale=3.0)(x, t)
    assert model.calls == [8]
    reference = CountingModel()
    u = reference(x, t, uncond.expand(4, *uncond.shape[1:]))
    c = reference(x, t, cond)
    torch.testing.assert_close(guided, u + 3.0 * (c - u))
    # scale 1 is the conditional model, scale 0 the unconditional one
    torch.testing.assert_close(classifier_free_guidance(model, cond, uncond, 1.0)(x, t), c)
    torch.testing.assert_close(classifier_free_guidance(model, cond, uncond, 0.0)(x, t), u)


def test_cfg_rescale_formula():
    """Lin et al. 2024 eq. 15-16 with per-example std over (C, H, W)."""
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(3, 2, 4, 4, generator=g), torch.tensor([900.0, 400.0, 50.0])
    cond, uncond = torch.tensor([1, 2, 3]), torch.tensor([0, 0, 0])
    model = CountingModel()
    u, c = model(x, t, uncond), model(x, t, cond)
    cfg = u + 7.5 * (c - u)
    for phi in (0.0, 0.7, 1.0):
        out = classifier_free_guidance(model, cond, uncond, 7.5, rescale=phi)(x, t)
        expected = torch.stack([
            phi * cfg[i] * (c[i].std() / cfg[i].std()) + (1 - phi) * cfg[i] for i in range(3)
        ])  # fmt: skip
        torch.testing.assert_close(out, expected)
    full = classifier_free_guidance(model, cond, uncond, 7.5, rescale=1.0)(x, t)
    torch.testing.assert_close(full.flatten(1).std(1), c.flatten(1).std(1))


def test_drop_condition_rate_and_values():
    n, p = 20000, 0.3
    labels = torch.randint(0, 10, (n,))
    dropped = drop_condition(labels, p, null=10, generator=torch.Generator().manual_seed(0))
    is_null = dropped == 10
    assert abs(is_null.float().mean().item() - p) < 4 * (p * (1 - p) / n) ** 0.5
    assert torch.equal(dropped[~is_null], labels[~is_null]) and dropped.dtype == torch.long

    emb = torch.randn(n, 4, 8)
    null = torch.full((4, 8), -7.0)
    out = drop_condition(emb, p, null, generator=torch.Generator().manual_seed(1))
    rows_null = (out == -7.0).flatten(1).all(1)
    rows_same = (out == emb).flatten(1).all(1)
    assert bool((rows_null ^ rows_same).all())  # whole rows, one or the other
    assert abs(rows_null.float().mean().item() - p) < 4 * (p * (1 - p) / n) ** 0.5
    assert torch.equal(drop_condition(labels, 0.0, 10), labels)
    assert bool((drop_condition(labels, 1.0, 10) == 10).all())


def _denoiser(x, t):
    """The exact eps-predictor of data N(0.2, 0.5^2)."""
    ab = SCHEDULE.alphas_cumprod[t.long()].to(x).view(-1, 1, 1, 1)
    a = ab.sqrt()
    x0 = 0.2 + a * 0.25 / (ab * 0.25 + 1 - ab) * (x - a * 0.2)
    return (x - a * x0) / (1 - ab).sqrt()


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_inpainting_keeps_known_pixels_exactly(name):
    shape = (2, 3, 8, 8)
    known = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 3:7] = 1
    out = sample(
        _denoiser,
        shape,
        SCHEDULE,
        sampler=name,
        steps=10,
        generator=torch.Generator().manual_seed(1),
        mask=mask,
        known=known,
    )
    keep = (mask == 0).expand(shape)
    assert torch.equal(out[keep], known[keep])
    assert not torch.allclose(out[~keep], known[~keep])
    assert torch.isfinite(out).all()


def test_inpainting_generated_region_follows_the_known_noise():
    """Where the mask is 1 everywhere, inpainting is plain sampling with the same generator."""
    shape = (2, 3, 4, 4)
    known = torch.zeros(shape)
    a = sample(
        _denoiser,
        shape,
        SCHEDULE,
        sampler="ddpm",
        steps=10,
        generator=torch.Generator().manual_seed(3),
        mask=torch.ones(1, 1, 4, 4),
        known=known,
    )
    b = sample(
        _denoiser, shape, SCHEDULE, sampler="ddpm", steps=10, generator=torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m", "euler", "ddpm"])
def test_img2img_strength(name):
    """strength 0 returns init without calling the network; int(steps * strength) steps are run (diffusers'
    img2img rule); the result moves away from init as strength grows, and at strength 1/steps (one step
    from t = 0, noise std sqrt(1 - alpha_bar_0) = 0.01) it stays within ~0.01 of init."""
    shape = (64, 1, 4, 4)
    init = 0.2 + 0.5 * torch.randn(shape, generator=torch.Generator().manual_seed(0))  # data of _denoiser
    calls = []

    def counting(x, t):
        calls.append(1)
        return _denoiser(x, t)

    zero = sample(counting, shape, SCHEDULE, sampler=name, steps=20, init=init, strength=0.0)
    assert torch.equal(zero, init) and not calls

    def dist(strength: float) -> float:
        calls.clear()
        out = sample(
            counting,
            shape,
            SCHEDULE,
            sampler=name,
            steps=20,
            init=init,
            strength=strength,
            generator=torch.Generator().manual_seed(1),
        )
        assert len(calls) == int(20 * strength)
        return (out - init).abs().mean().item()

    small, mid, large = dist(0.05), dist(0.5), dist(1.0)
    assert small < 0.02 and small < mid < large, (small, mid, large)
    assert large > 0.4  # strength 1 regenerates: |x - y| of two draws of N(., 0.5^2) has mean 0.56


def test_img2img_strength_one_starts_at_first_timestep():
    """At strength 1 the start is init noised to the first timestep (alpha_bar_999 ~ 4e-5): the result is a
    fresh sample, as close to init as plain generation is."""
    shape = (512, 1, 1, 1)
    init = torch.full(shape, 0.9)
    out = sample(
        _denoiser,
        shape,
        SCHEDULE,
        sampler="ddim",
        steps=20,
        init=init,
        strength=1.0,
        spacing="trailing",
        generator=torch.Generator().manual_seed(2),
    )
    assert abs(out.mean().item() - 0.2) < 0.1 and abs(out.std().item() - 0.5) < 0.1


def test_outpaint_canvas_geometry():
    image = torch.rand(2, 3, 5, 7)
    canvas, mask = outpaint_canvas(image, left=1, right=2, top=3, bottom=4, fill=-1.0)
    assert canvas.shape == (2, 3, 12, 10) and mask.shape == (2, 1, 12, 10)
    assert torch.equal(canvas[:, :, 3:8, 1:8], image)
    assert bool((mask[:, :, 3:8, 1:8] == 0).all())
    assert mask.sum().item() == 2 * (12 * 10 - 5 * 7)
    assert bool((canvas.expand(2, 3, 12, 10)[mask.expand(2, 3, 12, 10) == 1] == -1.0).all())
    # and through the sampler: the original image survives exactly inside the new canvas
    out = sample(
        _denoiser,
        canvas.shape,
        SCHEDULE,
        sampler="ddim",
        steps=5,
        mask=mask,
        known=canvas,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(out[:, :, 3:8, 1:8], image)
    with pytest.raises(ValueError):
        outpaint_canvas(image, left=-1)


def test_cfg_with_structured_conditions():
    """Conditions given as a dict of tensors (e.g. token states and a pooled embedding) are concatenated
    key by key."""
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 1, 3, 3, generator=g), torch.tensor([10.0, 20.0])
    cond = {"tokens": torch.randn(2, 5, 4, generator=g), "pooled": torch.randn(2, 4, generator=g)}
    uncond = {"tokens": torch.zeros(1, 5, 4), "pooled": torch.zeros(1, 4)}

    def model(x, t, c):
        assert c["tokens"].shape == (4, 5, 4) and c["pooled"].shape == (4, 4)
        return x * c["tokens"].mean(dim=(1, 2)).view(-1, 1, 1, 1) + c["pooled"].sum(1).view(-1, 1, 1, 1)

    out = classifier_free_guidance(model, cond, uncond, 2.0)(x, t)
    c = x * cond["tokens"].mean(dim=(1, 2)).view(-1, 1, 1, 1) + cond["pooled"].sum(1).view(-1, 1, 1, 1)
    torch.testing.assert_close(out, 2.0 * c)  # the null branch is 0 here


# --- the guided denoiser families sample with --------------------------------------------------------


class LabelEcho:
    """model_fn(x, t, labels): every output element is the example's label, so guidance has a closed form."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        self.calls.append(x.shape[0])
        value = torch.zeros(x.shape[0]) if labels is None else labels.float()
        return value.view(-1, 1, 1, 1).expand_as(x).clone()


@pytest.mark.parametrize("scale", [0.0, 2.5, 7.0])
def test_guided_denoiser_is_uncond_plus_scale_times_the_difference(scale):
    x, t = torch.zeros(3, 2, 4, 4), torch.full((3,), 500.0)
    cond, uncond = torch.tensor([3, 5, 9]), torch.tensor([1])  # uncond: a null label, batch 1
    model = LabelEcho()
    out = guided_denoiser(model, cond, uncond, scale)(x, t)
    expected = 1 + scale * (cond.float() - 1)
    torch.testing.assert_close(out, expected.view(-1, 1, 1, 1).expand_as(x))
    assert model.calls == [6]  # both branches in one batched call


def test_guided_denoiser_calls_the_network_once_per_step_at_scale_one_or_without_uncond():
    cond, uncond = torch.tensor([3, 5]), torch.tensor([0, 0])
    for scale, branch_uncond, batch in ((1.0, uncond, 2), (4.0, None, 2), (4.0, uncond, 4)):
        model = LabelEcho()
        sample(
            guided_denoiser(model, cond, branch_uncond, scale),
            (2, 1, 4, 4),
            SCHEDULE,
            sampler="ddim",
            steps=5,
        )
        assert model.calls == [batch] * 5, (scale, branch_uncond)
    x, t = torch.zeros(2, 1, 4, 4), torch.full((2,), 10.0)
    torch.testing.assert_close(
        guided_denoiser(LabelEcho(), cond, uncond, 1.0)(x, t)[:, 0, 0, 0], cond.float()
    )
    torch.testing.assert_close(guided_denoiser(LabelEcho(), None, None, 3.0)(x, t), torch.zeros_like(x))


def test_sampling_options_take_the_family_defaults_unless_given():
    defaults = {"sampler": "ddim", "sampling_steps": 50, "prediction": "v"}
    options = sampling_options(defaults, SCHEDULE, "cpu")
    assert (options["sampler"], options["steps"], options["prediction"]) == ("ddim", 50, "v")
    options = sampling_options(defaults, SCHEDULE, "cpu", sampler="euler", steps=7, eta=0.5)
    assert (options["sampler"], options["steps"], options["eta"]) == ("euler", 7, 0.5)
    assert options["schedule"] is SCHEDULE
    with pytest.raises(ValueError, match="steps must be a whole number of at least 1, got 0"):
        sampling_options(defaults, SCHEDULE, "cpu", steps=0)  # not "not given"
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        sampling_options(defaults, SCHEDULE, "cpu", sampler="nope")
