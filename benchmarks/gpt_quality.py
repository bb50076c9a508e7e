"""Quality of a trained `gpt` checkpoint: per-token perplexity on the test documents and samples.

For a `captions` model also: the fraction of sampled sentences that parse under the grammar, the
total-variation distances of their colour / shape / object-count frequencies to the test split's,
and the grammar's exact entropy per token, the lowest cross-entropy any model can reach
(objects per sentence, colours, shapes, sizes and relations are uniform choices, so a sentence
with k objects carries ln 3 + ln 18 (k = 1), 2 ln 36 + ln 4 (k = 2) or 3 ln 36 (k = 3) nats).

    python -m zoo.fit --model gpt                                   # then
    python benchmarks/gpt_quality.py --ckpt runs/gpt/<run>/checkpoints/last.ckpt --num 1000
"""

from __future__ import annotations

import argparse
import math
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--num", type=int, default=1000, help="samples to draw (default 1000)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument(
        "--prompt", default=None, help="python_source / text_file: print a sample from this prompt"
    )
    parser.add_argument("--max-new-tokens", type=int, default=None)
    args = parser.parse_args()

    from zoo import registry
    from zoo.checkpoint import load_model, read_checkpoint
    from zoo.evaluate import data_of_checkpoint
    from zoo.metrics.text import attribute_distance, distinct_n

    checkpoint = read_checkpoint(args.ckpt)
    model = load_model(args.ckpt)
    data_name, data_args = data_of_checkpoint(checkpoint, model)
    datamodule = registry.get_datamodule_class(data_name)(**data_args)
    test = datamodule.texts("test")
    start = time.perf_counter()
    total, count = model.negative_log_likelihood(test)
    score_time = time.perf_counter() - start
    print(f"data {data_name}, {len(test)} test documents, {count} tokens scored in {score_time:.1f} s")
    print(f"test cross-entropy {total / count:.4f} nats/token, perplexity {math.exp(total / count):.4f}")

    if data_name == "captions":
        grammar = registry.get_datamodule_class("shapes")
        parse = __import__(grammar.__module__, fromlist=["parse_caption"]).parse_caption
        bits = {1: math.log(18), 2: 2 * math.log(36) + math.log(4), 3: 3 * math.log(36)}
        nats = sum(math.log(3) + bits[len(parse(t))] for t in test)
        tokens = sum(len(model.tokenizer.encode(t)) + 1 for t in test)  # + the end-of-text token
        floor = nats / tokens
        print(f"grammar entropy {floor:.4f} nats/token (perplexity {math.exp(floor):.4f}), "
              f"{nats / sum(len(t) + 1 for t in test):.4f} nats/character: the floor")  # fmt: skip
        generator = torch.Generator().manual_seed(0)
        texts: list[str] = []
        start = time.perf_counter()
        for i in range(0, args.num, args.batch_size):
            texts += model.generate(min(args.batch_size, args.num - i), generator=generator)
        seconds = time.perf_counter() - start
        parsed = [t for t in texts if parse(t) is not None]
        print(f"{len(texts)} samples in {seconds:.1f} s ({len(texts) / seconds:.0f} sentences/s)")
        print(f"parse rate {len(parsed) / len(texts):.3f}; distinct-2 {distinct_n(texts, 2):.3f}")
        print(
            "total-variation distance to the test split:",
            {k: round(v, 4) for k, v in attribute_distance(texts, test).items()},
        )
        print(
            "novel sentences (not in the training split):",
            f"{sum(t not in set(datamodule.texts('train')) for t in parsed) / max(1, len(parsed)):.3f}",
        )
        print("first samples:", *texts[:8], sep="\n  ")
        print("failures:", *[t for t in texts if parse(t) is None][:8], sep="\n  ")
    else:
        prompt = args.prompt if args.prompt is not None else "def "
        text = model.generate(
            1,
            condition=[prompt],
            generator=torch.Generator().manual_seed(0),
            max_new_tokens=args.max_new_tokens,
        )[0]
        print(f"sample from {prompt!r}:\n{text}")


if __name__ == "__main__":
    main()
