"""zoo.audio: the shared log-mel front end (HiFi-GAN conventions) and Griffin-Lim, the fallback vocoder."""

from zoo.audio.mel import LOG_FLOOR, LogMel, griffin_lim, log_mel

__all__ = ["LOG_FLOOR", "LogMel", "griffin_lim", "log_mel"]
