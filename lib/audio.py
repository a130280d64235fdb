"""Audio decoding and encoding without torchaudio's backends.

wav/flac/ogg are read with soundfile (libsndfile); everything else (mp3, mp4/m4a, webm/opus, ...)
and anything soundfile cannot open goes through PyAV, which bundles its own FFmpeg.

Times are in **seconds** everywhere in this module's interface; an excerpt is located by time
in the file's own sample rate and only that excerpt is decoded (the original code applied
16 kHz sample offsets at the file's native rate). Decoding goes block by block, each block
downmixed and resampled as it comes, so memory holds the output and never a whole file at its
own rate (a 2-hour 44.1 kHz stereo file would be 2.5 GB as float32).

Every failure to read a file raises ``AudioError``, whose message names the file and the reason.
"""

import math
import os
from dataclasses import dataclass

import av
import numpy as np
import soundfile as sf
import soxr

from lib.errors import RunError

SOUNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg", ".aif", ".aiff")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".mp4", ".m4a", ".webm", ".opus", ".aac")

# how much shorter than its header says a decoded file may be before it counts as truncated
TRUNCATION_TOLERANCE_S = 0.5
TRUNCATION_TOLERANCE_REL = 0.02
# decode from a little before the requested start: some demuxers seek only approximately
SEEK_MARGIN_S = 0.5
# extra audio decoded on each side of an excerpt that gets resampled (resampler edge effects)
RESAMPLE_MARGIN_S = 0.05
# samples per channel read from libsndfile at a time (about 1.5 s at 44.1 kHz)
READ_BLOCK = 1 << 16
WAV_TRUNCATED = "truncated: the WAV header declares more audio data than the file holds"
# peak below -80 dBFS: digital silence or a dead capture, nothing a version could match
SILENCE_PEAK = 1e-4
SILENT = "silent: no sample above -80 dBFS"


class AudioError(RunError):
    """A file could not be read as audio. ``path`` and ``reason`` are kept as attributes."""

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class AudioInfo:
    samplerate: int  # Hz, native rate of the file
    duration: float  # seconds, as declared by the header
    channels: int


def _describe(err):
    """Short text for a decoder exception (FFmpeg's own message, without the path repeated)."""
    if isinstance(err, av.error.FFmpegError) and err.strerror:
        return err.strerror
    return f"{type(err).__name__}: {err}"


def check_excerpt(start, duration):
    """Raise ValueError unless ``start`` >= 0 and ``duration`` is None or > 0 (both in seconds);
    returns ``start`` as a float."""
    start = float(start)
    if not start >= 0:
        raise ValueError(f"start must be >= 0 seconds, got {start}")
    if duration is not None and not duration > 0:
        raise ValueError(f"duration must be > 0 seconds or None, got {duration}")
    return start


def _check_file(path):
    if not os.path.exists(path):
        raise AudioError(path, "file not found")
    if os.path.isdir(path):
        raise AudioError(path, "is a directory, not an audio file")
    if os.path.getsize(path) == 0:
        raise AudioError(path, "empty file (0 bytes)")


def _uses_soundfile(path):
    return os.path.splitext(str(path))[1].lower() in SOUNDFILE_EXTENSIONS


def _av_audio_stream(container, path):
    if not container.streams.audio:
        raise AudioError(path, "no audio stream in the file")
    return container.streams.audio[0]


def _av_declared_duration(container, stream):
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _mp4_problem(path):
    """Why an MP4/M4A file that FFmpeg rejects is broken, read from its top-level boxes (size,
    type, ...), or None when it does not look like a damaged MP4."""
    size = os.path.getsize(path)
    seen, pos = [], 0
    with open(path, "rb") as handle:
        while pos + 8 <= size:
            handle.seek(pos)
            head = handle.read(16)
            box_size, name = int.from_bytes(head[:4], "big"), head[4:8].decode("latin-1")
            if box_size == 1 and len(head) == 16:  # 64-bit size
                box_size = int.from_bytes(head[8:16], "big")
            elif box_size == 0:  # runs to the end of the file
                box_size = size - pos
            if box_size < 8 or (not seen and name != "ftyp"):
                return None
            if pos + box_size > size:
                return (
                    f"truncated: its '{name}' box needs {pos + box_size - size:,} more bytes "
                    "than the file holds (an interrupted download?)"
                )
            seen.append(name)
            pos += box_size
    if seen and "moov" not in seen:
        return "incomplete MP4: no 'moov' index box (an interrupted download or recording?)"
    return None


def _av_error(path, what, err):
    """AudioError for an FFmpeg failure; a damaged MP4 says how it is damaged."""
    if os.path.splitext(path)[1].lower() in (".mp4", ".m4a"):
        problem = _mp4_problem(path)
        if problem:
            return AudioError(path, problem)
    return AudioError(path, f"{what} ({_describe(err)})")


def get_info(path):
    """Sample rate, duration (s) and channel count from the header, without decoding."""
    path = str(path)
    _check_file(path)
    if _uses_soundfile(path):
        try:
            info = sf.info(path)
        except Exception:  # mislabelled or exotic file: let FFmpeg have a go
            pass
        else:
            if info.frames <= 0:
                raise AudioError(path, "no audio samples")
            if info.format == "WAV" and _wav_missing_bytes(path) > 0:
                raise AudioError(path, WAV_TRUNCATED)
            return AudioInfo(
                int(info.samplerate), info.frames / info.samplerate, int(info.channels)
            )
    try:
        with av.open(path) as container:
            stream = _av_audio_stream(container, path)
            duration = _av_declared_duration(container, stream)
            samplerate = int(stream.rate or stream.codec_context.sample_rate or 0)
            channels = int(stream.codec_context.channels or 0)
    except AudioError:
        raise
    except Exception as err:
        raise _av_error(path, "not a readable audio file", err) from err
    if samplerate <= 0 or channels <= 0:
        raise AudioError(path, f"invalid header (rate {samplerate}, channels {channels})")
    if duration is None:  # no duration in the header (rare raw streams): count the samples
        sink = _Peak(mono=True)
        _read_pyav(path, _excerpt_plan(0.0, None, None), sink)
        duration = sink.kept / samplerate
    if duration <= 0:
        raise AudioError(path, "no audio samples")
    return AudioInfo(samplerate, duration, channels)


def is_silent(x):
    """True if the audio array (any shape) has no sample above -80 dBFS."""
    return x.size == 0 or float(_abs_max(x)) < SILENCE_PEAK


def load_audio(path, samplerate=16000, start=0.0, duration=None, mono=True, refuse_silence=False):
    """Decode an excerpt of a file as float32.

    Args:
        path: audio file.
        samplerate: output rate in Hz (None keeps the native rate).
        start: excerpt start in seconds.
        duration: excerpt length in seconds (None = until the end of the file).
        mono: average the channels.
        refuse_silence: raise AudioError if the excerpt is silent (whole files to embed:
            a silent one would match every other silent or near-silent file).

    Returns:
        (T,) array if ``mono`` else (channels, T). T = round(duration * samplerate) unless the file
        ends earlier. Resampled audio is scaled down if resampling pushed its peak above 1.
    """
    path = str(path)
    _check_file(path)
    start = check_excerpt(start, duration)
    plan = _excerpt_plan(start, duration, samplerate)
    sink = _Collect(samplerate, mono)
    lead = _decode(path, plan, sink)
    x, rate = sink.result()
    x = x[:, lead:]
    if duration is not None:
        x = x[:, : round(duration * rate)]
    if x.shape[-1] == 0:
        raise AudioError(path, f"no audio samples from {start:.2f} s on")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if refuse_silence and is_silent(x):
        raise AudioError(path, SILENT)
    return x[0] if mono else x


def peak_level(path, mono=True):
    """Largest absolute sample value of a whole file at its own rate, of the channels' average
    when ``mono`` (what the models hear); decoded block by block, so memory stays constant
    whatever the length. Raises AudioError like ``load_audio``."""
    path = str(path)
    _check_file(path)
    sink = _Peak(mono)
    _decode(path, _excerpt_plan(0.0, None, None), sink)
    return sink.peak


def _decode(path, plan, sink):
    """Decode the planned excerpt into ``sink`` with libsndfile where it can open the file, else
    with PyAV; returns the lead (output samples to drop at the start)."""
    lead = _read_soundfile(path, plan, sink) if _uses_soundfile(path) else None
    return _read_pyav(path, plan, sink) if lead is None else lead


def _abs_max(x, axis=None):
    """Largest absolute value of ``x`` (along ``axis``, kept as a size-1 axis): max and -min
    rather than abs, which would make a temporary copy of a long signal."""
    keep = axis is not None
    return np.maximum(x.max(axis=axis, keepdims=keep), -x.min(axis=axis, keepdims=keep))


class _Collect:
    """Receives the decoded audio block by block at the file's rate, (channels, n) float32, and
    downmixes and resamples each block as it arrives, so that memory holds the output and never
    the whole file at its native rate (2 h of 44.1 kHz stereo is 2.5 GB as float32)."""

    def __init__(self, samplerate, mono):
        self.samplerate, self.mono = samplerate, mono
        self.rate = None  # the file's rate, known with the first block
        self.kept = 0  # samples per channel received at the file's rate
        self.stream = None
        self.buffer = self.size = None
        self.expected = None  # seconds of output the header promises (a size hint)

    def reserve(self, seconds):
        """Size the output for about ``seconds`` of audio (a hint from the header: more audio
        still fits, growing the buffer)."""
        self.expected = seconds

    def add(self, block, rate):
        if self.rate is None:
            self._start(rate, block.shape[0])
        self.kept += block.shape[-1]
        if self.mono:
            block = block.mean(0, keepdims=True)
        if self.stream is not None:
            block = self.stream.resample_chunk(np.ascontiguousarray(block.T)).T
        self._append(block)

    def result(self):
        """((channels, T) float32 at the output rate, output rate); a resampled signal whose peak
        went above 1 (resampler overshoot) is scaled back to 1, channel by channel."""
        if self.rate is None:
            return np.zeros((1, 0), np.float32), self.samplerate
        if self.stream is None:
            return self._array(), self.rate
        channels = self.buffer.shape[0]
        self._append(self.stream.resample_chunk(np.zeros((0, channels), np.float32), last=True).T)
        y = self._array()
        if y.shape[-1] > 0:
            np.divide(y, np.maximum(1.0, _abs_max(y, axis=-1)), out=y)
        return y, int(self.samplerate)

    def _start(self, rate, channels):
        self.rate = rate
        channels = 1 if self.mono else channels
        out_rate = rate
        if self.samplerate is not None and int(self.samplerate) != rate:
            out_rate = int(self.samplerate)
            self.stream = soxr.ResampleStream(rate, out_rate, channels, dtype="float32")
        # a second more than the header says: codecs pad the last frame, headers round
        seconds = (self.expected or 0.0) + 1.0
        self.buffer = np.empty((channels, math.ceil(seconds * out_rate)), np.float32)
        self.size = 0

    def _append(self, block):
        n = block.shape[-1]
        if self.size + n > self.buffer.shape[-1]:
            capacity = max(self.buffer.shape[-1] * 3 // 2, self.size + n)
            grown = np.empty((self.buffer.shape[0], capacity), np.float32)
            grown[:, : self.size] = self.buffer[:, : self.size]
            self.buffer = grown
        self.buffer[:, self.size : self.size + n] = block
        self.size += n

    def _array(self):
        """The received audio; a view of the buffer when it is one row and about full."""
        y = self.buffer[:, : self.size]
        if y.shape[0] == 1 and self.size >= 0.9 * self.buffer.shape[-1]:
            return y
        return y.copy()


class _Peak:
    """Receives decoded blocks like ``_Collect`` and keeps only their largest absolute value."""

    def __init__(self, mono):
        self.mono = mono
        self.peak, self.kept = 0.0, 0

    def reserve(self, seconds):
        pass

    def add(self, block, rate):
        self.kept += block.shape[-1]
        if self.mono:
            block = block.mean(0)
        if block.size:
            self.peak = max(self.peak, float(_abs_max(block)))


def _excerpt_plan(start, duration, samplerate):
    """How to read an excerpt from a file of native rate ``rate``: plan(rate) -> (read start s,
    read duration s or None, output samples to drop at the start).

    Without resampling the excerpt is read as asked. With resampling, reading starts a little
    earlier (the resampler's edges then fall outside the excerpt) at a time that lies on both the
    native and the output sample grid, so the excerpt is exactly the crop of a full decode.
    """

    def plan(rate):
        if samplerate is None or int(samplerate) == rate:
            return start, duration, 0
        out = int(samplerate)
        grid = 1.0 / math.gcd(int(rate), out)  # seconds between instants on both grids
        first = round(start * out)
        read_start = max(0.0, math.floor((first / out - RESAMPLE_MARGIN_S) / grid) * grid)
        lead = first - round(read_start * out)
        if duration is None:
            return read_start, None, lead
        return read_start, (first / out - read_start) + duration + RESAMPLE_MARGIN_S, lead

    return plan


def _raise_if_truncated(path, got_end, want_end, declared):
    """got_end: time (s) where decoding stopped; want_end: where it should (None = file end)."""
    tolerance = TRUNCATION_TOLERANCE_S + TRUNCATION_TOLERANCE_REL * declared
    expected = declared if want_end is None else min(want_end, declared)
    if got_end < expected - tolerance:
        raise AudioError(
            path,
            f"truncated: audio ends at {got_end:.2f} s but the header declares {declared:.2f} s",
        )


def _wav_missing_bytes(path):
    """Bytes that a RIFF/WAVE file's ``data`` chunk declares beyond the end of the file.

    libsndfile silently shortens such files to what is there, so a truncated download would
    otherwise look like a shorter, valid file.
    """
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return 0
        size = os.fstat(f.fileno()).st_size
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return 0
            ident, length = chunk[:4], int.from_bytes(chunk[4:], "little")
            if ident == b"data":
                if length in (0, 0xFFFFFFFF):  # streaming writers leave the size open
                    return 0
                return max(0, f.tell() + length - size)
            f.seek(length + (length & 1), os.SEEK_CUR)


def _read_soundfile(path, plan, sink):
    """Decode the planned excerpt into ``sink`` block by block; returns the lead (output samples
    to drop), or None if libsndfile cannot open the file."""
    try:
        handle = sf.SoundFile(path)
    except Exception:
        return None
    if handle.format == "WAV" and _wav_missing_bytes(path) > 0:
        handle.close()
        raise AudioError(path, WAV_TRUNCATED)
    with handle:
        rate, total = handle.samplerate, handle.frames
        start, duration, lead = plan(rate)
        first = round(start * rate)
        if first >= total:
            raise AudioError(path, f"start {start:.2f} s is beyond the end ({total / rate:.2f} s)")
        left = total - first if duration is None else math.ceil(duration * rate)
        sink.reserve(min(left, total - first) / rate)
        try:
            handle.seek(first)
            while left > 0:
                data = handle.read(min(left, READ_BLOCK), dtype="float32", always_2d=True)
                if len(data) == 0:
                    break
                sink.add(data.T, rate)
                left -= len(data)
        except Exception as err:
            raise AudioError(path, f"decoding failed ({_describe(err)})") from err
    got_end = first / rate + sink.kept / rate
    _raise_if_truncated(path, got_end, None if duration is None else start + duration, total / rate)
    return lead


def _read_pyav(path, plan, sink):
    """Decode the planned excerpt into ``sink`` frame by frame; returns the lead (output samples
    to drop)."""
    try:
        container = av.open(path)
    except Exception as err:
        raise _av_error(path, "not a readable audio file", err) from err
    with container:
        stream = _av_audio_stream(container, path)
        declared = _av_declared_duration(container, stream)
        start, duration, lead = plan(int(stream.rate or stream.codec_context.sample_rate or 0))
        if declared:
            left = max(0.0, declared - start)
            sink.reserve(left if duration is None else min(duration, left))
        try:
            got_end = _decode_excerpt(container, stream, start, duration, sink)
            if got_end is None:  # the seek overshot the start: decode from the beginning instead
                container.seek(0, stream=stream)
                got_end = _decode_excerpt(container, stream, start, duration, sink, seek=False)
        except AudioError:
            raise
        except Exception as err:
            raise _av_error(path, "decoding failed", err) from err
    if sink.kept == 0:
        extra = f" (file is {declared:.2f} s long)" if declared else ""
        raise AudioError(path, f"no audio samples from {start:.2f} s on{extra}")
    if declared:
        _raise_if_truncated(path, got_end, None if duration is None else start + duration, declared)
    return lead


def _decode_excerpt(container, stream, start, duration, sink, seek=True):
    """Decode [start, start + duration) into ``sink``; returns the time (s) where decoding
    stopped, or None, with nothing given to the sink, when after a seek the position is unknown
    or past ``start`` (the caller then decodes from 0)."""
    seeked = seek and start > SEEK_MARGIN_S and stream.time_base is not None
    if seeked:
        target = int((start - SEEK_MARGIN_S) / stream.time_base)
        container.seek(target, stream=stream, backward=True, any_frame=False)
    to_float = av.AudioResampler(format="fltp")  # keeps layout and rate
    # time 0 of the audio is the stream's start time (mp3 encoder delay shifts it)
    origin = stream.start_time or 0
    kept, want, position = 0, None, None
    end_time = start
    for frame in container.decode(stream):
        rate = frame.sample_rate
        if want is None and duration is not None:
            want = math.ceil(duration * rate)
        if position is not None:  # counting samples avoids coarse timestamps (webm: 1 ms)
            t0 = position
        elif frame.pts is not None and frame.time_base is not None:
            t0 = float((frame.pts - origin) * frame.time_base)
        elif seeked:  # no timestamps to tell where the seek landed
            return None
        else:
            t0 = 0.0
        if seeked and kept == 0 and t0 > start + 1.0 / rate:
            return None
        position = t0 + frame.samples / rate
        if position <= start:
            continue
        data = np.concatenate([f.to_ndarray() for f in to_float.resample(frame)], axis=-1)
        skip = max(0, round((start - t0) * rate))
        data = data[:, skip:]
        if want is not None:
            data = data[:, : want - kept]
        sink.add(data, rate)
        kept += data.shape[-1]
        end_time = t0 + (skip + data.shape[-1]) / rate
        if want is not None and kept >= want:
            break
    return end_time


###################################################################################################
# Writing (test fixtures and the demo corpus)
###################################################################################################

# extension -> (container format, codec, sample format)
_AV_WRITERS = {
    ".mp3": ("mp3", "libmp3lame", "fltp"),
    ".m4a": ("mp4", "aac", "fltp"),
    ".mp4": ("mp4", "aac", "fltp"),
    ".webm": ("webm", "libopus", "flt"),
    ".opus": ("ogg", "libopus", "flt"),
}


def write_audio(path, x, samplerate, bitrate=128000):
    """Write float audio (T,) or (channels, T) in [-1, 1]; the format follows the extension."""
    path = str(path)
    x = np.atleast_2d(np.asarray(x, dtype=np.float32))
    ext = os.path.splitext(path)[1].lower()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if ext in SOUNDFILE_EXTENSIONS:
        subtype = "VORBIS" if ext == ".ogg" else None
        sf.write(path, x.T, samplerate, subtype=subtype)
        return
    if ext not in _AV_WRITERS:
        raise ValueError(f"{path}: cannot write audio with extension {ext!r}")
    fmt, codec, sample_fmt = _AV_WRITERS[ext]
    rate = 48000 if codec == "libopus" else int(samplerate)
    if rate != samplerate:
        x = soxr.resample(x.T, samplerate, rate).T.reshape(x.shape[0], -1).astype(np.float32)
    layout = "mono" if x.shape[0] == 1 else "stereo"
    with av.open(path, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = layout
        stream.bit_rate = bitrate
        hop = 4096
        for i in range(0, x.shape[1], hop):
            block = x[:, i : i + hop]
            if sample_fmt == "flt":  # packed: one row of interleaved samples
                block = block.T.reshape(1, -1)
            block = np.ascontiguousarray(block)
            frame = av.AudioFrame.from_ndarray(block, format=sample_fmt, layout=layout)
            frame.sample_rate = rate
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
