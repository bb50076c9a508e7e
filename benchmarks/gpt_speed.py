"""Generation speed of `gpt` against `transformers` on the same weights, and the KV cache's speed-up.

A randomly initialised GPT-2 (`transformers.GPT2LMHeadModel`) is ported into the zoo network
(`load_gpt2_weights`; the logits agree to 1e-5, tests/test_generation.py), then both decode
greedily from the same prompt for a fixed number of new tokens (no EOS, so every run has the
same length), alternating zoo / transformers, median of --repeats. Tokens/s counts new tokens
over the whole batch.

    pip install -e ".[bench]"
    python benchmarks/gpt_speed.py                  # batch 1 and 8, 256 and 1024 new tokens
    python benchmarks/gpt_speed.py --quick          # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    from zoo.generation import sample
    from zoo.plugins.gpt import Transformer, load_gpt2_weights

    lengths = [32] if args.quick else [256, 1024]
    batches = [1, 2] if args.quick else [1, 8]
    context = args.prompt + max(lengths)
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=args.vocab, n_positions=context, n_embd=args.width, n_layer=args.layers, n_head=args.heads
    )
    hf = transformers.GPT2LMHeadModel(config).eval()
    ours = Transformer(args.vocab, context, args.layers, args.heads, args.width).eval()
    load_gpt2_weights(ours, hf.state_dict())
    params = sum(p.numel() for p in ours.parameters())
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"model: {args.layers} layers, width {args.width}, vocab {args.vocab}, {params / 1e6:.2f}M parameters; "
          f"prompt {args.prompt} tokens, greedy\n")  # fmt: skip

    def zoo_run(ids: torch.Tensor, new: int, use_cache: bool = True) -> torch.Tensor:
        return sample(ours, ids, max_new_tokens=new, do_sample=False, use_cache=use_cache)

    def hf_run(ids: torch.Tensor, new: int) -> torch.Tensor:
        return hf.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new, do_sample=False,
            eos_token_id=None, pad_token_id=0,
        )  # fmt: skip

    def timed(fn, *a) -> tuple[float, torch.Tensor]:  # noqa: ANN001
        start = time.perf_counter()
        out = fn(*a)
        return time.perf_counter() - start, out

    print(
        "| batch | new tokens | zoo tokens/s | transformers tokens/s | ratio zoo/transformers | same tokens |"
    )
    print("|---|---|---|---|---|---|")
    with torch.inference_mode():
        for batch in batches:
            for new in lengths:
                ids = torch.randint(
                    0, args.vocab, (batch, args.prompt), generator=torch.Generator().manual_seed(batch)
                )
                zoo_run(ids, 8), hf_run(ids, 8)  # warm-up
                zoo_times, hf_times = [], []
                for _ in range(args.repeats):
                    t, a = timed(zoo_run, ids, new)
                    zoo_times.append(t)
                    t, b = timed(hf_run, ids, new)
                    hf_times.append(t)
                z, h = statistics.median(zoo_times), statistics.median(hf_times)
                same = torch.equal(a, b)
                print(
                    f"| {batch} | {new} | {batch * new / z:.0f} | {batch * new / h:.0f} | {h / z:.2f} | {same} |"
                )
        new = max(lengths)
        ids = torch.randint(0, args.vocab, (1, args.prompt), generator=torch.Generator().manual_seed(0))
        cached, a = timed(zoo_run, ids, new, True)
        uncached, b = timed(zoo_run, ids, new, False)
        print(f"\nKV cache at {new} new tokens, batch 1: {cached:.2f} s with, {uncached:.2f} s without: "
              f"{uncached / cached:.1f}x faster (outputs identical: {torch.equal(a, b)})")  # fmt: skip


if __name__ == "__main__":
    main()
