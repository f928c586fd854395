"""ICE configuration: STUN/TURN servers from the settings, and loopback candidates.

Two aioice/aiortc defaults are wrong for this service and are overridden here:
- with no ICE servers configured, aiortc falls back to a public Google STUN server;
  we always pass an explicit list, empty by default (host candidates only);
- aioice leaves 127.0.0.1 out of its host candidates, so a browser and the service on
  one machine with no network interface up cannot connect. `allow_loopback()` (the
  `--rtc-allow-loopback` setting) adds it. aioice reads host addresses from one
  module-level function, so this is process-wide, which suits a process-wide setting.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

from voice.errors import ConfigError
from wire.rtc_signalling import IceServer

LOOPBACK_V4 = "127.0.0.1"
_URL = re.compile(r"(stun|turns?):[^\s?]+(\?transport=(udp|tcp))?")


def ice_servers_from(stun: str, turn: str, username: str = "",
                     password: str = "") -> tuple[IceServer, ...]:
    """The ICE servers of the settings (`rtc_stun_server`, `rtc_turn_*`)."""
    servers: list[IceServer] = []
    if stun:
        if not _URL.fullmatch(stun) or not stun.startswith("stun:"):
            raise ConfigError(f"rtc_stun_server must look like stun:host:port, not {stun!r}")
        servers.append(IceServer((stun,)))
    if turn:
        if not _URL.fullmatch(turn) or not turn.startswith("turn"):
            raise ConfigError("rtc_turn_server must look like turn:host:port[?transport=udp|"
                              f"tcp] or turns:host:port, not {turn!r}")
        servers.append(IceServer((turn,), username or None, password or None))
    return tuple(servers)


def rtc_configuration(servers: tuple[IceServer, ...]) -> RTCConfiguration:
    return RTCConfiguration(iceServers=[
        RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
        for s in servers])


HostAddresses = Callable[[bool, bool], list[str]]
_original: HostAddresses | None = None


def allow_loopback() -> None:
    """Offer 127.0.0.1 as a host candidate in every peer connection of this process."""
    global _original
    if _original is not None:
        return
    original: HostAddresses = aioice.ice.get_host_addresses
    _original = original

    def with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = original(use_ipv4, use_ipv6)
        if use_ipv4 and LOOPBACK_V4 not in addresses:
            addresses.append(LOOPBACK_V4)
        return addresses

    aioice.ice.get_host_addresses = with_loopback


def loopback_allowed() -> bool:
    return _original is not None
