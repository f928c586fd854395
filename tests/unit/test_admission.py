"""The worker's one count of sessions (voice/admission.py)."""

from __future__ import annotations

import pytest

from voice.admission import Admission, Refused, Ticket
from voice.session import INPUT_BURST_S, MAX_INPUT_SPEED, InputPace

pytestmark = pytest.mark.unit


def test_places_are_checked_and_taken_in_one_step_and_given_back() -> None:
    admission = Admission(max_sessions=2)
    first, second = admission.take("10.0.0.1"), admission.take("10.0.0.2")
    assert isinstance(first, Ticket) and isinstance(second, Ticket)
    third = admission.take("10.0.0.3")
    assert isinstance(third, Refused) and third.code == "capacity"
    first.release()
    first.release()  # twice is once
    assert admission.open == 1 and isinstance(admission.take("10.0.0.3"), Ticket)


def test_one_address_holds_at_most_its_share() -> None:
    admission = Admission(max_sessions=10, per_address=2)
    held = [admission.take("192.0.2.7") for _ in range(2)]
    refused = admission.take("192.0.2.7")
    assert isinstance(refused, Refused) and refused.code == "address_limit"
    assert isinstance(admission.take("192.0.2.8"), Ticket)
    with held[0]:  # a ticket is a context manager: released on leaving it
        pass
    assert isinstance(admission.take("192.0.2.7"), Ticket)


def test_audio_faster_than_real_time_is_cut_to_its_pace() -> None:
    """A microphone never runs dry; an upload of minutes of audio at once keeps only
    its first seconds, then what the pace refills."""
    rate, chunk, s = 16000, 320, 1_000_000_000
    microphone = InputPace(rate, 0)
    assert all(microphone.admit(chunk, i * s // 50) for i in range(50 * 60))  # a minute
    upload = InputPace(rate, 0)
    taken = sum(chunk for _ in range(50 * 60) if upload.admit(chunk, 0))
    assert taken == INPUT_BURST_S * rate  # two seconds of the minute
    assert upload.admit(chunk, s) and sum(
        chunk for _ in range(500) if upload.admit(chunk, s)) < MAX_INPUT_SPEED * rate
