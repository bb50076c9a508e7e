"""Where an ldm training step (U-Net + text encoder, batch 64, 8x8x4 latents) can be made faster on a CPU.

    python benchmarks/ldm_step_levers.py      # fp32, bf16 autocast, channels-last, torch.compile (fp32, bf16)

Each variant: 3 warm-up steps, then the mean of 10 (loss, backward, AdamW); torch.compile reports its
compilation time apart. Figures: benchmarks/RESULTS.md, `ldm`, issue 25.
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from recipe_step_time import build

import zoo

torch.set_num_threads(2)
data = zoo.create_datamodule("shapes", num_train=64, batch_size=64, max_objects=3)
data.setup("fit")
batch = next(iter(data.train_dataloader()))
m = build("ldm", "default", batch)
opt = m.configure_optimizers()["optimizer"]
z = m.first_stage.encode_latents(batch["image"], sample=False).detach()
tt = torch.randint(0, 1000, (64,))


def timeit(f, n=10):
    for _ in range(3):
        f()
    s = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - s) / n


def step(net, autocast=False, cl=False):
    def f():
        x = z.contiguous(memory_format=torch.channels_last) if cl else z
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            text = m.encode_text(batch["caption"])
            out = net(x, tt, context=text["states"], context_mask=text["mask"], pooled=text["pooled"])
        out.float().square().mean().backward()
        opt.step()
        opt.zero_grad()

    return f


print("fp32", timeit(step(m.unet)), flush=True)
print("bf16 autocast", timeit(step(m.unet, autocast=True)), flush=True)
m.unet.to(memory_format=torch.channels_last)
print("channels_last fp32", timeit(step(m.unet, cl=True)), flush=True)
print("channels_last bf16", timeit(step(m.unet, autocast=True, cl=True)), flush=True)
m.unet.to(memory_format=torch.contiguous_format)
t0 = time.perf_counter()
c = torch.compile(m.unet)
f = step(c)
f()
print("compile time", time.perf_counter() - t0, flush=True)
print("compiled fp32", timeit(f), flush=True)
t0 = time.perf_counter()
f = step(c, autocast=True)
f()
print("compile time bf16", time.perf_counter() - t0, flush=True)
print("compiled bf16", timeit(f), flush=True)
