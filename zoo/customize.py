"""Teaching a trained `ldm` a new concept (the `lora`, `textual_inversion` and `dreambooth` families), and
applying what they learned at sampling time.

- **LoRA** layers come from `peft` (`inject_adapter_in_model`, `LoraConfig`: rank r, alpha, dropout, scaling
  alpha / r): on the U-Net's attention layers (`UNET_TARGETS`) and, optionally, the text encoder's
  (`TEXT_TARGETS`). Several adapters can be active at once, each with its own scale (`set_lora_scales`), and
  merged into the weights and back (`merge_lora` / `unmerge_lora`).
- **New tokens** ("<s1>") are added to the ldm's tokenizer (one token each, absorbing the space before
  it) and get rows of its token-embedding table (`add_tokens`); the table grows when it is full.

One file format for all three, a small `.safetensors` file:

| key | holds |
|---|---|
| `unet.<module>.lora_A.weight`, `unet.<module>.lora_B.weight` | the U-Net's LoRA, as peft's `get_peft_model_state_dict` names it |
| `text_encoder.<module>.lora_A.weight`, ... | the text encoder's LoRA, if trained |
| `<s1>` | a new token's embedding row (width,), as diffusers' textual-inversion files |

with metadata `zoo_customization` (JSON: the family, the tokens, the peft `LoraConfig`s) and `base_sha256`
(the ldm checkpoint it was trained on). A peft adapter folder (`adapter_config.json` and
`adapter_model.safetensors`, as `PeftModel.save_pretrained` writes it for zoo's U-Net) loads as well.

    python -m zoo.sample --ckpt LDM_CKPT --lora pink.safetensors:0.8 --lora b.safetensors:0.5 --prompt "a <s1> circle"
    python -m zoo.sample --ckpt LDM_CKPT --embedding s1.safetensors --prompt "a <s1> triangle"
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from zoo.adapters import FrozenBaseAdapter, read_safetensors
from zoo.checkpoint import CheckpointError
from zoo.module import inference

# the U-Net's attention: self-attention's qkv and out (1x1 convolutions), cross-attention's q, kv and out
UNET_TARGETS = r".*\.(qkv|q|kv|out)$"
# the text encoder's transformer blocks (timm): attention's qkv and output projection
TEXT_TARGETS = r".*blocks\.\d+\.attn\.(qkv|proj)$"
LORA_PARTS = ("unet", "text_encoder")


# --- LoRA (peft) -----------------------------------------------------------------------------------------


def lora_config(rank: int, alpha: float, dropout: float, targets: str) -> Any:
    """peft's LoraConfig: rank r, scaling alpha / r, dropout on the layer's input, the modules matching `targets`."""
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout is a probability below 1, got {dropout}")
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)


def add_lora(module: nn.Module, config: Any, name: str = "default") -> None:
    """Wrap `module`'s target layers in peft LoRA layers (B initialised to zero: the module is unchanged)."""
    import warnings

    from peft import inject_adapter_in_model

    with warnings.catch_warnings():  # several adapters on one module is what --lora a --lora b asks for
        warnings.filterwarnings("ignore", "Already found a `peft_config`")
        inject_adapter_in_model(config, module, adapter_name=name)
    if not lora_layers(module):
        raise ValueError(
            f"no layer of {type(module).__name__} matches the LoRA targets {config.target_modules!r}"
        )


def lora_layers(module: nn.Module) -> list[Any]:
    from peft.tuners.lora import LoraLayer

    return [m for m in module.modules() if isinstance(m, LoraLayer)]


def set_lora_scales(module: nn.Module, scales: dict[str, float]) -> None:
    """Make exactly the adapters of `scales` active, each at its scale (LoRA's output times scale * alpha / r)."""
    for layer in lora_layers(module):
        names = [name for name in scales if name in layer.lora_A]
        layer.set_adapter(names)
        for name in names:
            layer.set_scale(name, scales[name])


def merge_lora(module: nn.Module) -> None:
    """Fold the active adapters (at their scales) into the layers' weights: no extra cost per step."""
    for layer in lora_layers(module):
        layer.merge()


def unmerge_lora(module: nn.Module) -> None:
    for layer in lora_layers(module):
        layer.unmerge()


def lora_state(module: nn.Module, name: str = "default") -> dict[str, Tensor]:
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(module, adapter_name=name)


# --- new tokens ------------------------------------------------------------------------------------------


def text_side(ldm: Any) -> tuple[Any, nn.Embedding]:
    """The ldm's tokenizer (zoo.nn.text.CaptionTokenizer) and token-embedding table."""
    if getattr(ldm, "clip", None) is not None:
        raise ValueError(
            "this ldm reads text with a frozen clip encoder (--model.text_encoder); new tokens are supported "
            "for an ldm with its own text encoder (the default)"
        )
    if ldm.tokenizer is None:
        raise ValueError("this ldm has no tokenizer: load it from a trained checkpoint")
    return ldm.tokenizer, ldm.text_encoder.token_embedding


def check_token(token: str) -> None:
    if not token or token != token.strip() or " " in token:
        raise ValueError(f"a new token is one word without spaces, e.g. '<s1>'; got {token!r}")
    if token.startswith(tuple(f"{part}." for part in LORA_PARTS)):
        raise ValueError(f"a new token may not start with {' or '.join(LORA_PARTS)}.; got {token!r}")


def token_ids(ldm: Any, tokens: list[str]) -> list[int]:
    tokenizer, _ = text_side(ldm)
    ids = [tokenizer.tokenizer.token_to_id(t) for t in tokens]
    missing = [t for t, i in zip(tokens, ids, strict=True) if i is None]
    if missing:
        raise ValueError(f"the ldm's tokenizer has no token {', '.join(missing)}")
    return ids


def add_tokens(ldm: Any, tokens: list[str]) -> list[int]:
    """Add `tokens` to the ldm's tokenizer, each one token that absorbs the space before it ("a <s1> circle"
    is `a`, `<s1>`, `Ġcircle`), and return their ids. Rows past the embedding table's end are added to it
    (and to the ldm's `vocab_size`); the new rows' values are the caller's to set."""
    from tokenizers import AddedToken

    tokenizer, embedding = text_side(ldm)
    if not tokens:
        return []
    for token in tokens:
        check_token(token)
        if tokenizer.tokenizer.token_to_id(token) is not None:
            raise ValueError(f"'{token}' is already a token of this ldm; choose another (e.g. '<s2>')")
    tokenizer.tokenizer.add_tokens([AddedToken(t, lstrip=True, normalized=False) for t in tokens])
    ids = token_ids(ldm, tokens)
    rows = max(ids) + 1
    if rows > embedding.num_embeddings:
        grown = nn.Embedding(rows, embedding.embedding_dim).to(embedding.weight)
        with torch.no_grad():
            grown.weight[: embedding.num_embeddings] = embedding.weight
        grown.weight.requires_grad_(embedding.weight.requires_grad)
        ldm.text_encoder.token_embedding = grown
        ldm.hparams["vocab_size"] = rows
    return ids


def word_embedding(ldm: Any, word: str | None) -> Tensor:
    """The embedding row of `word` as it follows a space in a caption (one token: "red" is `Ġred`), or with
    None the mean row of the tokenizer's vocabulary: a new token's starting point."""
    tokenizer, embedding = text_side(ldm)
    if word is None:
        return embedding.weight[3 : tokenizer.vocab_size].mean(0).detach().clone()
    ids = tokenizer.tokenizer.encode(" " + word).ids
    ids = [i for i in ids if i > 2]  # without <bos>, <eos>, <pad>
    if len(ids) != 1:
        raise ValueError(
            f"initializer word '{word}' is {len(ids)} tokens for this ldm; give a word it knows as one"
        )
    return embedding.weight[ids[0]].detach().clone()


# --- the file ---------------------------------------------------------------------------------------------


@dataclass
class Customization:
    """What a customization file holds: LoRA weights per part (peft's names), token rows, its description."""

    lora: dict[str, dict[str, Tensor]] = field(default_factory=dict)  # part -> peft state dict
    lora_configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # part -> LoraConfig.to_dict()
    embeddings: dict[str, Tensor] = field(default_factory=dict)  # token -> row
    family: str = ""
    base_sha256: str | None = None


def _jsonable(config: Any) -> dict[str, Any]:
    out = config.to_dict()
    for key, value in out.items():
        if isinstance(value, set):
            out[key] = sorted(value)
    return {k: v for k, v in out.items() if isinstance(v, (str, int, float, bool, list, dict, type(None)))}


def save_customization(
    path: str | Path,
    *,
    family: str,
    base_sha256: str | None,
    lora: dict[str, tuple[Any, dict[str, Tensor]]] | None = None,
    embeddings: dict[str, Tensor] | None = None,
) -> Path:
    """Write `lora` ({part: (LoraConfig, peft state dict)}) and `embeddings` ({token: row}) as one file."""
    from safetensors.torch import save_file

    tensors: dict[str, Tensor] = {}
    configs = {}
    for part, (config, state) in (lora or {}).items():
        if part not in LORA_PARTS:
            raise ValueError(f"LoRA parts are {', '.join(LORA_PARTS)}; got {part}")
        configs[part] = _jsonable(config)
        tensors |= {f"{part}.{k}": v for k, v in state.items()}
    for token, row in (embeddings or {}).items():
        check_token(token)
        tensors[token] = row
    description = {"family": family, "tokens": sorted(embeddings or {}), "lora_configs": configs}
    metadata = {"zoo_customization": json.dumps(description), "base_sha256": base_sha256 or ""}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata)
    return path


def read_customization(path: str | Path) -> Customization:
    """A file of `save_customization`, or a peft adapter folder saved from zoo's U-Net."""
    path = Path(path)
    if path.is_dir():
        return _read_peft_folder(path)
    tensors, metadata = read_safetensors(path)
    if "zoo_customization" not in metadata:
        raise CheckpointError(
            f"'{path}' is not a zoo customization file (written by the lora, textual_inversion or dreambooth "
            "families); a peft adapter is read from its folder (adapter_config.json, adapter_model.safetensors)"
        )
    description = json.loads(metadata["zoo_customization"])
    out = Customization(family=description["family"], base_sha256=metadata.get("base_sha256") or None)
    out.lora_configs = description["lora_configs"]
    for key, value in tensors.items():
        part, _, rest = key.partition(".")
        if part in LORA_PARTS and rest:
            out.lora.setdefault(part, {})[rest] = value
        else:
            out.embeddings[key] = value
    return out


def _read_peft_folder(folder: Path) -> Customization:
    from safetensors.torch import load_file

    config_file, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not (config_file.is_file() and weights.is_file()):
        raise CheckpointError(
            f"'{folder}' is not a peft adapter folder: it needs adapter_config.json and adapter_model.safetensors"
        )
    config = json.loads(config_file.read_text())
    prefix = "base_model.model."  # PeftModel's names for the wrapped module's layers
    state = {k.removeprefix(prefix): v for k, v in load_file(str(weights)).items()}
    return Customization(lora={"unet": state}, lora_configs={"unet": config}, family="peft")


def add_token_rows(ldm: Any, rows: dict[str, Tensor], path: str | Path) -> None:
    """Each token of `rows` added to the ldm with its row; one it already has with the same row is left as is
    (the same file twice), one with another row refused (two files that both define it)."""
    tokenizer, embedding = text_side(ldm)
    new = []
    for token, row in sorted(rows.items()):
        index = tokenizer.tokenizer.token_to_id(token)
        if index is None:
            new.append(token)
        elif not torch.equal(embedding.weight[index].detach().cpu(), row.to(embedding.weight.dtype)):
            raise CheckpointError(
                f"'{path}' defines '{token}', which an earlier file or the model defines otherwise"
            )
    ids = add_tokens(ldm, new)
    with torch.no_grad():
        table = ldm.text_encoder.token_embedding.weight
        for token, i in zip(new, ids, strict=True):
            table[i] = rows[token].to(table)


def apply_customization(
    ldm: Any, path: str | Path, *, name: str, lora: bool, base_sha256: str | None = None
) -> Customization:
    """Add the file's tokens to `ldm` and, with `lora`, its LoRA weights as adapter `name` (inactive until
    `set_lora_scales`). A file trained on another base than `base_sha256` is refused."""
    from peft import LoraConfig, set_peft_model_state_dict

    custom = read_customization(path)
    if base_sha256 and custom.base_sha256 and custom.base_sha256 != base_sha256:
        raise CheckpointError(
            f"'{path}' was trained on another ldm (sha256 {custom.base_sha256[:12]}...): give the ldm it was "
            "trained on with --ckpt"
        )
    if lora and not custom.lora:
        raise CheckpointError(
            f"'{path}' holds no LoRA weights (only token embeddings: give it with --embedding)"
        )
    if custom.embeddings:
        add_token_rows(ldm, custom.embeddings, path)
    for part, state in custom.lora.items() if lora else ():
        module = ldm.unet if part == "unet" else ldm.text_encoder
        fields = set(LoraConfig.__dataclass_fields__)
        config = LoraConfig(**{k: v for k, v in custom.lora_configs[part].items() if k in fields})
        add_lora(module, config, name)
        result = set_peft_model_state_dict(module, state, adapter_name=name)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise CheckpointError(f"'{path}' does not fit this ldm's {part}: unexpected {unexpected[:3]}")
    return custom


def spread(items: list[str], n: int) -> list[str]:
    """n of `items` evenly spaced over the list (all of them, cycled, when n is larger)."""
    return [items[(i * len(items)) // n] if n <= len(items) else items[i % len(items)] for i in range(n)]


# --- the families' shared part ----------------------------------------------------------------------------


class ConceptTuner(FrozenBaseAdapter):
    """A frozen `ldm` (`--model.base`) taught a concept from a few captioned images that name it with a new
    token (`token`, "<s1>"): the token is added to its tokenizer (its row starts at `initializer_token`'s),
    the subclass makes its trainable part (and may change what `save_trained` writes). Images of any size are resized to the
    base's; each batch is repeated `batch_repeats` times (other noise and times for each copy), since a
    concept folder holds fewer images than a batch. Samples as the base does, with what it learned."""

    prior = False  # prior preservation: `init_prior`
    # the base's own data never names the token: zoo.fit asks for the concept's data before it trains anything
    data_hint = "image_folder --data.root DIR (captioned pictures that name the token; python -m zoo.concepts writes one)"

    def add_concept_token(self) -> None:
        """On first build (the base read from its file), the token and its starting row."""
        hp = self.hparams
        if self.base.tokenizer is None:  # rebuilt from this family's checkpoint: its tokenizer has the token
            return
        start = word_embedding(self.base, hp.initializer_token)
        (index,) = add_tokens(self.base, [hp.token])
        with torch.no_grad():
            self.base.text_encoder.token_embedding.weight[index] = start
        hp.base_hparams["vocab_size"] = self.base.hparams["vocab_size"]  # grown if the table was full

    def on_fit_start(self) -> None:
        super().on_fit_start()
        from zoo.nn.text import dataset_captions

        datamodule = getattr(self.trainer, "datamodule", None)
        train_set = getattr(datamodule, "train_set", None)
        if train_set is not None and not any(self.hparams.token in c for c in dataset_captions(train_set)):
            from zoo.errors import DataError

            raise DataError(
                f"no training caption names the concept token '{self.hparams.token}': caption the images like "
                f"'a {self.hparams.token} circle' (python -m zoo.concepts writes such a folder) or pass "
                "--model.token with the word the captions use"
            )
        if self.prior and not bool(self.class_images_ready):
            self.draw_class_images()

    # --- prior preservation (DreamBooth's; lora's too) ------------------------------------------------

    def init_prior(self, weight: float, num_images: int) -> None:
        """Room for `num_images` class images, drawn by the untouched base at the first fit start and then
        kept with the weights (a resumed run does not draw them from the tuned model); each step adds
        `weight` x their loss. 0 for either: no prior."""
        if weight < 0 or num_images < 0:
            raise ValueError("prior_loss_weight and num_class_images must be non-negative")
        self.prior = weight > 0 and num_images > 0
        size, channels = self.base.hparams.image_size, self.base.hparams.in_channels
        self.register_buffer(
            "class_images", torch.zeros(num_images if self.prior else 0, channels, size, size)
        )
        self.register_buffer("class_images_ready", torch.tensor(False))

    def class_prompts(self) -> list[str]:
        """`class_prompt`, or the base's preview prompts (its training captions) spread over their sorted list
        (their first n all begin "a blue ...")."""
        hp = self.hparams
        return spread(
            [hp.class_prompt] if hp.class_prompt else (self.base._preview_prompts or [""]),
            hp.num_class_images,
        )

    def draw_class_images(self) -> None:
        generator = torch.Generator(device=self.device).manual_seed(0)
        prompts = self.class_prompts()
        for start in range(0, len(prompts), 64):
            chunk = prompts[start : start + 64]
            images = self.base.generate(len(chunk), condition=chunk, generator=generator, progress=True)
            self.class_images[start : start + len(chunk)] = images * 2 - 1
        self.class_images_ready.fill_(True)

    def prior_loss(self, n: int, generator: torch.Generator | None) -> Tensor:
        """The base's loss on n class images drawn at random, with their prompts."""
        index = torch.randint(len(self.class_images), (n,), generator=generator)
        prompts = self.class_prompts()
        loss = self.caption_loss(self.class_images[index], [prompts[i] for i in index.tolist()], generator)
        self.log("train/prior_loss" if self.training else "val/prior_loss", loss, batch_size=n)
        return loss

    # --- training -------------------------------------------------------------------------------------

    def concept_batch(self, batch: dict[str, Any]) -> tuple[Tensor, list[str]]:
        """The batch's images at the base's size and channels, and captions, `batch_repeats` times over."""
        import torch.nn.functional as F

        images, captions = batch["image"], list(batch["caption"])
        size, channels = self.base.hparams.image_size, self.base.hparams.in_channels
        if images.shape[1] != channels:
            raise ValueError(f"the base ldm draws {channels}-channel images; these have {images.shape[1]}")
        if images.shape[-2:] != (size, size):
            images = F.interpolate(
                images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        repeats = self.hparams.batch_repeats
        return images.repeat(repeats, 1, 1, 1), captions * repeats

    def caption_loss(self, images: Tensor, captions: list[str], generator: torch.Generator | None) -> Tensor:
        """The base's own training loss on these images and captions, gradients reaching what trains."""
        from zoo.diffusion import objective_loss

        base = self.base
        with torch.no_grad():
            z0 = base.training_latents(images, sample=self.training and generator is None)
        text = base.encode_text(captions)
        return objective_loss(
            lambda x_t, t: base._unet(x_t, t, text), z0, base.hparams, base.schedule, generator
        )

    def _loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> Tensor:
        images, captions = self.concept_batch(batch)
        loss = self.caption_loss(images, captions, generator)
        if self.prior and bool(self.class_images_ready):
            loss = loss + self.hparams.prior_loss_weight * self.prior_loss(len(images), generator)
        return loss

    def configure_optimizers(self) -> Any:
        from zoo.module import adamw_with_warmup

        hp = self.hparams
        trainable = [p for p in self.parameters() if p.requires_grad]
        return adamw_with_warmup(trainable, hp.lr, hp.weight_decay, hp.warmup_steps)

    def train(self, mode: bool = True) -> ConceptTuner:
        super().train(mode)  # the base in eval mode...
        for layer in lora_layers(self.base):  # ...but its LoRA layers' dropout follows training
            layer.train(mode)
        return self

    # --- the small file -------------------------------------------------------------------------------

    def token_row(self) -> dict[str, Tensor]:
        (index,) = token_ids(self.base, [self.hparams.token])
        return {self.hparams.token: self.base.text_encoder.token_embedding.weight[index].detach()}

    def lora_parts(self) -> dict[str, tuple[Any, dict[str, Tensor]]]:
        parts = {"unet": self.base.unet, "text_encoder": self.base.text_encoder}
        return {
            part: (module.peft_config["default"], lora_state(module))
            for part, module in parts.items()
            if lora_layers(module)
        }

    def save_trained(self, path: str | Path) -> Path:
        """The token's row and any LoRA, as a customization file (see the module docstring)."""
        from zoo import registry

        return save_customization(
            path, family=registry.name_of(type(self)), base_sha256=self.hparams.base_sha256,
            lora=self.lora_parts(), embeddings=self.token_row(),
        )  # fmt: skip

    def on_train_end(self) -> None:
        if self.trainer.is_global_zero:
            from zoo import registry

            name = registry.name_of(type(self))
            path = self.save_trained(Path(self.trainer.default_root_dir) / f"{name}.safetensors")
            print(
                f"{name}: the learned concept alone ({path.stat().st_size:,} bytes), for the base ldm: python -m zoo.sample "
                f"--ckpt {self.hparams.base} {'--lora' if lora_layers(self.base) else '--embedding'} {path} "
                f'--prompt "a {self.hparams.token} circle"'
            )

    # --- sampling -------------------------------------------------------------------------------------

    @inference
    def generate(
        self,
        n: int,
        *,
        condition: Any = None,
        generator: torch.Generator | None = None,
        negative_prompt: str | list[str] | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        eta: float = 0.0,
        init: Tensor | None = None,
        strength: float = 1.0,
        mask: Tensor | None = None,
        outpaint: dict[str, int] | None = None,
        progress: bool = False,
    ) -> Tensor:
        """The base ldm's `generate`, with what this family learned (prompts name it with the token)."""
        return self.base.generate(
            n, condition=condition, generator=generator, negative_prompt=negative_prompt, sampler=sampler,
            steps=steps, guidance=guidance, eta=eta, init=init, strength=strength, mask=mask, outpaint=outpaint,
            progress=progress,
        )  # fmt: skip

    def previews(
        self, batch: dict[str, Any] | None, *, n: int, generator: torch.Generator
    ) -> dict[str, Tensor]:
        """Samples for the batch's captions (the concept), then for the base's own prompts (what it keeps)."""
        if batch is None:
            return {}
        concept = sorted(set(batch["caption"]))
        own = self.base._preview_prompts or concept
        prompts = [concept[i % len(concept)] for i in range(n // 2)] + spread(own, n - n // 2)
        return {"samples": self.generate(n, condition=prompts, generator=generator)}
