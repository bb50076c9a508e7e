"""`zoo.tokens.VectorQuantizer` against closed forms: the straight-through gradient, the commitment term and
where its gradient goes, the EMA codebook update, k-means initialisation, dead-code restart, the lookup
without side effects, bf16 autocast, and the codebook's sync over two DDP ranks."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from zoo.tokens import VectorQuantizer, code_usage


def _features(n: int, dim: int, side: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, side, side, generator=torch.Generator().manual_seed(seed))


def _nearest(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Reference lookup: argmin of the Euclidean distance, (B, dim, h, w) -> (B, h, w)."""
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    return torch.cdist(flat, codebook).argmin(1).view(z.shape[0], z.shape[2], z.shape[3])


def _random_codebook(dim: int, size: int, **kwargs: object) -> VectorQuantizer:
    return VectorQuantizer(dim, size, kmeans_init=False, dead_code_threshold=0.0, **kwargs)


def test_straight_through_gradient_is_the_identity_and_outputs_are_code_vectors():
    vq = _random_codebook(6, 10).train()
    codebook = vq.codebook.clone()  # the forward updates it (EMA) after the lookup
    z = _features(3, 6).requires_grad_(True)
    out = vq(z)
    torch.testing.assert_close(out.codes, _nearest(z.detach(), codebook))
    torch.testing.assert_close(out.quantized.permute(0, 2, 3, 1), codebook[out.codes])
    upstream = torch.randn_like(z)
    (out.quantized * upstream).sum().backward()
    torch.testing.assert_close(z.grad, upstream)  # d quantized / d z = I


def test_commitment_is_on_the_encoder_output_only():
    beta = 0.25
    vq = _random_codebook(5, 7, commitment_weight=beta).train()
    codebook = vq.codebook.clone()
    z = _features(2, 5, seed=1).requires_grad_(True)
    out = vq(z)
    e = codebook[out.codes].permute(0, 3, 1, 2)
    expected = beta * (z.detach() - e).pow(2).mean()
    torch.testing.assert_close(out.commitment, expected)
    out.commitment.backward()
    torch.testing.assert_close(z.grad, 2 * beta * (z.detach() - e) / z.numel())
    # the codebook is no parameter: nothing of the quantiser receives a gradient
    assert list(vq.parameters()) == [] and not vq.codebook.requires_grad
    # evaluation gives the same term (the library alone gives 0 there), with the codebook now fixed
    vq.eval()
    out = vq(z.detach())
    e = vq.codebook[out.codes].permute(0, 3, 1, 2)
    torch.testing.assert_close(out.commitment, beta * (z.detach() - e).pow(2).mean())


def test_ema_update_equals_its_closed_form_over_two_steps():
    decay, eps, size = 0.8, 1e-5, 6
    vq = _random_codebook(4, size, decay=decay, eps=eps).train()
    counts, sums = torch.zeros(size), torch.zeros(size, 4)
    for step in range(2):
        old = vq.codebook.clone()
        z = _features(4, 4, seed=10 + step)
        codes = _nearest(z, old).flatten()
        flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
        n = torch.bincount(codes, minlength=size).float()
        s = torch.zeros(size, 4).index_add_(0, codes, flat)
        counts = decay * counts + (1 - decay) * n
        sums = decay * sums + (1 - decay) * s
        vq(z)
        torch.testing.assert_close(vq.code_counts, counts)
        torch.testing.assert_close(vq.vq._codebook.embed_avg[0], sums)
        torch.testing.assert_close(vq.codebook, (sums + eps * old) / (counts + eps)[:, None])


def test_dead_codes_restart_from_batch_vectors():
    vq = VectorQuantizer(2, 8, kmeans_init=False, dead_code_threshold=0.5, decay=0.9).train()
    near = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    with torch.no_grad():
        vq.vq.codebook = torch.cat([near, torch.full((4, 2), 100.0)])  # codes 4..7 never chosen
    z = near.repeat(8, 1) + 0.1 * torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    z = z.T.reshape(1, 2, 4, 8)
    vq(z)
    batch = z.permute(0, 2, 3, 1).reshape(-1, 2)
    counts = vq.code_counts
    for k in range(4, 8):  # each dead code is now one of the batch's vectors
        assert (batch - vq.codebook[k]).abs().sum(1).min() < 1e-6
    # restarted with a count of threshold x the mean count (the library's reset), live codes kept theirs
    mean_after_ema = 0.1 * 32 / 8  # (1 - decay) * 32 vectors / 8 codes
    torch.testing.assert_close(counts[4:], torch.full((4,), 0.5 * mean_after_ema))
    torch.testing.assert_close(counts[:4], torch.full((4,), 0.1 * 8))


def test_kmeans_initialises_on_the_first_batch_only():
    centres = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [-5.0, -5.0, -5.0]])
    points = centres.repeat_interleave(16, 0) + 0.05 * torch.randn(
        64, 3, generator=torch.Generator().manual_seed(3)
    )
    z = points.T.reshape(1, 3, 8, 8)
    torch.manual_seed(0)  # k-means starts from batch vectors drawn at random
    vq = VectorQuantizer(3, 4, dead_code_threshold=0.0).eval()
    assert not vq.initialised
    vq(z)
    assert vq.initialised
    codebook = vq.codebook.clone()
    # a fixed point of Lloyd's iteration: every code is the mean of the points nearest to it
    assignment = torch.cdist(points, codebook).argmin(1)
    for k in range(4):
        torch.testing.assert_close(codebook[k], points[assignment == k].mean(0), atol=1e-5, rtol=1e-5)
    vq(-3 * z)  # another batch: no second initialisation
    torch.testing.assert_close(vq.codebook, codebook)


@pytest.mark.parametrize(
    "options", [{}, {"cosine": True}, {"codebook_dim": 3}, {"codebook_dim": 3, "cosine": True}]
)
def test_lookup_without_side_effects_matches_forward(options):
    vq = VectorQuantizer(8, 16, **options)
    z = _features(4, 8, seed=5)
    vq.train()(z)  # k-means and one EMA step
    vq.eval()
    state = {k: v.clone() for k, v in vq.state_dict().items()}
    out = vq(z)
    torch.testing.assert_close(vq.codes_of(z), out.codes)
    torch.testing.assert_close(vq.decode_codes(out.codes), out.quantized)
    for key, value in vq.state_dict().items():
        torch.testing.assert_close(value, state[key])  # neither call moved the codebook


def test_codes_under_bf16_autocast_equal_fp32():
    vq = VectorQuantizer(8, 32)
    z = _features(4, 8, seed=6)
    vq.train()(z)
    vq.eval()
    reference = vq(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vq(z.bfloat16())
    assert out.quantized.dtype == torch.float32 and vq.codebook.dtype == torch.float32
    # the features themselves were rounded to bf16; the lookup on them is exact fp32
    torch.testing.assert_close(out.codes, _nearest(z.bfloat16().float(), vq.codebook))
    assert (out.codes == reference.codes).float().mean() > 0.9


def test_code_usage_and_perplexity():
    assert code_usage(torch.tensor([3.0, 3.0, 0.0, 0.0])) == pytest.approx((0.5, 2.0))
    assert code_usage(torch.ones(8)) == pytest.approx((1.0, 8.0))
    assert code_usage(torch.tensor([5.0, 0.0])) == pytest.approx((0.5, 1.0))


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="codebook_dim"):
        VectorQuantizer(4, 8, codebook_dim=16)
    with pytest.raises(ValueError, match="dead_code_threshold"):
        VectorQuantizer(4, 8, dead_code_threshold=2.0)
    with pytest.raises(ValueError, match="codes must lie"):
        VectorQuantizer(4, 8).decode_codes(torch.full((1, 2, 2), 8))


def _two_ranks(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(rank)  # different batches per rank
    vq = VectorQuantizer(3, 4, decay=0.5, dead_code_threshold=0.0).eval()
    z = _features(2, 3, seed=100 + rank)
    vq(z)  # k-means over both ranks' vectors, no EMA step (evaluation)
    init = vq.codebook.clone()
    vq.train()(z)  # one EMA step
    torch.save(
        {"init": init, "codebook": vq.codebook, "counts": vq.code_counts, "z": z}, f"{out}/rank{rank}.pt"
    )
    dist.destroy_process_group()


def test_codebook_syncs_over_ddp_ranks(tmp_path):
    port = 29500 + os.getpid() % 1000
    mp.start_processes(_two_ranks, args=(port, str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    torch.testing.assert_close(ranks[0]["init"], ranks[1]["init"])  # one k-means over both
    torch.testing.assert_close(ranks[0]["codebook"], ranks[1]["codebook"])
    # the EMA counts are those of both ranks' batches together: 0.5 * (vectors of both nearest to each code)
    z = torch.cat([r["z"] for r in ranks])
    codes = _nearest(z, ranks[0]["init"]).flatten()
    expected = 0.5 * torch.bincount(codes, minlength=4).float()
    torch.testing.assert_close(ranks[0]["counts"], expected)
    torch.testing.assert_close(ranks[1]["counts"], expected)
