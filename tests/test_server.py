"""The embedded server over loopback on the real model: accuracy, languages, formats, the
hosted docs' own examples. (The contract, errors and money are checked on the fake engine
in test_server_contract.py; the weights' assembly here needs no inference.)"""

from __future__ import annotations

import pytest
import requests

from tests.conftest import audio_file, reference, wer


def post(server, path="/transcribe", key=None, **kwargs):
    headers = {"x-api-key": key if key is not None else server.api_key}
    return requests.post(server.api_url + path, headers=headers, timeout=300, **kwargs)


# -- on the real model -------------------------------------------------------------------


def test_librispeech_wer_under_10_percent(server):
    name = "librispeech_1995-1837-0001.wav"
    with open(audio_file(name), "rb") as f:
        r = post(server, files={"audio": (name, f, "audio/wav")}, data={"model": "Whisper-Large-V3", "language": "en"})
    assert r.status_code == 200, r.text
    body = r.json()
    score = wer(reference(name), body["transcription"])
    print(f"WER {name}: {score:.3f}")
    assert score < 0.10
    meta = body["metadata"]
    assert meta["model"] == "Whisper-Large-V3" and meta["currency"] == "USD" and meta["language"] == "en"
    assert meta["actualDuration"] == pytest.approx(8.73 / 60, abs=0.002)
    assert meta["cost"] == pytest.approx(0.01 * 8.73 / 60, abs=1e-5)
    assert "whisper-base" in meta["weights"]
    assert meta["fileName"] == name and meta["fileSize"] == audio_file(name).stat().st_size


@pytest.mark.parametrize("name", [
    "jfk_inaugural.flac",               # FLAC, 44.1 kHz stereo 24-bit
    "jfk_inaugural_whispercpp.mp3",     # MP3
    "librispeech_1995-1837-0001.ogg",   # Ogg Vorbis
    "aishell_BAC009S0724W0121.m4a",     # M4A/AAC
    "timit_LDC93S1.wav",                # WAV
    "fw_stereo_diarization.wav",        # stereo WAV, mixed down
])
def test_every_format_decodes_whatever_name_and_type_the_client_sends(server, name):
    with open(audio_file(name), "rb") as f:
        # The hosted docs' example labels every upload audio.mp3 / audio/mpeg.
        r = post(server, files={"audio": ("audio.mp3", f, "audio/mpeg")}, data={"model": "Wizper"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["transcription"].strip()
    assert body["metadata"]["actualDuration"] > 0


def test_opus_in_ogg_decodes(server, tmp_path):
    av = pytest.importorskip("av")
    from stt.server.audio import decode

    # Make an Opus file from real speech with PyAV itself (no ffmpeg binary needed).
    samples = decode(str(audio_file("librispeech_1995-1837-0001.wav")))
    path = tmp_path / "speech.opus"
    with av.open(str(path), "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=48000)
        stream.layout = "mono"
        import numpy as np

        frame = av.AudioFrame.from_ndarray((samples * 32767).astype(np.int16)[None, :], format="s16", layout="mono")
        frame.sample_rate = 16000
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        for f in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(f):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with open(path, "rb") as f:
        r = post(server, files={"audio": ("x.bin", f, "application/octet-stream")},
                 data={"model": "Wizper", "language": "en"})
    assert r.status_code == 200, r.text
    assert wer(reference("librispeech_1995-1837-0001.wav"), r.json()["transcription"]) < 0.2


@pytest.mark.parametrize("name,lang", [
    ("leopard_test_de.wav", "de"), ("leopard_test_es.wav", "es"), ("leopard_test_fr.wav", "fr"),
    ("leopard_test_ja.wav", "ja"), ("ru_deepspeech_sample.wav", "ru"), ("aishell_BAC009S0724W0121.wav", "zh"),
])
def test_language_detection(server, name, lang):
    with open(audio_file(name), "rb") as f:
        r = post(server, files={"audio": (name, f)}, data={"model": "Wizper", "language": "auto"})
    assert r.status_code == 200, r.text
    assert r.json()["metadata"]["language"] == lang


def test_iso_639_3_code_is_accepted(server):
    with open(audio_file("leopard_test_de.wav"), "rb") as f:
        r = post(server, files={"audio": ("de.wav", f)}, data={"model": "Wizper", "language": "deu"})
    assert r.status_code == 200, r.text
    assert r.json()["metadata"]["language"] == "de"


def test_seed_example_direct_upload(server):
    """The hosted docs' multipart example, as written, with only the base URL and key changed."""
    BASE_URL = server.api_url  # noqa: N806
    API_KEY = server.api_key  # noqa: N806

    def transcribe_file(file_path, model="Whisper-Large-V3", language="auto"):
        headers = {"x-api-key": API_KEY}
        with open(file_path, 'rb') as audio_file:
            files = {
                'audio': ('audio.mp3', audio_file, 'audio/mpeg')
            }
            data = {
                'model': model,
                'language': language
            }
            response = requests.post(
                f"{BASE_URL}/transcribe",
                headers=headers,
                files=files,
                data=data
            )
            if response.status_code == 200:
                return response.json()
            else:
                raise Exception(f"Error: {response.status_code} - {response.text}")

    result = transcribe_file(audio_file("jfk_inaugural_whispercpp.mp3"), model="Whisper-Large-V3", language="en")
    assert "ask not what your country" in result["transcription"].lower()
    assert result["metadata"]["cost"] > 0
    assert result["metadata"]["chargedDuration"] == pytest.approx(11 / 60, abs=0.01)


def test_seed_example_audio_url(server, files_url):
    """The hosted docs' URL example (JSON audioUrl), with only the base URL and key changed."""

    def transcribe_url(audio_url):
        headers = {
            "x-api-key": server.api_key,
            "Content-Type": "application/json"
        }
        data = {
            "audioUrl": audio_url,
            "model": "Wizper",
            "language": "en"
        }
        response = requests.post(f"{server.api_url}/transcribe", headers=headers, json=data)
        return response.json()

    result = transcribe_url(f"{files_url}/librispeech_1995-1837-0001.wav")
    assert wer(reference("librispeech_1995-1837-0001.wav"), result["transcription"]) < 0.15


# -- weights ------------------------------------------------------------------------------


def test_weights_checksum_mismatch_is_a_clear_error(tmp_path):
    from stt.server.weights import WeightsError, bundled_model_dir

    with pytest.raises(WeightsError, match="sha256"):
        bundled_model_dir(tmp_path, expected_sha256="0" * 64)
    assert not any(p.name.startswith("whisper-base") for p in tmp_path.iterdir())


def test_bundled_weights_assemble_and_verify(tmp_path):
    from stt.server.weights import MODEL_BIN_SHA256, bundled_model_dir

    model_dir = bundled_model_dir(tmp_path)
    assert (model_dir / ".verified").read_text().strip() == MODEL_BIN_SHA256
    assert {p.name for p in model_dir.iterdir()} >= {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"}
    assert bundled_model_dir(tmp_path) == model_dir  # second call reuses it
