"""SDP (RFC 4566) and the offer/answer model (RFC 3264) for one G.711 audio stream.

`SessionDescription.parse(body)` / `serialize()` is the wire type. `answer_offer`
picks the first PCMU or PCMA format of the offerer's list, keeps the offerer's own
telephone-event payload type, honours `ptime`, and answers the direction
(sendrecv/sendonly/recvonly/inactive; `c=0.0.0.0` is the old way to say hold). Other
media lines are declined with port 0. No usable audio raises `SipError(488)`.
`make_offer` and `plan_from_answer` are the same for calls we place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from voice.errors import SipError
from wire.rtp import g711
from wire.rtp.plan import DEFAULT_PTIME, MediaPlan
from wire.sip.headers import ascii_int

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_REVERSE = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly",
            "inactive": "inactive"}
DTMF_PAYLOAD_TYPE = 101  # what we offer; in answers we use the offerer's
_PTIME = re.compile(r"([0-9]{1,6})(?:\.[0-9]*)?")  # milliseconds, fractions ignored
Attribute = tuple[str, str | None]


def not_acceptable(message: str) -> SipError:
    return SipError(488, message, code="sdp_not_acceptable")


def _bad(line: str) -> SipError:
    return SipError(400, f"malformed SDP line: {line[:60]!r}", code="sdp_malformed")


@dataclass(frozen=True)
class MediaDescription:
    media: str
    port: int
    proto: str
    formats: tuple[str, ...]
    connection: str | None = None  # host of c=, when given at media level
    attributes: tuple[Attribute, ...] = ()

    def attribute(self, name: str) -> str | None:
        return next((v or "" for k, v in self.attributes if k == name), None)

    def rtpmap(self) -> dict[int, tuple[str, int]]:
        """payload type -> (encoding name upper-cased, clock rate)."""
        out: dict[int, tuple[str, int]] = {}
        for key, value in self.attributes:
            if key != "rtpmap" or not value:
                continue
            pt, _, encoding = value.partition(" ")
            name, _, rest = encoding.partition("/")
            rate = rest.partition("/")[0]
            number, clock_rate = ascii_int(pt, 3), ascii_int(rate, 6)
            if number is not None and clock_rate is not None:
                out[number] = (name.strip().upper(), clock_rate)
        return out

    def direction(self) -> str | None:
        return next((k for k, _ in self.attributes if k in DIRECTIONS), None)


@dataclass(frozen=True)
class SessionDescription:
    origin: str
    connection: str | None = None  # session-level c= host
    name: str = "-"
    attributes: tuple[Attribute, ...] = ()
    media: tuple[MediaDescription, ...] = ()
    timing: str = "0 0"

    @classmethod
    def parse(cls, body: bytes) -> SessionDescription:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise SipError(400, "SDP is not UTF-8", code="sdp_malformed") from None
        session: dict[str, str] = {}
        attributes: list[Attribute] = []
        media: list[MediaDescription] = []
        for line in text.replace("\r\n", "\n").split("\n"):
            if not line.strip():
                continue
            if len(line) < 2 or line[1] != "=":
                raise _bad(line)
            kind, value = line[0], line[2:].strip()
            if kind == "m":
                media.append(_parse_media_line(value))
            elif media:
                media[-1] = _add_to_media(media[-1], kind, value)
            elif kind == "a":
                attributes.append(_parse_attribute(value))
            else:
                session.setdefault(kind, value)
        if session.get("v") != "0" or "o" not in session:
            raise SipError(400, "SDP needs v=0 and o=", code="sdp_malformed")
        connection = _connection_host(session["c"]) if "c" in session else None
        return cls(origin=session["o"], connection=connection, name=session.get("s", "-"),
                   attributes=tuple(attributes), media=tuple(media),
                   timing=session.get("t", "0 0"))

    def serialize(self) -> bytes:
        lines = ["v=0", f"o={self.origin}", f"s={self.name}"]
        if self.connection is not None:
            lines.append(f"c=IN IP4 {self.connection}")
        lines.append(f"t={self.timing}")
        lines.extend(_attribute_line(a) for a in self.attributes)
        for m in self.media:
            lines.append(f"m={m.media} {m.port} {m.proto} {' '.join(m.formats)}")
            if m.connection is not None:
                lines.append(f"c=IN IP4 {m.connection}")
            lines.extend(_attribute_line(a) for a in m.attributes)
        return ("\r\n".join(lines) + "\r\n").encode()

    def direction_of(self, media: MediaDescription) -> str:
        session = next((k for k, _ in self.attributes if k in DIRECTIONS), None)
        direction = media.direction() or session or "sendrecv"
        if (media.connection or self.connection) == "0.0.0.0" and direction == "sendrecv":
            return "sendonly"  # RFC 2543 hold
        return direction

    def ptime_of(self, media: MediaDescription) -> int:
        raw = media.attribute("ptime") or next(
            (v for k, v in self.attributes if k == "ptime" and v), None)
        match = _PTIME.fullmatch(raw or "")
        if match is None:  # absent, or not a number we understand ("inf", "²0", "-5")
            return DEFAULT_PTIME
        return min(60, max(10, int(match.group(1)) // 10 * 10))


def _parse_media_line(value: str) -> MediaDescription:
    parts = value.split()
    port = ascii_int(parts[1].split("/")[0], 5) if len(parts) >= 4 else None
    if port is None or port > 65535:
        raise _bad("m=" + value)
    return MediaDescription(media=parts[0], port=port, proto=parts[2], formats=tuple(parts[3:]))


def _add_to_media(media: MediaDescription, kind: str, value: str) -> MediaDescription:
    if kind == "c":
        return replace(media, connection=_connection_host(value))
    if kind == "a":
        return replace(media, attributes=media.attributes + (_parse_attribute(value),))
    return media


def _parse_attribute(value: str) -> Attribute:
    name, colon, rest = value.partition(":")
    return name.strip().lower(), rest.strip() if colon else None


def _attribute_line(attribute: Attribute) -> str:
    name, value = attribute
    return f"a={name}" if value is None else f"a={name}:{value}"


def _connection_host(value: str) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise _bad("c=" + value)
    return parts[2].split("/")[0]


@dataclass
class LocalMedia:
    """Our side's SDP identity: address, RTP port, and the origin's session id/version."""

    host: str
    port: int
    session_id: int
    version: int = field(default=0)

    def origin(self) -> str:
        self.version += 1
        return f"- {self.session_id} {self.version} IN IP4 {self.host}"


def _choose_codec(media: MediaDescription) -> tuple[int, int] | None:
    rtpmap = media.rtpmap()
    for fmt in media.formats:
        pt = ascii_int(fmt, 3)
        if pt is None:
            continue
        name, rate = rtpmap.get(pt, (g711.ENCODING_NAMES.get(pt, ""), 8000))
        if rate == 8000 and name in ("PCMU", "PCMA"):
            return (g711.PCMU if name == "PCMU" else g711.PCMA), pt
    return None


def _telephone_event(media: MediaDescription) -> int | None:
    return next((pt for pt, (name, rate) in media.rtpmap().items()
                 if name == "TELEPHONE-EVENT" and rate == 8000
                 and str(pt) in media.formats), None)


def answer_offer(offer: SessionDescription, local: LocalMedia) -> tuple[MediaPlan,
                                                                         SessionDescription]:
    plan: MediaPlan | None = None
    answered: list[MediaDescription] = []
    for media in offer.media:
        chosen = None
        if plan is None and media.media == "audio" and media.port != 0 \
                and media.proto.upper() == "RTP/AVP":
            chosen = _choose_codec(media)
        if plan is not None or chosen is None:
            answered.append(MediaDescription(media.media, 0, media.proto, media.formats[:1]))
            continue
        codec, pt = chosen
        plan = MediaPlan(codec=codec, payload_type=pt, dtmf_payload_type=_telephone_event(media),
                         remote_host=media.connection or offer.connection or "",
                         remote_port=media.port, ptime=offer.ptime_of(media),
                         direction=_REVERSE[offer.direction_of(media)])
        answered.append(_audio_media(local.port, plan))
    if plan is None:
        raise not_acceptable("no PCMU or PCMA audio over RTP/AVP in the offer")
    if not plan.remote_host:
        raise SipError(400, "SDP has no connection address", code="sdp_malformed")
    return plan, SessionDescription(origin=local.origin(), connection=local.host,
                                    media=tuple(answered))


def _audio_media(port: int, plan: MediaPlan) -> MediaDescription:
    formats = [str(plan.payload_type)]
    attributes: list[Attribute] = [
        ("rtpmap", f"{plan.payload_type} {g711.ENCODING_NAMES[plan.codec]}/8000")]
    if plan.dtmf_payload_type is not None:
        formats.append(str(plan.dtmf_payload_type))
        attributes += [("rtpmap", f"{plan.dtmf_payload_type} telephone-event/8000"),
                       ("fmtp", f"{plan.dtmf_payload_type} 0-15")]
    attributes += [("ptime", str(plan.ptime)), (plan.direction, None)]
    return MediaDescription("audio", port, "RTP/AVP", tuple(formats),
                            attributes=tuple(attributes))


def make_offer(local: LocalMedia, codecs: tuple[int, ...] = (g711.PCMU, g711.PCMA),
               direction: str = "sendrecv") -> SessionDescription:
    formats = [str(c) for c in codecs] + [str(DTMF_PAYLOAD_TYPE)]
    attributes: list[Attribute] = [("rtpmap", f"{c} {g711.ENCODING_NAMES[c]}/8000")
                                   for c in codecs]
    attributes += [("rtpmap", f"{DTMF_PAYLOAD_TYPE} telephone-event/8000"),
                   ("fmtp", f"{DTMF_PAYLOAD_TYPE} 0-15"), ("ptime", str(DEFAULT_PTIME)),
                   (direction, None)]
    media = MediaDescription("audio", local.port, "RTP/AVP", tuple(formats),
                             attributes=tuple(attributes))
    return SessionDescription(origin=local.origin(), connection=local.host, media=(media,))


def plan_from_answer(answer: SessionDescription) -> MediaPlan:
    """The plan for a call we offered, from the peer's answer (its first format wins)."""
    media = next((m for m in answer.media if m.media == "audio" and m.port != 0), None)
    chosen = _choose_codec(media) if media is not None else None
    if media is None or chosen is None:
        raise not_acceptable("the answer has no PCMU or PCMA audio")
    codec, pt = chosen
    return MediaPlan(codec=codec, payload_type=pt, dtmf_payload_type=_telephone_event(media),
                     remote_host=media.connection or answer.connection or "",
                     remote_port=media.port, ptime=answer.ptime_of(media),
                     direction=_REVERSE[answer.direction_of(media)])
