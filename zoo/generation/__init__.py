"""Text decoding shared by every autoregressive family (`gpt`, and later VQ image, codec audio and
video tokens): logits processors, greedy / sampling / beam search, stopping rules and a KV cache.

Model-agnostic: a model is a callable `model(ids, cache=, position_ids=, attention_mask=) -> logits`
(see `zoo.generation.decoding`). Processors are small callables composed in a list, in the order
`transformers` applies them, and checked against it in tests/test_generation.py.

    from zoo.generation import generate, left_pad, processors_for
    ids, mask = left_pad([[0, 17, 4], [0, 9]], pad_id=0)
    out = generate(model, ids, mask, max_new_tokens=50, eos_ids=[0],
                   processors=processors_for(prompt_length=ids.shape[1], top_p=0.9, temperature=0.8))
"""

from zoo.generation.cache import KVCache
from zoo.generation.decoding import beam_search, generate, left_pad, positions_from_mask, sample
from zoo.generation.processors import (
    FrequencyPresencePenalty,
    MinNewTokens,
    MinP,
    NoRepeatNGram,
    Processor,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
    apply_processors,
    processors_for,
)

__all__ = [
    "FrequencyPresencePenalty",
    "KVCache",
    "MinNewTokens",
    "MinP",
    "NoRepeatNGram",
    "Processor",
    "RepetitionPenalty",
    "Temperature",
    "TopK",
    "TopP",
    "apply_processors",
    "beam_search",
    "generate",
    "left_pad",
    "positions_from_mask",
    "processors_for",
    "sample",
]
