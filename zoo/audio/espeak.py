"""libespeak-ng through `ctypes`, from the `espeakng-loader` wheel (`pip install espeakng-loader`).

The wheel bundles `libespeak-ng.so` and its `espeak-ng-data`, so speech can be synthesised on machines
without the `espeak-ng` program. The calls and constants are those of espeak-ng's public header
`src/include/espeak-ng/speak_lib.h` (API revision 12), used the way the `espeak-ng` program itself
uses them (`src/espeak-ng.c`): synchronous output to a synth callback, the voice by name with a
fallback to a language lookup, the rate in words a minute, UTF-8 text with a final sentence pause.
IPA comes from `espeak_TextToPhonemes` in IPA mode, one clause per call, joined by spaces, which is
what `espeak-ng -q --ipa` prints (one clause a line).

The engine is initialised with phoneme events on (`espeakINITIALIZE_PHONEME_EVENTS |
espeakINITIALIZE_PHONEME_IPA`), so while speaking it also reports every phoneme it utters, in IPA,
with the sample where it starts: an exact phoneme alignment of its own audio (`synthesise_aligned`),
which the `tts` family trains its duration model on. The option only adds events: the audio is
byte-identical with and without it (checked in fresh processes, since the pitch flutter state carries
over between utterances in one process).

The library is one process-global engine and not thread-safe: it is initialised once, on first use,
and every call holds `LOCK`.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import numpy as np

# --- speak_lib.h -------------------------------------------------------------------------------------
AUDIO_OUTPUT_SYNCHRONOUS = 2  # enum espeak_AUDIO_OUTPUT: PLAYBACK, RETRIEVAL, SYNCHRONOUS, SYNCH_PLAYBACK
espeakINITIALIZE_DONT_EXIT = 0x8000  # without it, missing data makes espeak_Initialize call exit()
espeakINITIALIZE_PHONEME_EVENTS = 0x0001  # the synth callback also gets an event per phoneme spoken
espeakINITIALIZE_PHONEME_IPA = 0x0002  # ... named in IPA (UTF-8, stress marks included), not espeak's codes
espeakEVENT_LIST_TERMINATED = 0  # enum espeak_EVENT_TYPE: ends the callback's event array
espeakEVENT_PHONEME = 7
POS_CHARACTER = 1  # enum espeak_POSITION_TYPE
espeakCHARS_UTF8 = 1
espeakPHONEMES = 0x100  # [[...]] in the text is phoneme input (the program sets it)
espeakENDPAUSE = 0x1000  # a sentence pause at the end (the program sets it unless -z)
espeakRATE = 1  # enum espeak_PARAMETER
espeakPHONEMES_IPA = 0x02  # espeak_TextToPhonemes' phoneme mode: IPA as UTF-8
EE_OK = 0

SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
PAUSE = "_"  # the name given here to espeak's pause phonemes, which have an empty IPA name


class EspeakEventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class EspeakEvent(ctypes.Structure):
    """`espeak_EVENT` (speak_lib.h): 40 bytes on 64-bit platforms. For a phoneme event `id.string` is
    the phoneme's name (8 bytes, zero-terminated unless all 8 are used) and `sample` the index of the
    output sample where it starts, counted from the start of the `espeak_Synth` call's audio."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # milliseconds
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", EspeakEventId),
    ]


class EspeakVoice(ctypes.Structure):
    """`espeak_VOICE`, as a selector for `espeak_SetVoiceByProperties`."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


LOCK = threading.RLock()
_engine: EspeakLibrary | None = None


def available() -> bool:
    """Whether the `espeakng-loader` wheel is installed (checked on every call, not cached)."""
    try:
        import espeakng_loader  # noqa: F401
    except ImportError:
        return False
    return True


def engine() -> EspeakLibrary:
    """The process's libespeak-ng from the wheel, initialised on first use."""
    global _engine
    with LOCK:
        if _engine is None:
            try:
                import espeakng_loader
            except ImportError as err:
                raise RuntimeError(
                    "libespeak-ng needs the espeakng-loader wheel: pip install espeakng-loader"
                ) from err
            _engine = EspeakLibrary(espeakng_loader.get_library_path(), espeakng_loader.get_data_path())
        return _engine


class EspeakLibrary:
    """One loaded and initialised libespeak-ng; use through `engine()` (the library is global state)."""

    def __init__(self, library_path: str, data_path: str) -> None:
        data = Path(data_path)
        if not (data / "phontab").is_file():
            raise RuntimeError(f"espeak-ng data is incomplete: {data} has no phontab")
        try:
            lib = ctypes.CDLL(library_path)
        except OSError as err:
            raise RuntimeError(f"could not load libespeak-ng from {library_path}: {err}") from err
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [SYNTH_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetVoiceByProperties.argtypes = [ctypes.POINTER(EspeakVoice)]
        lib.espeak_SetVoiceByProperties.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]  # fmt: skip
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.argtypes = []
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        lib.espeak_Info.restype = ctypes.c_char_p
        # `path` is the folder holding espeak-ng-data (speak_lib.h)
        options = espeakINITIALIZE_DONT_EXIT | espeakINITIALIZE_PHONEME_EVENTS | espeakINITIALIZE_PHONEME_IPA
        rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data.parent).encode(), options)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({rate}) with the data at {data}")
        self.lib, self.sample_rate, self.library_path = lib, int(rate), library_path
        self._chunks: list[bytes] = []
        self._phones: list[tuple[str, int]] = []
        self._callback = SYNTH_CALLBACK(self._collect)  # kept alive as long as the library may call it
        lib.espeak_SetSynthCallback(self._callback)
        path = ctypes.c_char_p()
        self.version = (lib.espeak_Info(ctypes.byref(path)) or b"").decode()
        self.data_path = (path.value or b"").decode()

    def _collect(self, wav: ctypes._Pointer, numsamples: int, events: int | None) -> int:
        if wav and numsamples > 0:  # NULL marks the end; 0 samples is not the end
            self._chunks.append(ctypes.string_at(wav, 2 * numsamples))
        if events:
            array = ctypes.cast(events, ctypes.POINTER(EspeakEvent))
            for i in range(1 << 16):  # the array ends with an event of type LIST_TERMINATED
                event = array[i]
                if event.type == espeakEVENT_LIST_TERMINATED:
                    break
                if event.type == espeakEVENT_PHONEME:
                    name = bytes(event.id.string).split(b"\0", 1)[0].decode("utf-8", "replace")
                    self._phones.append((name or PAUSE, int(event.sample)))
        return 0  # continue

    def set_voice(self, voice: str) -> None:
        """Like `espeak-ng -v VOICE`: by name (a file in espeak-ng-data/voices, `+variant` allowed), else
        the best voice for VOICE as a language."""
        name = voice.encode()
        if self.lib.espeak_SetVoiceByName(name) == EE_OK:
            return
        selector = EspeakVoice(languages=name)
        if self.lib.espeak_SetVoiceByProperties(ctypes.byref(selector)) != EE_OK:
            raise ValueError(f"espeak-ng has no voice {voice!r} (see `espeak-ng --voices`)")

    def synthesise(self, text: str, voice: str, speed: int) -> np.ndarray:
        """`text` spoken by `voice` at `speed` words a minute: int16 (S,) at `sample_rate`."""
        return self.synthesise_aligned(text, voice, speed)[0]

    def synthesise_aligned(
        self, text: str, voice: str, speed: int
    ) -> tuple[np.ndarray, list[tuple[str, int]]]:
        """`text` spoken by `voice` at `speed` words a minute, with the phonemes espeak-ng spoke: int16
        audio (S,) at `sample_rate` and [(IPA name, start sample), ...] in order. Pauses are named
        `PAUSE`; a stressed vowel carries its stress mark ("ˈoʊ"). Phoneme i lasts until phoneme i + 1
        starts; the first starts after a few ms of lead-in, and the last is a zero-length end marker."""
        with LOCK:
            self.set_voice(voice)
            if self.lib.espeak_SetParameter(espeakRATE, int(speed), 0) != EE_OK:
                raise RuntimeError(f"espeak_SetParameter(espeakRATE, {speed}) failed")
            self._chunks, self._phones = [], []
            data = text.encode()
            flags = espeakCHARS_UTF8 | espeakPHONEMES | espeakENDPAUSE
            status = self.lib.espeak_Synth(data, len(data) + 1, 0, POS_CHARACTER, 0, flags, None, None)
            if status != EE_OK or self.lib.espeak_Synchronize() != EE_OK:
                raise RuntimeError(f"espeak_Synth failed ({status}) on {text!r}")
            audio = np.frombuffer(b"".join(self._chunks), dtype=np.int16).copy()
            phones, self._chunks, self._phones = self._phones, [], []
        return audio, phones

    def phonemes(self, text: str, voice: str) -> str:
        """espeak's IPA for `text` in `voice`'s language, clauses joined by spaces."""
        with LOCK:
            self.set_voice(voice)  # selects the translator; TextToPhonemes needs one
            buffer = ctypes.create_string_buffer(text.encode())
            pointer = ctypes.c_void_p(ctypes.addressof(buffer))
            clauses = []
            for _ in range(len(buffer) + 1):  # one clause per call; the pointer becomes NULL at the end
                if not pointer.value:
                    break
                out = self.lib.espeak_TextToPhonemes(
                    ctypes.byref(pointer), espeakCHARS_UTF8, espeakPHONEMES_IPA
                )
                if out:
                    clauses.append(out.decode())
        return " ".join(" ".join(clauses).split())


def synthesise(text: str, voice: str, speed: int) -> tuple[np.ndarray, int]:
    """(int16 samples, sample rate) of `text` spoken by libespeak-ng."""
    lib = engine()
    return lib.synthesise(text, voice, speed), lib.sample_rate


def synthesise_aligned(text: str, voice: str, speed: int) -> tuple[np.ndarray, list[tuple[str, int]], int]:
    """(int16 samples, [(phoneme, start sample), ...], sample rate) of `text` spoken by libespeak-ng."""
    lib = engine()
    audio, phones = lib.synthesise_aligned(text, voice, speed)
    return audio, phones, lib.sample_rate


def phonemes(text: str, voice: str) -> str:
    return engine().phonemes(text, voice)


def version() -> str:
    return engine().version
