"""`textual_inversion`: teach a trained `ldm` a concept by learning one new word's embedding (Gal et al. 2022,
"An Image is Worth One Word"; as diffusers' textual_inversion.py).

The token ("<s1>") is added to the base's tokenizer and embedding table, its row starting at
`initializer_token`'s; the whole table gets gradients, and after every optimizer step every row but the new
one is put back to the base's values (diffusers' way), so the base is bit-identical but for that row. The
result is a small `<run>/textual_inversion.safetensors` ({token: row}).

    python -m zoo.fit --model textual_inversion --model.base LDM_CKPT --data image_folder --data.root concepts/pink
    python -m zoo.sample --ckpt LDM_CKPT --embedding runs/textual_inversion/<run>/textual_inversion.safetensors \
        --prompt "a <s1> triangle"
"""

from __future__ import annotations

from typing import Any

import torch

from zoo.customize import ConceptTuner, token_ids


class TextualInversion(ConceptTuner):
    """A new word for a frozen `ldm`; see the module docstring.

    Args:
        base: the `ldm` checkpoint (its own text encoder).
        token: the new word the captions name the concept with.
        initializer_token: a word the base knows whose embedding the token starts from; null: the mean of its
            vocabulary's embeddings.
        batch_repeats: each batch of concept images is used this many times per step, with other noise.
        lr: AdamW learning rate of the token's row, reached at the end of the warm-up.
        weight_decay: AdamW weight decay (the other rows are restored whatever it does to them).
        warmup_steps: optimizer steps of linear learning-rate warm-up.
        base_sha256: set by zoo from the base file; leave unset.
        base_hparams: set by zoo from the base file (the ldm's arguments); leave unset.
    """

    def __init__(
        self,
        base: str | None = None,
        token: str = "<s1>",
        initializer_token: str | None = None,
        batch_repeats: int = 4,
        lr: float = 5e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 20,
        base_sha256: str | None = None,
        base_hparams: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.base = self.load_frozen("base", "ldm", "--model.base")
        self.add_concept_token()
        self.base.text_encoder.token_embedding.weight.requires_grad_(True)
        self._kept_rows: tuple[torch.Tensor, torch.Tensor] | None = None

    def on_fit_start(self) -> None:
        super().on_fit_start()
        table = self.base.text_encoder.token_embedding.weight
        keep = torch.ones(len(table), dtype=torch.bool, device=table.device)
        keep[token_ids(self.base, [self.hparams.token])] = False
        self._kept_rows = (keep, table.detach().clone())

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # right after the step, before any callback (a checkpoint saved at this step) sees the weights
        keep, rows = self._kept_rows
        with torch.no_grad():
            self.base.text_encoder.token_embedding.weight[keep] = rows[keep]
