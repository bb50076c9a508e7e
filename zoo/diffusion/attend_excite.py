"""Attend-and-Excite (Chefer et al. 2023, "Attend-and-Excite: Attention-Based Semantic Guidance for
Text-to-Image Diffusion Models"): at sampling time, nudge the noisy latent so that every subject token of
the prompt is strongly attended somewhere in the image, the fix for "catastrophic neglect" (a prompt with
two objects that draws one).

At each of the first steps the paper runs the network on the prompt alone, reads its cross-attention
probabilities, and takes a gradient step on z_t against

    loss = max over subject tokens s of (1 - max over space of G * A_s)

where A_s is the token's attention map (heads and layers averaged, then 100 x the probabilities
re-softmaxed over the text tokens without the start token, as the paper's code does) and G a 3x3 Gaussian
filter; at three steps it repeats the step until every token reaches a threshold ("iterative latent
refinement"). The constants are the paper's (and diffusers' `StableDiffusionAttendAndExcitePipeline`'s):
step size 20 sqrt(linspace(1, 0.5)) over the steps, the first 25 of 50 steps, refinement at steps 0, 10
and 20 to thresholds 0.05, 0.5 and 0.8, at most 20 refinement iterations.

How this departs from the paper, and why:

1. The paper updates z_t inside its sampling loop, so the sampler continues from the updated latent. Here the
   wrapper is a denoiser(x_t, t) for any sampler of `zoo.diffusion` (DDIM, DPM-Solver++, Euler, Heun, the
   flow ODE samplers): it updates a copy z of x_t, runs the guided network at z, and returns that output
   re-expressed at the sampler's own x_t so that the clean sample it implies is the one predicted at z
   (eps* = eps(z) + (x - z) / s for an eps network; `Level.recentre`). The sampler's state is not moved; the
   update reaches the image through the network's prediction at z, and the next step starts from the
   sampler's x, not from z. For one DDIM step that is the paper's update minus (s' / s) (z - x), where
   s, s' are the noise levels before and after the step; returning the raw output at z would instead
   subtract sqrt(ab' / ab) (z - x), which is larger.
2. Steps are chosen by noise level, not by step index, since a denoiser sees only t: the update runs while
   the fraction of the noise process already done (1 - t / (T - 1); the flow time under rectified flow)
   is below `max_steps` (0.5: the paper's 25 of 50), the step size follows the paper's
   20 sqrt(1 - 0.5 fraction), and the refinement happens at the first call at or past each fraction of
   `THRESHOLDS` (0, 0.2, 0.4: the paper's steps 0, 10 and 20 of 50). Heun's corrector calls count as calls.
3. Maps: the paper reads the 16 x 16 cross-attention layers of Stable Diffusion (a 64 x 64 latent): the
   lowest resolution with several cross-attention layers, whose maps carry the layout. The latents here
   are 8 x 8 (32 px images) and the default ldm U-Net cross-attends at 8 x 8 and 4 x 4 (the second level
   and the middle block). By default the coarsest maps at least `MIN_SIDE` (4) cells wide are used: the
   lowest-resolution layers, as in the paper, but not so coarse that two objects side by side ("left of")
   fall into one cell. `side` picks others.
4. Smoothing: the paper's 3 x 3 filter of sigma 0.5 (its code computes exp(-(d / 2 sigma)^2), a Gaussian
   of standard deviation 0.5 sqrt 2) spreads a peak over about 1/28 of a 16 x 16 map, so that one
   attended cell alone does not count as an object. Here sigma is scaled with the map's side (side / 16):
   the filter keeps the same footprint on the image. On 8 x 8 and 4 x 4 maps, where one cell already
   covers 1/64 and 1/16 of the image, it is then close to the identity; the paper's own sigma on a
   4 x 4 map would ask each subject to own a quarter of the image or more (a 2 x 2 corner, a 3 x 3 block
   inside) before the 0.8 threshold is met.
5. The latent (x, in the VP state the samplers hand the network) is the paper's, so the step sizes are
   its; under rectified flow the state x_t = (1 - t) noise + t data has std sqrt(a^2 + s^2) < 1, and the
   step is taken in the VP-normalised state, which moves x by step (a^2 + s^2) grad.

    denoiser = attend_and_excite(guided, conditional, unet, text_tokens, subjects, objective_levels(hp, schedule))
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.diffusion.objectives import FLOW_TIME_SCALE
from zoo.diffusion.schedule import NoiseSchedule
from zoo.nn.unet import CrossAttention

__all__ = [
    "MAX_STEPS",
    "SCALE",
    "THRESHOLDS",
    "attend_and_excite",
    "attention_maps",
    "captured_attention",
    "excite",
    "excite_loss",
    "latent_loss",
    "objective_levels",
    "subject_tokens",
    "subject_words",
    "text_tokens",
]

Denoiser = Callable[[Tensor, Tensor], Tensor]

SCALE = 20.0  # the paper's step size at the first step (scale_factor)
MAX_STEPS = 0.5  # the fraction of the noise process with updates: the paper's first 25 of 50 steps
THRESHOLDS: Mapping[float, float] = {0.0: 0.05, 0.2: 0.5, 0.4: 0.8}  # refinement at steps 0, 10, 20 of 50
MAX_REFINEMENT = 20  # refinement iterations at most
SOFTMAX_SCALE = 100.0  # the paper's code multiplies the averaged probabilities by 100 before its softmax
PAPER_SIDE = 16  # the side of the paper's maps, against which the smoothing is scaled
PAPER_SIGMA = 0.5 * math.sqrt(2)  # its 3 x 3 filter's standard deviation, as its code computes it
MIN_SIDE = 4  # the default maps: the coarsest at least this many cells wide


# --- reading the cross-attention -----------------------------------------------------------------


@contextmanager
def captured_attention(unet: nn.Module) -> Iterator[list[Tensor]]:
    """Inside, every `CrossAttention` of `unet` appends its text attention probabilities (B, heads, H, W, L)
    to the list yielded, in the order the forward pass runs them; outside, the fused path is back."""
    layers = [m for m in unet.modules() if isinstance(m, CrossAttention)]
    if not layers:
        raise ValueError("attend-and-excite reads cross-attention; this network has no CrossAttention layer")
    probabilities: list[Tensor] = []
    for layer in layers:
        layer.attention_probabilities = probabilities
    try:
        yield probabilities
    finally:
        for layer in layers:
            layer.attention_probabilities = None


def attention_maps(probabilities: Sequence[Tensor], side: int | None = None) -> Tensor:
    """The mean over heads and layers of the maps (B, H, W, L) whose shorter side is `side` (None: the
    coarsest at least `MIN_SIDE` cells wide, else the finest there is)."""
    sides = sorted({min(p.shape[2:4]) for p in probabilities})
    if side is None:
        side = next((s for s in sides if s >= MIN_SIDE), sides[-1])
    chosen = [p for p in probabilities if min(p.shape[2:4]) == side]
    if not chosen:
        raise ValueError(f"no cross-attention maps {side} cells wide; this network has {sides}")
    return torch.stack([p.mean(dim=1) for p in chosen]).mean(dim=0)


def _smooth(maps: Tensor, sigma: float) -> Tensor:
    """(N, H, W) filtered by a normalised 3 x 3 Gaussian of standard deviation `sigma`, edges reflected."""
    d = torch.arange(-1, 2, dtype=maps.dtype, device=maps.device)
    g = torch.exp(-(d**2) / (2 * sigma**2))
    kernel = (g[:, None] * g[None, :]) / g.sum() ** 2
    mode = "reflect" if min(maps.shape[-2:]) > 1 else "replicate"
    padded = F.pad(maps[:, None], (1, 1, 1, 1), mode=mode)
    return F.conv2d(padded, kernel[None, None])[:, 0]


def excite_loss(maps: Tensor, text: Tensor, subjects: Tensor, sigma: float | None = None) -> Tensor:
    """The paper's loss per sample (B,): max over the subject tokens of 1 - the peak of the token's smoothed
    map, the maps (B, H, W, L) being re-softmaxed (times `SOFTMAX_SCALE`) over the `text` tokens (B, L)
    bool, the prompt's own tokens without the start and end markers. `subjects` (B, L) bool; `sigma` None:
    the paper's, scaled by the map's side over 16."""
    if sigma is None:
        sigma = PAPER_SIGMA * min(maps.shape[1:3]) / PAPER_SIDE
    logits = (SOFTMAX_SCALE * maps).masked_fill(~text[:, None, None, :], float("-inf"))
    per_token = logits.softmax(dim=-1).permute(0, 3, 1, 2)  # (B, L, H, W)
    batch, length = per_token.shape[:2]
    peaks = _smooth(per_token.flatten(0, 1), sigma).amax(dim=(-2, -1)).view(batch, length)
    return (1 - peaks).masked_fill(~subjects, float("-inf")).amax(dim=-1).clamp_min(0)


def latent_loss(
    network: Denoiser,
    unet: nn.Module,
    x: Tensor,
    t: Tensor,
    text: Tensor,
    subjects: Tensor,
    side: int | None = None,
    sigma: float | None = None,
) -> Tensor:
    """`excite_loss` (B,) of the cross-attention of `unet` while `network(x, t)` (the conditional branch,
    run on `unet`) denoises x."""
    with captured_attention(unet) as probabilities:
        network(x, t)
    return excite_loss(attention_maps(probabilities, side), text, subjects, sigma)


def excite(
    loss_fn: Callable[[Tensor], Tensor], x: Tensor, step: float, target: float = 0.0, iterations: int = 1
) -> Tensor:
    """x after up to `iterations` gradient steps x <- x - step grad loss_fn(x), each for the samples whose
    loss is still above `target` (the others keep theirs); it stops early once none is."""
    for _ in range(iterations):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            loss = loss_fn(x)
            above = loss > target
            if not bool(above.any()):
                break
            (grad,) = torch.autograd.grad((loss * above).sum(), x)
        x = x - step * grad
    return x.detach()


# --- the denoiser ---------------------------------------------------------------------------------


class Level(NamedTuple):
    """Where a network call is: `progress` (0 at pure noise, 1 at the data), the state's signal and noise
    coefficients a and s (x_t = a x0 + s noise), and `recentre`, the factor k with which an output at z
    becomes the output at x implying the same clean sample: out + k (x - z)."""

    progress: float
    a: float
    s: float
    recentre: float


def objective_levels(hparams: Mapping[str, Any], schedule: NoiseSchedule) -> Callable[[float], Level]:
    """`level(t)` for the network time t a family's sampler passes (DDPM timesteps, or flow time x 1000),
    under its objective and prediction type (hyper-parameters `objective`, `prediction`)."""
    if hparams["objective"] == "flow":  # x_t = (1 - t) noise + t data, v = data - noise: data = x + s v

        def flow_level(t: float) -> Level:
            time = t / FLOW_TIME_SCALE
            return Level(time, time, 1 - time, -1 / (1 - time) if time < 1 else 0.0)

        return flow_level
    prediction = hparams["prediction"]
    alphas_cumprod = schedule.alphas_cumprod

    def diffusion_level(t: float) -> Level:
        ab = float(alphas_cumprod[round(t)])
        a, s = ab**0.5, (1 - ab) ** 0.5
        # eps: x0 = (x - s eps) / a; v: x0 = a x - s v; sample: x0 itself
        k = {"epsilon": 1 / s, "v_prediction": a / s, "sample": 0.0}[prediction]
        return Level(1 - t / (len(alphas_cumprod) - 1), a, s, k)

    return diffusion_level


def attend_and_excite(
    guided: Denoiser,
    conditional: Denoiser,
    unet: nn.Module,
    text: Tensor,
    subjects: Tensor,
    level: Callable[[float], Level],
    *,
    scale: float = SCALE,
    max_steps: float = MAX_STEPS,
    thresholds: Mapping[float, float] = THRESHOLDS,
    max_refinement: int = MAX_REFINEMENT,
    side: int | None = None,
    sigma: float | None = None,
) -> Denoiser:
    """The sampler's denoiser `guided` with Attend-and-Excite updates (see the module docstring):
    `conditional(x, t)` is the network on the prompts alone, running `unet`, whose cross-attention is read;
    `text` and `subjects` (B, L) bool mark the prompts' own tokens and their subject tokens (`text_tokens`,
    `subject_tokens`); `level` says where a call is (`objective_levels`). One denoiser per sampling run:
    it remembers which refinements it has done."""
    pending = sorted(thresholds.items())

    def denoiser(x: Tensor, t: Tensor) -> Tensor:
        where = level(float(t[0]))
        if where.progress >= max_steps:
            return guided(x, t)
        step = scale * (1 - 0.5 * where.progress) ** 0.5 * (where.a**2 + where.s**2)

        def loss_fn(z: Tensor) -> Tensor:
            return latent_loss(conditional, unet, z, t, text, subjects, side, sigma)

        z = x
        reached = [threshold for start, threshold in pending if start <= where.progress]
        if reached:  # iterative latent refinement, once per threshold
            del pending[: len(reached)]
            z = excite(loss_fn, z, step, target=1 - reached[-1], iterations=max_refinement)
        z = excite(loss_fn, z, step)
        return guided(z, t) + where.recentre * (x - z)

    return denoiser


# --- the subject tokens ----------------------------------------------------------------------------


def subject_words(prompt: str) -> list[str]:
    """The shape nouns of a prompt of the `shapes` grammar ("a red circle left of a blue square": circle,
    square); a ValueError asking for the words when the prompt is not of that grammar."""
    from zoo import registry

    objects = registry.datamodule_module("shapes").parse_caption(prompt)
    if not objects:
        raise ValueError(
            f"attend_excite=True finds the subjects of prompts of the shapes grammar ('a red circle left of a "
            f"blue square'); {prompt!r} is not one: name the subject words (attend_excite=['cat', 'frog'], "
            "--attend-excite cat,frog)"
        )
    return list(dict.fromkeys(shape for _, _, shape in objects))


def text_tokens(tokenizer: Any, ids: Tensor, mask: Tensor) -> Tensor:
    """(B, L) bool: the prompts' own tokens, without the padding and the start and end markers."""
    return mask.to(torch.bool) & (ids != tokenizer.bos_id) & (ids != tokenizer.eos_id)


def _after_space(word: str) -> str:
    """`word` as a byte-level BPE spells it after a space: "Ġcircle"."""
    from tokenizers import pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return byte_level.pre_tokenize_str(" " + word)[0][0]


def _spellings(word: str) -> set[str]:
    """How `word` reads as one token: after a space ("Ġcircle"), at the start of the prompt ("circle"), or
    as a token added to the tokenizer ("<s1>", textual inversion's)."""
    after_space = _after_space(word)
    return {after_space, after_space[1:], word}


def _not_found(tokenizer: Any, prompt: str, word: str, length: int) -> str:
    if not word or word.split() != [word]:
        return f"attend_excite takes single words, got {word!r}"
    if not re.search(rf"(?<!\w){re.escape(word)}(?!\w)", prompt):
        return f"attend_excite: {word!r} is not in the prompt {prompt!r}"
    pieces = [token.value for token in tokenizer.tokenizer.model.tokenize(_after_space(word))]
    if len(pieces) > 1:
        return (
            f"attend_excite: {word!r} is not one token of this model's tokenizer (it reads as "
            f"{', '.join(repr(p) for p in pieces)}): name words that are one token each"
        )
    return f"attend_excite: {word!r} falls past the {length} tokens this model reads of {prompt!r}"


def subject_tokens(
    tokenizer: Any, prompts: Sequence[str], ids: Tensor, words: Sequence[Sequence[str]]
) -> Tensor:
    """(B, L) bool: the positions in `ids` (the prompts as the text encoder reads them, `tokenizer` a
    `zoo.nn.text.CaptionTokenizer`) of each prompt's subject `words` (every occurrence); a ValueError naming
    a word that is not in its prompt or not one token."""
    found = torch.zeros(ids.shape, dtype=torch.bool)
    for row, (prompt, prompt_ids, prompt_words) in enumerate(zip(prompts, ids.tolist(), words, strict=True)):
        pieces = [tokenizer.tokenizer.id_to_token(i) for i in prompt_ids]
        for word in prompt_words:
            spellings = _spellings(word)
            hits = [j for j, piece in enumerate(pieces) if piece in spellings]
            if not hits:
                raise ValueError(_not_found(tokenizer, prompt, word, ids.shape[1]))
            found[row, hits] = True
    return found.to(ids.device)
