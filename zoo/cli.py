"""What the `python -m zoo.<verb>` commands share: one usage-error path, and the sampling flags.

A command-line mistake is raised as `UsageError(message, prog)` anywhere below a command's `main`.
The command's `main` runs its body inside `usage_errors_reported()`, which prints the error as
`PROG: error: MESSAGE` (argparse's form) on stderr and lets it through: it is a `SystemExit` with
status 2, so a script ends quietly without a traceback, and in-process callers (tests, notebooks)
can catch it.

`add_sampling_args(parser)` gives `zoo.sample` and `zoo.evaluate` the same flags for a family's
`generate()` options (`--sampler`, `--steps`, `--top-p`, ...), each checked for its range while the
command line is parsed, so `--steps 0` or `--top-p 2` is refused before a checkpoint is loaded;
`sampling_options(args)` collects the ones given.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

GENERIC_PROG = "python -m zoo"


class UsageError(SystemExit):
    """A command-line mistake: printed as `PROG: error: MESSAGE`, exit status 2, no traceback."""

    def __init__(self, message: str, prog: str = GENERIC_PROG) -> None:
        super().__init__(2)
        self.message = message
        self.prog = prog

    def __str__(self) -> str:
        return f"{self.prog}: error: {self.message}"


@contextlib.contextmanager
def usage_errors_reported(prog: str) -> Iterator[None]:
    """Print a UsageError raised inside as `PROG: error: MESSAGE` on stderr, then re-raise it."""
    try:
        yield
    except UsageError as err:
        if err.prog == GENERIC_PROG:  # raised by shared code that does not know its command
            err.prog = prog
        print(str(err), file=sys.stderr)
        raise


# --- sampling flags: one definition for zoo.sample and zoo.evaluate ------------------------------


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse `type`: an integer >= `minimum`; anything else is refused naming the range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def float_in(low: float | None, high: float | None, *, open_low: bool = False) -> Callable[[str], float]:
    """An argparse `type`: a finite number in [low, high] ((low, high] with `open_low`; None leaves
    that side unbounded); anything else is refused naming the range."""
    if low is not None and high is not None:
        span = f"{'(' if open_low else '['}{low:g}, {high:g}]"
    elif low is not None:
        span = f"{'>' if open_low else '>='} {low:g}"
    elif high is not None:
        span = f"<= {high:g}"
    else:
        span = "a finite number"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {span}, got {text!r}") from None
        below = low is not None and (value <= low if open_low else value < low)
        above = high is not None and value > high
        if not math.isfinite(value) or below or above:
            raise argparse.ArgumentTypeError(f"must be {'in ' if high is not None else ''}{span}, got {text}")
        return value

    parse.__name__ = f"number {span}"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
non_negative_float = float_in(0.0, None)
positive_float = float_in(0.0, None, open_low=True)
probability = float_in(0.0, 1.0, open_low=True)  # (0, 1]: top-p 0 would keep nothing
unit_interval = float_in(0.0, 1.0)
finite_float = float_in(None, None)


def word_list(text: str) -> list[str]:
    """A comma-separated list of words: "circle, square" -> ["circle", "square"]."""
    return [word.strip() for word in text.split(",") if word.strip()]


def stop_string(text: str) -> str:
    """A `--stop` value: `\\n` and `\\t` typed in a shell mean a newline and a tab."""
    if not text:
        raise argparse.ArgumentTypeError("a stop string cannot be empty")
    return text.replace("\\n", "\n").replace("\\t", "\t")


class SamplingFlag(NamedTuple):
    """A `generate()` keyword (`name`) and how its flag `--name-with-dashes` is parsed."""

    name: str
    type: Callable[[str], Any] | None
    help: str
    extra: dict[str, Any] | None = None  # other argparse keyword arguments (choices, nargs, action)

    @property
    def flag(self) -> str:
        return flag_of(self.name)


GENERATION_FLAGS = (
    SamplingFlag("sampler", str, "sampler name, for families with several (ddpm, ddim, euler, dpmpp_2m, ...)"),
    SamplingFlag("steps", positive_int, "number of sampling steps (>= 1)"),
    SamplingFlag("guidance", non_negative_float, "classifier-free guidance scale (>= 0; 1 = no guidance)"),
    SamplingFlag(
        "negative_prompt", str,
        "text-conditioned families: what to steer away from (replaces the empty prompt of guidance)",
    ),
    SamplingFlag("temperature", non_negative_float, "sampling temperature (>= 0; text: 0 is greedy)"),
    SamplingFlag("eta", unit_interval, "DDIM eta in [0, 1] (0 deterministic, 1 ancestral)"),
    SamplingFlag("top_k", positive_int, "keep the K most probable tokens (>= 1)"),
    SamplingFlag("top_p", probability, "nucleus sampling: keep the most probable tokens with mass > P, in (0, 1]"),
    SamplingFlag("truncation", non_negative_float, "GANs: truncation psi (>= 0; 1 = none, 0 = the mean image)"),
    SamplingFlag("frames", positive_int, "video families: frames per clip (>= 1)"),
    SamplingFlag(
        "extend", str,
        "video families, clips longer than trained: all frames at once (direct) or window by window (continue)",
        {"choices": ("direct", "continue")},
    ),
    SamplingFlag("overlap", positive_int, "video families, --extend continue: frames each window keeps (>= 1)"),
    SamplingFlag(
        "vocoder", str,
        "text-to-speech families: a vocoder checkpoint (e.g. a hifigan run's last.ckpt); without it, Griffin-Lim",
    ),
    SamplingFlag(
        "attend_excite", word_list,
        "ldm: Attend-and-Excite, so that each subject of the prompt is drawn: alone, the shape nouns of a shapes "
        "prompt; or the subject words, comma-separated (--attend-excite circle,square)",
        {"nargs": "?", "const": True, "metavar": "WORDS"},
    ),
    SamplingFlag("attend_excite_scale", non_negative_float, "ldm, --attend-excite: its step size (>= 0; default 20)"),
)  # fmt: skip

TEXT_DECODING_FLAGS = (
    SamplingFlag("max_new_tokens", positive_int, "tokens to generate at most (>= 1); past the context, a sliding window"),
    SamplingFlag("min_new_tokens", non_negative_int, "no end-of-text before this many tokens (>= 0)"),
    SamplingFlag("min_p", unit_interval, "keep tokens with p >= P * p_max, P in [0, 1]"),
    SamplingFlag("repetition_penalty", positive_float, "CTRL-style penalty (> 0; 1 = none, > 1 discourages repeats)"),
    SamplingFlag("no_repeat_ngram_size", positive_int, "forbid repeating any n-gram of this size (>= 1)"),
    SamplingFlag("frequency_penalty", float_in(-2.0, 2.0), "OpenAI-style, in [-2, 2]: logit - F * count"),
    SamplingFlag("presence_penalty", float_in(-2.0, 2.0), "OpenAI-style, in [-2, 2]: logit - P * [count > 0]"),
    SamplingFlag("num_beams", positive_int, "beam search with this many beams (>= 1; with --temperature 0)"),
    SamplingFlag("length_penalty", finite_float, "beam search: score = sum log p / length^alpha"),
    SamplingFlag(
        "early_stopping", None, "beam search: stop once num_beams hypotheses are finished",
        {"action": "store_true", "default": None},
    ),
    SamplingFlag("stop", stop_string, "stop strings (e.g. --stop $'\\n\\n' or --stop '\\n\\n')", {"nargs": "+"}),
    SamplingFlag("min_prob", unit_interval, "stop when the chosen token's probability is below P, in [0, 1]"),
)  # fmt: skip

SAMPLING_OPTIONS = tuple(f.name for f in GENERATION_FLAGS + TEXT_DECODING_FLAGS)


def flag_of(name: str) -> str:
    """The command-line flag of a `generate()` keyword: top_p -> --top-p (init -> --init-image)."""
    return "--" + {"init": "init-image"}.get(name, name.replace("_", "-"))


def add_sampling_args(parser: argparse.ArgumentParser) -> tuple[str, ...]:
    """Add the flags of every family's `generate()` options, in two groups; returns their names."""
    groups = (
        (parser.add_argument_group("sampling options, passed to the family's generate()"), GENERATION_FLAGS),
        (parser.add_argument_group("text decoding (autoregressive families)"), TEXT_DECODING_FLAGS),
    )
    for group, flags in groups:
        for spec in flags:
            kwargs: dict[str, Any] = {"dest": spec.name, "help": spec.help, **(spec.extra or {})}
            if spec.type is not None:
                kwargs["type"] = spec.type
            group.add_argument(spec.flag, **kwargs)
    return SAMPLING_OPTIONS


def sampling_options(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling options given on the command line (a flag left out is not passed at all)."""
    return {name: getattr(args, name) for name in SAMPLING_OPTIONS if getattr(args, name, None) is not None}
