"""`lora`: teach a trained `ldm` a concept with low-rank adapters (Hu et al. 2021, "LoRA: Low-Rank Adaptation
of Large Language Models"; for diffusion, as diffusers' train_text_to_image_lora / train_dreambooth_lora).

peft's LoRA layers (W + B A * alpha / r, B starting at zero) wrap the frozen base U-Net's attention layers,
optionally the text encoder's too; a new token names the concept in the captions ("a <s1> circle"). Only the
LoRA matrices train, on the base's own loss plus, by default, prior preservation on images the untouched base
draws for its own prompts (as `dreambooth`; without it the pink LoRA turned every prompt pink: RESULTS.md,
issue 18). At the end the adapter alone is written as a small
`<run>/lora.safetensors` (peft's names, its LoraConfig, the token's row), which any number of times and
scales can be applied to the base at sampling time.

    python -m zoo.concepts --color pink --shapes circle square --num 8 --token "<s1>" --out concepts/pink
    python -m zoo.fit --model lora --model.base LDM_CKPT --data image_folder --data.root concepts/pink
    python -m zoo.sample --ckpt LDM_CKPT --lora runs/lora/<run>/lora.safetensors:0.8 --prompt "a <s1> triangle"
    python -m zoo.sample --ckpt runs/lora/<run>/checkpoints/last.ckpt --prompt "a <s1> triangle"
"""

from __future__ import annotations

from typing import Any

from zoo.customize import TEXT_TARGETS, UNET_TARGETS, ConceptTuner, add_lora, lora_config


class LoRA(ConceptTuner):
    """Low-rank adapters on a frozen `ldm`; see the module docstring.

    Args:
        base: the `ldm` checkpoint to adapt (its own text encoder; U-Net backbone).
        token: the new word the captions name the concept with.
        initializer_token: a word the base knows whose embedding the token starts from; null: the mean of its
            vocabulary's embeddings.
        rank: LoRA rank r.
        alpha: LoRA alpha; the update is scaled by alpha / r (peft's).
        dropout: peft's lora_dropout, on the adapted layers' inputs while training.
        unet_targets: regular expression of the U-Net modules that get LoRA (default: attention's qkv, q, kv, out).
        train_text_encoder: LoRA on the text encoder's attention too (`text_targets`).
        text_targets: regular expression of the text encoder modules that get LoRA.
        prior_loss_weight: weight of the loss on class images the untouched base draws before training
            (prior preservation, as dreambooth; diffusers' train_dreambooth_lora --with_prior_preservation); 0: none.
        num_class_images: images the base draws for the class prompts.
        class_prompt: the class images' prompt; null: the base's own preview prompts (see `dreambooth`).
        batch_repeats: each batch of concept images is used this many times per step, with other noise.
        lr: AdamW learning rate, reached at the end of the warm-up.
        weight_decay: AdamW weight decay.
        warmup_steps: optimizer steps of linear learning-rate warm-up.
        base_sha256: set by zoo from the base file; leave unset.
        base_hparams: set by zoo from the base file (the ldm's arguments); leave unset.
    """

    def __init__(
        self,
        base: str | None = None,
        token: str = "<s1>",
        initializer_token: str | None = None,
        rank: int = 4,
        alpha: float = 4.0,
        dropout: float = 0.0,
        unet_targets: str = UNET_TARGETS,
        train_text_encoder: bool = False,
        text_targets: str = TEXT_TARGETS,
        prior_loss_weight: float = 1.0,
        num_class_images: int = 64,
        class_prompt: str | None = None,
        batch_repeats: int = 4,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 20,
        base_sha256: str | None = None,
        base_hparams: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.base = self.load_frozen("base", "ldm", "--model.base")
        self.add_concept_token()
        add_lora(self.base.unet, lora_config(rank, alpha, dropout, unet_targets))
        if train_text_encoder:
            add_lora(self.base.text_encoder, lora_config(rank, alpha, dropout, text_targets))
        self.init_prior(prior_loss_weight, num_class_images)
