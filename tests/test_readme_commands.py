"""Every `python -m zoo.*` command of the README runs (issue 26: "every command in the README must be run by
a test or a doc check").

The commands are read from the README's code blocks, so an edited or added command is checked as written.
To run in seconds, each is run with what the README leaves to the reader filled in, and its sizes capped:
- `runs/<family>/<run>/checkpoints/last.ckpt` becomes a checkpoint of that family trained here for two
  steps with the tiny flags of `test_family_data_matrix` (`--ckpt ...` is the one of the line before);
- the files it names (`seven.png`, `hole.png`, `start.gif`, `in.wav`, `~/pictures`) are made here;
- `--num` is capped at 2 (at 8 for `zoo.evaluate`, whose default of 2000 becomes 8 too), `--steps` at 3,
  `--frames` at 6 and `--max-new-tokens` at 24;
- `zoo.fit` commands that train for minutes run with `--print_config` added: the whole command line is
  parsed and composed with the recipe (a wrong flag or value fails), and the training itself is what the
  family's own tests run. `--help` runs as it is.
- `zoo.data.optimize --data shapes` writes 16 training scenes, not the default 10,000;
- `zoo.evaluate ... --metrics geneval` runs with a small judge (test_ldm trains the same), since the real one
  trains for a minute.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_family_data_matrix import flags_for

from conftest import run_fit
from zoo import registry

README = Path(__file__).resolve().parents[1] / "README.md"
CAPS = {"--num": 2, "--steps": 3, "--frames": 6, "--max-new-tokens": 24}
EVALUATE_NUM = 8  # zoo.evaluate's --num (default 2000): precision/recall's k=3 needs more than 3 samples
CKPT = re.compile(r"runs/(\w+)/<run>/checkpoints/last\.ckpt")


def readme_commands() -> list[str]:
    """The `python -m zoo.*` lines of the README's code blocks (continuations joined, comments dropped)."""
    text = README.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            if "-m zoo." not in line:
                continue
            words = shlex.split(line, comments=True)
            start = next(i for i, w in enumerate(words) if w.startswith("zoo.") and words[i - 1] == "-m")
            commands.append(shlex.join(words[start:]))
    return commands


COMMANDS = readme_commands()
FAMILIES = sorted({m for c in COMMANDS for m in CKPT.findall(c)})


def test_the_readme_has_commands_of_every_verb():
    verbs = {c.split()[0] for c in COMMANDS}
    assert verbs == {"zoo.list", "zoo.fit", "zoo.sample", "zoo.evaluate", "zoo.data.optimize"}, verbs
    assert len(COMMANDS) > 25


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a tiny checkpoint of every family the README samples from, and the files it names."""
    root = tmp_path_factory.mktemp("readme")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for family in FAMILIES:
            data = registry.get_model_class(family).default_data
            cli = run_fit(*flags_for(family, data, root), "--trainer.default_root_dir", f"ckpts/{family}")
            assert cli.trainer.global_step >= 1
        _write_inputs(root)
    finally:
        os.chdir(cwd)
    return root


def _write_inputs(root: Path) -> None:
    import soundfile as sf

    picture = np.full((32, 32, 3), 20, np.uint8)
    picture[8:24, 10:22] = (220, 30, 30)
    for name in ("seven.png", "x.png", "first.png"):
        Image.fromarray(picture).save(root / name)
    hole = np.zeros((32, 32), np.uint8)
    hole[8:24, 8:24] = 255
    Image.fromarray(hole).save(root / "hole.png")
    frames = [Image.fromarray(np.roll(picture, 2 * t, axis=1)) for t in range(4)]
    frames[0].save(root / "start.gif", save_all=True, append_images=frames[1:], duration=125, loop=0)
    t = np.arange(22050 // 2) / 22050
    sf.write(root / "in.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 22050)
    pictures = root / "pictures"
    pictures.mkdir()
    for k in range(4):
        Image.fromarray(np.roll(picture, k, axis=0)).save(pictures / f"{k}.png")
    samples = root / "samples"  # zoo.evaluate --fake samples/ before any zoo.sample wrote there
    samples.mkdir()
    for k in range(4):
        Image.fromarray(np.roll(picture, 3 * k, axis=1)).save(samples / f"fake{k}.png")


def concrete(command: str, root: Path, previous_ckpt: str | None) -> tuple[list[str], str | None]:
    """The README's command with its placeholders filled in and its sizes capped; and the checkpoint it used."""
    verb, *words = shlex.split(command)
    ckpt = previous_ckpt
    out = []
    for i, word in enumerate(words):
        match = CKPT.fullmatch(word)
        if match:
            word = str(root / "ckpts" / match.group(1) / "checkpoints" / "last.ckpt")
            ckpt = word if words[i - 1] == "--ckpt" else ckpt
        elif word == "..." and words[i - 1] == "--ckpt":
            word = previous_ckpt or pytest.fail(
                f"`--ckpt ...` with no checkpoint on an earlier line: {command}"
            )
        elif word.startswith("~/"):
            word = str(root / word[2:])
        elif out and out[-1] in CAPS and word.isdigit():
            cap = EVALUATE_NUM if (verb, out[-1]) == ("zoo.evaluate", "--num") else CAPS[out[-1]]
            word = str(min(int(word), cap))
        out.append(word)
    if verb == "zoo.evaluate" and "--num" not in out:
        out += ["--num", str(EVALUATE_NUM)]
    return out, ckpt


def _run(verb: str, args: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    if verb == "zoo.list":
        from zoo.list import main

        main(args)
    elif verb == "zoo.fit":
        redirect = args.index(">") if ">" in args else None
        args, target = (args[:redirect], args[redirect + 1]) if redirect is not None else (args, None)
        if "--help" in args:
            run_fit(*args)
            return
        with pytest.raises(SystemExit) as info:
            run_fit(*args, *([] if "--print_config" in args else ["--print_config"]))
        assert info.value.code == 0, capsys.readouterr().err
        printed = capsys.readouterr().out
        if target:
            Path(target).write_text(printed)
    elif verb == "zoo.sample":
        from zoo.sample import main

        assert main(args)
    elif verb == "zoo.evaluate":
        from zoo.evaluate import main

        if "geneval" in args[args.index("--metrics") + 1]:
            import zoo.metrics.geneval as geneval_module
            from zoo.metrics.geneval import train_shapes_judge

            judge = train_shapes_judge(image_size=16, num_train=200, num_test=50, epochs=1)
            monkeypatch.setattr(geneval_module, "shapes_judge", lambda size, **kw: judge)
        assert main([*args, "--no-progress"])
    elif verb == "zoo.data.optimize":
        from zoo.data.optimize import main

        small = ["--data.num_train", "16", "--data.num_val", "4", "--data.num_test", "4"]
        assert main([*args, *(small if args[args.index("--data") + 1] == "shapes" else [])])
    else:
        pytest.fail(f"no runner for {verb}")


def test_every_readme_command_runs(workdir, capsys, monkeypatch):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("ZOO_CACHE", str(workdir / "cache"))
    previous = None
    failures = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for command in COMMANDS:
            args, previous = concrete(command, workdir, previous)
            try:
                _run(command.split()[0], args, capsys, monkeypatch)
            except (Exception, SystemExit) as err:  # collect them all: one README edit can break several
                failures.append(f"{command}\n    as: {shlex.join(args)}\n    -> {type(err).__name__}: {err}")
    finally:
        torch.set_num_threads(threads)
    assert not failures, "README commands that fail:\n" + "\n".join(failures)
