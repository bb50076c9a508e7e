"""The metric registry: name -> function, with the modalities it fits and what it needs.

A metric is a function of one `MetricContext` returning `{name: value}` (one metric may give
several values: `kid` gives `kid` and `kid_std`). Registering one is one line:

    from zoo.metrics import MetricContext, register_metric

    @register_metric("geneval", modalities=("image",), needs=("model", "prompts"), higher_is_better=True)
    def geneval(ctx: MetricContext) -> dict[str, float]:
        images = ctx.generate(ctx.prompts)          # the model's images for these prompts, seeded, batched
        ...
        return {"geneval": score}

`needs` says what `zoo.evaluate` must provide: "real" (the real split), "fake" (generated samples),
"extractor" (a feature extractor), "model" (the loaded family, for metrics that generate for
themselves or score likelihoods), "prompts" (text conditions: the real split's captions, or
`--prompts FILE`), "clip" (a CLIP encoder: `--clip PATH`). Metrics in the modules of
`METRIC_MODULES` are registered on first use; a plugin registers its own through the entry-point
group `zoo.metrics` (`name = package.module`: importing the module registers its metrics).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import torch

NEEDS = ("real", "fake", "extractor", "model", "prompts", "clip")
# The modules whose import registers zoo's own metrics (a family's metric module is added here).
METRIC_MODULES: list[str] = [
    "zoo.metrics.image",
    "zoo.metrics.clip",
    "zoo.metrics.audio",
    "zoo.metrics.text",
    "zoo.metrics.geneval",
    "zoo.metrics.likelihood",
]
ENTRY_POINT_GROUP = "zoo.metrics"


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: its function and what it fits."""

    name: str
    fn: Callable[[MetricContext], dict[str, float]]
    modalities: tuple[str, ...]
    needs: tuple[str, ...]
    higher_is_better: bool | None = None
    description: str = ""


METRICS: dict[str, MetricSpec] = {}
_loaded = False


def register_metric(
    name: str,
    *,
    modalities: Sequence[str],
    needs: Sequence[str] = ("real", "fake", "extractor"),
    higher_is_better: bool | None = None,
    description: str | None = None,
    replace: bool = False,
) -> Callable[[Callable[[MetricContext], dict[str, float]]], Callable[[MetricContext], dict[str, float]]]:
    """Decorator: register `fn(ctx) -> {name: value}` as metric `name` (see the module docstring)."""
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"metric '{name}': unknown needs {sorted(unknown)}; known: {', '.join(NEEDS)}")

    def decorate(
        fn: Callable[[MetricContext], dict[str, float]],
    ) -> Callable[[MetricContext], dict[str, float]]:
        if name in METRICS and not replace and METRICS[name].fn is not fn:
            raise ValueError(
                f"metric '{name}' is already registered (by {METRICS[name].fn.__module__}); pass replace=True"
            )
        doc = description if description is not None else (fn.__doc__ or "").strip().splitlines()[0:1]
        METRICS[name] = MetricSpec(
            name,
            fn,
            tuple(modalities),
            tuple(needs),
            higher_is_better,
            doc if isinstance(doc, str) else "".join(doc),
        )
        return fn

    return decorate


def load_metric_modules() -> None:
    """Import the built-in metric modules and the plugins' `zoo.metrics` entry points (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in METRIC_MODULES:
        importlib.import_module(module)
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        entry.load()


def get_metric(name: str, modality: str | None = None) -> MetricSpec:
    """The metric `name`; an unknown name, or one that does not fit `modality`, names those that do."""
    load_metric_modules()
    if name not in METRICS:
        close = difflib.get_close_matches(name, METRICS, n=3)
        fitting = metrics_for(modality) if modality else sorted(METRICS)
        raise ValueError(
            f"unknown metric '{name}'"
            + (f" (did you mean {', '.join(close)}?)" if close else "")
            + f"; metrics{f' for {modality}' if modality else ''}: {', '.join(fitting)}"
        )
    spec = METRICS[name]
    if modality is not None and modality not in spec.modalities:
        raise ValueError(
            f"metric '{name}' is for {'/'.join(spec.modalities)} samples, not {modality}; "
            f"metrics for {modality}: {', '.join(metrics_for(modality)) or '(none)'}"
        )
    return spec


def metrics_for(modality: str) -> list[str]:
    """Names of the registered metrics that fit `modality`."""
    load_metric_modules()
    return sorted(n for n, s in METRICS.items() if modality in s.modalities)


@dataclass
class MetricContext:
    """Everything a metric may use; `zoo.evaluate` and `compute_image_metrics` fill what is needed.

    - `real`, `fake`: samples in the canonical form (images float (N, C, H, W) in [0, 1], audio (N, S)
      in [-1, 1], video (N, T, C, H, W) in [0, 1], text list[str]);
    - `extractor`: a frozen feature network (see zoo.metrics.extractors) or None;
    - `model`, `prompts`, `conditions` (the conditions `fake` was generated with), `clip` (an encoder);
    - `seed`, `batch_size`, `device`, `options` (metric options: `kid_subset_size`, `pr_k`, ...).
    Features are computed once per sample set and shared by every metric (`features`, `logits`).
    """

    modality: str = "image"
    real: Any = None
    fake: Any = None
    extractor: torch.nn.Module | None = None
    model: Any = None
    prompts: list[str] | None = None
    conditions: Any = None
    clip: Any = None
    seed: int = 0
    batch_size: int = 256
    device: str | torch.device = "cpu"
    options: dict[str, Any] = field(default_factory=dict)
    generate_fn: Callable[..., Any] | None = None
    _cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def require(self, *what: str, metric: str = "this metric") -> None:
        missing = [w for w in what if getattr(self, w) is None]
        if missing:
            raise ValueError(f"{metric} needs {', '.join(missing)}, which this evaluation does not have")

    def _run(self, which: str, head: str) -> torch.Tensor:
        key = f"{which}/{head}"
        if key not in self._cache:
            self.require(which, "extractor", metric=f"'{head}' of the {which} samples")
            samples = getattr(self, which)
            fn = self.extractor if head == "features" else self.extractor.logits
            self._cache[key] = batched(fn, samples, self.batch_size, self.device)
        return self._cache[key]

    def features(self, which: str) -> torch.Tensor:
        """The extractor's features of `real` or `fake`, (N, D) float64 on the CPU, computed once."""
        return self._run(which, "features")

    def logits(self, which: str) -> torch.Tensor:
        """The extractor's class logits of `real` or `fake`, (N, K), computed once."""
        return self._run(which, "logits")

    def generate(self, conditions: Sequence[Any] | None = None, n: int | None = None) -> Any:
        """The model's samples for `conditions` (or `n` unconditional ones), seeded and batched."""
        if self.generate_fn is None:
            raise ValueError("this metric generates its own samples and needs a model (--ckpt)")
        return self.generate_fn(conditions=conditions, n=n)


def batched(
    fn: Callable[[torch.Tensor], torch.Tensor], samples: torch.Tensor, batch_size: int, device: Any
) -> torch.Tensor:
    """`fn` over `samples` in batches under no_grad, on `device`; the result as float64 on the CPU."""
    out = []
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            out.append(fn(samples[start : start + batch_size].to(device)).double().cpu())
    return torch.cat(out)
