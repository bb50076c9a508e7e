"""`ip_adapter`: image prompts for a trained `ldm` (Ye et al. 2023, "IP-Adapter: Text Compatible Image Prompt
Adapter for Text-to-Image Diffusion Models").

A frozen `clip` image embedding of the reference image is projected to a few tokens (a linear layer and a
LayerNorm, the paper's `ImageProjModel`); every cross-attention block of the frozen base U-Net gets a
second attention over those tokens with its own keys and values (`to_k_ip` / `to_v_ip`, initialised from
the text's), added to the text's times the IP scale (decoupled cross-attention, `UNet.add_image_attention`).
Only the projection and the new keys and values train, on the base's own loss with the training image as
its own reference. Text and image embeddings are each dropped at random (a dropped image embedding is
zeros, the paper's), so one network serves classifier-free guidance; the unconditional branch gets the
negative text and the zero image embedding.

    python -m zoo.fit --model clip                                           # the image encoder (~3 min)
    python -m zoo.fit --model ip_adapter --model.base LDM_CKPT --model.image_encoder CLIP_CKPT
    python -m zoo.sample --ckpt runs/ip_adapter/<run>/checkpoints/last.ckpt --image-prompt ref.png [--prompt "..."] [--ip-scale 1.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from zoo.adapters import FrozenBaseAdapter
from zoo.diffusion import objective_loss
from zoo.module import adamw_with_warmup, inference
from zoo.nn.text import drop_captions


class ImageProjection(nn.Module):
    """A clip image embedding (B, D) to `num_tokens` tokens (B, N, width): IP-Adapter's `ImageProjModel`."""

    def __init__(self, embed_dim: int, width: int, num_tokens: int) -> None:
        super().__init__()
        self.num_tokens, self.width = num_tokens, width
        self.linear = nn.Linear(embed_dim, num_tokens * width)
        self.norm = nn.LayerNorm(width)

    def forward(self, embedding: Tensor) -> Tensor:
        return self.norm(self.linear(embedding).view(len(embedding), self.num_tokens, self.width))


class IPAdapter(FrozenBaseAdapter):
    """A frozen `ldm` prompted by images too; see the module docstring.

    Args:
        base: the `ldm` checkpoint to adapt (U-Net backbone); its data, tokenizer, text encoder and first
            stage are this model's.
        image_encoder: a `clip` checkpoint whose image embedding, frozen, is the image prompt.
        num_tokens: image tokens the embedding is projected to (the paper: 4).
        text_dropout: probability a training caption is replaced by "" (the paper: 0.05, and 0.05 both).
        image_dropout: probability a training image embedding is replaced by zeros.
        lr: AdamW learning rate, reached at the end of the warm-up (the projection and the new keys and
            values alone are trained).
        weight_decay: AdamW weight decay.
        warmup_steps: optimizer steps of linear learning-rate warm-up.
        ip_scale: the image attention's weight of `generate` unless given (0: the base model).
        sampler: sampler of `generate` unless given; None: the base's.
        sampling_steps: sampling steps of `generate` unless given; None: the base's.
        guidance: classifier-free guidance scale of `generate` unless given; None: the base's.
        base_sha256: set by zoo from the base file; leave unset.
        base_hparams: set by zoo from the base file (the ldm's arguments); leave unset.
        image_encoder_hparams: set by zoo from the clip file; leave unset.
    """

    default_parents = {"base": "ldm", "image_encoder": "clip"}  # zoo.fit trains those not given first

    def __init__(
        self,
        base: str | None = None,
        image_encoder: str | None = None,
        num_tokens: int = 4,
        text_dropout: float = 0.25,
        image_dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        ip_scale: float = 1.0,
        sampler: str | None = None,
        sampling_steps: int | None = None,
        guidance: float | None = None,
        base_sha256: str | None = None,
        base_hparams: dict[str, Any] | None = None,
        image_encoder_hparams: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        for name, p in (("text_dropout", text_dropout), ("image_dropout", image_dropout)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} is a probability, got {p}")
        if base is None and base_hparams is None:
            raise ValueError(
                "ip_adapter adapts a trained ldm: pass --model.base runs/ldm/<run>/checkpoints/last.ckpt "
                "(python -m zoo.fit --model ldm trains one)"
            )
        if image_encoder is None and image_encoder_hparams is None:
            raise ValueError(
                "ip_adapter reads reference images with a clip image encoder: pass --model.image_encoder "
                "runs/clip/<run>/checkpoints/last.ckpt (python -m zoo.fit --model clip trains one in minutes)"
            )
        self.save_hyperparameters()
        self.base = self.load_frozen("base", "ldm", "--model.base")
        self.image_encoder = self.load_frozen("image_encoder", "clip", "--model.image_encoder")
        if self.base.unet is None:
            raise ValueError(
                f"ip_adapter adapts a U-Net ldm; this one's backbone is {self.base.hparams.backbone}"
            )
        width = self.base.unet.mid[2].kv.in_features  # the cross-attention's context width
        self.projection = ImageProjection(int(self.image_encoder.hparams.embed_dim), width, num_tokens)
        self.base.unet.add_image_attention(width)  # the new keys and values train; the rest stays frozen
        self.image_attention = [m.image_kv for m in self.base.unet.modules() if getattr(m, "image_kv", None)]
        for layer in self.image_attention:
            layer.requires_grad_(True)

    # --- the image prompt -----------------------------------------------------------------------------

    def image_embedding(self, images: Tensor) -> Tensor:
        """The frozen clip's unit-norm embedding (B, D) of reference images (B, C, H, W) in [0, 1]."""
        with torch.no_grad():
            return self.image_encoder.encode_image(self.image_encoder.preprocess(images.to(self.device)))

    def _network(self, x: Tensor, t: Tensor, c: dict[str, Tensor]) -> Tensor:
        """The base U-Net attending to the text and to the projected image embedding `c["image"]`."""
        tokens = self.projection(c["image"])
        return self.base.unet(x, t, context=c["states"], context_mask=c["mask"], pooled=c["pooled"],
                              image_context=tokens, image_scale=c["ip_scale"])  # fmt: skip

    # --- training -------------------------------------------------------------------------------------

    def _loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> Tensor:
        hp = self.hparams
        images, captions = batch["image"], list(batch["caption"])
        n = len(images)
        embedding = self.image_embedding((images + 1) / 2)
        if self.training:
            captions = drop_captions(captions, hp.text_dropout, generator)
            drop_image = torch.rand(n, generator=generator) < hp.image_dropout
            embedding = embedding * (~drop_image).to(embedding)[:, None]
        z0, text = self.latents_and_text(images, captions, generator)
        c = text | {"image": embedding, "ip_scale": torch.ones(n, device=self.device)}
        return objective_loss(
            lambda x_t, t: self._network(x_t, t, c), z0, self.base.hparams, self.base.schedule, generator
        )

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        trainable = [
            *self.projection.parameters(),
            *(p for layer in self.image_attention for p in layer.parameters()),
        ]
        return adamw_with_warmup(trainable, hp.lr, hp.weight_decay, hp.warmup_steps)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.image_encoder.on_save_checkpoint(checkpoint)  # the clip's tokenizer...
        checkpoint["image_encoder_tokenizer"] = checkpoint.pop("tokenizer", None)
        self.base.on_save_checkpoint(checkpoint)  # ...then the base's, under the usual key
        super().on_save_checkpoint(checkpoint)  # then zoo's record of the family: ip_adapter's

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.base.on_load_checkpoint(checkpoint)
        if checkpoint.get("image_encoder_tokenizer") is not None:
            self.image_encoder.on_load_checkpoint({"tokenizer": checkpoint["image_encoder_tokenizer"]})

    # --- sampling -------------------------------------------------------------------------------------

    @inference
    def generate(
        self,
        n: int,
        *,
        condition: Any = None,
        generator: torch.Generator | None = None,
        image_prompt: Tensor | None = None,
        ip_scale: float | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        progress: bool = False,
    ) -> Tensor:
        """`n` images in [0, 1] for `condition` (None: no text, one prompt or n) and `image_prompt`, the
        reference image(s) (1 or n, C, H, W) in [0, 1], weighted by `ip_scale`. No image prompt: the base."""
        scale = self.hparams.ip_scale if ip_scale is None else ip_scale
        text, negative = self.texts(condition, negative_prompt, n)
        if image_prompt is None:
            embedding, scale = torch.zeros(n, self.projection.linear.in_features, device=self.device), 0.0
        else:
            if image_prompt.ndim == 3:
                image_prompt = image_prompt[None]
            if image_prompt.ndim != 4 or image_prompt.shape[0] not in (1, n):
                raise ValueError(
                    f"image_prompt is (1 or {n}, C, H, W) in [0, 1]; got {tuple(image_prompt.shape)}"
                )
            embedding = self.image_embedding(image_prompt).expand(n, -1)
        scales = torch.full((n,), float(scale), device=self.device)
        # the unconditional branch: the negative text and the zero image embedding (the paper's)
        cond = text | {"image": embedding, "ip_scale": scales}
        uncond = negative | {"image": torch.zeros_like(embedding), "ip_scale": scales}
        return self.sample_base(
            self._network, cond, uncond, n, guidance=guidance, sampler=sampler, steps=steps, generator=generator,
            progress=progress,
        )  # fmt: skip

    def previews(
        self, batch: dict[str, Any] | None, *, n: int, generator: torch.Generator
    ) -> dict[str, Tensor]:
        """Reference | sample pairs with no text, side by side, for the batch's images."""
        if batch is None:
            return {}
        n = min(n // 2, len(batch["image"]))
        references = (batch["image"][:n] + 1) / 2
        samples = self.generate(n, image_prompt=references, generator=generator)
        return {"reference_and_samples": torch.stack([references, samples], 1).flatten(0, 1)}
