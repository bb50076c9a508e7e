"""`tts`: a FastSpeech-style acoustic model, phonemes -> 80-band log-mel, trained on espeak-ng's own
phoneme alignment (Ren et al., "FastSpeech 2", ICLR 2021, sized for a CPU).

    phoneme ids (B, N) -> embedding + sinusoidal positions -> encoder (FFT blocks: self-attention and
    a 1-D conv, post-norm) -> + speaker (voice) embedding -> duration predictor (log(1 + frames))
    -> length regulator (phoneme i repeated d_i times) -> + positions -> decoder (FFT blocks)
    -> linear -> log-mel (B, n_mels, T), the shared front end's (`zoo.audio.LogMel`) conventions.

Why FastSpeech and not Tacotron 2: the durations are known exactly. The `speech` datamodule's clips are
spoken by libespeak-ng, which reports every phoneme it utters with the sample where it starts
(`zoo.audio.espeak.synthesise_aligned`); `zoo.audio.alignment.frame_durations` turns that into frame
counts that sum to the clip's mel length. So no attention has to learn to align text and audio (the
slow, fragile part of Tacotron 2 on a small budget) and no external aligner is needed: training is
plain regression (L1 on the mel given the true durations, MSE on log durations), which fits a CPU. No
pitch or energy predictors: espeak-ng's prosody is a deterministic function of the text, voice and
speed, so the decoder can learn it from the phonemes and the voice.

Text -> phonemes at inference goes through the same path as training: libespeak-ng speaks the text and
the phoneme events are kept (the audio is thrown away; espeak-ng makes ~800 s of speech a second), so
the phoneme names are exactly those the model was trained on. The phoneme vocabulary and voice names
come from the datamodule and are saved in the checkpoint.

`generate(n, condition="hello world", vocoder="hifigan.ckpt")` -> (n, S) audio in [-1, 1] at
`sample_rate`; without a vocoder, Griffin-Lim (`zoo.audio.griffin_lim`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.audio import LOG_FLOOR, LogMel, griffin_lim
from zoo.audio.alignment import frame_durations, length_regulate
from zoo.errors import DataError
from zoo.module import GenerativeModule, adamw_with_warmup, attached_trainer, inference
from zoo.nn.embeddings import sinusoidal_embedding
from zoo.nn.layers import masked_mean

PAD, UNKNOWN, PAUSE = "<pad>", "<unk>", "_"  # ids 0 and 1; PAUSE is espeak's pause (zoo.audio.espeak.PAUSE)
# the mel settings a vocoder must share with this model (its hyper-parameters of the same names)
MEL_SETTINGS = ("sample_rate", "n_mels", "n_fft", "hop_length", "win_length", "f_min", "f_max")


class FFTBlock(nn.Module):
    """FastSpeech's feed-forward Transformer block: self-attention, then a 1-D convolution over time
    (local context a position-wise MLP lacks), each with a residual and post-norm, as in the paper."""

    def __init__(self, dim: int, heads: int, hidden: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.conv1 = nn.Conv1d(dim, hidden, kernel_size, padding=kernel_size // 2)
        self.conv2 = nn.Conv1d(hidden, dim, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), padding (B, L) True at padded positions."""
        keep = (~padding)[..., None].to(x.dtype)
        a, _ = self.attention(x, x, x, key_padding_mask=padding, need_weights=False)
        x = self.norm1(x + self.dropout(a)) * keep
        c = self.conv2(self.dropout(F.relu(self.conv1(x.transpose(1, 2))))).transpose(1, 2)
        return self.norm2(x + self.dropout(c)) * keep


class DurationPredictor(nn.Module):
    """FastSpeech 2's variance predictor: two conv -> ReLU -> LayerNorm -> dropout layers and a linear
    output, here the log(1 + frames) of each phoneme."""

    def __init__(self, dim: int, filters: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(dim if i == 0 else filters, filters, kernel_size, padding=kernel_size // 2)
            for i in range(2)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(filters) for _ in range(2))
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(filters, 1)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = self.dropout(norm(F.relu(conv(x.transpose(1, 2)).transpose(1, 2))))
        return self.out(x).squeeze(-1).masked_fill(padding, 0.0)


class TTS(GenerativeModule):
    """FastSpeech-style text-to-speech acoustic model; see the module docstring.
    `python -m zoo.fit --model tts` (on `speech`, with its espeak-ng phoneme alignments).

    Args:
        sample_rate: audio rate in Hz; zoo.fit links it to data.sample_rate.
        n_mels: mel bands of the log-mels (a vocoder must share all mel settings, sample_rate included).
        n_fft: STFT size in samples; n_fft - hop_length must be even.
        hop_length: samples between mel frames, the unit of the phoneme durations.
        win_length: STFT window in samples.
        f_min: lowest mel frequency in Hz.
        f_max: highest mel frequency in Hz, at most sample_rate / 2.
        vocab_size: phoneme ids: at least the data's phonemes + 2 (<pad>, <unk>).
        num_speakers: voice embeddings: at least the datamodule's voices (`speech`: len(voices)).
        dim: model width: phoneme and voice embeddings, FFT blocks; a multiple of heads.
        heads: attention heads of the FFT blocks.
        hidden: channels of the 1-D convolution inside each FFT block.
        kernel_size: odd kernel size of the convolutions in the FFT blocks and the duration predictor.
        encoder_layers: FFT blocks over the phonemes, before the length regulator.
        decoder_layers: FFT blocks over the mel frames, after the length regulator.
        duration_filters: channels of the duration predictor's convolutions.
        dropout: dropout probability in the FFT blocks and the duration predictor.
        mel_mean: log-mel mean: the mel is the decoder's output times mel_std plus mel_mean.
        mel_std: log-mel standard deviation, by which the decoder's output is scaled.
        lr: AdamW learning rate, reached at the end of the warm-up.
        weight_decay: AdamW weight decay, on every parameter.
        warmup_steps: optimizer steps of linear learning-rate warm-up.
        speed: espeak-ng speaking rate (words a minute) used to turn text into phonemes at generation.
        griffin_lim_iters: Griffin-Lim iterations when generating without a vocoder.
    """

    modality = "audio"
    default_data = "speech"

    def __init__(
        self,
        sample_rate: int = 22050,
        n_mels: int = 80,
        n_fft: int = 1024,
        hop_length: int = 256,
        win_length: int = 1024,
        f_min: float = 0.0,
        f_max: float = 8000.0,
        vocab_size: int = 128,
        num_speakers: int = 3,
        dim: int = 192,
        heads: int = 2,
        hidden: int = 384,
        kernel_size: int = 3,
        encoder_layers: int = 3,
        decoder_layers: int = 3,
        duration_filters: int = 128,
        dropout: float = 0.1,
        mel_mean: float = -6.2,
        mel_std: float = 3.5,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 200,
        speed: int = 150,
        griffin_lim_iters: int = 32,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.sample_rate = sample_rate
        self.mel = LogMel(sample_rate, n_fft, hop_length, win_length, n_mels, f_min, f_max)
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.speakers = nn.Embedding(num_speakers, dim)
        self.encoder = nn.ModuleList(
            FFTBlock(dim, heads, hidden, kernel_size, dropout) for _ in range(encoder_layers)
        )
        self.duration_predictor = DurationPredictor(dim, duration_filters, kernel_size, dropout)
        self.decoder = nn.ModuleList(
            FFTBlock(dim, heads, hidden, kernel_size, dropout) for _ in range(decoder_layers)
        )
        self.to_mel = nn.Linear(dim, n_mels)
        # what the datamodule knows and inference needs; set in setup(), kept in the checkpoint
        self.phonemes: list[str] = []
        self.voices: list[str] = []
        self._vocoders: dict[str, Any] = {}  # loaded vocoder checkpoints, by path

    # --- phonemes and voices: from the datamodule, kept in the checkpoint ------------------------

    def setup(self, stage: str) -> None:
        datamodule = getattr(attached_trainer(self), "datamodule", None)
        if datamodule is None:
            return
        vocabulary = getattr(datamodule, "phoneme_vocabulary", None)
        if not vocabulary:
            raise DataError(
                "tts trains on phoneme alignments: use the `speech` datamodule with --data.alignments true "
                "(configs/tts/default.yaml sets it)"
            )
        if getattr(datamodule, "sample_rate", self.sample_rate) != self.sample_rate:
            raise DataError(
                f"the data is at {datamodule.sample_rate} Hz but the model at {self.sample_rate} Hz: "
                f"set --model.sample_rate {datamodule.sample_rate}"
            )
        if len(datamodule.class_names) > self.hparams.num_speakers:
            raise DataError(
                f"the data has {len(datamodule.class_names)} voices but num_speakers is "
                f"{self.hparams.num_speakers}: set --model.num_speakers {len(datamodule.class_names)}"
            )
        if self.phonemes and self.phonemes != [PAD, UNKNOWN, *vocabulary]:  # resumed or fine-tuned
            missing = sorted(set(vocabulary) - set(self.phonemes))
            if missing:
                raise DataError(f"the data has phonemes this model's vocabulary lacks: {missing[:10]}")
            return
        if len(vocabulary) + 2 > self.hparams.vocab_size:
            raise DataError(
                f"the data has {len(vocabulary)} phonemes (+2 reserved ids) but vocab_size is "
                f"{self.hparams.vocab_size}: set --model.vocab_size {len(vocabulary) + 2}"
            )
        self.phonemes = [PAD, UNKNOWN, *vocabulary]
        self.voices = list(datamodule.class_names)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["tts"] = {"phonemes": self.phonemes, "voices": self.voices}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "tts" in checkpoint:
            self.phonemes, self.voices = (
                list(checkpoint["tts"]["phonemes"]),
                list(checkpoint["tts"]["voices"]),
            )

    def phoneme_ids(self, sequences: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Phoneme names -> ids (B, N) padded with 0, and the padding mask (B, N), True at padding.
        Names outside the vocabulary map to <unk>."""
        if not self.phonemes:
            raise ValueError("this tts model has no phoneme vocabulary: train it with zoo.fit on `speech`")
        index = {name: i for i, name in enumerate(self.phonemes)}
        width = max(len(s) for s in sequences)
        ids = torch.zeros(len(sequences), width, dtype=torch.long)
        for row, names in enumerate(sequences):
            ids[row, : len(names)] = torch.tensor([index.get(name, 1) for name in names], dtype=torch.long)
        return ids.to(self.device), ids.to(self.device) == 0

    def text_to_phonemes(self, text: str, voice: str) -> list[str]:
        """The phonemes libespeak-ng speaks for `text` (the same path as the training alignments), with
        the leading pause the alignment adds."""
        from zoo.audio import espeak

        if not text.strip():
            raise ValueError("tts needs some text to speak: the prompt is empty")
        try:
            _, phones, _ = espeak.synthesise_aligned(text, voice, self.hparams.speed)
        except RuntimeError as err:
            raise RuntimeError(f"tts turns text into phonemes with libespeak-ng: {err}") from err
        return [PAUSE, *(name for name, _ in phones)]

    # --- the model ------------------------------------------------------------------------------

    def _positions(self, length: int, device: torch.device) -> torch.Tensor:
        # the Transformer paper's table (sin at even, cos at odd channels), (length, dim)
        return sinusoidal_embedding(torch.arange(length, device=device), self.hparams.dim, interleaved=True)

    def encode(self, ids: torch.Tensor, padding: torch.Tensor, speakers: torch.Tensor) -> torch.Tensor:
        x = self.embedding(ids) * math.sqrt(self.hparams.dim) + self._positions(ids.shape[1], ids.device)
        for block in self.encoder:
            x = block(x, padding)
        return x + self.speakers(speakers)[:, None]

    def decode(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """Regulated phoneme vectors (B, T, D) -> log-mel (B, n_mels, T)."""
        x = frames + self._positions(frames.shape[1], frames.device) * frame_mask[..., None]
        for block in self.decoder:
            x = block(x, ~frame_mask)
        mel = self.to_mel(x) * self.hparams.mel_std + self.hparams.mel_mean
        return mel.transpose(1, 2)

    def forward(
        self,
        ids: torch.Tensor,
        padding: torch.Tensor,
        speakers: torch.Tensor,
        durations: torch.Tensor | None = None,
        pace: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        """Phoneme ids (B, N) -> {"mel" (B, n_mels, T), "frame_mask" (B, T), "log_durations" (B, N),
        "durations" (B, N)}. Given `durations` (teacher forcing) they are used; else the predicted ones,
        divided by `pace` (2 = twice as fast)."""
        x = self.encode(ids, padding, speakers)
        log_durations = self.duration_predictor(x, padding)
        if durations is None:
            durations = torch.round(torch.expm1(log_durations).clamp_min(0) / pace).long()
            durations = durations.masked_fill(padding, 0)
            durations[:, 0] = durations[:, 0].clamp_min(1)  # at least one frame, however short the text
        frames, frame_mask = length_regulate(x, durations)
        mel = self.decode(frames, frame_mask)
        return {"mel": mel, "frame_mask": frame_mask, "log_durations": log_durations, "durations": durations}

    # --- training -------------------------------------------------------------------------------

    def batch_inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """A `speech` batch with alignments -> phoneme ids, padding, voices, true frame durations and
        target log-mels (B, n_mels, F)."""
        if "phones" not in batch:
            raise DataError("tts needs phoneme alignments in its batches: --data.alignments true")
        audio, lengths, hop = batch["audio"], batch["length"], self.hparams.hop_length
        names = [[PAUSE, *phones.split(" ")] for phones in batch["phones"]]
        ids, padding = self.phoneme_ids(names)
        durations = torch.zeros_like(ids)
        for row, (starts, length) in enumerate(zip(batch["phone_starts"], lengths, strict=True)):
            starts = starts[starts >= 0]
            durations[row, : len(starts) + 1] = frame_durations(starts.cpu(), int(length), hop).to(ids.device)
        target = self.mel(audio[:, : max(audio.shape[-1] // hop * hop, hop)])
        return {
            "ids": ids,
            "padding": padding,
            "speakers": batch["label"],
            "durations": durations,
            "target": target,
        }

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        inputs = self.batch_inputs(batch)
        out = self(inputs["ids"], inputs["padding"], inputs["speakers"], inputs["durations"])
        target, mask = inputs["target"], out["frame_mask"]
        frames = min(target.shape[-1], mask.shape[-1])
        mel_l1 = masked_mean((out["mel"][..., :frames] - target[..., :frames]).abs(), mask[:, None, :frames])
        real = ~inputs["padding"]
        duration = F.mse_loss(out["log_durations"][real], torch.log1p(inputs["durations"][real].float()))
        return {"loss": mel_l1 + duration, "mel_l1": mel_l1, "duration_mse": duration}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        parts = self.losses(batch)
        self.log_dict(
            {f"train/{k}": v for k, v in parts.items()}, prog_bar=True, batch_size=len(batch["audio"])
        )
        return parts["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        parts = self.losses(batch)
        size = len(batch["audio"])
        self.log("val/loss", parts["loss"], sync_dist=True, batch_size=size)
        self.log("val/mel_l1", parts["mel_l1"], prog_bar=True, sync_dist=True, batch_size=size)
        self.log("val/duration_mse", parts["duration_mse"], sync_dist=True, batch_size=size)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        return adamw_with_warmup(self.parameters(), hp.lr, hp.weight_decay, hp.warmup_steps)

    # --- generation -----------------------------------------------------------------------------

    def load_vocoder(self, path: str | Path) -> Any:
        """A vocoder checkpoint (a `hifigan` run's), loaded once and checked to share this model's mels."""
        key = str(path)
        if key not in self._vocoders:
            from zoo.checkpoint import load_model

            vocoder = load_model(path, map_location=self.device)
            hp = dict(getattr(vocoder, "hparams", {}))
            # a vocoder (hifigan) is an audio family with a mel front end and a generator from log-mels to
            # waveforms; a tts model has the front end but no generator
            is_vocoder = isinstance(getattr(vocoder, "mel", None), LogMel) and isinstance(
                getattr(vocoder, "generator", None), nn.Module
            )
            if getattr(vocoder, "modality", None) != "audio" or not is_vocoder:
                raise ValueError(
                    f"'{path}' is a {type(vocoder).__name__} checkpoint, not a vocoder: --vocoder takes a model "
                    "that turns log-mels into audio, e.g. a hifigan run's checkpoints/last.ckpt "
                    "(python -m zoo.fit --model hifigan --data speech); leave it out for Griffin-Lim"
                )
            differ = [
                f"{k} {hp.get(k)} (tts: {self.hparams[k]})"
                for k in MEL_SETTINGS
                if hp.get(k) != self.hparams[k]
            ]
            if differ:
                raise ValueError(
                    f"the vocoder '{path}' was trained on other mels than this tts model: {', '.join(differ)}. "
                    "Train the vocoder with the same settings (e.g. --model.sample_rate), or leave --vocoder out "
                    "for Griffin-Lim"
                )
            if hasattr(getattr(vocoder, "generator", None), "remove_weight_norm"):
                vocoder.generator.remove_weight_norm()  # same output, faster
            self._vocoders[key] = vocoder.eval()
        return self._vocoders[key]

    def vocode(self, mel: torch.Tensor, vocoder: str | Path | None = None) -> torch.Tensor:
        """Log-mels (B, n_mels, T) -> audio (B, T * hop): the vocoder checkpoint, else Griffin-Lim."""
        if vocoder is None:
            return griffin_lim(
                mel, self.sample_rate, n_iter=self.hparams.griffin_lim_iters, front_end=self.mel
            )
        return self.load_vocoder(vocoder)(mel).clamp(-1.0, 1.0)

    def synthesise_mels(
        self, texts: list[str], voice: int | str = 0, pace: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> log-mels (B, n_mels, T) padded with the log floor, and each one's frame count (B,)."""
        if not self.voices:
            raise ValueError("this tts model has no voices: train it with zoo.fit on `speech`")
        if voice not in self.voices and not (isinstance(voice, int) and 0 <= voice < len(self.voices)):
            raise ValueError(
                f"voice {voice!r} is not one of this model's voices {self.voices} (or their index)"
            )
        voice_index = self.voices.index(voice) if isinstance(voice, str) else int(voice)
        if pace <= 0:
            raise ValueError(f"pace must be positive (1 = as trained, 2 = twice as fast), got {pace}")
        names = [self.text_to_phonemes(text, self.voices[voice_index]) for text in texts]
        ids, padding = self.phoneme_ids(names)
        speakers = torch.full((len(texts),), voice_index, dtype=torch.long, device=self.device)
        out = self(ids, padding, speakers, pace=pace)
        mel = out["mel"].masked_fill(~out["frame_mask"][:, None], math.log(LOG_FLOOR))
        return mel, out["frame_mask"].sum(-1)

    @inference
    def generate(
        self,
        n: int,
        *,
        condition: str | list[str] | None = None,
        generator: torch.Generator | None = None,
        vocoder: str | None = None,
        voice: int | str = 0,
        pace: float = 1.0,
        progress: bool = False,
    ) -> torch.Tensor:
        """Speak `condition` (a string, or n strings): audio (n, S) in [-1, 1] at `sample_rate`, each
        clip zero-padded to the longest. `vocoder`: a hifigan checkpoint path (loaded once); without
        it, Griffin-Lim. `voice`: an index or name of the training voices (default the first, the
        `speech` default `en-us`). `pace` > 1 speaks faster. Deterministic, so `generator` is unused."""
        if condition is None:
            raise ValueError(
                "tts speaks text: give a prompt (generate(n, condition='hello world'), or --prompt)"
            )
        texts = [condition] * n if isinstance(condition, str) else list(condition)
        if len(texts) == 1 and n > 1:
            texts *= n
        if len(texts) != n:
            raise ValueError(f"got {len(texts)} prompts for n={n} samples")
        if any(not isinstance(t, str) or not t.strip() for t in texts):
            raise ValueError("tts needs some text to speak: a prompt is empty")
        mel, frames = self.synthesise_mels(texts, voice, pace)
        audio = self.vocode(mel, vocoder)
        hop = self.hparams.hop_length
        for i, count in enumerate(frames.tolist()):  # silence past each clip's own end
            audio[i, count * hop :] = 0.0
        return audio[:, : int(frames.max()) * hop].clamp(-1.0, 1.0)

    @inference
    def previews(
        self, batch: dict[str, Any] | None, *, n: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Mel images in [0, 1] (low frequencies at the bottom): the held-out clips' own mels, the model's
        with their true durations, and with its predicted durations."""
        if batch is None or "phones" not in batch or not self.phonemes:
            return {}
        inputs = self.batch_inputs(batch)
        forced = self(inputs["ids"], inputs["padding"], inputs["speakers"], inputs["durations"])
        free = self(inputs["ids"], inputs["padding"], inputs["speakers"])

        def image(mel: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
            low, high = math.log(LOG_FLOOR), 2.0
            if frame_mask is not None:  # black past each clip's end, as the target's padding
                mel = mel.masked_fill(~frame_mask[:, None], low)
            return ((mel - low) / (high - low)).clamp(0, 1).flip(-2)[:, None]

        return {
            "target_mel": image(inputs["target"]),
            "mel": image(forced["mel"], forced["frame_mask"]),
            "predicted_mel": image(free["mel"], free["frame_mask"]),
        }
