"""`lora`, `textual_inversion` and `dreambooth` on conftest's tiny ldm: LoRA at scale 0 is the base exactly,
merged equals unmerged, zoo's LoRA file loads into peft itself and back, textual inversion leaves every other
embedding row bit-identical, the files hold only what was learned, `zoo.sample --lora/--embedding`, and a
learning test: training lowers the error on the concept's pictures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from conftest import QUIET, assert_resume_is_exact, fit_in
from zoo.checkpoint import load_model
from zoo.customize import (
    UNET_TARGETS,
    add_lora,
    apply_customization,
    lora_config,
    lora_layers,
    merge_lora,
    read_customization,
    save_customization,
    set_lora_scales,
    unmerge_lora,
)

PINK = (255, 105, 180)
FAST = [*QUIET, "--data", "image_folder", "--data.image_size", "16", "--data.batch_size", "8"]


def concept_folder(root: Path, color: tuple[int, int, int], token: str = "<s1>", num: int = 8) -> Path:
    """`num` 16x16 pictures of one coloured disc or square on black, captioned "a <token> circle|square",
    drawn here with PIL (not by the shapes datamodule)."""
    from PIL import ImageDraw

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(num):
        image = Image.new("RGB", (64, 64))
        x, y, r = *rng.uniform(20, 44, size=2), rng.uniform(10, 14)
        shape = ("circle", "square")[i % 2]
        draw = ImageDraw.Draw(image)
        (draw.ellipse if shape == "circle" else draw.rectangle)((x - r, y - r, x + r, y + r), fill=color)
        image.resize((16, 16), Image.BOX).save(root / f"{i:02d}.png")
        rows.append((f"{i:02d}.png", f"a {token} {shape}"))
    with open(root / "captions.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("file", "caption"), *rows])
    return root


def unet_output(ldm, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, ldm.latent_channels, ldm.latent_size, ldm.latent_size, generator=g)
    text = ldm.encode_text(["a red circle", "a blue square"])
    with torch.no_grad():
        return ldm._unet(x, torch.tensor([100, 700]), text)


def randomised_lora(tiny_ldm: Path, name: str = "default"):
    """The tiny ldm with a LoRA whose B matrices are random (peft starts them at zero), so it changes the output."""
    ldm = load_model(tiny_ldm).eval()
    add_lora(ldm.unet, lora_config(4, 8.0, 0.0, UNET_TARGETS), name)
    torch.manual_seed(1)
    for layer in lora_layers(ldm.unet):
        torch.nn.init.normal_(layer.lora_B[name].weight, std=0.05)
    return ldm


def test_lora_at_scale_zero_is_the_base_and_merging_changes_nothing(tiny_ldm: Path):
    base = unet_output(load_model(tiny_ldm).eval())
    ldm = randomised_lora(tiny_ldm)
    adapted = unet_output(ldm)
    assert (adapted - base).abs().max() > 1e-3  # the LoRA does something...
    set_lora_scales(ldm.unet, {"default": 0.0})
    assert torch.equal(unet_output(ldm), base)  # ...and nothing at scale 0, bit for bit
    set_lora_scales(ldm.unet, {"default": 0.7})
    unmerged = unet_output(ldm)
    weight = ldm.unet.mid[2].q.base_layer.weight.detach().clone()
    merge_lora(ldm.unet)
    assert not torch.equal(ldm.unet.mid[2].q.base_layer.weight, weight)  # folded into the weights
    torch.testing.assert_close(unet_output(ldm), unmerged, atol=1e-5, rtol=0)
    unmerge_lora(ldm.unet)
    torch.testing.assert_close(ldm.unet.mid[2].q.base_layer.weight, weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(unet_output(ldm), unmerged, atol=1e-5, rtol=0)


def test_lora_scale_is_alpha_over_rank_times_the_given_scale(tiny_ldm: Path):
    """peft's scaling: W x + (alpha / r) * scale * B A x, checked on one layer against the product written out."""
    ldm = randomised_lora(tiny_ldm)
    set_lora_scales(ldm.unet, {"default": 0.5})
    layer = ldm.unet.mid[2].q
    x = torch.randn(3, layer.in_features)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = layer.base_layer(x) + (8.0 / 4) * 0.5 * (x @ a.T @ b.T)
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-5)


@pytest.fixture(scope="module")
def lora_run(tiny_ldm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lora")
    folder = concept_folder(root / "pink", PINK)
    return fit_in(
        root, "--model", "lora", "--model.base", str(tiny_ldm), *FAST, "--data.root", str(folder),
        "--model.lr", "0.003", "--trainer.max_steps", "60", "--model.train_text_encoder", "true",
        "--model.prior_loss_weight", "0",  # prior preservation: dreambooth's tests
    )  # fmt: skip


def test_lora_file_holds_only_the_adapter_and_loads_into_peft_and_back(
    lora_run: Path, tiny_ldm: Path, tmp_path
):
    from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict

    file = lora_run.parent.parent / "lora.safetensors"
    with safe_open(str(file), framework="pt") as handle:
        keys = list(handle.keys())  # noqa: SIM118
    assert keys and all(
        k == "<s1>" or (k.startswith(("unet.", "text_encoder.")) and ".lora_" in k) for k in keys
    )
    assert any(k.startswith("text_encoder.") for k in keys)  # --model.train_text_encoder true
    assert file.stat().st_size < 100_000  # the tiny U-Net's LoRA: tens of KB, the checkpoint is MBs
    custom = read_customization(file)

    # into peft itself: a fresh U-Net wrapped by get_peft_model with the file's LoraConfig
    fresh = load_model(tiny_ldm).eval()
    config = LoraConfig(
        **{k: v for k, v in custom.lora_configs["unet"].items() if k in LoraConfig.__dataclass_fields__}
    )
    peft_unet = get_peft_model(fresh.unet, config)
    # a PeftModel names the wrapped module's layers base_model.model.<name>; zoo's file names them as peft does
    # for the module itself (get_peft_model_state_dict(unet))
    result = set_peft_model_state_dict(
        peft_unet, {f"base_model.model.{k}": v for k, v in custom.lora["unet"].items()}
    )
    assert not result.unexpected_keys
    ours = {n: p for n, p in load_model(lora_run).base.unet.named_parameters() if "lora_" in n}
    theirs = {n.removeprefix("base_model.model."): p for n, p in peft_unet.named_parameters() if "lora_" in n}
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)

    # and back: peft's own save_pretrained folder, read by zoo, gives the same U-Net outputs as zoo's file
    peft_unet.save_pretrained(tmp_path / "peft")
    assert isinstance(peft_unet, PeftModel)
    outputs = []
    for source in (file, tmp_path / "peft"):
        ldm = load_model(tiny_ldm).eval()
        apply_customization(ldm, file, name="tokens", lora=False)  # the token row (a peft folder has none)
        apply_customization(ldm, source, name="x", lora=True)
        set_lora_scales(ldm.unet, {"x": 1.0})
        set_lora_scales(ldm.text_encoder, {"x": 0.0})  # the U-Net's LoRA alone: peft's folder holds no other
        outputs.append(unet_output(ldm))
    torch.testing.assert_close(outputs[0], outputs[1], atol=0, rtol=0)


def test_textual_inversion_trains_only_the_new_row(tiny_ldm: Path, tmp_path: Path):
    folder = concept_folder(tmp_path / "pink", PINK)
    last = fit_in(
        tmp_path, "--model", "textual_inversion", "--model.base", str(tiny_ldm), *FAST, "--data.root", str(folder),
        "--model.weight_decay", "0.1", "--model.lr", "0.01", "--trainer.max_steps", "40",
        "--checkpoint.every_n_train_steps", "20",  # saved in a batch-end hook, as the recipe's are
    )  # fmt: skip
    trained = load_model(last).base
    (index,) = [trained.tokenizer.tokenizer.token_to_id("<s1>")]
    before = load_model(tiny_ldm).text_encoder.token_embedding.weight
    after = trained.text_encoder.token_embedding.weight
    # the tiny ldm's tokenizer fills its 300 rows: the table grew by the new one
    assert index == len(before) and len(after) == len(before) + 1
    assert torch.equal(after[: len(before)], before)  # bit-identical, weight decay and Adam notwithstanding
    # the new row moved from where it started (the mean row), and it alone is in the file
    assert not torch.allclose(after[index], before[3 : trained.tokenizer.vocab_size - 1].mean(0))
    file = last.parent.parent / "textual_inversion.safetensors"
    custom = read_customization(file)
    assert not custom.lora and list(custom.embeddings) == ["<s1>"]
    assert torch.equal(custom.embeddings["<s1>"], after[index])
    # and it learned: the error on the concept's pictures fell from the starting row's (the mean row)
    start = load_model(tiny_ldm).eval()
    apply_customization(start, file, name="", lora=False)
    with torch.no_grad():
        start.text_encoder.token_embedding.weight[index] = before[3 : trained.tokenizer.vocab_size - 1].mean(
            0
        )
    assert concept_loss(trained, folder) < concept_loss(start, folder)
    assert all(torch.equal(a, b) for a, b in zip(trained.unet.state_dict().values(),
                                                 load_model(tiny_ldm).unet.state_dict().values(), strict=True))  # fmt: skip


def test_sample_applies_several_loras_with_scales_and_refuses_mismatches(
    lora_run: Path, tiny_ldm: Path, tmp_path
):
    from zoo.cli import UsageError
    from zoo.sample import main

    file = str(lora_run.parent.parent / "lora.safetensors")
    common = ["--ckpt", str(tiny_ldm), "--prompt", "a <s1> circle", "--num", "2", "--steps", "3"]
    half = main([*common, "--lora", f"{file}:0.25", "--lora", f"{file}:0.25", "--out", str(tmp_path / "a")])
    once = main([*common, "--lora", f"{file}:0.5", "--out", str(tmp_path / "b")])
    for x, y in zip(half, once, strict=True):  # two copies at 0.25 add up to one at 0.5
        a, b = (np.asarray(Image.open(p), dtype=np.int16) for p in (x, y))
        assert np.abs(a - b).max() <= 1
    with pytest.raises(SystemExit):  # a missing file is named, no traceback
        main([*common, "--lora", str(tmp_path / "missing.safetensors")])
    tokens_only = save_customization(tmp_path / "t.safetensors", family="textual_inversion", base_sha256=None,
                                     embeddings={"<s1>": torch.zeros(16)})  # fmt: skip
    with pytest.raises(SystemExit):  # an embedding-only file is not a LoRA
        main([*common, "--lora", str(tokens_only)])
    # a LoRA trained on another ldm is refused: here "another" is a copy of the base with other bytes
    from zoo.sample import _customize, _parser

    other = tmp_path / "other.ckpt"
    other.write_bytes(tiny_ldm.read_bytes() + b"changed")
    args = _parser().parse_args(["--ckpt", str(other), "--lora", file])
    with pytest.raises(UsageError, match="another ldm"):
        _customize(args, load_model(tiny_ldm))


def concept_loss(ldm, folder: Path) -> float:
    """The ldm's eps-prediction error on the concept's pictures and captions at t = 50 ... 900, with fixed
    noise (x_t = sqrt(abar) z0 + sqrt(1 - abar) eps written out), so that two models compare pair for pair."""
    rows = list(csv.DictReader(open(folder / "captions.csv")))
    pixels = [np.asarray(Image.open(folder / row["file"]), dtype=np.float32) / 127.5 - 1 for row in rows]
    images = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).repeat(8, 1, 1, 1)
    generator, total = torch.Generator().manual_seed(0), 0.0
    with torch.no_grad():
        z0 = ldm.first_stage.encode_latents(images, sample=False)
        text = ldm.encode_text([row["caption"] for row in rows] * 8)
        for t in (50, 150, 300, 500, 700, 900):
            abar = float(ldm.schedule.alphas_cumprod[t])
            eps = torch.randn(z0.shape, generator=generator)
            x_t = abar**0.5 * z0 + (1 - abar) ** 0.5 * eps
            total += float((ldm._unet(x_t, torch.full((len(z0),), t), text) - eps).pow(2).mean())
    return total / 6


def test_lora_learns_its_concept(lora_run: Path, tiny_ldm: Path, tmp_path: Path):
    """Measured learning: the LoRA lowers the error on the concept's pictures against where it started (the
    base with the same token row). The tiny base's 30-step first stage barely encodes colour, so *which*
    colour was learned is measured at full size, by the shapes judge (benchmarks/customize_quality.py)."""
    folder = concept_folder(tmp_path / "pink", PINK)
    trained = load_model(lora_run).eval().base
    start = load_model(tiny_ldm).eval()
    apply_customization(start, lora_run.parent.parent / "lora.safetensors", name="tokens", lora=False)
    before, after = concept_loss(start, folder), concept_loss(trained, folder)
    assert after < 0.985 * before, (before, after)


def test_dreambooth_draws_its_class_images_once_and_keeps_them(tiny_ldm: Path, tmp_path: Path):
    folder = concept_folder(tmp_path / "pink", PINK)
    flags = ["--model", "dreambooth", "--model.base", str(tiny_ldm), *FAST, "--data.root", str(folder),
             "--model.num_class_images", "4", "--model.lora_rank", "2"]  # fmt: skip
    last = fit_in(tmp_path, *flags, "--trainer.max_steps", "2")
    model = load_model(last)
    assert bool(model.class_images_ready) and model.class_images.abs().sum() > 0
    # the class images are the untouched base's own samples for its own prompts (seed 0)
    base = load_model(tiny_ldm).eval()
    prompts = model.class_prompts()
    expected = base.generate(4, condition=prompts, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.testing.assert_close(model.class_images, expected, atol=1e-5, rtol=0)
    with safe_open(str(last.parent.parent / "dreambooth.safetensors"), "pt") as handle:
        description = json.loads(handle.metadata()["zoo_customization"])
    assert description["family"] == "dreambooth" and description["lora_configs"]["unet"]["r"] == 2


def test_captions_without_the_token_are_refused_by_name(tiny_ldm: Path, tmp_path: Path, capsys):
    """Data whose captions never say "<s1>" (shapes): the run stops before training, naming the fix."""
    with pytest.raises(SystemExit) as stop:
        fit_in(tmp_path, "--model", "textual_inversion", "--model.base", str(tiny_ldm), "--data", "shapes",
               "--data.image_size", "16", "--data.num_train", "64", *QUIET, "--trainer.max_steps", "1")  # fmt: skip
    assert stop.value.code != 0
    assert "no training caption names the concept token '<s1>'" in capsys.readouterr().err


def test_no_data_is_refused_before_anything_trains(tmp_path: Path, capsys):
    """`python -m zoo.fit --model lora` alone would train a base ldm first (27 minutes) and then find no caption
    naming the token: it stops at once and says which data to give."""
    with pytest.raises(SystemExit) as stop:
        fit_in(tmp_path, "--model", "lora", *QUIET)
    assert stop.value.code == 2
    assert "pass --data image_folder --data.root DIR" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_dreambooth_resumes_exactly(tiny_ldm: Path, tmp_path: Path):
    folder = concept_folder(tmp_path / "pink", PINK)
    flags = ["--model", "dreambooth", "--model.base", str(tiny_ldm), *FAST, "--data.root", str(folder),
             "--model.num_class_images", "4", "--checkpoint.every_n_train_steps", "2"]  # fmt: skip
    assert_resume_is_exact(flags, tmp_path, steps=4)
