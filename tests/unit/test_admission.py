"""The worker's one count of sessions (voice/admission.py)."""

from __future__ import annotations

import pytest

from voice.admission import Admission, Refused, Ticket

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
