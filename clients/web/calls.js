// The two ways <voice-widget> talks to the service, behind one small interface:
//
//   const call = await RtcCall.open(options)  or  await WsCall.open(options)
//   call.interrupt()   stop the assistant's audio now (response.interrupted)
//   call.resume()      let reply audio play again (the next turn)
//   call.send(object)  a client message (ping, response.cancel, session.end, dtmf,
//                      session.update)
//   call.close()
//
// options: { server, mic (MediaStream), context (AudioContext), replyMeter (AnalyserNode),
//            onEvent(event), onClosed(code, reason), timeoutMs, token }
// token: an API key or a client secret (ek_...), sent as the WebSocket subprotocol
// "openai-insecure-api-key.<token>" (a browser cannot set headers on a WebSocket).
// Both reject `open()` with a CallError whose `kind` tells the widget what to say.

export class CallError extends Error {
  constructor(kind, message) {
    super(message);
    this.kind = kind; // "refused" | "timeout" | "lost"
  }
}

export function socketUrl(server, path, query = {}) {
  const url = new URL(path, server);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  for (const [key, value] of Object.entries(query)) url.searchParams.set(key, value);
  return url.href;
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new CallError("timeout", `${what} took over ${ms / 1000} s`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Resolves with the socket once open; rejects if it closes first.
function openSocket(url, token) {
  return new Promise((resolve, reject) => {
    const ws = token ? new WebSocket(url, ["voice", `openai-insecure-api-key.${token}`]) : new WebSocket(url);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => resolve(ws);
    ws.onclose = (event) =>
      reject(new CallError("refused", `the service refused the connection (${event.code || "no answer"})`));
  });
}

// The next JSON text message; rejects on an error message or a close.
function nextMessage(ws) {
  return new Promise((resolve, reject) => {
    ws.onmessage = (event) => {
      if (typeof event.data !== "string") return;
      const message = JSON.parse(event.data);
      if (message.type === "error") reject(new CallError("refused", `${message.code}: ${message.message}`));
      else resolve(message);
    };
    ws.onclose = (event) => reject(new CallError("refused", `closed (${event.code}) ${event.reason}`));
  });
}

function gatheringComplete(pc, ms) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === "complete") resolve();
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, ms); // send what we have: host candidates come first
  });
}

const worklets = new WeakMap(); // AudioContext → its module load (once per context)

function loadWorklets(context) {
  if (!worklets.has(context)) {
    worklets.set(context, context.audioWorklet.addModule(new URL("audio-worklets.js", import.meta.url)));
  }
  return worklets.get(context);
}

// WebRTC: Opus both ways, events on the "events" data channel, signalling on /rtc.
export class RtcCall {
  static async open(options) {
    const call = new RtcCall(options);
    try {
      await withTimeout(call.negotiate(), options.timeoutMs, "WebRTC connection");
    } catch (error) {
      call.close();
      throw error;
    }
    return call;
  }

  constructor({ server, mic, context, replyMeter, onEvent, onClosed, token }) {
    this.kind = "webrtc";
    this.server = server;
    this.token = token;
    this.mic = mic;
    this.context = context;
    this.replyMeter = replyMeter;
    this.onEvent = onEvent;
    this.onClosed = onClosed;
    this.closed = false;
    this.audio = new Audio();
    this.audio.autoplay = true;
  }

  async negotiate() {
    this.ws = await openSocket(socketUrl(this.server, "/rtc"), this.token);
    const config = await nextMessage(this.ws);
    this.pc = new RTCPeerConnection({ iceServers: config.ice_servers || [] });
    for (const track of this.mic.getAudioTracks()) this.pc.addTrack(track, this.mic);
    this.channel = this.pc.createDataChannel("events", { ordered: true });
    const opened = new Promise((resolve) => (this.channel.onopen = resolve));
    this.channel.onmessage = (event) => this.onEvent(JSON.parse(event.data));
    this.pc.ontrack = (event) => this.play(event.streams[0] || new MediaStream([event.track]));
    await this.pc.setLocalDescription(await this.pc.createOffer());
    await gatheringComplete(this.pc, 2000);
    this.ws.send(JSON.stringify({ type: "offer", sdp: this.pc.localDescription.sdp }));
    const answer = await nextMessage(this.ws);
    await this.pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    await opened;
    this.watch();
  }

  play(stream) {
    this.audio.srcObject = stream; // Chrome feeds a remote stream to WebAudio only when played
    this.audio.play().catch(() => {});
    this.meterSource = this.context.createMediaStreamSource(stream);
    this.meterSource.connect(this.replyMeter);
  }

  watch() {
    this.ws.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "error") this.onEvent(message);
    };
    this.ws.onclose = (event) => this.ended(event.code, event.reason);
    this.pc.onconnectionstatechange = () => {
      if (this.pc.connectionState === "failed") this.ended(4008, "the connection failed");
    };
  }

  ended(code, reason) {
    if (this.closed) return;
    this.close();
    this.onClosed(code, reason);
  }

  interrupt() {
    this.audio.muted = true; // drops what the jitter buffer still holds
  }

  resume() {
    this.audio.muted = false;
  }

  send(message) {
    if (this.channel && this.channel.readyState === "open") this.channel.send(JSON.stringify(message));
  }

  close() {
    this.closed = true;
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close(1000);
    }
    if (this.pc) this.pc.close();
    if (this.meterSource) this.meterSource.disconnect();
    this.audio.srcObject = null;
  }
}

// WebSocket fallback: PCM both ways through AudioWorklets, events as text messages.
export class WsCall {
  static async open(options) {
    const call = new WsCall(options);
    try {
      await withTimeout(call.negotiate(), options.timeoutMs, "WebSocket connection");
    } catch (error) {
      call.close();
      throw error;
    }
    return call;
  }

  constructor({ server, mic, context, replyMeter, onEvent, onClosed, token }) {
    this.kind = "websocket";
    this.server = server;
    this.token = token;
    this.mic = mic;
    this.context = context;
    this.replyMeter = replyMeter;
    this.onEvent = onEvent;
    this.onClosed = onClosed;
    this.closed = false;
    this.muted = false;
  }

  async negotiate() {
    const rates = [8000, 16000, 24000, 48000];
    const rate = rates.includes(this.context.sampleRate) ? this.context.sampleRate : 16000;
    await loadWorklets(this.context);
    this.ws = await openSocket(socketUrl(this.server, "/ws", { sample_rate: rate }), this.token);
    const created = await nextMessage(this.ws);
    this.onEvent(created);
    this.playback = new AudioWorkletNode(this.context, "voice-playback", {
      numberOfInputs: 0,
      outputChannelCount: [1],
      processorOptions: { sourceRate: rate },
    });
    this.playback.connect(this.replyMeter);
    this.playback.connect(this.context.destination);
    this.capture = new AudioWorkletNode(this.context, "voice-capture", {
      processorOptions: { targetRate: rate, frameMs: 20 },
    });
    this.source = this.context.createMediaStreamSource(this.mic);
    this.source.connect(this.capture);
    this.sink = this.context.createGain(); // keeps the capture node pulled, silently
    this.sink.gain.value = 0;
    this.capture.connect(this.sink).connect(this.context.destination);
    this.capture.port.onmessage = (event) => {
      if (this.ws.readyState === WebSocket.OPEN) this.ws.send(event.data);
    };
    this.ws.onmessage = (event) => this.receive(event.data);
    this.ws.onclose = (event) => this.ended(event.code, event.reason);
  }

  receive(data) {
    if (typeof data === "string") {
      this.onEvent(JSON.parse(data));
    } else if (!this.muted) {
      this.playback.port.postMessage(data, [data]);
    }
  }

  ended(code, reason) {
    if (this.closed) return;
    this.close();
    this.onClosed(code, reason);
  }

  interrupt() {
    this.muted = true;
    this.playback.port.postMessage("clear");
  }

  resume() {
    this.muted = false;
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  close() {
    this.closed = true;
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close(1000);
    }
    for (const node of [this.source, this.capture, this.sink, this.playback]) {
      if (node) node.disconnect();
    }
  }
}
