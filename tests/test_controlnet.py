"""`controlnet`: zero-initialised control of a frozen ldm, checked against diffusers' `ControlNetModel` (the
residual wiring and the condition encoder) and through the real command lines on the tiny ldm of conftest,
learning included (the control image lowers the base's denoising loss)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from conftest import QUIET, assert_resume_is_exact, run_fit
from zoo.checkpoint import CheckpointError, load_model
from zoo.nn.controlnet import ConditionEncoder, ControlNet
from zoo.nn.unet import UNet

CN_FAST = ["--model.lr", "0.002", "--model.warmup_steps", "10", *QUIET]


@pytest.fixture(scope="module")
def controlnet(tiny_ldm: Path) -> object:
    from zoo.plugins.controlnet import ControlNetLDM

    return ControlNetLDM(base=str(tiny_ldm)).eval()


def _batch(n: int = 4) -> dict:
    """The first `n` validation scenes of the tiny ldm's data (16x16 shapes, seed 0) as a batch."""
    from zoo import registry

    datamodule = registry.get_datamodule_class("shapes")(image_size=16, num_train=16, num_val=16, num_test=16)
    datamodule.setup("fit")
    items = [datamodule.val_set[i] for i in range(n)]
    return {
        k: [it[k] for it in items] if isinstance(items[0][k], str) else torch.stack([it[k] for it in items])
        for k in items[0]
    }


def test_at_initialisation_the_output_is_the_bases_and_the_zero_convolutions_learn(controlnet, tiny_ldm):
    """Zero convolutions: the controlled U-Net computes exactly what the base ldm does, whatever the control
    image, while the zero convolutions' gradients are not zero (Zhang et al., sec. 3.1)."""
    ldm = load_model(tiny_ldm)
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([900.0, 500.0, 20.0])
    prompts = ["a red circle", "a blue square", "a green triangle"]
    text = controlnet.base.encode_text(prompts)
    control = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        ours = controlnet.controlled_unet(x, t, text, [(controlnet.controlnet, control, 1.0)])
        base = ldm._unet(x, t, ldm.encode_text(prompts))
    assert torch.equal(ours, base)

    net = controlnet.controlnet
    net.zero_grad()
    controlnet.controlled_unet(x, t, text, [(net, control, 1.0)]).pow(2).mean().backward()
    assert all(conv.weight.grad.abs().sum() > 0 for conv in net.zero_convs)
    assert net.mid_zero_conv.weight.grad.abs().sum() > 0
    net.zero_grad()


def test_the_trainable_copy_starts_equal_to_the_base_encoder(controlnet):
    base = controlnet.base.unet.state_dict()
    copy = controlnet.controlnet.encoder.state_dict()
    assert copy.keys() and not any(k.startswith(("up.", "norm_out.", "conv_out.")) for k in copy)
    for key, value in copy.items():
        assert torch.equal(value, base[key]), key
    assert not any(p.requires_grad for p in controlnet.base.parameters())
    assert all(p.requires_grad for p in controlnet.controlnet.parameters())


def test_residual_wiring_matches_diffusers_controlnet():
    """diffusers' `ControlNetModel` built for the same widths (two levels of 16 and 32 channels, one
    ResBlock each, cross-attention at the second) hands its U-Net as many residuals, of the same shapes,
    as ours; both are exactly zero at the start."""
    diffusers = pytest.importorskip("diffusers")
    theirs_unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8,
    )  # fmt: skip
    theirs = diffusers.ControlNetModel.from_unet(theirs_unet, conditioning_embedding_out_channels=(16, 32))
    ours_unet = UNet(in_channels=4, base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,),
                     num_heads=2, context_dim=16, pooled_dim=16)  # fmt: skip
    ours = ControlNet(ours_unet, condition_channels=3, downsample_factor=2)
    x, t, control = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.rand(2, 3, 16, 16)
    context = torch.randn(2, 5, 16)
    with torch.no_grad():
        down_theirs, mid_theirs = theirs(x, t, context, control, return_dict=False)
        residuals = ours(x, t, control, context=context, pooled=context.mean(1))
    assert [r.shape for r in residuals.down] == [r.shape for r in down_theirs]
    assert residuals.mid.shape == mid_theirs.shape
    assert all(not r.any() for r in [*residuals.down, residuals.mid, *down_theirs, mid_theirs])


def test_condition_encoder_is_diffusers_conditioning_embedding():
    """With diffusers' `ControlNetConditioningEmbedding` weights copied in, layer for layer, our condition
    encoder computes the same embedding (the zero last layer made random in both, so the check means something)."""
    from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding

    theirs = ControlNetConditioningEmbedding(32, conditioning_channels=3, block_out_channels=(16, 32, 96))
    torch.nn.init.normal_(theirs.conv_out.weight, std=0.05)
    ours = ConditionEncoder(3, 32, downsample_factor=4)
    their_convs = [theirs.conv_in, *theirs.blocks, theirs.conv_out]
    our_convs = [m for m in ours.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(their_convs) == len(our_convs)
    for a, b in zip(our_convs, their_convs, strict=True):
        a.load_state_dict(b.state_dict())
    control = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(control), theirs(control))


def test_multi_controlnet_with_one_scale_zero_is_the_other_alone(controlnet, tiny_ldm):
    from zoo.plugins.controlnet import ControlNetLDM

    other = ControlNetLDM(base=str(tiny_ldm), condition="segmentation").eval()
    for p in [*controlnet.controlnet.parameters(), *other.controlnet.parameters()]:
        torch.nn.init.normal_(p, std=0.02)  # both nets do something
    edges, seg = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)

    def sample(**kwargs):
        return controlnet.generate(
            2, condition="a red circle", generator=torch.Generator().manual_seed(0), steps=3, **kwargs
        )

    alone = sample(control=edges, control_scale=0.7)
    both = sample(control=[edges, seg], controlnets=[other], control_scale=[0.7, 0.0])
    assert torch.equal(alone, both)
    assert not torch.equal(alone, sample(control=[edges, seg], controlnets=[other], control_scale=[0.7, 0.5]))
    base = load_model(tiny_ldm).generate(
        2, condition="a red circle", generator=torch.Generator().manual_seed(0), steps=3
    )
    assert not torch.equal(alone, base)
    torch.testing.assert_close(sample(control=edges, control_scale=0.0), base)


def _control_loss(model, batch) -> float:
    model.eval()
    with torch.no_grad():
        return sum(float(model._loss(batch, torch.Generator().manual_seed(s))) for s in range(8)) / 8


def test_training_through_the_cli_learns_from_the_control_image(in_tmp, tiny_ldm):
    """`--model controlnet --model.base CKPT` alone (the base's data, read from its checkpoint): after 120
    steps the segmentation map lowers the base's denoising loss on held-out scenes (at the start it equals
    the base's, zero convolutions), and the checkpoint samples alone with its base file gone."""
    from zoo.evaluate import sha256_of
    from zoo.plugins.controlnet import ControlNetLDM

    base = in_tmp / "base.ckpt"
    shutil.copy(tiny_ldm, base)
    untrained = ControlNetLDM(base=str(base), condition="segmentation")
    cli = run_fit("--model", "controlnet", "--model.base", str(base), "--model.condition", "segmentation",
                  *CN_FAST, "--trainer.max_steps", "120")  # fmt: skip
    assert cli.datamodule.hparams.image_size == 16 and cli.datamodule.hparams.num_train == 256
    assert cli.model.hparams.base_sha256 == sha256_of(base)
    batch = _batch(16)
    before, after = _control_loss(untrained, batch), _control_loss(cli.model, batch)
    assert after < 0.92 * before, (before, after)  # measured: 0.746 -> 0.641

    # the small file written at the end, applied to the base: the same model, to the bit
    from zoo.adapters import load_adapter

    run = Path(cli.trainer.default_root_dir)
    small = run / "controlnet.safetensors"
    assert small.stat().st_size < 0.6 * (run / "checkpoints" / "last.ckpt").stat().st_size
    applied = load_adapter(small, base)
    full = load_model(run / "checkpoints" / "last.ckpt")
    control = batch["segmentation"][:2]
    kwargs = {"condition": "a red circle", "control": control, "steps": 3}
    images = full.generate(2, generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(applied.generate(2, generator=torch.Generator().manual_seed(0), **kwargs), images)
    other = in_tmp / "other_base.ckpt"
    checkpoint = torch.load(base, weights_only=False)
    checkpoint["state_dict"]["unet.conv_out.bias"] += 1
    torch.save(checkpoint, other)
    with pytest.raises(CheckpointError, match="trained on another base ldm"):
        load_adapter(small, other)
    base.unlink()  # the checkpoint alone samples
    assert images.shape == (2, 3, 16, 16) and images.isfinite().all()
    assert torch.equal(
        load_model(run / "checkpoints" / "last.ckpt").generate(
            2, generator=torch.Generator().manual_seed(0), **kwargs
        ),
        images,
    )


def test_resume_continues_exactly(tmp_path, tiny_ldm):
    flags = ["--model", "controlnet", "--model.base", str(tiny_ldm), *CN_FAST,
             "--checkpoint.every_n_train_steps", "3"]  # fmt: skip
    assert_resume_is_exact(flags, tmp_path, 6)


def test_a_missing_or_wrong_base_is_one_clear_line(tmp_path, tiny_ldm):
    from zoo.plugins.controlnet import ControlNetLDM

    with pytest.raises(ValueError, match=r"controlnet controls a trained ldm: pass --model\.base"):
        ControlNetLDM()
    with pytest.raises(ValueError, match="unknown control condition 'depth'; the kinds are edges"):
        ControlNetLDM(base=str(tiny_ldm), condition="depth")
    checkpoint = torch.load(tiny_ldm, weights_only=False)
    checkpoint["zoo"]["model"] = "vae"
    wrong = tmp_path / "vae.ckpt"
    torch.save(checkpoint, wrong)
    with pytest.raises(CheckpointError, match="needs one of the `ldm` family"):
        ControlNetLDM(base=str(wrong))


def test_sample_command_takes_control_images(in_tmp, tiny_ldm, capsys):
    """zoo.sample --control / --control-from / --controlnet / --control-scale, and their errors."""
    from zoo.io.images import save_grid
    from zoo.plugins.controlnet import ControlNetLDM
    from zoo.sample import main

    net = ControlNetLDM(base=str(tiny_ldm))
    seg = ControlNetLDM(base=str(tiny_ldm), condition="segmentation")
    paths = []
    for name, model in (("edges", net), ("seg", seg)):
        import lightning as L

        trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
        trainer.strategy.connect(model)
        path = in_tmp / f"{name}.ckpt"
        trainer.save_checkpoint(path)
        paths.append(str(path))
    batch = _batch(2)
    save_grid(batch["edges"][:1].expand(1, 3, -1, -1), in_tmp / "edges.png")
    save_grid(batch["segmentation"][:1], in_tmp / "seg.png")
    save_grid((batch["image"][:1] + 1) / 2, in_tmp / "scene.png")
    common = ["--prompt", "a red circle", "--steps", "2", "--num", "2"]
    written = main(
        ["--ckpt", paths[0], "--control", str(in_tmp / "edges.png"), "--out", str(in_tmp / "a"), *common]
    )
    assert len(written) == 3  # two samples and the grid
    main(
        ["--ckpt", paths[0], "--control-from", str(in_tmp / "scene.png"), "--out", str(in_tmp / "b"), *common]
    )
    main(["--ckpt", paths[0], "--control", str(in_tmp / "edges.png"), str(in_tmp / "seg.png"),
          "--controlnet", paths[1], "--control-scale", "1", "0.5", "--out", str(in_tmp / "c"), *common])  # fmt: skip
    for argv, message in [
        (["--control", str(in_tmp / "edges.png"), str(in_tmp / "seg.png")], "1 ControlNet"),
        (["--controlnet", paths[1]], "--controlnet and --control-scale need control images"),
        (["--control", str(in_tmp / "missing.png")], "missing.png' does not exist"),
    ]:
        with pytest.raises(SystemExit):
            main(["--ckpt", paths[0], "--out", str(in_tmp / "d"), *common, *argv])
        assert message in capsys.readouterr().err


# --- the conditions ---------------------------------------------------------------------------------


def _scenes(num: int = 24):
    from zoo import registry

    data = registry.get_datamodule_class("shapes")(max_objects=3, num_train=num, num_val=1, num_test=1)
    data.setup()
    return data.train_set


def test_keypoint_bumps_sit_on_the_centres_and_corners():
    """The keypoint map's centre channel at each object's centre pixel is exp(-d^2 / 2 sigma^2), d the
    distance from the pixel's centre to the object's (closed form), and its corner channel peaks within a
    pixel of each corner of a square drawn with known geometry."""
    import math

    from zoo.datamodules.shapes import KEYPOINT_SIGMA, keypoint_map

    scenes = _scenes()
    for i in range(len(scenes)):
        item = scenes[i]
        for k in range(int(item["num_objects"])):
            cx, cy = item["centers"][k].tolist()
            px, py = int(cx), int(cy)
            d2 = (px + 0.5 - cx) ** 2 + (py + 0.5 - cy) ** 2
            assert item["keypoints"][0, py, px] == pytest.approx(
                math.exp(-d2 / (2 * KEYPOINT_SIGMA**2)), abs=1e-5
            )
    square = keypoint_map([("square", 16.0, 16.0, 8.0, 0.0)], 32)
    corner = 0.9 * 8.0  # half-side 0.9 s; angle 0 stands on a side
    for x, y in [
        (16 - corner, 16 - corner),
        (16 + corner, 16 - corner),
        (16 - corner, 16 + corner),
        (16 + corner, 16 + corner),
    ]:
        window = square[1, int(y) - 1 : int(y) + 2, int(x) - 1 : int(x) + 2]
        assert window.max() > 0.45
    assert square[2].max() == 0 and square[0].max() > 0.45  # the centre, four pixels away from each corner


def test_segmentation_map_is_each_mask_in_its_shape_colour():
    scenes = _scenes()
    for i in range(len(scenes)):
        item = scenes[i]
        expected = torch.zeros(3, 32, 32)
        for k in range(int(item["num_objects"])):
            expected[int(item["shapes"][k])] += item["instance_masks"][k]
        assert torch.equal(item["segmentation"], expected)


def test_canny_edges_of_a_scene_lie_on_its_outlines():
    """kornia's Canny on the rendered scenes (`--control-from`) marks the same outlines `shapes` draws: nearly
    every Canny pixel is within one pixel of a drawn outline, and most outline pixels have a Canny pixel near."""
    import torch.nn.functional as F

    from zoo.control import condition_of_image

    scenes = _scenes()
    images = (torch.stack([scenes[i]["image"] for i in range(len(scenes))]) + 1) / 2
    outlines = torch.stack([scenes[i]["edges"] for i in range(len(scenes))]) > 0.25
    canny = condition_of_image("edges", images)[:, :1] > 0.5
    near = lambda m: F.max_pool2d(m.float(), 3, 1, 1) > 0  # noqa: E731
    precision = (canny & near(outlines)).sum() / canny.sum()
    recall = (outlines & near(canny)).sum() / outlines.sum()
    assert precision > 0.95 and recall > 0.8, (precision, recall)


def test_keypoints_are_not_read_from_an_image():
    from zoo.control import condition_of_image

    with pytest.raises(ValueError, match="keypoints are not read from an image"):
        condition_of_image("keypoints", torch.rand(1, 3, 16, 16))


TINY_LDM_CONFIG = """
trainer: {max_steps: 3, limit_val_batches: 1, val_check_interval: null, check_val_every_n_epoch: 1,
          enable_progress_bar: false, enable_model_summary: false}
model: {first_stage_steps: 3, base_channels: 16, channel_mults: [1, 2], attention_levels: [1], num_res_blocks: 1,
        num_heads: 2, text_width: 16, text_depth: 1, text_heads: 2, vocab_size: 300,
        first_stage_config: {in_channels: 3, image_size: 16, latent_channels: 4, downsample_factor: 2, base_channels: 8}}
data: {image_size: 16, num_train: 64, num_val: 16, num_test: 16, batch_size: 16}
samples: {num_samples: 0}
"""


def test_with_no_base_the_command_trains_one_first_and_resumes_on_it(in_tmp, capsys):
    """`--model controlnet` with no --model.base trains an ldm first (its recipe, then --parent-config), in its
    own run folder, and controls that; resuming from last.ckpt alone finds the base in the checkpoint."""
    (in_tmp / "tiny_ldm.yaml").write_text(TINY_LDM_CONFIG)
    cli = run_fit("--model", "controlnet", "--parent-config", "base=tiny_ldm.yaml", *CN_FAST,
                  "--trainer.max_steps", "2", "--checkpoint.every_n_train_steps", "2")  # fmt: skip
    out = capsys.readouterr().out
    assert "no --model.base given: training the ldm it needs first" in out
    base = Path(cli.model.hparams.base)
    assert base.is_file() and base.parts[-4] == "ldm" and cli.trainer.global_step == 2
    assert cli.datamodule.hparams.image_size == 16  # the base's data
    last = Path(cli.trainer.default_root_dir) / "checkpoints" / "last.ckpt"
    resumed = run_fit("--model", "controlnet", "--ckpt_path", str(last), *CN_FAST, "--trainer.max_steps", "4")
    assert resumed.trainer.global_step == 4 and resumed.model.hparams.base == str(base)
    assert len(list((in_tmp / "runs" / "ldm").iterdir())) == 1  # no second base
    with pytest.raises(SystemExit):
        run_fit("--model", "controlnet", "--parent-config", "teacher=x.yaml", *CN_FAST)
    assert (
        "--parent-config takes NAME=FILE with NAME one of base; got 'teacher=x.yaml'"
        in capsys.readouterr().err
    )
