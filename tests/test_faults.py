"""Injected faults (`BULKSCRIBE_SERVER_FAULTS`): the spec, its determinism, and what a client
really sees over loopback (closed connections are transport errors; an answer lost after
processing was charged and recorded, so an Idempotency-Key replays it)."""

from __future__ import annotations

import httpx
import pytest

from stt.server.faults import KINDS, FaultPlan
from stt.server.launcher import EmbeddedServer
from tests.conftest import audio_file

TIMIT = "timit_LDC93S1.wav"


def plan(spec: str) -> FaultPlan:
    parsed = FaultPlan.parse(spec)
    assert parsed is not None
    return parsed


def test_the_spec():
    p = plan("all=0.3, seed=7, 429=0.1, delay_s=2.5, retry_after=4, on=submit")
    assert p.rates == pytest.approx({"429": 0.1, "500": 0.05, "503": 0.05, "close_before": 0.05,
                                     "close_after": 0.05, "delay": 0.05})
    assert p.seed == "7" and p.delay_s == 2.5 and p.retry_after_s == 4 and p.endpoints == {"submit"}
    assert FaultPlan.parse("") is None and FaultPlan.parse(" , ") is None


@pytest.mark.parametrize("spec,words", [("all=1.5", "add up to 1"), ("429=-0.1", ">= 0"), ("bogus=1", "names"),
                                        ("429", "name=value"), ("on=submit+upload", "endpoints")])
def test_bad_specs_say_what_is_wrong(spec, words):
    with pytest.raises(ValueError, match=words):
        FaultPlan.parse(spec)


def test_the_same_seed_gives_the_same_faults_and_the_rates_hold():
    first, again, other = plan("all=0.3,seed=11"), plan("all=0.3,seed=11"), plan("all=0.3,seed=12")
    a = [first.next_fault("submit") for _ in range(3000)]
    assert a == [again.next_fault("submit") for _ in range(3000)]
    assert a != [other.next_fault("submit") for _ in range(3000)]
    faulted = [x for x in a if x is not None]
    assert 0.26 < len(faulted) / len(a) < 0.34
    assert set(faulted) == set(KINDS)


def fault_server(spec: str, **kwargs: object) -> EmbeddedServer:
    return EmbeddedServer(env={"BULKSCRIBE_SERVER_ENGINE": "fake", "BULKSCRIBE_SERVER_FAULTS": spec},
                          **kwargs)  # type: ignore[arg-type]


def usage(http: httpx.Client, srv: EmbeddedServer) -> list[dict]:
    return http.get(srv.api_url + "/usage").json()["charges"]


def test_a_client_sees_exactly_the_planned_faults_in_order():
    spec = "all=0.6,seed=3,retry_after=2,on=status"
    local = plan(spec)
    with fault_server(spec) as srv, httpx.Client(trust_env=False, timeout=30,
                                                 headers={"x-api-key": srv.api_key}) as http:
        seen = []
        for _ in range(30):
            fault = local.next_fault("status")
            try:
                r = http.post(srv.api_url + "/transcribe/status", json={"runId": "no-such-job"})
            except httpx.TransportError:
                seen.append((fault, "closed"))
                continue
            seen.append((fault, r.status_code))
            if r.status_code in (429, 503):
                assert r.headers["retry-after"] == "2" and "injected" in r.json()["message"]
            assert r.headers["idempotency-keys"] == "supported"
        # Balance checks are not on the plan: they always answer.
        assert http.post(srv.api_url + "/check-balance").status_code == 200
    want = {None: 404, "delay": 404, "429": 429, "500": 500, "503": 503, "close_before": "closed",
            "close_after": "closed"}
    assert [outcome for _, outcome in seen] == [want[f] for f, _ in seen]
    assert {f for f, _ in seen} - {None} >= {"429", "500", "503", "close_before", "close_after"}, seen


def _seed_for(spec: str, wanted: list[str | None]) -> str:
    """A seed whose first submits get exactly `wanted` (found the way the server will draw them)."""
    for seed in range(1000):
        p = plan(f"{spec},seed={seed}")
        if [p.next_fault("submit") for _ in wanted] == wanted:
            return str(seed)
    raise AssertionError("no seed found")


def test_closed_before_processing_charges_nothing():
    with fault_server("close_before=1,on=submit") as srv, httpx.Client(
            trust_env=False, timeout=30, headers={"x-api-key": srv.api_key}) as http:
        with pytest.raises(httpx.TransportError):
            http.post(srv.api_url + "/transcribe", files={"audio": (TIMIT, audio_file(TIMIT).read_bytes())},
                      data={"model": "Wizper"})
        assert usage(http, srv) == []


def test_closed_after_processing_was_charged_and_the_key_replays_the_lost_answer():
    spec = "close_after=0.5,on=submit"
    seed = _seed_for(spec, ["close_after", None])
    with fault_server(f"{spec},seed={seed}") as srv, httpx.Client(
            trust_env=False, timeout=30, headers={"x-api-key": srv.api_key, "idempotency-key": "lost-1"}) as http:
        send = {"files": {"audio": (TIMIT, audio_file(TIMIT).read_bytes())}, "data": {"model": "Wizper"}}
        with pytest.raises(httpx.TransportError):
            http.post(srv.api_url + "/transcribe", **send)  # type: ignore[arg-type]
        charged = usage(http, srv)
        assert [c["kind"] for c in charged] == ["sync"]  # the lost answer was paid for...
        again = http.post(srv.api_url + "/transcribe", **send)  # type: ignore[arg-type]
        assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"  # ...and is replayed
        assert again.json()["transcription"] and usage(http, srv) == charged


def test_delays_then_answers_normally(tmp_path):
    log_path = tmp_path / "server.log"
    with fault_server("delay=1,delay_s=0.2,on=submit", log_path=log_path) as srv, httpx.Client(
            trust_env=False, timeout=30, headers={"x-api-key": srv.api_key}) as http:
        r = http.post(srv.api_url + "/transcribe", files={"audio": (TIMIT, audio_file(TIMIT).read_bytes())},
                      data={"model": "Wizper"})
        assert r.status_code == 200 and r.json()["transcription"]
    assert "injected fault on submit: delay" in log_path.read_text()
