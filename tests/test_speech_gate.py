"""The speech gate: silence, a steady tone and noise are not a voice and get no words;
real (espeak) speech is a voice and keeps its words."""

import numpy as np
import pytest

from level1_affect import audio as audio_lib
from level1_affect.schema import VOICE_PROSODY
from level1_affect.whisper import transcribe as tr_lib

SR = 16000
ACTIVE = VOICE_PROSODY.index("voice_active")


def _signals():
    rng = np.random.default_rng(0)
    t = np.arange(3 * SR) / SR
    return {"silence": np.zeros(3 * SR, np.float32),
            "dither": rng.normal(0, 1e-4, 3 * SR).astype(np.float32),
            "tone": (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32),
            "noise": rng.normal(0, 0.1, 3 * SR).astype(np.float32)}


@pytest.fixture(scope="module")
def speech():
    from ahjax.core.data.speech import synthesize
    import librosa
    sp = synthesize("I want to cut down on drinking, but honestly it helps me relax.",
                    rate_wpm=170)
    x = librosa.resample(np.asarray(sp.samples, np.float32), orig_sr=sp.sample_rate,
                         target_sr=SR)
    pad = np.zeros(SR // 2, np.float32)
    return np.concatenate([pad, x, pad]).astype(np.float32)


@pytest.mark.parametrize("name", ["silence", "dither", "tone", "noise"])
def test_silence_tone_and_noise_are_no_voice(name):
    x = _signals()[name]
    assert audio_lib.speech_regions(x, SR) == []
    pros = audio_lib.prosody(x, SR, 25.0, 75)
    assert pros[:, ACTIVE].sum() == 0 and pros[:, VOICE_PROSODY.index("pause")].sum() == 0


def test_real_speech_is_a_voice(speech):
    regions = audio_lib.speech_regions(speech, SR)
    assert regions
    covered = sum(b - a for a, b in regions)
    duration = len(speech) / SR
    assert 0.5 * (duration - 1.0) < covered <= duration
    assert regions[0][0] >= 0.4            # the half second of silence before it is not speech
    pros = audio_lib.prosody(speech, SR, 25.0, int(duration * 25))
    assert pros[:, ACTIVE].mean() > 0.5
    # Speech in noise is still speech.
    noisy = speech + np.random.default_rng(1).normal(0, 0.003, speech.size).astype(np.float32)
    assert audio_lib.speech_regions(noisy, SR)


class _Recorder:
    """A stand-in Whisper that records whether it ran and returns fixed words."""

    def __init__(self, words):
        self.words, self.calls = words, 0

    def transcribe(self, audio, **kwargs):
        self.calls += 1
        segs = [{"start": w["start"], "end": w["end"], "text": " " + w["word"]} for w in self.words]
        return tr_lib.Transcript("en", " ".join(w["word"] for w in self.words), segs,
                                 list(self.words))


@pytest.mark.parametrize("name", ["silence", "tone", "noise"])
def test_no_speech_means_no_asr_and_a_warning(name):
    model = _Recorder([{"word": "invented", "start": 0.5, "end": 1.0}])
    out, warnings = tr_lib.transcribe_speech(model, _signals()[name])
    assert model.calls == 0 and out.words == [] and out.text == "" and out.language is None
    assert warnings == ["no speech detected in the audio: the transcript is empty"]


def test_words_far_from_speech_are_dropped(speech):
    regions = audio_lib.speech_regions(speech, SR)
    inside = (regions[0][0] + 0.2, regions[0][0] + 0.5)
    end = len(speech) / SR
    model = _Recorder([{"word": "cut", "start": inside[0], "end": inside[1]},
                       {"word": "ghost", "start": end + 2.0, "end": end + 2.5}])
    out, warnings = tr_lib.transcribe_speech(model, speech)
    assert model.calls == 1 and [w["word"] for w in out.words] == ["cut"]
    assert out.text == "cut" and out.language == "en"
    assert warnings == ["1 transcribed word(s) outside detected speech were dropped"]


def test_real_whisper_on_silence_runs_nothing_and_says_so():
    from level1_affect.whisper.transcribe import WhisperJax
    out, warnings = tr_lib.transcribe_speech(WhisperJax.load(), _signals()["silence"])
    assert out.words == [] and out.language is None and warnings


@pytest.mark.slow
def test_native_mediapipe_logs_are_quiet_unless_asked_for(tmp_path):
    """MediaPipe's C++ lines (absl 'W0000 ...') no longer reach stderr by default."""
    import os
    import subprocess
    import sys
    script = tmp_path / "face.py"
    script.write_text(
        "from level1_affect.face import FaceEncoder\n"
        "import numpy as np\n"
        "enc = FaceEncoder()\n"
        "out = enc.encode(iter([np.zeros((64, 64, 3), np.uint8)] * 3), 25.0)\n"
        "print('frames', len(out['face_present']))\n")
    env = dict(os.environ)
    env.pop("AHJAX_NATIVE_LOGS", None)
    quiet = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                           env=env, cwd=os.getcwd())
    assert quiet.returncode == 0, quiet.stderr[-1500:]
    assert "frames 3" in quiet.stdout and "W0000" not in quiet.stderr
    loud = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=dict(env, AHJAX_NATIVE_LOGS="1"), cwd=os.getcwd())
    assert loud.returncode == 0 and "W0000" in loud.stderr
