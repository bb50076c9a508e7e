"""`dreambooth`: fine-tune a trained `ldm` on a few images of a concept named by a rare token, with prior
preservation (Ruiz et al. 2022, "DreamBooth"; as diffusers' train_dreambooth.py and train_dreambooth_lora.py).

The U-Net trains in full (or, with `lora_rank`, through peft LoRA layers); the concept's captions name it with
a new token ("a <s1> circle"), whose row stays where it starts unless `train_text_encoder`. Prior
preservation: before training, the untouched base draws `num_class_images` images for its class prompts,
and every step adds their loss times `prior_loss_weight`, so that the model keeps drawing what it drew.
The class images are kept in the checkpoint (a resumed run does not draw them again from the tuned model).

The paper's class prompt is "a dog" beside "a sks dog". `class_prompt` gives one; its default is the base's
own preview prompts (its training captions): a base that only ever saw captions of its grammar would draw
out-of-distribution images for a bare class noun, and those prompts are what a user expects to keep.

    python -m zoo.fit --model dreambooth --model.base LDM_CKPT --data image_folder --data.root concepts/pink
    python -m zoo.sample --ckpt runs/dreambooth/<run>/checkpoints/last.ckpt --prompt "a <s1> triangle"
"""

from __future__ import annotations

from typing import Any

from zoo.customize import TEXT_TARGETS, UNET_TARGETS, ConceptTuner, add_lora, lora_config


class DreamBooth(ConceptTuner):
    """A frozen `ldm`'s U-Net fine-tuned on a concept with prior preservation; see the module docstring.

    Args:
        base: the `ldm` checkpoint (its own text encoder; U-Net backbone).
        token: the rare word the captions name the concept with (added to the tokenizer).
        initializer_token: a word the base knows whose embedding the token starts from; null: the mean of its
            vocabulary's embeddings.
        lora_rank: null: fine-tune the whole U-Net; a rank: LoRA on its attention layers instead (peft).
        lora_alpha: LoRA alpha (scaling alpha / r); null: the rank.
        train_text_encoder: fine-tune the text encoder too (in full, or with LoRA when lora_rank is set).
        prior_loss_weight: weight of the class images' loss (0: no prior preservation).
        num_class_images: images the base draws for the class prompts before training.
        class_prompt: the class images' prompt; null: the base's preview prompts (see the module docstring).
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
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        train_text_encoder: bool = False,
        prior_loss_weight: float = 1.0,
        num_class_images: int = 64,
        class_prompt: str | None = None,
        batch_repeats: int = 4,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 20,
        base_sha256: str | None = None,
        base_hparams: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.base = self.load_frozen("base", "ldm", "--model.base")
        self.add_concept_token()
        base_model = self.base
        if lora_rank is None:
            base_model.unet.requires_grad_(True)
            if train_text_encoder:
                base_model.text_encoder.requires_grad_(True)
        else:
            alpha = float(lora_rank if lora_alpha is None else lora_alpha)
            add_lora(base_model.unet, lora_config(lora_rank, alpha, 0.0, UNET_TARGETS))
            if train_text_encoder:
                add_lora(base_model.text_encoder, lora_config(lora_rank, alpha, 0.0, TEXT_TARGETS))
        self.init_prior(prior_loss_weight, num_class_images)

    def save_trained(self, path: Any) -> Any:
        if self.hparams.lora_rank is None:  # the whole U-Net changed: the checkpoint is the model
            return None
        return super().save_trained(path)

    def on_train_end(self) -> None:
        if self.hparams.lora_rank is not None:
            super().on_train_end()
        elif self.trainer.is_global_zero:
            print(
                "dreambooth: the whole U-Net was fine-tuned; sample from the checkpoint itself: python -m "
                f"zoo.sample --ckpt {self.trainer.default_root_dir}/checkpoints/last.ckpt --prompt "
                f'"a {self.hparams.token} circle"'
            )
