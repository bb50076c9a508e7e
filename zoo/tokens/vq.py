"""A vector quantiser with an EMA codebook (van den Oord et al. 2017, VQ-VAE; appendix A.1 of its paper
for the EMA update), as VQGAN (Esser et al. 2021) and the token generators over its codes use it.

    vq = VectorQuantizer(dim=64, codebook_size=512, codebook_dim=16, cosine=True)
    out = vq(z)                     # z: (B, 64, h, w) encoder features
    out.quantized, out.codes, out.commitment          # (B, 64, h, w) straight-through, (B, h, w) long, scalar
    vq.decode_codes(out.codes)      # (B, 64, h, w): the code vectors again, for a decoder

What it does, per position of the feature map:
- **Nearest code**: the index of the closest codebook vector (Euclidean; with `cosine`, both sides
  l2-normalised first, ViT-VQGAN's l2-normalised codes). With `codebook_dim` < `dim` the lookup is
  factorised (ViT-VQGAN): a linear map projects into the low-dimensional code space and another back.
- **Straight-through estimator**: the output is z + sg(e - z), so the decoder's gradient reaches the
  encoder unchanged (the library's default "rotation trick" is switched off: the issue asks for the
  plain estimator).
- **Commitment**: beta * mean ||z - sg(e)||^2, on the encoder output (VQ-VAE's third term). taming-transformers'
  legacy mode puts beta on the codebook term ||sg(z) - e||^2 instead; with an EMA codebook that term does
  not exist at all, since the codebook is no parameter.
- **EMA codebook**: counts N_k <- decay N_k + (1 - decay) n_k and sums m_k <- decay m_k + (1 - decay)
  sum_{z -> k} z, then e_k = (m_k + eps e_k) / (N_k + eps) (the library's smoothing: an unused code keeps its
  vector instead of collapsing to 0, where VQ-VAE's Laplace smoothing rescales all counts).
- **k-means initialisation** on the first batch the quantiser sees (10 Lloyd iterations from batch vectors).
- **Dead-code restart**: after each EMA update, a code whose count N_k falls below `dead_code_threshold`
  times the mean count is set to a random vector of the batch (its count to that threshold).

Written on `vector-quantize-pytorch` (lucidrains, 1.34): it does all of the above, is well used and
tested, and syncs codebooks over DDP ranks. Three things are set here rather than left to it:
- the DDP sync: the library decides it once, when the module is built, from whether a process group
  exists; Lightning builds the model before it starts the group, so the library would never sync. The
  first forward under an initialised group (world size > 1) switches the codebook to all-reduce its
  counts and sums, and to draw its k-means and restart vectors across ranks (the library's own
  distributed functions), so every rank keeps the same codebook from the global statistics;
- precision: lookup, EMA statistics and k-means run in float32 with autocast off (the library turns off
  CUDA autocast only; under CPU bf16 autocast its distance matmuls would run in bfloat16);
- the commitment term in evaluation (the library gives 0 outside training), so `val/loss` has it too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # (B, dim, h, w): code vectors, straight-through to the input in training
    codes: torch.Tensor  # (B, h, w) long
    commitment: torch.Tensor  # scalar: beta * mean ||z - sg(e)||^2 (in the code space)


class VectorQuantizer(nn.Module):
    """EMA vector quantiser over (B, dim, h, w) feature maps; see the module docstring.

    Args:
        dim: channels of the feature map.
        codebook_size: number of codes K.
        codebook_dim: dimension of the code space; None or dim: no projection; smaller: factorised codes.
        cosine: l2-normalise features and codes (cosine-similarity lookup).
        decay: EMA decay of code counts and sums.
        commitment_weight: beta of the commitment term.
        dead_code_threshold: restart codes whose EMA count is below this fraction of the mean count; 0: never.
        kmeans_init: initialise the codebook by k-means on the first batch (else uniform at random).
        eps: the smoothing of the EMA update, e = (m + eps e) / (N + eps).
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        *,
        codebook_dim: int | None = None,
        cosine: bool = False,
        decay: float = 0.99,
        commitment_weight: float = 0.25,
        dead_code_threshold: float = 0.1,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        from vector_quantize_pytorch import VectorQuantize

        if codebook_size < 2:
            raise ValueError(f"codebook_size must be at least 2, got {codebook_size}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay}")
        if not 0.0 <= dead_code_threshold < 1.0:
            raise ValueError(
                f"dead_code_threshold is a fraction of the mean code count in [0, 1), got {dead_code_threshold}"
            )
        if codebook_dim is not None and not 0 < codebook_dim <= dim:
            raise ValueError(f"codebook_dim must lie in [1, dim={dim}], got {codebook_dim}")
        self.commitment_weight = commitment_weight
        self.vq = VectorQuantize(
            dim=dim,
            codebook_size=codebook_size,
            codebook_dim=codebook_dim,
            use_cosine_sim=cosine,
            decay=decay,
            eps=eps,
            commitment_weight=commitment_weight,
            kmeans_init=kmeans_init,
            kmeans_iters=kmeans_iters,
            dead_code_threshold_ratio=dead_code_threshold,
            accept_image_fmap=True,
            rotation_trick=False,  # the plain straight-through estimator
            sync_codebook=False,  # switched on at the first forward under DDP: see the module docstring
        )
        self._synced = False

    @property
    def codebook_size(self) -> int:
        return self.vq.codebook_size

    @property
    def codebook(self) -> torch.Tensor:
        """(K, codebook_dim): the code vectors, in the code space."""
        return self.vq.codebook

    @property
    def initialised(self) -> bool:
        """Whether the codebook holds vectors yet (k-means runs on the first batch)."""
        return bool(self.vq._codebook.initted)

    @property
    def code_counts(self) -> torch.Tensor:
        """(K,) the EMA count of each code over training batches (zeros before training)."""
        return self.vq._codebook.cluster_size[0]

    def _sync_across_ranks(self) -> None:
        if self._synced or not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return
        from vector_quantize_pytorch.vector_quantize_pytorch import sample_vectors_distributed

        # What the library sets up when it is built with use_ddp=True (Codebook.__init__).
        codebook = self.vq._codebook
        codebook.use_ddp = True
        codebook.all_reduce_fn = codebook.kmeans_all_reduce_fn = dist.all_reduce
        codebook.sample_fn = codebook.replace_sample_fn = sample_vectors_distributed
        self._synced = True

    def to_code_space(self, z: torch.Tensor) -> torch.Tensor:
        """(B, dim, h, w) features -> (B, h, w, codebook_dim), projected (factorised) and normalised (cosine)."""
        x = self.vq.project_in(z.float().permute(0, 2, 3, 1))
        return self.vq._codebook.transform_input(x)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        if z.ndim != 4 or z.shape[1] != self.vq.dim:
            raise ValueError(f"expected features (B, {self.vq.dim}, h, w), got {tuple(z.shape)}")
        self._sync_across_ranks()
        with torch.autocast(z.device.type, enabled=False):
            quantized, codes, commitment = self.vq(z.float())
            if not self.training:  # the library's commitment is 0 outside training
                target = self.codebook[codes].detach()
                commitment = self.commitment_weight * F.mse_loss(self.to_code_space(z), target)
        return QuantizerOutput(quantized, codes, commitment)

    @torch.no_grad()
    def codes_of(self, z: torch.Tensor) -> torch.Tensor:
        """(B, h, w) nearest codes of features z (B, dim, h, w): `forward`'s lookup without its training side
        effects (no EMA update, no k-means initialisation, no restart), for tokenizing data."""
        with torch.autocast(z.device.type, enabled=False):
            x = self.to_code_space(z)
            codebook = self.codebook.float()
            if self.vq.use_cosine_sim:
                similarity = x @ codebook.T  # both unit length
            else:  # -||x - e||^2 up to the ||x||^2 every code shares
                similarity = 2 * x @ codebook.T - codebook.pow(2).sum(-1)
            return similarity.argmax(-1)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) long codes -> (B, dim, h, w) code vectors (projected back out when factorised)."""
        if codes.dtype not in (torch.int64, torch.int32) or codes.ndim != 3:
            raise ValueError(f"expected integer codes (B, h, w), got {codes.dtype} {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {self.codebook_size}), got {int(codes.min())}..{int(codes.max())}"
            )
        with torch.autocast(codes.device.type, enabled=False):
            return self.vq.get_output_from_indices(codes.long())


def code_usage(counts: torch.Tensor) -> tuple[float, float]:
    """(fraction of codes used, perplexity) of a histogram of code counts (K,): perplexity is
    exp(entropy) of the code frequencies, K when all codes are used equally, 1 when one code is."""
    total = counts.sum()
    if total <= 0:
        return 0.0, 0.0
    p = counts.double() / total
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float((counts > 0).double().mean()), float(math.exp(entropy))
