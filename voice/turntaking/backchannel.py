"""Is what the caller said over the assistant a real interruption, or a backchannel?

Callers say "uh-huh", "mm-hmm", "yeah" or "okay" while listening; they cough and
click. None of these should stop the assistant. Barge-in needs real speech: words
that are not only acknowledgements (or speech long enough that it cannot be one).
"""

from __future__ import annotations

import re

_BACKCHANNEL = frozenset("""
uh huh uhhuh uh-huh mm hmm mhm mmhmm mm-hmm hm um uhm ah oh ooh aha yeah yea yep yup
yes ok okay right sure alright cool nice wow great fine i see got it gotcha true
""".split())


def is_backchannel(transcript: str | None) -> bool:
    """True for no words at all, or a few words that are all acknowledgements."""
    if transcript is None:
        return True
    words = re.findall(r"[a-z']+", transcript.lower().replace("-", " "))
    return len(words) <= 4 and all(w in _BACKCHANNEL for w in words)
