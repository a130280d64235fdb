import os

import numpy as np
import pytest

import lib.audio_cache
from lib.audio import AudioError, load_audio, write_audio
from lib.audio_cache import DecodedAudioCache
from tests.test_audio import _noise

RATE = 8000


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """12 s of stereo noise at 44.1 kHz as wav and mp3 (both resampled to 8 kHz when read)."""
    folder = tmp_path_factory.mktemp("audio")
    left = _noise(12, 44100)
    for ext in (".wav", ".mp3"):
        write_audio(folder / f"noise{ext}", np.stack([left, 0.5 * left]), 44100)
    return folder


@pytest.mark.parametrize("ext", [".wav", ".mp3"])
@pytest.mark.parametrize("start,duration", [(0.0, 5.0), (3.37, 5.0), (9.5, 5.0), (2.0, None)])
def test_excerpts_equal_load_audio_up_to_float16(files, tmp_path, ext, start, duration):
    path = files / f"noise{ext}"
    cache = DecodedAudioCache(tmp_path / "decoded", RATE)
    x = cache.load(path, start=start, duration=duration)
    ref = load_audio(path, samplerate=RATE, start=start, duration=duration)
    assert x.dtype == np.float32 and x.shape == ref.shape  # 9.5 + 5 s ends with the file: 2.5 s
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-3 * np.abs(ref).max())


def test_a_file_is_decoded_once_then_read_from_disk(files, tmp_path, monkeypatch):
    cache = DecodedAudioCache(tmp_path / "decoded", RATE)
    first = cache.load(files / "noise.mp3", start=1.0, duration=4.0)
    entries = list((tmp_path / "decoded").rglob("*.npy"))
    assert [str(e) for e in entries] == [cache.entry_path(files / "noise.mp3")]
    assert os.path.getsize(entries[0]) < 12 * RATE * 2 + 200  # float16: 2 bytes per sample

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(lib.audio_cache, "load_audio", no_decoding)
    again = DecodedAudioCache(tmp_path / "decoded", RATE)  # another process, same folder
    np.testing.assert_array_equal(again.load(files / "noise.mp3", start=1.0, duration=4.0), first)
    assert again.load(files / "noise.mp3", start=5.0, duration=4.0).shape == (4 * RATE,)


def test_a_replaced_file_is_decoded_again(tmp_path):
    path = tmp_path / "song.wav"
    write_audio(path, np.full(3 * RATE, 0.25, np.float32), RATE)
    cache = DecodedAudioCache(tmp_path / "decoded", RATE)
    assert cache.load(path)[0] == pytest.approx(0.25)
    write_audio(path, np.full(2 * RATE, -0.5, np.float32), RATE)
    os.utime(path, ns=(1, 1))  # a different modification time even on a coarse clock
    x = cache.load(path)
    assert x.shape == (2 * RATE,) and x[0] == pytest.approx(-0.5)


def test_a_damaged_entry_is_decoded_and_written_again(files, tmp_path):
    cache = DecodedAudioCache(tmp_path / "decoded", RATE)
    good = cache.load(files / "noise.wav", start=2.0, duration=3.0)
    entry = cache.entry_path(files / "noise.wav")
    with open(entry, "r+b") as handle:
        handle.truncate(100)
    np.testing.assert_array_equal(cache.load(files / "noise.wav", start=2.0, duration=3.0), good)
    assert os.path.getsize(entry) > 100


def test_bad_files_and_excerpts_raise_audio_errors_naming_the_file(files, tmp_path):
    cache = DecodedAudioCache(tmp_path / "decoded", RATE)
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"not audio at all" * 100)
    for path in (tmp_path / "missing.wav", broken):
        with pytest.raises(AudioError, match=str(path)):
            cache.load(path, start=0.0, duration=1.0)
    assert not (tmp_path / "decoded").exists()
    with pytest.raises(AudioError, match="no audio samples from 20.00 s"):
        cache.load(files / "noise.wav", start=20.0, duration=1.0)


def test_a_cache_of_the_first_seconds_stores_and_serves_only_those(files, tmp_path):
    path = files / "noise.mp3"
    cache = DecodedAudioCache(tmp_path / "decoded", RATE, seconds=6)
    x = cache.load(path, start=1.25, duration=4.75)  # ends at the limit
    ref = load_audio(path, samplerate=RATE, start=1.25, duration=4.75)
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-3 * np.abs(ref).max())
    assert os.path.getsize(cache.entry_path(path)) < 6.1 * RATE * 2 + 200
    assert cache.entry_path(path) != DecodedAudioCache(tmp_path / "decoded", RATE).entry_path(path)
    for start, duration in ((3.0, 4.0), (0.0, None)):
        with pytest.raises(ValueError, match="this cache keeps the first 6 s"):
            cache.load(path, start=start, duration=duration)
