"""The `clip` family: its loss against a hand-written reference, the temperature, the tokenizer in the
checkpoint, measured zero-shot learning, and torchmetrics' CLIPScore over zoo and HuggingFace CLIPs."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import zoo
from conftest import run_fit
from zoo.checkpoint import load_model
from zoo.nn.clip_adapter import clip_score_metric
from zoo.plugins.clip import CLIP, clip_loss, recall_at_k

# A small CLIP on single-object shapes: ~20 s on one core, enough to learn colours (shapes take longer).
TINY_CLIP = [
    "--model", "clip",
    "--model.image_width", "64", "--model.image_depth", "2", "--model.image_heads", "2",
    "--model.text_width", "64", "--model.text_depth", "1", "--model.text_heads", "2",
    "--model.embed_dim", "64", "--model.lr", "0.003", "--model.warmup_steps", "20",
    "--data.num_train", "4096", "--data.num_val", "256", "--data.num_test", "16", "--data.batch_size", "64",
    "--trainer.max_steps", "250",
    "--trainer.val_check_interval", "null", "--trainer.check_val_every_n_epoch", "1",
    "--trainer.num_sanity_val_steps", "0",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--samples.num_samples", "4", "--samples.every_n_steps", "100",  # previews() is empty: no grid, no crash
    "--logger", "none",
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[CLIP, Path, dict[str, float]]:
    """A tiny CLIP trained by `zoo.fit` (tokenizer trained in setup()), its last.ckpt and final val metrics."""
    root = tmp_path_factory.mktemp("tiny_clip")
    cwd, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(root)
    # One thread: on 2 cores shared with other processes, two threads run ~10x slower (measured).
    torch.set_num_threads(1)
    try:
        cli = run_fit(*TINY_CLIP)
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    ckpt = Path(cli.trainer.default_root_dir) / "checkpoints" / "last.ckpt"
    ckpt = ckpt if ckpt.is_absolute() else root / ckpt
    assert ckpt.is_file()
    # one validation at the end of training (max_steps ends the epoch)
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    return cli.model.eval(), ckpt, metrics


def reference_clip_loss(image: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    """open_clip's formula, written out: for each row, logsumexp of the row minus its diagonal."""
    n = len(image)
    total = 0.0
    for i in range(n):
        row = torch.stack([scale * torch.dot(image[i], text[j]) for j in range(n)])
        col = torch.stack([scale * torch.dot(image[j], text[i]) for j in range(n)])
        total += (torch.logsumexp(row, 0) - row[i]) + (torch.logsumexp(col, 0) - col[i])
    return total / (2 * n)


def test_contrastive_loss_matches_a_hand_written_reference():
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    text = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    for scale in (1.0, 1 / 0.07, 100.0):
        torch.testing.assert_close(
            clip_loss(image, text, torch.tensor(scale)), reference_clip_loss(image, text, scale)
        )
    # perfectly aligned pairs at a large scale: the loss goes to zero
    assert clip_loss(image, image, torch.tensor(100.0)) < clip_loss(image, text, torch.tensor(100.0))


def test_temperature_starts_at_0_07_and_is_clipped_at_100():
    model = CLIP(image_width=32, image_depth=1, text_width=32, text_depth=1, embed_dim=16)
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert model.temperature_scale.item() == pytest.approx(1 / 0.07)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)  # e^10 ~ 22026
    assert model.temperature_scale.item() == pytest.approx(100.0)
    model.on_train_batch_end(None, None, 0)  # after an optimiser step, the parameter itself is clipped
    assert model.logit_scale.item() == pytest.approx(math.log(100.0))
    with pytest.raises(ValueError, match="init_temperature"):
        CLIP(init_temperature=0.001)  # 1/0.001 = 1000 > 100


def test_recall_at_k_on_a_small_example():
    # query 0's answer ranks 1st, query 1's 2nd, query 2's 3rd
    similarity = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.7, 0.1], [0.5, 0.4, 0.3]])
    relevant = torch.eye(3, dtype=torch.bool)
    assert recall_at_k(similarity, relevant, ks=(1, 2, 3)) == pytest.approx({1: 1 / 3, 2: 2 / 3, 3: 1.0})


def test_encoders_before_training_need_a_tokenizer():
    model = CLIP(image_width=32, image_depth=1, text_width=32, text_depth=1, embed_dim=16)
    with pytest.raises(RuntimeError, match="no tokenizer yet.*fit_tokenizer"):
        model.encode_text(["a red circle"])
    model.fit_tokenizer(["a red circle", "a blue square"])
    emb = model.encode_text(["a red circle", "a never seen word"])  # byte-level: anything encodes
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    states, mask = model.text_states(["a red circle"])
    assert (
        states.shape == (1, model.hparams.max_length, model.text_width) and mask[0].sum() == 5
    )  # bos a red circle eos
    images = model.encode_image(torch.zeros(3, 3, 32, 32))
    assert images.shape == (3, 16)
    with pytest.raises(ValueError, match="model.preprocess"):
        model.encode_image(torch.zeros(1, 3, 64, 64))


def test_short_training_learns_zero_shot_colours(trained):
    model, _, metrics = trained
    # chance: colour 1/6, recall@5 of 18 distinct captions 5/18. Colours are learned in ~200 steps;
    # shapes take ~1,000 (the recipe's job), so this short run does not test them.
    assert metrics["val/zero_shot_color"] > 0.8, metrics
    assert metrics["val/recall@5"] > 0.5, metrics
    assert metrics["val/loss"] < metrics["train/loss"] + 1.0  # logged and finite
    # model.zero_shot agrees on held-out images rendered here
    data = zoo.create_datamodule("shapes", num_train=8, num_val=8, num_test=96, seed=7)
    data.setup("test")
    batch = next(iter(data.test_dataloader()))
    colors = ["red", "green", "blue", "yellow", "purple", "orange"]
    prompts = [f"a {c} {s}" for c in colors for s in ("circle", "square", "triangle")]
    probs = model.zero_shot(batch["image"], prompts)
    torch.testing.assert_close(probs.sum(1), torch.ones(len(probs)))
    predicted_colour = probs.argmax(1) // 3
    assert (predicted_colour == batch["colors"][:, 0]).float().mean() > 0.6


def test_checkpoint_carries_the_tokenizer_and_gives_identical_embeddings(trained):
    model, ckpt, _ = trained
    assert "tokenizer" in torch.load(ckpt, weights_only=True)
    loaded = load_model(ckpt)
    assert loaded.tokenizer.to_str() == model.tokenizer.to_str()
    captions = ["a red circle", "a green triangle", "a small purple square"]
    torch.testing.assert_close(loaded.encode_text(captions), model.encode_text(captions), rtol=0, atol=0)
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(loaded.encode_image(images), model.encode_image(images), rtol=0, atol=0)
    states, mask = loaded.text_states(captions)
    expected_states, _ = model.text_states(captions)
    torch.testing.assert_close(states, expected_states, rtol=0, atol=0)
    assert (
        CLIP.load_from_checkpoint(ckpt).tokenizer.to_str() == model.tokenizer.to_str()
    )  # Lightning's path too


def test_sampling_a_clip_checkpoint_says_it_is_not_generative(trained, tmp_path):
    from zoo.sample import main

    _, ckpt, _ = trained
    with pytest.raises(SystemExit, match="not a generative model"):
        main(["--ckpt", str(ckpt), "--num", "2", "--out", str(tmp_path / "s")])
    assert "clip" in zoo.list_models()


def _uint8_images(n: int, seed: int = 0) -> torch.Tensor:
    data = zoo.create_datamodule("shapes", num_train=n, num_val=n, num_test=n, seed=seed)
    data.setup("test")
    images = torch.stack([data.test_set[i]["image"] for i in range(n)])
    return ((images + 1) * 127.5).round().to(torch.uint8)


def test_clip_score_over_a_zoo_checkpoint_is_100_times_the_clipped_cosine(trained):
    model, ckpt, _ = trained
    images = _uint8_images(4)
    captions = ["a red circle", "a blue square", "a green triangle", "a yellow circle"]
    image_emb = model.encode_image(images.float() / 127.5 - 1)
    text_emb = model.encode_text(captions)
    cosines = (image_emb * text_emb).sum(-1)
    for source in (ckpt, model):  # a checkpoint file and the module: one code path
        metric = clip_score_metric(source)
        for i in range(4):
            metric.reset()
            metric.update(images[i : i + 1], [captions[i]])
            assert metric.compute().item() == pytest.approx(100 * max(cosines[i].item(), 0.0), abs=1e-3)
    # float images in [0, 1] (what generate() returns) score as their uint8 versions
    metric.reset()
    metric.update(images.float() / 255, captions)
    assert metric.compute().item() == pytest.approx(max(100 * cosines.mean().item(), 0.0), abs=1e-3)


def _save_tiny_huggingface_clip(folder: Path) -> None:
    """A randomly initialised CLIPModel with a tiny CLIPTokenizer (vocab and merges written here) and
    image processor, saved as a HuggingFace folder: no network."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    merges = ["r e", "re d</w>", "c i", "ci r", "cir c", "circ l", "circl e</w>"]
    vocab_list = (
        chars + [c + "</w>" for c in chars] + ["re", "red</w>", "ci", "cir", "circ", "circl", "circle</w>"]
    )
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=32, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        ),
        vision_config=dict(
            image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2,
        ),
        projection_dim=16,
    )  # fmt: skip
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


def test_clip_score_over_a_local_huggingface_clip_folder(tmp_path, monkeypatch):
    from transformers import CLIPModel, CLIPProcessor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _save_tiny_huggingface_clip(tmp_path)
    model = CLIPModel.from_pretrained(tmp_path).eval()
    processor = CLIPProcessor.from_pretrained(tmp_path)
    images = _uint8_images(6, seed=1)
    captions = ["a red circle", "red", "circle", "a blue square", "a circle", "red red"]
    with torch.no_grad():
        pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
        tokens = processor(text=captions, return_tensors="pt", padding=True)
        cosines = F.cosine_similarity(
            model.get_image_features(pixels),
            model.get_text_features(tokens["input_ids"], tokens["attention_mask"]),
        )
    metric = clip_score_metric(tmp_path)
    scores = []
    for i in range(len(captions)):
        metric.reset()
        metric.update(images[i : i + 1], [captions[i]])
        scores.append(metric.compute().item())
    assert scores == pytest.approx([100 * max(c, 0.0) for c in cosines.tolist()], abs=1e-3)
    metric.reset()
    metric.update(images.float() / 255, captions)  # [0, 1] floats: converted, not rescaled twice
    assert metric.compute().item() == pytest.approx(max(100 * cosines.mean().item(), 0.0), abs=1e-3)


def test_clip_score_refuses_what_is_not_a_clip(tmp_path):
    with pytest.raises(ValueError, match="not a HuggingFace CLIP"):
        clip_score_metric(tmp_path)
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        clip_score_metric("openai/clip-vit-base-patch32")
