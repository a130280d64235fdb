import os
import tracemalloc

import numpy as np
import pytest
import soxr
from scipy.signal import butter, lfilter

from lib.audio import (
    SILENT,
    AudioError,
    get_info,
    is_silent,
    load_audio,
    peak_level,
    write_audio,
)

RATE = 44100
SECONDS = 30
FORMATS = [".wav", ".flac", ".ogg", ".mp3", ".m4a", ".webm", ".opus"]
# webm stores millisecond timestamps, so an excerpt after a seek may be off by ~1 ms (16 samples)
MAX_LAG = {".webm": 16}


def _noise(seconds, rate, seed=0):
    """Low-passed noise: no periodicity, so alignment errors show up, and lossy codecs keep it."""
    x = np.random.default_rng(seed).standard_normal(int(seconds * rate))
    b, a = butter(4, 3000 / (rate / 2))
    x = lfilter(b, a, x)
    return (x / (1.2 * np.abs(x).max())).astype(np.float32)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audio")
    left = _noise(SECONDS, RATE)
    stereo = np.stack([left, 0.5 * left])
    for ext in FORMATS:
        write_audio(folder / f"noise{ext}", stereo, RATE)
    write_audio(folder / "mono16k.wav", _noise(5, 16000, seed=1), 16000)
    return folder


def _lag(y, ref, search=200):
    """Shift (samples) that best aligns y with ref, and the correlation there."""
    a = y[search : len(y) - search]
    scores = [np.dot(a, ref[search + k : len(y) - search + k]) for k in range(-search, search + 1)]
    best = int(np.argmax(scores))
    norm = np.sqrt(np.dot(a, a) * np.dot(ref[search:-search], ref[search:-search]))
    return best - search, scores[best] / norm


@pytest.mark.parametrize("ext", FORMATS)
def test_info_from_header(audio_dir, ext):
    info = get_info(audio_dir / f"noise{ext}")
    assert info.channels == 2
    assert info.samplerate == (48000 if ext in (".webm", ".opus") else RATE)
    assert info.duration == pytest.approx(SECONDS, abs=0.05)


@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize("start", [0.0, 0.3, 10.0, 26.5])
def test_excerpt_is_decoded_at_the_right_time(audio_dir, ext, start):
    duration = 3.0
    y = load_audio(audio_dir / f"noise{ext}", 16000, start=start, duration=duration)
    ref = load_audio(audio_dir / "noise.wav", 16000, start=start, duration=duration)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - 48000) <= 16 and len(ref) == 48000
    n = min(len(y), len(ref))
    lag, corr = _lag(y[:n], ref[:n])
    assert abs(lag) <= MAX_LAG.get(ext, 0)
    assert corr > 0.95


def test_excerpt_of_wav_is_sample_exact_at_native_rate(audio_dir):
    full = load_audio(audio_dir / "noise.wav", samplerate=None, mono=False)
    part = load_audio(
        audio_dir / "noise.wav", samplerate=None, start=12.5, duration=0.5, mono=False
    )
    assert full.shape == (2, RATE * SECONDS)
    first = round(12.5 * RATE)
    np.testing.assert_array_equal(part, full[:, first : first + round(0.5 * RATE)])
    mono = load_audio(audio_dir / "noise.wav", samplerate=None, start=12.5, duration=0.5)
    np.testing.assert_allclose(mono, part.mean(0), atol=1e-7)


def test_excerpt_near_the_end_is_shorter(audio_dir):
    y = load_audio(audio_dir / "noise.m4a", 16000, start=SECONDS - 1.0, duration=5.0)
    assert abs(len(y) - 16000) <= 16


def test_resampling_keeps_frequency_and_level(tmp_path):
    t = np.arange(RATE * 2) / RATE
    write_audio(tmp_path / "tone.flac", 0.5 * np.sin(2 * np.pi * 1000 * t), RATE)
    y = load_audio(tmp_path / "tone.flac", 16000)
    assert len(y) == 32000
    spectrum = np.abs(np.fft.rfft(y))
    assert np.argmax(spectrum) * 16000 / len(y) == pytest.approx(1000, abs=1)
    assert np.abs(y).max() == pytest.approx(0.5, abs=0.01)


def test_native_16k_file_is_not_resampled(audio_dir):
    import soundfile as sf

    raw, rate = sf.read(audio_dir / "mono16k.wav", dtype="float32")
    assert rate == 16000
    np.testing.assert_array_equal(load_audio(audio_dir / "mono16k.wav", 16000), raw)


# --------------------------------------------------------------------------------------------------
# bad files: one exception type, naming the file
# --------------------------------------------------------------------------------------------------


def _make_bad_files(audio_dir, folder):
    good_m4a = (audio_dir / "noise.m4a").read_bytes()
    good_wav = (audio_dir / "noise.wav").read_bytes()
    good_mp3 = (audio_dir / "noise.mp3").read_bytes()
    rng = np.random.default_rng(0)
    corrupt = bytearray(good_m4a)
    for i in range(2000, len(corrupt), 97):
        corrupt[i] = int(rng.integers(256))
    files = {
        "empty.mp3": b"",
        "text.mp3": b"this is a text file, not audio\n" * 20,
        "text.wav": b"RIFF????WAVEnope" * 10,
        "random.flac": rng.integers(0, 256, 50000, dtype=np.uint8).tobytes(),
        "truncated.m4a": good_m4a[: len(good_m4a) // 3],
        "truncated.wav": good_wav[: len(good_wav) // 5],
        "corrupt.m4a": bytes(corrupt),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "folder.mp3").mkdir()
    # an mp3 cut short: its header (Xing tag) still declares the full duration
    (folder / "truncated.mp3").write_bytes(good_mp3[: len(good_mp3) // 3])
    return sorted(files) + ["folder.mp3", "missing.ogg", "truncated.mp3"]


def test_bad_files_raise_audio_error_naming_the_file(audio_dir, tmp_path):
    names = _make_bad_files(audio_dir, tmp_path)
    for name in names:
        path = tmp_path / name
        with pytest.raises(AudioError) as info:
            load_audio(path, 16000)
        assert str(path) in str(info.value) and info.value.path == str(path)
        if name != "truncated.mp3":  # its header is intact: only decoding reveals the cut
            with pytest.raises(AudioError, match=str(path)):
                get_info(path)


def test_bad_file_reasons_are_specific(audio_dir, tmp_path):
    _make_bad_files(audio_dir, tmp_path)
    reasons = {
        "empty.mp3": "empty file",
        "folder.mp3": "is a directory",
        "missing.ogg": "file not found",
        "text.mp3": "not a readable audio file",
        "truncated.wav": "truncated",
        "truncated.mp3": "truncated",
    }
    for name, reason in reasons.items():
        with pytest.raises(AudioError, match=reason):
            load_audio(tmp_path / name)


def _faststart_m4a(path, seconds=4.0, rate=16000):
    """An M4A with its 'moov' index before the audio data, as streaming encoders write it."""
    import av

    x = _noise(seconds, rate)[None]
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("aac", rate=rate)
        stream.layout = "mono"
        for i in range(0, x.shape[1], 4096):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(x[:, i : i + 4096]), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = rate, i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def test_damaged_m4a_says_how_it_is_damaged(audio_dir, tmp_path):
    plain = (audio_dir / "noise.m4a").read_bytes()  # 'moov' after the audio data
    _faststart_m4a(tmp_path / "fast.m4a")
    fast = (tmp_path / "fast.m4a").read_bytes()
    assert fast.index(b"moov") < fast.index(b"mdat") and plain.index(b"mdat") < plain.index(b"moov")
    assert abs(len(load_audio(tmp_path / "fast.m4a")) - 4 * 16000) <= 1024  # AAC frame padding
    for name, data in {"plain": plain, "fast": fast}.items():
        cut = tmp_path / f"{name}-cut.m4a"
        cut.write_bytes(data[: len(data) // 2])
        # with the index first the header still reads: only decoding reveals the cut
        for read in (load_audio, get_info) if name == "plain" else (load_audio,):
            with pytest.raises(AudioError, match="truncated: its 'mdat' box needs"):
                read(cut)
    # every box complete but the index missing: a recording that was never finalised
    mdat = plain.index(b"mdat") - 4
    size = int.from_bytes(plain[mdat : mdat + 4], "big")
    (tmp_path / "nomoov.m4a").write_bytes(plain[: mdat + size])
    with pytest.raises(AudioError, match="incomplete MP4: no 'moov'"):
        load_audio(tmp_path / "nomoov.m4a")
    # text named .m4a is not taken for a damaged MP4
    (tmp_path / "text.m4a").write_text("not audio at all\n" * 20)
    with pytest.raises(AudioError, match="not a readable audio file"):
        load_audio(tmp_path / "text.m4a")


def test_silence_is_refused_only_when_asked(tmp_path):
    rate = 16000
    quiet = np.zeros(2 * rate, np.float32)
    quiet[100] = 5e-5  # below -80 dBFS
    write_audio(tmp_path / "silence.wav", quiet, rate)
    assert is_silent(quiet) and not is_silent(quiet + 2e-4) and is_silent(np.zeros(0))
    assert len(load_audio(tmp_path / "silence.wav", rate)) == 2 * rate
    with pytest.raises(AudioError, match=SILENT) as info:
        load_audio(tmp_path / "silence.wav", rate, refuse_silence=True)
    assert info.value.path == str(tmp_path / "silence.wav")
    write_audio(tmp_path / "tone.wav", quiet + 0.01, rate)
    assert len(load_audio(tmp_path / "tone.wav", rate, refuse_silence=True)) == 2 * rate


def test_truncated_mp3_start_still_reads_but_end_does_not(audio_dir, tmp_path):
    _make_bad_files(audio_dir, tmp_path)
    # a short check at the start passes; one near the declared end catches the cut download
    assert len(load_audio(tmp_path / "truncated.mp3", 16000, start=0, duration=1)) == 16000
    with pytest.raises(AudioError):
        load_audio(tmp_path / "truncated.mp3", 16000, start=SECONDS - 2, duration=1)


def test_start_beyond_end_and_bad_arguments(audio_dir):
    for ext in (".wav", ".m4a"):
        with pytest.raises(AudioError, match="beyond the end|no audio samples"):
            load_audio(audio_dir / f"noise{ext}", 16000, start=SECONDS + 5, duration=1)
    with pytest.raises(ValueError):
        load_audio(audio_dir / "noise.wav", start=-1)
    with pytest.raises(ValueError):
        load_audio(audio_dir / "noise.wav", duration=0)


def test_write_audio_rejects_unknown_extension(tmp_path):
    with pytest.raises(ValueError, match=".xyz"):
        write_audio(tmp_path / "a.xyz", np.zeros(100), 16000)
    assert not os.path.exists(tmp_path / "a.xyz")


def test_resampled_excerpt_has_clean_edges(tmp_path):
    # a ramp has a large value at any excerpt start: resampling a bare excerpt would ring there
    slope = 0.02
    write_audio(tmp_path / "ramp.wav", np.arange(RATE * 20) / RATE * slope, RATE)
    y = load_audio(tmp_path / "ramp.wav", 16000, start=7.0, duration=5.0)
    expected = (7.0 + np.arange(5 * 16000) / 16000) * slope
    assert len(y) == 5 * 16000
    np.testing.assert_allclose(y, expected, atol=1e-4)


@pytest.mark.parametrize("rate", [44100, 22050, 48000])
def test_resampled_excerpt_equals_crop_of_full_decode(tmp_path, rate):
    # reading starts on an instant common to both sample grids, so an excerpt is exactly the
    # corresponding part of the whole file decoded and resampled at once
    write_audio(tmp_path / "noise.wav", _noise(20, rate, seed=4), rate)
    whole = load_audio(tmp_path / "noise.wav", 16000)
    for start in (0.0, 0.03, 3.14159, 12.3456):
        part = load_audio(tmp_path / "noise.wav", 16000, start=start, duration=4.0)
        first = round(start * 16000)
        np.testing.assert_allclose(part, whole[first : first + len(part)], atol=1e-5)


# --------------------------------------------------------------------------------------------------
# whole files are decoded block by block: memory holds the output, not the file at its own rate
# --------------------------------------------------------------------------------------------------


def _one_shot(path, samplerate):
    """What decoding everything at the file's rate and resampling at once gives (the reference
    the streaming decoder must reproduce)."""
    native = load_audio(path, samplerate=None, mono=False)
    rate = get_info(path).samplerate
    y = soxr.resample(native.mean(0), rate, samplerate)
    return (y / max(1.0, float(np.abs(y).max()))).astype(np.float32)


@pytest.mark.parametrize("ext", [".wav", ".flac", ".mp3", ".m4a", ".opus"])
def test_streamed_whole_file_equals_one_shot_resampling(audio_dir, ext):
    path = audio_dir / f"noise{ext}"
    np.testing.assert_array_equal(load_audio(path, 16000), _one_shot(path, 16000))


@pytest.mark.parametrize("ext", [".wav", ".mp3", ".m4a"])
def test_excerpt_equals_the_same_part_of_the_whole_file(audio_dir, ext):
    whole = load_audio(audio_dir / f"noise{ext}", 16000)
    # inside the file an excerpt is the crop of the whole load; lossy frames decoded after a
    # seek may differ by a sample of alignment (MAX_LAG) and by decoder state at the seek point
    for start in (0.0, 7.25, 21.0):
        part = load_audio(audio_dir / f"noise{ext}", 16000, start=start, duration=4.0)
        first = round(start * 16000)
        if ext == ".wav":
            np.testing.assert_allclose(part, whole[first : first + len(part)], atol=1e-5)
        else:
            lag, corr = _lag(part, whole[first : first + len(part)])
            assert lag == 0 and corr > 0.999


@pytest.mark.parametrize("ext", [".wav", ".mp3", ".m4a"])
def test_whole_file_decoding_does_not_hold_the_native_rate_signal(tmp_path, ext):
    # 60 s of 44.1 kHz stereo is 21 MB as float32 at the file's rate; 16 kHz mono out is 3.8 MB
    seconds = 60
    left = _noise(seconds, RATE, seed=5)
    write_audio(tmp_path / f"long{ext}", np.stack([left, 0.5 * left]), RATE)
    native_bytes = 2 * seconds * RATE * 4
    tracemalloc.start()
    try:
        y = load_audio(tmp_path / f"long{ext}", 16000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert abs(len(y) - seconds * 16000) <= 16000 * 0.1
    assert peak < 0.4 * native_bytes, f"peak {peak / 2**20:.1f} MiB"
    assert peak < 1.5 * y.nbytes  # the output plus a few blocks in flight


@pytest.mark.parametrize("ext", [".wav", ".flac", ".mp3", ".m4a"])
def test_peak_level_of_a_whole_file(audio_dir, ext):
    path = audio_dir / f"noise{ext}"
    stereo = load_audio(path, samplerate=None, mono=False)
    assert peak_level(path, mono=False) == float(np.abs(stereo).max())
    assert peak_level(path) == float(np.abs(load_audio(path, samplerate=None)).max())
    assert peak_level(path) < peak_level(path, mono=False)  # the right channel is half the left


def test_peak_level_names_a_broken_file(audio_dir, tmp_path):
    _make_bad_files(audio_dir, tmp_path)
    with pytest.raises(AudioError, match="truncated") as info:
        peak_level(tmp_path / "truncated.mp3")
    assert info.value.path == str(tmp_path / "truncated.mp3")


def test_duration_is_counted_when_the_header_has_none(audio_dir, monkeypatch):
    import lib.audio

    monkeypatch.setattr(lib.audio, "_av_declared_duration", lambda container, stream: None)
    info = get_info(audio_dir / "noise.m4a")
    assert info.duration == pytest.approx(SECONDS, abs=0.05)
