"""Phoneme alignments as mel-frame durations, and the length regulator that expands phonemes to frames.

A phoneme alignment is a list of phoneme start samples (espeak-ng reports them while speaking; see
`zoo.audio.espeak.synthesise_aligned`). The shared front end's frame t is centred on sample
t * hop + hop / 2 (`zoo.audio.LogMel`), so frame t belongs to the phoneme whose span holds its centre:
phoneme i owns the frames t with start_i <= t * hop + hop / 2 < start_{i+1}. Counting them gives
integer durations that sum exactly to the clip's frame count, which is what a duration model
(FastSpeech's length regulator) needs.
"""

from __future__ import annotations

import torch


def frame_boundaries(starts: torch.Tensor, hop_length: int, num_frames: int) -> torch.Tensor:
    """The first frame whose centre lies at or after each start sample: ceil((start - hop / 2) / hop),
    clamped to [0, num_frames]. `starts` (..., N) int; returns (..., N) int64."""
    starts = starts.to(torch.int64)
    # ceil((2 * start - hop) / (2 * hop)) in integers: no float rounding at exact half frames
    numerator = 2 * starts - hop_length
    first = -torch.div(-numerator, 2 * hop_length, rounding_mode="floor")
    return first.clamp(0, num_frames)


def frame_durations(starts: torch.Tensor, num_samples: int, hop_length: int) -> torch.Tensor:
    """Mel-frame durations (N + 1,) of a leading pause and N phonemes starting at `starts` (N,) samples,
    for a clip of `num_samples` samples analysed with `hop_length` (num_samples // hop frames).

    The leading pause covers the frames before the first phoneme (espeak-ng starts a few ms in); the
    last phoneme runs to the end of the clip. Durations are >= 0 and sum to num_samples // hop."""
    if starts.ndim != 1:
        raise ValueError(f"expected the start samples of one clip (N,), got shape {tuple(starts.shape)}")
    if len(starts) > 1 and bool((starts[1:] < starts[:-1]).any()):
        raise ValueError("phoneme start samples must be in increasing order")
    num_frames = num_samples // hop_length
    first = frame_boundaries(starts, hop_length, num_frames)
    edges = torch.cat([first.new_zeros(1), first, first.new_full((1,), num_frames)])
    return edges.diff()


def length_regulate(
    x: torch.Tensor, durations: torch.Tensor, max_frames: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """FastSpeech's length regulator: repeat phoneme i's vector durations[i] times.

    `x` (B, N, D), `durations` (B, N) int >= 0 (0 at padding). Returns frames (B, T, D), T the longest
    total duration (or `max_frames`), zero past each item's end, and the mask of real frames (B, T).
    Frame t of an item is phoneme i with cumsum(d)[i - 1] <= t < cumsum(d)[i], found by a binary
    search of the cumulative durations (no Python loop over the batch)."""
    durations = durations.to(torch.int64).clamp_min(0)
    ends = durations.cumsum(-1)  # (B, N)
    total = ends[:, -1] if ends.shape[-1] else durations.new_zeros(len(durations))
    frames = int(total.max()) if max_frames is None and len(total) else int(max_frames or 0)
    t = torch.arange(frames, device=x.device).expand(len(x), frames).contiguous()
    index = torch.searchsorted(ends, t, right=True).clamp_max(max(x.shape[1] - 1, 0))
    out = x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))
    mask = t < total[:, None]
    return out * mask[..., None].to(out.dtype), mask
