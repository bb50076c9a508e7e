"""The `gpt` family: tokenizers, text datamodules, the network's properties, the command line
(fit, sample, evaluate, resume) and learning the `captions` grammar."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import run_fit
from zoo.datamodules.shapes import parse_caption
from zoo.datamodules.text import CaptionsDataModule, PythonSourceDataModule, TextFileDataModule
from zoo.plugins.gpt import GPT, Transformer
from zoo.tokenizers import BPETokenizer, CharTokenizer, tokenizer_from_state

TINY_GPT = [
    "--model", "gpt",
    "--model.n_layer", "1",
    "--model.n_head", "2",
    "--model.n_embd", "32",
    "--model.max_new_tokens", "40",
    "--data.num_train", "400",
    "--data.num_val", "50",
    "--data.num_test", "50",
    "--data.tokenizer", "char",
    "--data.block_size", "48",
    "--data.batch_size", "8",
    "--trainer.limit_val_batches", "2",
    "--trainer.val_check_interval", "null",
    "--trainer.check_val_every_n_epoch", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--samples.num_samples", "3",
    "--logger", "none",
]  # fmt: skip


# --- tokenizers ---------------------------------------------------------------------------------


def test_char_tokenizer_round_trip_and_unknown_characters() -> None:
    tok = CharTokenizer.train(["a red circle", "a blue square"])
    assert tok.vocab_size == 2 + len(set("a red circle" + "a blue square"))
    assert tok.decode(tok.encode("a red square")) == "a red square"
    assert tok.encode("z")[0] == tok.unk_id  # never seen: <unk>, not an error
    again = tokenizer_from_state(tok.to_state())
    assert again.encode("a blue circle") == tok.encode("a blue circle")


def test_bpe_tokenizer_encodes_anything_and_survives_a_checkpoint() -> None:
    tok = BPETokenizer.train(
        ["def f(x):\n    return x\n"] * 20 + ["class A:\n    pass\n"] * 20, vocab_size=300
    )
    text = "def g(y):\n    return 'é€'\n"  # characters not in training: bytes
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode("    return")) < len("    return")  # merges were learned
    again = tokenizer_from_state(tok.to_state())
    assert again.encode(text) == tok.encode(text) and again.eos_id == 0


# --- datamodules --------------------------------------------------------------------------------


def test_captions_are_sentences_of_the_grammar_and_deterministic() -> None:
    dm = CaptionsDataModule(num_train=300, num_val=40, num_test=40, block_size=32, batch_size=4)
    texts = dm.texts("train")
    assert len(texts) == 300 and all(parse_caption(t) is not None for t in texts)
    counts = {len(parse_caption(t)) for t in texts}
    assert counts == {1, 2, 3}
    assert CaptionsDataModule(num_train=300, num_val=40, num_test=40).texts("train") == texts
    assert CaptionsDataModule(num_train=300, num_val=40, num_test=40, seed=1).texts("train") != texts
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["tokens"].shape == (4, 33) and batch["tokens"].dtype == torch.long
    # the stream is the documents joined by the separator (id 0), decodable back to the text
    stream = dm.stream("val")
    assert stream[0] == 0 and dm.tokenizer.decode(stream[1:].tolist()) == "".join(dm.texts("val"))
    assert (stream == 0).sum() == len(dm.texts("val")) + 1


def test_python_source_splits_by_file(tmp_path: Path) -> None:
    for i in range(40):
        sub = tmp_path / ("pkg" if i % 2 else "") / ("test" if i == 7 else "")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"mod{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 30)
    dm = PythonSourceDataModule(
        root=str(tmp_path), val_fraction=0.2, test_fraction=0.2, bpe_vocab_size=300, block_size=32
    )
    docs = {split: dm.texts(split) for split in ("train", "val", "test")}
    assert sum(len(d) for d in docs.values()) == 39  # the file under test/ is left out
    assert not set(docs["train"]) & set(docs["val"]) and not set(docs["train"]) & set(docs["test"])
    assert all(docs.values())
    assert dm.python_version == ".".join(map(str, sys.version_info[:3]))
    # the real standard library is found without arguments
    assert len(PythonSourceDataModule().files()) > 100


def test_text_file_gives_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        TextFileDataModule(path=str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="--data.path"):
        TextFileDataModule()
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    with pytest.raises(ValueError, match="binary"):
        TextFileDataModule(path=str(binary)).texts("train")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 au lait ".encode("latin-1") * 50)
    with pytest.raises(ValueError, match="not UTF-8.*iconv"):
        TextFileDataModule(path=str(latin)).texts("train")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match="no text"):
        TextFileDataModule(path=str(empty)).texts("train")
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("short text " * 20)
    with pytest.raises(ValueError, match="block_size"):
        TextFileDataModule(path=str(tiny), tokenizer="char", block_size=64).setup("fit")
    book = tmp_path / "book.txt"
    book.write_text("It was the best of times, it was the worst of times. " * 200)
    dm = TextFileDataModule(path=str(book), tokenizer="char", block_size=32)
    dm.setup("fit")
    assert "".join(dm.texts("train") + dm.texts("val") + dm.texts("test")) == book.read_text()


# --- the network --------------------------------------------------------------------------------


def test_rotary_positions_make_attention_depend_on_offsets_only() -> None:
    """With RoPE (and no learned positions) shifting every position by the same amount changes nothing."""
    torch.manual_seed(0)
    net = Transformer(50, 64, n_layer=2, n_head=2, n_embd=32, rope=True).eval()
    ids = torch.randint(0, 50, (2, 12))
    base = torch.arange(12).expand(2, 12)
    with torch.no_grad():
        a = net(ids, position_ids=base)
        b = net(ids, position_ids=base + 37)
        learned = Transformer(50, 64, n_layer=2, n_head=2, n_embd=32).eval()
        c, d = learned(ids, position_ids=base), learned(ids, position_ids=base + 37)
    assert (a - b).abs().max() < 1e-4
    assert (c - d).abs().max() > 1e-2  # learned absolute positions do change the output


def test_causal_mask_future_tokens_do_not_change_the_past() -> None:
    torch.manual_seed(0)
    net = Transformer(50, 64, n_layer=2, n_head=2, n_embd=32).eval()
    ids = torch.randint(0, 50, (1, 20))
    changed = ids.clone()
    changed[0, 15:] = (changed[0, 15:] + 1) % 50
    with torch.no_grad():
        a, b = net(ids), net(changed)
    assert torch.allclose(a[:, :15], b[:, :15], atol=1e-6)
    assert not torch.allclose(a[:, 15:], b[:, 15:], atol=1e-3)


def test_generate_without_a_tokenizer_says_why_and_past_the_context_slides() -> None:
    model = GPT(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=16)
    with pytest.raises(ValueError, match="no tokenizer"):
        model.generate(2)
    model.tokenizer = CharTokenizer.train(["abc def"])
    with pytest.warns(UserWarning, match="now longer than the model's context of 16 tokens"):
        text = model.generate(1, condition=["abc"], max_new_tokens=30, min_new_tokens=30)[0]
    assert len(text) == 3 + 30  # one character a token (tests/test_gpt_window.py checks the window itself)
    with pytest.raises(ValueError, match="beam search"):
        model.generate(1, temperature=0, num_beams=2, max_new_tokens=4, stop=["x"])
    assert all(
        isinstance(t, str)
        for t in model.generate(2, max_new_tokens=5, generator=torch.Generator().manual_seed(0))
    )


# --- command line -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gpt_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_gpt")
    run_fit(*TINY_GPT, "--trainer.max_steps", "20", "--trainer.default_root_dir", str(root))
    return root / "checkpoints" / "last.ckpt"


def test_fit_writes_a_checkpoint_with_its_tokenizer_and_text_samples(tiny_gpt_ckpt: Path) -> None:
    checkpoint = torch.load(tiny_gpt_ckpt, weights_only=True)
    assert checkpoint["tokenizer"]["kind"] == "char" and checkpoint["zoo"]["model"] == "gpt"
    assert checkpoint["hyper_parameters"]["vocab_size"] == len(checkpoint["tokenizer"]["chars"]) + 2
    assert checkpoint["hyper_parameters"]["block_size"] == 48  # linked from --data.block_size
    samples = sorted((tiny_gpt_ckpt.parent.parent / "samples").glob("samples_step*.txt"))
    assert samples and samples[-1].read_text().strip()


def test_sample_command_writes_prompted_text(tiny_gpt_ckpt: Path, tmp_path: Path) -> None:
    from zoo.sample import main

    out = tmp_path / "out"
    main(["--ckpt", str(tiny_gpt_ckpt), "--num", "3", "--out", str(out), "--prompt", "a red",
          "--max-new-tokens", "20", "--top-p", "0.9", "--temperature", "0.8", "--repetition-penalty", "1.2",
          "--stop", "\\n\\n"])  # fmt: skip
    texts = (out / "samples.txt").read_text().split("\n\n")
    assert len([t for t in texts if t.strip()]) == 3 and all(
        t.startswith("a red") for t in texts if t.strip()
    )
    greedy = tmp_path / "greedy"
    main(
        [
            "--ckpt",
            str(tiny_gpt_ckpt),
            "--num",
            "2",
            "--out",
            str(greedy),
            "--temperature",
            "0",
            "--num-beams",
            "3",
        ]
    )
    a, b = (greedy / "samples.txt").read_text().rstrip("\n").split("\n\n")
    assert a == b  # beam search is deterministic


def test_evaluate_text_metrics(tiny_gpt_ckpt: Path, tmp_path: Path) -> None:
    from zoo.evaluate import main

    result = main(["--ckpt", str(tiny_gpt_ckpt), "--metrics", "perplexity,distinct_n,grammar", "--num", "20",
                   "--split", "test", "--no-progress", "--max-new-tokens", "40"])  # fmt: skip
    values = {row["metric"]: row["value"] for row in result["metrics"]}
    vocab = torch.load(tiny_gpt_ckpt, weights_only=True)["hyper_parameters"]["vocab_size"]
    assert 1.0 < values["perplexity"] < vocab  # 20 steps already beat the uniform model (perplexity = vocab)
    assert (
        0.0 <= values["grammar_parse_rate"] <= 1.0 and "distinct_2" in values and "grammar_tv_color" in values
    )


def test_resume_continues_exactly(tmp_path: Path) -> None:
    full, half = tmp_path / "full", tmp_path / "half"
    common = [*TINY_GPT, "--checkpoint.every_n_train_steps", "3", "--samples.every_n_steps", "0"]
    run_fit(*common, "--trainer.max_steps", "8", "--trainer.default_root_dir", str(full))
    run_fit(*common, "--trainer.max_steps", "3", "--trainer.default_root_dir", str(half))
    run_fit(*common, "--trainer.max_steps", "8", "--trainer.default_root_dir", str(half),
            "--ckpt_path", str(half / "checkpoints" / "last.ckpt"))  # fmt: skip
    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(half / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- learning -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_learns_the_caption_grammar(tmp_path: Path) -> None:
    """After ~25 s of CPU training (a word-level BPE: a character model needs several times longer),
    at least 90% of sentences sampled at temperature 1 parse under the grammar, and their colours and
    shapes are spread as in the corpus."""
    from zoo.metrics.text import attribute_distance

    cli = run_fit(
        "--model", "gpt", "--model.n_layer", "2", "--model.n_embd", "64", "--model.lr", "0.003",
        "--model.warmup_steps", "30", "--model.max_new_tokens", "30", "--data.batch_size", "32",
        "--data.tokenizer", "bpe", "--data.bpe_vocab_size", "300", "--data.block_size", "32",
        "--data.num_train", "5000", "--trainer.max_steps", "1000",
        "--trainer.limit_val_batches", "4", "--trainer.val_check_interval", "null",
        "--trainer.check_val_every_n_epoch", "1000", "--samples.num_samples", "0", "--logger", "none",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(tmp_path),
    )  # fmt: skip
    texts = cli.model.generate(400, generator=torch.Generator().manual_seed(0))
    rate = sum(parse_caption(t) is not None for t in texts) / len(texts)
    assert rate >= 0.9, [t for t in texts if parse_caption(t) is None][:10]
    distance = attribute_distance(texts, cli.datamodule.texts("val"))
    # Measured at this budget (400 samples): colour 0.04, count 0.06, shape 0.11-0.13 (the model still favours
    # one shape a little; 0.1 passed on 200 samples by luck and failed in a full-suite run). A model that
    # named one of the three shapes only would score about 0.67: 0.15 still tells learning from not.
    assert distance["color"] < 0.1 and distance["shape"] < 0.15 and distance["count"] < 0.15, distance


def _with_hyper_parameters(ckpt: Path, folder: Path, **changes: Any) -> Path:
    """A copy of a checkpoint with some hyper-parameters changed (as another recipe would have set them)."""
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["hyper_parameters"].update(changes)
    path = folder / "changed.ckpt"
    torch.save(checkpoint, path)
    return path


def test_readme_sample_commands_on_the_default_recipes_context(tiny_gpt_ckpt: Path, tmp_path: Path) -> None:
    """The default recipe's max_new_tokens is block_size - 1 (room for the start token only): with a
    prompt the default is cut to what the context leaves, and an explicit --max-new-tokens past the
    context slides the window (both refused before, "exceeds the model's context")."""
    from zoo.sample import main

    block = torch.load(tiny_gpt_ckpt, weights_only=True)["hyper_parameters"]["block_size"]
    ckpt = _with_hyper_parameters(tiny_gpt_ckpt, tmp_path, max_new_tokens=block - 1)
    out = tmp_path / "readme"
    with pytest.warns(
        UserWarning, match=f"max_new_tokens is {block - 6}, not the model's default {block - 1}"
    ):
        main(["--ckpt", str(ckpt), "--num", "8", "--prompt", "a red", "--out", str(out)])
    texts = (out / "samples.txt").read_text().rstrip("\n").split("\n\n")
    assert len(texts) == 8 and all(t.startswith("a red") and len(t) <= block - 1 for t in texts)
    long = tmp_path / "long"
    with pytest.warns(UserWarning, match=f"context of {block} tokens: each further token is predicted"):
        main(["--ckpt", str(ckpt), "--num", "2", "--prompt", "a red", "--out", str(long),
              "--max-new-tokens", "200", "--min-new-tokens", "100", "--temperature", "0.8"])  # fmt: skip
    assert all(len(t) >= len("a red") + 100 for t in (long / "samples.txt").read_text().split("\n\n"))


def test_a_label_is_refused_by_a_text_family(tiny_gpt_ckpt: Path, tmp_path: Path, capsys) -> None:
    from zoo.sample import main

    with pytest.raises(SystemExit) as info:
        main(["--ckpt", str(tiny_gpt_ckpt), "--num", "1", "--label", "3", "--out", str(tmp_path / "x")])
    assert info.value.code == 2
    assert (
        "GPT is conditioned on text: give prompts (--prompt TEXT), not labels (--label)"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "x").exists()
