"""`maskgit`: text-to-image by masked token modelling over vqgan codes (MaskGIT, Chang et al. 2022, with
text as in Muse, Chang et al. 2023), scaled down for a CPU.

Two stages: a frozen `vqgan` (the image tokenizer, `zoo.image_tokens`) maps a 32x32 image to 8x8 codes, and a
*bidirectional* transformer (`zoo.nn.transformer`, `causal=False`) reads the caption's text block and the
codes, some replaced by [MASK], and predicts the masked ones from everything else.

Training (the paper's Sec. 3.2): per image a ratio r ~ U(0, 1), the mask schedule gamma(r) = cos(pi r / 2),
ceil(gamma(r) * N) of the N codes masked at random positions, cross-entropy on the masked positions only.
Captions are dropped (replaced by "") with probability `caption_dropout`, for classifier-free guidance.

Decoding (the paper's Sec. 3.3 and its official code, google-research/maskgit `parallel_decode.py`), from
all N codes masked, over T steps t = 0 .. T-1:
1. predict every position's code distribution (guided: uncond + g * (cond - uncond) on the logits) and
   sample a code for every masked position (temperature, top-k, top-p); known codes stay as they are;
2. the codes left masked after the step number floor(N * gamma((t + 1) / T)), clamped as the official code
   does to max(1, min(unknown - 1, .)), where unknown is the number masked before the step; at the last step
   (t = T-1) none are: the sampled codes are the result;
3. the confidence of a newly sampled code is its log-probability plus Gumbel noise at temperature
   `choice_temperature * (1 - (t + 1) / T)` (annealed to 0 at the end); known codes have confidence +inf,
   so they are never masked again; the lowest-confidence codes are masked for the next step.
The issue writes the noise temperature as choice_temp * (1 - t/T) with t counted from 1; the official code's
`ratio = (step + 1) / num_iter` with step from 0 is the same number, the convention used here.

    python -m zoo.fit --model maskgit                 # trains its vqgan first, in <run>/first_stage/
    python -m zoo.fit --model maskgit --model.tokenizer runs/vqgan/<run>/checkpoints/last.ckpt
    python -m zoo.sample --ckpt runs/maskgit/<run>/checkpoints/last.ckpt --prompt "a red circle" --steps 8
    python -m zoo.evaluate --ckpt runs/maskgit/<run>/checkpoints/last.ckpt --metrics geneval
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from zoo.generation import apply_processors, processors_for
from zoo.image_tokens import ImageTokenFamily, guided_logits
from zoo.module import inference
from zoo.nn.transformer import Block

# what a step may be told about, to instrument a decode: (step, codes before, codes after, masked after)
StepHook = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


def cosine_schedule(r: torch.Tensor) -> torch.Tensor:
    """MaskGIT's mask schedule gamma(r) = cos(pi r / 2): the fraction of codes masked at progress r in [0, 1]."""
    return torch.cos(math.pi / 2 * r)


def training_mask(
    batch: int, length: int, generator: torch.Generator | None = None, device: Any = None
) -> torch.Tensor:
    """The (batch, length) boolean mask of a training step: per row r ~ U(0, 1) and ceil(gamma(r) * length)
    positions (at least 1) chosen uniformly at random."""
    r = torch.rand(batch, generator=generator, device=device)
    count = torch.ceil(cosine_schedule(r) * length).clamp(1, length).long()
    scores = torch.rand(batch, length, generator=generator, device=device)
    ranks = scores.argsort(dim=1).argsort(dim=1)  # each position's rank among a random order
    return ranks < count[:, None]


def masked_after_step(step: int, steps: int, total: torch.Tensor, unknown: torch.Tensor) -> torch.Tensor:
    """How many codes stay masked after decoding step `step` (0-based) of `steps`, per row: floor(total *
    gamma((step + 1) / steps)) clamped to max(1, min(unknown - 1, .)), with `total` (B,) the codes masked at
    the start and `unknown` (B,) those masked before the step; 0 after the last step."""
    if step == steps - 1:
        return torch.zeros_like(unknown)
    gamma = math.cos(math.pi / 2 * (step + 1) / steps)
    count = torch.floor(total.double() * gamma).long()
    return torch.maximum(torch.minimum(unknown - 1, count), torch.ones_like(unknown))


def lowest_confidence(confidence: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """The (B, N) boolean mask of each row's `count[b]` lowest-confidence positions."""
    ranks = confidence.argsort(dim=1).argsort(dim=1)
    return ranks < count[:, None]


def gumbel_noise(shape: torch.Size, generator: torch.Generator | None, device: Any) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, device=device).clamp(1e-20, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def parallel_decode(
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    codes: torch.Tensor,
    mask_id: int,
    steps: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    choice_temperature: float = 4.5,
    generator: torch.Generator | None = None,
    on_step: StepHook | None = None,
) -> torch.Tensor:
    """MaskGIT's iterative decoding (see the module docstring) of `codes` (B, N), `mask_id` where unknown;
    `logits_of(codes) -> (B, N, K)` code logits. Returns the codes with none masked."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    total = (codes == mask_id).sum(dim=1)  # the paper's N: the unknown codes at the start
    sampling = temperature > 0
    processors = processors_for(temperature=temperature, top_k=top_k, top_p=top_p, sampling=sampling)
    for step in range(steps):
        unknown = codes == mask_id
        logits = logits_of(codes).float()
        flat = logits.flatten(0, 1)
        scores = apply_processors(processors, torch.empty(flat.shape[0], 0, dtype=torch.long), flat)
        if sampling:
            sampled = torch.multinomial(scores.softmax(-1), 1, generator=generator).view(codes.shape)
        else:  # greedy: the confidence is the model's own probability of its choice
            sampled, scores = flat.argmax(-1).view(codes.shape), flat
        sampled = torch.where(unknown, sampled, codes)
        log_prob = scores.log_softmax(-1).gather(1, sampled.view(-1, 1)).view(codes.shape)
        noise_temperature = choice_temperature * (1.0 - (step + 1) / steps)
        confidence = log_prob + noise_temperature * gumbel_noise(codes.shape, generator, codes.device)
        confidence = confidence.masked_fill(~unknown, float("inf"))  # known codes are never masked again
        count = masked_after_step(step, steps, total, unknown.sum(dim=1))
        remask = lowest_confidence(confidence, count)
        decoded = sampled.masked_fill(remask, mask_id)
        if on_step is not None:
            on_step(step, codes, decoded, remask)
        codes = decoded
    return codes


class MaskGIT(ImageTokenFamily):
    """Masked generative image transformer over vqgan codes, text-conditioned; see the module docstring.

    Args:
        in_channels: image channels; zoo.fit links it to data.channels.
        image_size: image side in pixels; zoo.fit links it to data.image_size.
        tokenizer: a trained `vqgan` checkpoint for these images; null: zoo.fit trains one first.
        tokenizer_config: the vqgan's hyper-parameters; null: the tokenizer checkpoint's, or zoo's default vqgan.
        tokenizer_steps: training steps of the vqgan that zoo.fit trains when tokenizer is null.
        tokenizer_sha256: the sha256 of the tokenizer checkpoint, filled in; leave it null.
        vocab_size: most tokens of the BPE caption tokenizer (the text part of the joint vocabulary).
        max_length: caption tokens with <bos> and <eos> (the text block); longer captions are cut.
        n_layer: transformer blocks.
        n_head: attention heads; must divide n_embd.
        n_embd: transformer width.
        dropout: dropout in the transformer.
        caption_dropout: probability a training caption is replaced by "" (for classifier-free guidance).
        lr: AdamW learning rate, reached at the end of the warm-up (the vqgan stays frozen).
        weight_decay: AdamW weight decay on matrices and embeddings.
        warmup_steps: optimizer steps of linear learning-rate warm-up.
        sampling_steps: decoding steps T of `generate` unless given (the paper: 8 to 12).
        guidance: classifier-free guidance scale of `generate` unless given (1: the conditional pass alone).
        temperature: temperature of the codes sampled at each step unless given (0: the most probable).
        choice_temperature: Gumbel-noise temperature of the confidence at the start, annealed to 0 (the paper's 4.5).
    """

    family_name = "maskgit"
    fsdp_blocks = (Block,)
    extra_tokens = 1  # [MASK], after the codes
    untrained_first_stage_message = (
        "the maskgit's tokenizer is untrained: train with `python -m zoo.fit --model maskgit` (which trains it "
        "first) or pass --model.tokenizer runs/vqgan/<run>/checkpoints/last.ckpt"
    )

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        tokenizer: str | None = None,
        tokenizer_config: dict[str, Any] | None = None,
        tokenizer_steps: int = 1000,
        tokenizer_sha256: str | None = None,
        vocab_size: int = 512,
        max_length: int = 24,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.0,
        caption_dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 100,
        sampling_steps: int = 12,
        guidance: float = 3.0,
        temperature: float = 1.0,
        choice_temperature: float = 4.5,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._build_tokenizer_and_network(
            n_layer=n_layer, n_head=n_head, n_embd=n_embd, dropout=dropout, causal=False
        )

    @property
    def mask_id(self) -> int:
        """[MASK] in code space (the codes are 0 .. codebook_size - 1)."""
        return self.codebook_size

    def code_logits(self, text: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Logits (B, N, codebook_size) of every code position, reading the text block (B, max_length) and the
        codes (B, N) with `mask_id` at masked positions."""
        logits = self.network(torch.cat([text, codes + self.code_offset], dim=1))[:, text.shape[1] :]
        return logits[..., self.code_offset : self.code_offset + self.codebook_size]

    # --- training -------------------------------------------------------------------------------------

    def _loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        """Cross-entropy of the masked codes (cosine schedule) given the rest and the caption."""
        codes = self.training_codes(batch["image"])
        text = self.text_ids(self._drop_captions(batch["caption"], generator))
        mask = training_mask(*codes.shape, generator=generator, device=codes.device)
        logits = self.code_logits(text, codes.masked_fill(mask, self.mask_id))
        return F.cross_entropy(logits[mask].float(), codes[mask])

    # --- sampling -------------------------------------------------------------------------------------

    @inference
    def generate(
        self,
        n: int,
        *,
        condition: str | Sequence[str] | None = None,
        generator: torch.Generator | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        choice_temperature: float | None = None,
        on_step: StepHook | None = None,
    ) -> torch.Tensor:
        """`n` images in [0, 1] for `condition` (one prompt for all, or n; None: unconditional), decoded in
        `steps` parallel steps from all codes masked; `on_step(step, before, after, masked)` sees each step."""
        hp = self.hparams
        steps = hp.sampling_steps if steps is None else steps
        guidance = hp.guidance if guidance is None else guidance
        temperature = hp.temperature if temperature is None else temperature
        choice_temperature = hp.choice_temperature if choice_temperature is None else choice_temperature
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 picks the most probable code), got {temperature}")
        text = self.text_ids(self._prompts(condition, n))
        codes = torch.full((n, self.num_codes), self.mask_id, dtype=torch.long, device=self.device)
        codes = parallel_decode(
            self._guided(text, guidance), codes, self.mask_id, steps, temperature=temperature, top_k=top_k,
            top_p=top_p, choice_temperature=choice_temperature, generator=generator, on_step=on_step,
        )  # fmt: skip
        return self.codes_to_images(codes)

    def _guided(self, text: torch.Tensor, guidance: float) -> Callable[[torch.Tensor], torch.Tensor]:
        """codes -> code logits, guided: the conditional and unconditional passes as one batch."""
        if guidance == 1.0:
            return lambda codes: self.code_logits(text, codes)
        uncond = self.text_ids([""]).expand_as(text)

        def logits_of(codes: torch.Tensor) -> torch.Tensor:
            cond, unconditional = self.code_logits(torch.cat([text, uncond]), codes.repeat(2, 1)).chunk(2)
            return guided_logits(cond, unconditional, guidance)

        return logits_of
