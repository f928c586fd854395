# The voice assistant service with its bundled models (faster-whisper tiny.en, Piper
# en_US-joe-medium, the LLM SmolLM2-135M-Instruct on llama.cpp), run as a non-root user. Every setting comes from the environment
# (VOICE_* and OPENAI_BASE_URL / OPENAI_API_KEY; `voice settings` lists them).
#
#   docker build -t voice-assistant .
#   docker run --rm -p 8000:8000 -e OPENAI_API_KEY voice-assistant
#
# Ports: 8000/tcp HTTP, WebSocket (/ws), WebRTC signalling (/rtc), /healthz, /readyz,
# /metrics. SIP is off unless VOICE_SIP_PORT is set (5060/udp by convention, with
# VOICE_SIP_ADVERTISE = the address callers reach); its RTP uses VOICE_SIP_RTP_PORTS
# (10000-10099/udp here). WebRTC media uses ephemeral UDP ports: run with
# --network host, or use a TURN server (VOICE_RTC_TURN_SERVER), for WebRTC callers.
#
# Two stages: the first installs into a virtual environment (/opt/voice) with pip,
# the second copies that environment onto a clean base with Python only, so neither
# pip, nor its caches, nor the apt lists reach the image. A venv rather than
# `pip install --break-system-packages`: the project's dependencies never mix with
# Debian's Python packages, and the whole install is one directory to copy.

FROM debian:bookworm-slim AS build
ARG DEBIAN_FRONTEND=noninteractive
# llama.cpp (llama-cpp-python) is compiled here: for any x86-64 or arm64 CPU, not only
# the one that builds the image (GGML_NATIVE=OFF)
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CMAKE_ARGS="-DGGML_NATIVE=OFF"
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv g++ make \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/voice
WORKDIR /src
# Dependencies first, from pyproject.toml alone, so that a change to the code does not
# download them again.
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' > requirements.txt \
 && /opt/voice/bin/pip install -r requirements.txt
COPY . .
RUN /opt/voice/bin/pip install --no-deps . \
 && /opt/voice/bin/pip uninstall -y pip setuptools \
 && /opt/voice/bin/voice settings > /dev/null

FROM debian:bookworm-slim
ARG DEBIAN_FRONTEND=noninteractive
# The user is "assistant": Debian already has a "voice" group (for modems). libgomp1:
# llama.cpp's threads.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates libgomp1 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
 && useradd --system --uid 10001 --user-group --create-home --home-dir /home/assistant assistant
COPY --from=build /opt/voice /opt/voice
ENV PATH=/opt/voice/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    VOICE_HOST=0.0.0.0 \
    VOICE_PORT=8000 \
    VOICE_SIP_RTP_PORTS=10000-10099
USER 10001:10001
WORKDIR /home/assistant
EXPOSE 8000/tcp 5060/udp 10000-10099/udp
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('VOICE_PORT', '8000'), timeout=4)"
# The host comes from VOICE_HOST (0.0.0.0 above), not a --host flag, so that it can
# be overridden from the environment like every other setting. Listening beyond
# loopback needs API keys: run with -e VOICE_API_KEYS=KEY1,KEY2 (callers send one), or
# -e VOICE_INSECURE_NO_AUTH=true behind a gateway that authenticates (docs/security.md).
CMD ["voice", "serve"]
