// <voice-widget>: a microphone button for the voice assistant service, in any page.
//
//   <script type="module" src="http://HOST:PORT/widget/voice-widget.js"></script>
//   <voice-widget></voice-widget>
//
// Attributes: server (default: where this script came from), transport ("auto": WebRTC,
// falling back to the WebSocket; or "webrtc", "websocket"), token (an API key or client
// secret, when the service needs one) or token-url (a URL of the page's own server that
// answers a POST with a fresh client secret, {"value": "ek_..."}, as the service's
// /v1/realtime/client_secrets does: fetched before every connection attempt, since a
// secret opens one session), and session settings: instructions, turn-preset, tools,
// voice, language (sent as session.update once connected). It shows the connection state,
// a live level meter of both voices, the transcript of both sides as it happens and each
// turn's latency by stage, and errors a person can act on. Plain JavaScript, no build step.

import { CallError, RtcCall, WsCall } from "./calls.js";

const DEFAULT_SERVER = new URL(".", import.meta.url).origin;
const CONNECT_TIMEOUT_MS = 10000;
const RECONNECT_DELAYS_S = [1, 2, 4, 8, 8];
const AUDIBLE_DB = -50;
const STAGES = [
  ["endpointing_ms", "End of turn"],
  ["stt_ms", "Speech-to-text"],
  ["llm_ms", "LLM first token"],
  ["first_text_ms", "First sentence"],
  ["tts_ms", "Text-to-speech"],
  ["transport_ms", "Transport"],
  ["voice_to_voice_ms", "Voice to voice"],
];

const STYLE = `
  :host { display: block; font: 15px/1.4 system-ui, sans-serif; color: #1d2433; max-width: 34rem; }
  .card { border: 1px solid #d5dae3; border-radius: 12px; padding: 1rem; background: #fff; }
  .top { display: flex; align-items: center; gap: 0.9rem; }
  button { width: 3.5rem; height: 3.5rem; border-radius: 50%; border: none; cursor: pointer;
           background: #2156d9; color: #fff; flex: none; display: grid; place-items: center; }
  button[aria-pressed="true"] { background: #c62f2f; }
  .state { font-weight: 600; }
  .meters { display: grid; grid-template-columns: 5.5rem 1fr; gap: 0.25rem 0.5rem;
            margin-top: 0.4rem; font-size: 0.8rem; color: #5a6478; align-items: center; }
  .meter { height: 0.45rem; background: #e8ebf1; border-radius: 4px; overflow: hidden; }
  .meter div { height: 100%; width: 0%; background: #28a06a; transition: width 60ms linear; }
  .meter.assistant div { background: #2156d9; }
  .error { margin-top: 0.8rem; padding: 0.6rem 0.8rem; border-radius: 8px; background: #fdecec;
           color: #8f1d1d; }
  .error:empty { display: none; }
  .transcript { margin: 0.8rem 0 0; padding: 0; list-style: none; max-height: 16rem; overflow-y: auto; }
  .transcript li { margin: 0.3rem 0; }
  .transcript .who { font-weight: 600; }
  .transcript .assistant .who { color: #2156d9; }
  .transcript .note { color: #8a93a6; font-style: italic; }
  .latency { margin-top: 0.8rem; font-size: 0.85rem; }
  .latency:empty { display: none; }
  .latency table { border-collapse: collapse; width: 100%; }
  .latency td { padding: 0.1rem 0.4rem; border-bottom: 1px solid #eef0f4; }
  .latency td:last-child { text-align: right; font-variant-numeric: tabular-nums; }
  .latency tr.total td { font-weight: 600; }
`;

const MARKUP = `
  <div class="card">
    <div class="top">
      <button type="button" aria-pressed="false" aria-label="Start talking">
        <svg viewBox="0 0 24 24" width="28" height="28" aria-hidden="true"><path fill="currentColor"
          d="M12 14a3 3 0 0 0 3-3V5a3 3 0 0 0-6 0v6a3 3 0 0 0 3 3zm5-3a5 5 0 0 1-10 0H5a7 7 0 0 0 6 6.92V21h2v-3.08A7 7 0 0 0 19 11h-2z"/></svg>
      </button>
      <div>
        <div class="state" role="status">Press the microphone to talk</div>
        <div class="meters">
          <span>You</span><div class="meter you"><div></div></div>
          <span>Assistant</span><div class="meter assistant"><div></div></div>
        </div>
      </div>
    </div>
    <div class="error" role="alert"></div>
    <ul class="transcript" aria-live="polite"></ul>
    <div class="latency"></div>
  </div>
`;

function levelDb(analyser, buffer) {
  analyser.getFloatTimeDomainData(buffer);
  let sum = 0;
  for (const x of buffer) sum += x * x;
  const rms = Math.sqrt(sum / buffer.length);
  return rms > 0 ? Math.max(-100, 20 * Math.log10(rms)) : -100;
}

function microphoneError(error) {
  const name = error && error.name;
  if (name === "NotAllowedError" || name === "SecurityError" || name === "PermissionDeniedError") {
    return "Microphone access was denied. Allow the microphone for this site (the icon at the left of the address bar), then press the microphone again.";
  }
  if (name === "NotFoundError" || name === "OverconstrainedError" || name === "DevicesNotFoundError") {
    return "No microphone was found. Connect a microphone, then press the microphone again.";
  }
  if (name === "NotReadableError") {
    return "The microphone could not be started: another application may be using it.";
  }
  return `The microphone could not be opened (${name || error}).`;
}

class VoiceWidget extends HTMLElement {
  constructor() {
    super();
    this.attachShadow({ mode: "open" }).innerHTML = `<style>${STYLE}</style>${MARKUP}`;
    const $ = (selector) => this.shadowRoot.querySelector(selector);
    this.ui = {
      button: $("button"), state: $(".state"), error: $(".error"), transcript: $(".transcript"),
      latency: $(".latency"), you: $(".meter.you div"), assistant: $(".meter.assistant div"),
    };
    this.ui.button.addEventListener("click", () => (this.active ? this.hangUp() : this.start()));
    this.active = false;
    this.call = null;
    this.lines = new Map(); // turn_id → the assistant's transcript line
    this.stats = { state: "idle", transport: null, replyPeakDb: -100, replyAudibleMs: 0,
                   micPeakDb: -100, micDb: -100, replyDb: -100, reconnects: 0, events: 0, turns: 0, responsesDone: 0 };
  }

  get server() {
    return this.getAttribute("server") || DEFAULT_SERVER;
  }

  // The token for the next connection attempt: a fresh client secret from token-url,
  // else the token attribute, else none.
  async credential() {
    const from = this.getAttribute("token-url");
    if (!from) return this.getAttribute("token") || undefined;
    const response = await fetch(from, { method: "POST", credentials: "same-origin", cache: "no-store" });
    if (!response.ok) throw new CallError("refused", `token-url answered ${response.status}`);
    const secret = await response.json();
    return secret.value || (secret.client_secret && secret.client_secret.value);
  }

  // The session settings the page asked for (attributes instructions, turn-preset,
  // tools: comma-separated tool names, voice, language), sent as session.update once connected; the
  // service refuses (an error shown as a note) what its operator does not let clients
  // change.
  sessionSettings() {
    const session = {};
    if (this.hasAttribute("instructions")) session.instructions = this.getAttribute("instructions");
    if (this.hasAttribute("turn-preset")) session.turn_preset = this.getAttribute("turn-preset");
    if (this.hasAttribute("voice")) session.voice = this.getAttribute("voice");
    if (this.hasAttribute("language")) session.language = this.getAttribute("language");
    if (this.hasAttribute("tools")) {
      session.tools = this.getAttribute("tools").split(",").map((t) => t.trim()).filter(Boolean);
    }
    return Object.keys(session).length ? session : null;
  }

  get transportOrder() {
    const wanted = this.getAttribute("transport") || "auto";
    const rtc = typeof RTCPeerConnection === "function";
    if (wanted === "websocket" || !rtc) return ["websocket"];
    return wanted === "webrtc" ? ["webrtc"] : ["webrtc", "websocket"];
  }

  // --- starting and ending a call ------------------------------------------------------

  async start() {
    this.active = true;
    this.setPressed(true);
    this.showError("");
    this.setState("mic", "Asking for the microphone…");
    try {
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
        throw new Error("The microphone needs a secure page (https:// or localhost).");
      }
      this.mic = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      });
    } catch (error) {
      return this.fail(error instanceof DOMException ? microphoneError(error) : error.message);
    }
    this.context = new AudioContext();
    this.context.resume();
    this.startMeters();
    await this.connect(false);
  }

  async connect(reconnecting) {
    if (!(await this.reachable())) {
      if (reconnecting) return this.scheduleReconnect();
      return this.fail(`Cannot reach the voice service at ${this.server}. Check that it is running and that the address is right, then press the microphone again.`);
    }
    let lastError = null;
    for (const kind of this.transportOrder) {
      if (!this.active) return;
      this.setState("connecting", `Connecting over ${kind === "webrtc" ? "WebRTC" : "WebSocket"}…`);
      try {
        const Call = kind === "webrtc" ? RtcCall : WsCall;
        const call = await Call.open({
          server: this.server, mic: this.mic, context: this.context, replyMeter: this.replyMeter,
          token: await this.credential(),
          timeoutMs: CONNECT_TIMEOUT_MS,
          onEvent: (event) => this.onEvent(event),
          onClosed: (code, reason) => this.onClosed(code, reason),
        });
        if (!this.active) return call.close();
        this.call = call;
        const session = this.sessionSettings();
        if (session) call.send({ type: "session.update", session });
        this.attempt = 0;
        this.stats.transport = kind;
        this.showError("");
        this.setState("connected", `Connected over ${kind === "webrtc" ? "WebRTC" : "WebSocket"}: speak now`);
        return;
      } catch (error) {
        lastError = error;
        console.warn(`voice-widget: ${kind} failed:`, error);
      }
    }
    if (reconnecting) return this.scheduleReconnect();
    const detail = lastError instanceof CallError ? lastError.message : String(lastError);
    this.fail(`The voice service at ${this.server} did not accept the call (${detail}). It may be busy: try again in a moment.`);
  }

  async reachable() {
    try {
      await fetch(new URL("/healthz", this.server), { mode: "no-cors", cache: "no-store" });
      return true;
    } catch {
      return false;
    }
  }

  onClosed(code, reason) {
    this.call = null;
    if (!this.active) return;
    if (code === 1000) {
      this.stop();
      this.setState("ended", `Call ended (${reason || "by the service"})`);
      return;
    }
    this.attempt = 0;
    this.scheduleReconnect();
  }

  scheduleReconnect() {
    if (!this.active) return;
    if (this.attempt >= RECONNECT_DELAYS_S.length) {
      return this.fail("The connection was lost and could not be restored. Press the microphone to try again.");
    }
    const delay = RECONNECT_DELAYS_S[this.attempt++];
    this.stats.reconnects += 1;
    this.setState("reconnecting", `Connection lost. Reconnecting in ${delay} s (attempt ${this.attempt} of ${RECONNECT_DELAYS_S.length})…`);
    this.showError("The connection to the voice service was lost. Reconnecting automatically…");
    this.reconnectTimer = setTimeout(() => this.connect(true), delay * 1000);
  }

  hangUp() {
    if (this.call) this.call.send({ type: "session.end" });
    this.stop();
    this.setState("ended", "Call ended");
  }

  fail(message) {
    this.stop();
    this.showError(message);
    this.setState("error", "Not connected");
  }

  stop() {
    this.active = false;
    this.setPressed(false);
    clearTimeout(this.reconnectTimer);
    if (this.call) this.call.close();
    this.call = null;
    if (this.mic) for (const track of this.mic.getTracks()) track.stop();
    clearInterval(this.meterTimer);
    if (this.context) this.context.close();
    this.context = null;
  }

  // --- what the service says -----------------------------------------------------------

  onEvent(event) {
    this.stats.events += 1;
    const handlers = {
      "transcript.final": () => this.addLine("you", "You", event.text),
      "response.text.delta": () => this.assistantLine(event.turn_id).append(event.delta),
      "response.done": () => {
        this.stats.responsesDone += 1;
        this.finishLine(event.turn_id, event.text);
      },
      "response.interrupted": () => this.interrupted(event),
      "speech.stopped": () => this.call && this.call.resume(),
      "turn.latency": () => {
        this.stats.turns += 1;
        this.showLatency(event.stages);
      },
      error: () => this.addLine("note", "", `Service: ${event.message}`),
    };
    const handler = handlers[event.type];
    if (handler) handler();
  }

  interrupted(event) {
    if (this.call) this.call.interrupt();
    const line = this.lines.get(event.turn_id);
    if (line) {
      const note = document.createElement("span");
      note.className = "note";
      note.textContent = " (interrupted)";
      line.parentElement.append(note);
    }
  }

  addLine(kind, who, text) {
    const li = document.createElement("li");
    li.className = kind;
    if (who) {
      const label = document.createElement("span");
      label.className = "who";
      label.textContent = `${who}:`;
      li.append(label, " ");
    }
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    li.append(body);
    this.ui.transcript.append(li);
    this.ui.transcript.scrollTop = this.ui.transcript.scrollHeight;
    return body;
  }

  assistantLine(turnId) {
    if (!this.lines.has(turnId)) this.lines.set(turnId, this.addLine("assistant", "Assistant", ""));
    return this.lines.get(turnId);
  }

  finishLine(turnId, text) {
    if (text) this.assistantLine(turnId).textContent = text;
  }

  showLatency(stages) {
    const rows = STAGES.filter(([key]) => key in stages).map(([key, label]) =>
      `<tr class="${key === "voice_to_voice_ms" ? "total" : ""}" data-stage="${key}">` +
      `<td>${label}</td><td>${Math.round(stages[key])} ms</td></tr>`);
    this.ui.latency.innerHTML = `<div>Last turn's latency</div><table>${rows.join("")}</table>`;
  }

  // --- display ---------------------------------------------------------------------------

  setState(state, text) {
    this.stats.state = state;
    this.ui.state.textContent = text;
    this.dataset.state = state;
  }

  setPressed(pressed) {
    this.ui.button.setAttribute("aria-pressed", String(pressed));
    this.ui.button.setAttribute("aria-label", pressed ? "Hang up" : "Start talking");
  }

  showError(message) {
    this.ui.error.textContent = message;
  }

  startMeters() {
    const meter = () => {
      const analyser = this.context.createAnalyser();
      analyser.fftSize = 1024;
      return analyser;
    };
    const micMeter = meter();
    this.context.createMediaStreamSource(this.mic).connect(micMeter);
    this.replyMeter = meter();
    const buffer = new Float32Array(1024);
    const width = (db) => `${Math.max(0, Math.min(100, ((db + 70) / 60) * 100))}%`;
    const period = 50;
    this.meterTimer = setInterval(() => {
      const mic = levelDb(micMeter, buffer);
      const reply = levelDb(this.replyMeter, buffer);
      Object.assign(this.stats, { micDb: mic, replyDb: reply });
      this.stats.micPeakDb = Math.max(this.stats.micPeakDb, mic);
      this.stats.replyPeakDb = Math.max(this.stats.replyPeakDb, reply);
      if (reply > AUDIBLE_DB) this.stats.replyAudibleMs += period;
      this.ui.you.style.width = width(mic);
      this.ui.assistant.style.width = width(reply);
    }, period);
  }

  // For tests and tools: what a person sees, and what the meters measured.
  snapshot() {
    return {
      ...this.stats,
      stateText: this.ui.state.textContent,
      error: this.ui.error.textContent,
      transcript: [...this.ui.transcript.children].map((li) => li.textContent),
      latency: Object.fromEntries([...this.ui.latency.querySelectorAll("tr")].map(
        (tr) => [tr.dataset.stage, tr.lastElementChild.textContent])),
      text: this.shadowRoot.querySelector(".card").innerText,
    };
  }
}

customElements.define("voice-widget", VoiceWidget);
