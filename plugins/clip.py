"""`clip`: contrastive language-image pre-training (Radford et al., 2021), small enough for a CPU.

Two encoders map an image and its caption to unit vectors in one space:

- images: a small ViT built from timm's parts: a convolutional patch embedding (stride-2
  `ConvNormAct`s down to patches of `patch_size` pixels), learned positions, `image_depth`
  `vision_transformer.Block`s, a LayerNorm, the mean over patches, a linear projection to `embed_dim`;
- text: `zoo.nn.text.TextEncoder` (a transformer over a byte-level BPE trained on the training
  captions and saved inside the checkpoint), its masked-mean pooled state, a linear projection.

Training minimises the symmetric cross-entropy of the paper's pseudocode over a batch of N pairs,

    logits = exp(t) * normalize(I) @ normalize(T).T          # (N, N)
    loss   = (CE(logits, arange(N)) + CE(logits.T, arange(N))) / 2

with the temperature learned as `t = logit_scale`, initialised at log(1 / 0.07) and clipped so the
logits are never scaled by more than 100 (the paper's "to prevent training instability").

What it offers besides a loss: `zero_shot(images, prompts)` (classification by caption), recall@k
retrieval, the text encoder `ldm` conditions on (`text_states`), and embeddings that torchmetrics'
`CLIPScore` reads through `zoo.nn.clip_adapter.clip_score_metric`. It generates nothing:
`generate()` raises, and the sample callback gets no previews.

Image convention: `encode_image` takes images in [-1, 1], as batches carry them (`preprocess` turns
uint8 [0, 255] or float [0, 1] images of any size into that).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import ConvNormAct, GroupNorm1
from timm.models.vision_transformer import Block
from torch import nn

from zoo.module import GenerativeModule, attached_trainer, inference
from zoo.nn.text import CaptionTokenizer, TextEncoder, dataset_captions

PROMPT_TEMPLATE = "a {}"  # shapes' captions read "a red circle": prompts in the same words work best


def clip_loss(
    image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric cross-entropy over the (N, N) similarity matrix; row i's positive is column i.

    Embeddings must already be L2-normalised; `logit_scale` is the multiplier (exp of the parameter).
    """
    logits = logit_scale * image_embeddings @ text_embeddings.T
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def recall_at_k(
    similarity: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[int, float]:
    """Fraction of queries (rows of `similarity`) with a relevant item among their k best columns.

    `relevant[i, j]` says whether column j is a right answer for query i. Captions repeat on
    `shapes` ("a red circle" many times), so any item with the same caption counts, not only the
    one the query was paired with; otherwise ties between identical captions would decide recall.
    """
    order = similarity.argsort(dim=1, descending=True)
    hits = relevant.gather(1, order)
    return {k: hits[:, :k].any(dim=1).float().mean().item() for k in ks}


class ImageEncoder(nn.Module):
    """A small ViT whose patch embedding is a stack of stride-2 convolutions (Xiao et al. 2021: early
    convolutions make ViTs train faster and more stably, which counts on a CPU budget), then learned
    positions, timm's pre-norm blocks, a LayerNorm and the mean over patches."""

    def __init__(
        self, image_size: int, in_channels: int, patch_size: int, width: int, depth: int, heads: int
    ) -> None:
        super().__init__()
        convs = patch_size.bit_length() - 1
        if patch_size < 2 or 2**convs != patch_size:
            raise ValueError(f"patch_size must be a power of two of at least 2, got {patch_size}")
        channels = [in_channels] + [max(16, width // 2 ** (convs - 1 - i)) for i in range(convs)]
        self.patch_embed = nn.Sequential(
            *[ConvNormAct(channels[i], channels[i + 1], 3, stride=2, norm_layer=GroupNorm1, act_layer=nn.GELU)
              for i in range(convs)],
            nn.Conv2d(channels[-1], width, 1),
        )  # fmt: skip
        num_patches = (image_size // patch_size) ** 2
        self.position_embedding = nn.Parameter(torch.zeros(1, num_patches, width))
        nn.init.normal_(self.position_embedding, std=0.02)
        self.blocks = nn.Sequential(
            *[Block(width, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # (B, width, S/p, S/p) feature map -> (B, patches, width) tokens
        x = self.patch_embed(images).flatten(2).transpose(1, 2) + self.position_embedding
        return self.norm(self.blocks(x)).mean(dim=1)


class CLIP(GenerativeModule):
    """A small CLIP; see the module docstring. `python -m zoo.fit --model clip`.

    Args:
        in_channels: image channels (1 grey, 3 RGB); zoo.fit links it to data.channels.
        image_size: image side in pixels, divisible by patch_size; zoo.fit links it to data.image_size.
        patch_size: ViT patch side in pixels, a power of two >= 2 (one stride-2 convolution per halving).
        image_width: width of the ViT's patch tokens.
        image_depth: transformer blocks of the ViT.
        image_heads: attention heads of the ViT; must divide image_width.
        vocab_size: most tokens of the BPE tokenizer trained on the training captions.
        max_length: tokens per caption with <bos> and <eos>; longer ones are cut.
        text_width: width of the text encoder's token states.
        text_depth: transformer blocks of the text encoder.
        text_heads: attention heads of the text encoder; must divide text_width.
        embed_dim: size of the shared embedding space both encoders project to.
        init_temperature: initial softmax temperature t of the similarities (logit scale 1/t), at least 1/max_logit_scale.
        max_logit_scale: cap of the learned logit scale (the paper's 100).
        lr: AdamW peak learning rate, after the warm-up; then a cosine decay to 10% by the run's end (if known).
        weight_decay: AdamW weight decay on weight matrices; none on gains, biases, embeddings and the temperature.
        warmup_steps: optimizer steps of linear learning-rate warm-up.
        prompt_template: zero-shot prompt of a class name at validation and test; {} stands for the name.
    """

    modality = "image"
    default_data = "shapes"

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        patch_size: int = 8,
        image_width: int = 64,
        image_depth: int = 2,
        image_heads: int = 2,
        vocab_size: int = 512,
        max_length: int = 24,
        text_width: int = 64,
        text_depth: int = 2,
        text_heads: int = 2,
        embed_dim: int = 64,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        lr: float = 3e-3,
        weight_decay: float = 0.1,
        warmup_steps: int = 100,
        prompt_template: str = PROMPT_TEMPLATE,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
        if not (init_temperature > 0.0 and 1.0 / init_temperature <= max_logit_scale):
            raise ValueError(
                f"init_temperature {init_temperature} must be positive with 1/init_temperature <= max_logit_scale "
                f"({max_logit_scale})"
            )
        if "{}" not in prompt_template:
            raise ValueError(
                f"prompt_template must contain '{{}}' where the class name goes, got {prompt_template!r}"
            )
        self.save_hyperparameters()
        self.image_encoder = ImageEncoder(
            image_size, in_channels, patch_size, image_width, image_depth, image_heads
        )
        self.text_encoder = TextEncoder(vocab_size, text_width, text_depth, text_heads, max_length)
        self.image_projection = nn.Linear(image_width, embed_dim, bias=False)
        self.text_projection = nn.Linear(text_width, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.text_width = text_width  # what ldm's cross-attention reads from text_states
        self.tokenizer: CaptionTokenizer | None = None  # trained in setup(), saved in checkpoints

    # --- tokenizer: trained on the data, carried by the checkpoint ----------------------------

    def fit_tokenizer(self, captions: Sequence[str]) -> CaptionTokenizer:
        """Train the byte-level BPE on `captions` and keep it (done by `setup()` in `zoo.fit`)."""
        self.tokenizer = CaptionTokenizer.train(captions, vocab_size=self.hparams.vocab_size)
        return self.tokenizer

    def setup(self, stage: str) -> None:
        if self.tokenizer is not None:  # loaded from a checkpoint, or given by the caller
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        dataset = getattr(datamodule, "train_set", None) or getattr(datamodule, "val_set", None)
        if dataset is None:
            raise RuntimeError(
                "clip has no tokenizer and no datamodule split to train one on: pass a datamodule with a "
                "train split to the Trainer, or call model.fit_tokenizer(captions) first"
            )
        self.fit_tokenizer(dataset_captions(dataset))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.tokenizer is not None:
            checkpoint["tokenizer"] = self.tokenizer.to_str()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "tokenizer" in checkpoint:
            self.tokenizer = CaptionTokenizer.from_str(checkpoint["tokenizer"])

    def tokenize(self, texts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, max_length) and mask (B, max_length) on the model's device."""
        if self.tokenizer is None:
            raise RuntimeError(
                "clip has no tokenizer yet: train the model with `python -m zoo.fit --model clip` (setup() trains "
                "one on the captions), load a checkpoint with zoo.checkpoint.load_model, or call "
                "model.fit_tokenizer(captions)"
            )
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids, mask = self.tokenizer(texts, self.hparams.max_length)
        return ids.to(self.device), mask.to(self.device)

    # --- the encoders -------------------------------------------------------------------------

    @property
    def temperature_scale(self) -> torch.Tensor:
        """exp(logit_scale), never above `max_logit_scale` (the paper clips at 100)."""
        return self.logit_scale.clamp(max=math.log(self.hparams.max_logit_scale)).exp()

    def preprocess(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """uint8 images in [0, 255] or float images in [0, 1], (B, C, H, W) or a list of (C, H, W) of any
        size, to float (B, in_channels, image_size, image_size) in [-1, 1] on the model's device."""
        batch = [images] if torch.is_tensor(images) else [i[None] for i in images]
        return torch.cat([self._to_model_input(x) for x in batch])

    def _to_model_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        # the dtype says the range: uint8 is [0, 255] (what CLIPScore is given), floats are [0, 1] (zoo samples)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        channels = self.hparams.in_channels
        if x.shape[1] != channels:
            if x.shape[1] == 1:
                x = x.expand(-1, channels, -1, -1)
            elif channels == 1 and x.shape[1] == 3:  # ITU-R 601 luma, as PIL's "L"
                x = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device)[:, None, None]).sum(
                    1, keepdim=True
                )
            else:
                raise ValueError(f"images have {x.shape[1]} channels; this clip takes {channels}")
        if x.shape[-2:] != self._size:
            x = F.interpolate(x, size=self._size, mode="bilinear", antialias=True, align_corners=False)
        return x * 2 - 1

    @property
    def _size(self) -> tuple[int, int]:
        return (self.hparams.image_size, self.hparams.image_size)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings (B, embed_dim) of images (B, C, image_size, image_size) in [-1, 1]."""
        if images.shape[-2:] != self._size:
            raise ValueError(
                f"images are {tuple(images.shape[-2:])}, this clip takes {self._size}: use model.preprocess(images) "
                "to resize uint8 [0, 255] or float [0, 1] images"
            )
        return F.normalize(self.image_projection(self.image_encoder(images)), dim=-1)

    def encode_tokens(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings (B, embed_dim) of tokenised captions (see `tokenize`)."""
        _, pooled = self.text_encoder(ids, mask)
        return F.normalize(self.text_projection(pooled), dim=-1)

    def encode_text(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Unit-norm embeddings (B, embed_dim) of captions."""
        ids, mask = self.tokenize(texts)
        # Padding is masked out of attention and pooling, so dropping the columns no caption reaches
        # changes nothing but the cost (shapes' captions fill 5 of 24 positions).
        length = max(1, int(mask.sum(1).max()))
        return self.encode_tokens(ids[:, :length], mask[:, :length])

    def text_states(self, texts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token states (B, max_length, text_width) and their mask (B, max_length), True at real
        tokens: what a text-to-image model's cross-attention reads (`ldm`)."""
        ids, mask = self.tokenize(texts)
        states, _ = self.text_encoder(ids, mask)
        return states, mask

    @inference
    def zero_shot(self, images: torch.Tensor, class_prompts: Sequence[str]) -> torch.Tensor:
        """Class probabilities (B, len(class_prompts)) of images in [-1, 1]: a softmax over the prompts of
        the scaled cosine similarities, as in the paper's zero-shot classifier."""
        logits = self.temperature_scale * self.encode_image(images) @ self.encode_text(class_prompts).T
        return logits.softmax(dim=-1)

    def forward(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """The contrastive loss of paired images in [-1, 1] and captions."""
        return clip_loss(self.encode_image(images), self.encode_text(texts), self.temperature_scale)

    # --- Lightning ----------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self(batch["image"], batch["caption"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image"]))
        self.log("train/logit_scale", self.temperature_scale, batch_size=len(batch["image"]))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # The paper clips the parameter itself after each step (as open_clip does), so it cannot drift
        # above the cap where the clamp in temperature_scale would hide it and stop its gradient.
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, math.log(self.hparams.max_logit_scale))

    def _class_names(self) -> list[str]:
        datamodule = getattr(attached_trainer(self), "datamodule", None)
        return list(getattr(datamodule, "class_names", []) or [])

    def _eval_start(self) -> None:
        names = self._class_names()
        prompts = [self.hparams.prompt_template.format(name) for name in names]
        self._prompt_embeddings = self.encode_text(prompts) if prompts else None
        # class index -> (first word, last word): "red circle" -> colour "red", shape "circle"
        words = [name.split() for name in names]
        self._attribute_groups = {
            "color": [w[0] for w in words],
            "shape": [w[-1] for w in words],
        } if words and all(len(w) >= 2 for w in words) else {}  # fmt: skip
        self._eval: dict[str, list[Any]] = {"images": [], "texts": [], "captions": [], "correct": []}

    def _eval_step(self, batch: dict[str, Any], prefix: str) -> None:
        images, captions = batch["image"], list(batch["caption"])
        image_embeddings, text_embeddings = self.encode_image(images), self.encode_text(captions)
        loss = clip_loss(image_embeddings, text_embeddings, self.temperature_scale)
        self.log(f"{prefix}/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(images))
        self._eval["images"].append(image_embeddings)
        self._eval["texts"].append(text_embeddings)
        self._eval["captions"] += captions
        if self._prompt_embeddings is not None and "label" in batch:
            # Zero-shot on single-object images only: a multi-object image has no single class.
            keep = (
                batch["num_objects"] == 1
                if "num_objects" in batch
                else torch.ones_like(batch["label"], dtype=torch.bool)
            )
            predicted = (image_embeddings[keep] @ self._prompt_embeddings.T).argmax(dim=1)
            true = batch["label"][keep]
            rows = [(predicted == true).float()]
            for words in self._attribute_groups.values():
                # the attribute of the most probable class: a prompt set over all (colour, shape) pairs
                # scores colours as well as a colour-only set would, in words the captions use
                index = {w: i for i, w in enumerate(dict.fromkeys(words))}
                group = torch.tensor([index[w] for w in words], device=predicted.device)
                rows.append((group[predicted] == group[true]).float())
            self._eval["correct"].append(torch.stack(rows, dim=1))

    def _eval_end(self, prefix: str) -> None:
        if not self._eval["images"]:
            return
        images, texts = torch.cat(self._eval["images"]), torch.cat(self._eval["texts"])
        # Captions repeat on shapes ("a red circle" many times): rank the distinct captions, once each,
        # so that five copies of one caption do not fill the top five.
        first: dict[str, int] = {}
        for i, caption in enumerate(self._eval["captions"]):
            first.setdefault(caption, i)
        index = torch.tensor(list(first.values()), device=images.device)
        position = {caption: j for j, caption in enumerate(first)}
        key = torch.tensor([position[c] for c in self._eval["captions"]], device=images.device)
        distinct = torch.arange(len(first), device=images.device)
        similarity = images @ texts[index].T  # (images, distinct captions)
        recalls = {
            "i2t": recall_at_k(similarity, key[:, None] == distinct[None, :]),
            "t2i": recall_at_k(similarity.T, distinct[:, None] == key[None, :]),
        }
        # Under DDP each rank ranks over its own shard; sync_dist averages the ranks' recalls.
        values = {f"{prefix}/{d}_recall@{k}": v for d, r in recalls.items() for k, v in r.items()}
        for k in (1, 5):
            values[f"{prefix}/recall@{k}"] = (
                values[f"{prefix}/i2t_recall@{k}"] + values[f"{prefix}/t2i_recall@{k}"]
            ) / 2
        if self._eval["correct"]:
            correct = torch.cat(self._eval["correct"])
            if len(correct):
                names = ["zero_shot_accuracy", *(f"zero_shot_{a}" for a in self._attribute_groups)]
                values |= {f"{prefix}/{n}": v for n, v in zip(names, correct.mean(0).tolist(), strict=True)}
        self.log_dict(values, sync_dist=True)
        self._eval = {}

    def on_validation_epoch_start(self) -> None:
        self._eval_start()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_start(self) -> None:
        self._eval_start()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def configure_optimizers(self) -> Any:
        # As in CLIP: no weight decay on gains, biases, embeddings and the temperature.
        decay, no_decay = [], []
        for name, parameter in self.named_parameters():
            is_matrix = parameter.ndim >= 2 and "embedding" not in name
            (decay if is_matrix else no_decay).append(parameter)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr, betas=(0.9, 0.98), eps=1e-6,
        )  # fmt: skip
        warmup = max(1, self.hparams.warmup_steps)
        trainer = attached_trainer(self)
        total = trainer.estimated_stepping_batches if trainer is not None else float("inf")
        total = total if math.isfinite(total) and total > warmup else None

        def schedule(step: int) -> float:  # linear warm-up, then cosine to 10% when the length is known
            if step < warmup:
                return (step + 1) / warmup
            if total is None:
                return 1.0
            progress = min(1.0, (step - warmup) / (total - warmup))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- not a generator ----------------------------------------------------------------------

    @inference
    def generate(
        self, n: int, *, condition: Any = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        raise ValueError(
            "clip is a contrastive image-text encoder, not a generative model: it has nothing to sample. "
            "Use it to score other models' images (zoo.nn.clip_adapter.clip_score_metric(checkpoint)), to "
            "classify images (model.zero_shot) or to condition ldm on its text encoder (model.text_states)"
        )

    def previews(
        self, batch: dict[str, Any] | None, *, n: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        return {}  # nothing to draw; the sample callback then writes no grid
