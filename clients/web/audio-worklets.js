// AudioWorklet processors for the WebSocket fallback of <voice-widget>.
//
// voice-capture:  microphone → 16-bit PCM at the session rate, posted in 20 ms chunks.
// voice-playback: 16-bit PCM at the session rate → speakers, with a "clear" command that
//                 drops everything queued (barge-in: the assistant stops at once).
// Both resample linearly between the AudioContext rate and the session rate when they
// differ (the widget picks the context rate when the service supports it).

class VoiceCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetRate, frameMs } = options.processorOptions;
    this.step = sampleRate / targetRate; // input samples per output sample
    this.frame = new Int16Array(Math.round((targetRate * frameMs) / 1000));
    this.filled = 0;
    this.position = 0; // fractional read position into the current input block
    this.previous = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    const input = channels[0];
    // Linear interpolation between the last sample of the previous block and this one.
    while (this.position < input.length) {
      const i = Math.floor(this.position);
      const frac = this.position - i;
      const a = i === 0 ? this.previous : input[i - 1];
      const b = input[i];
      this.push(a + (b - a) * frac);
      this.position += this.step;
    }
    this.position -= input.length;
    this.previous = input[input.length - 1];
    return true;
  }

  push(sample) {
    const clipped = Math.max(-1, Math.min(1, sample));
    this.frame[this.filled++] = clipped < 0 ? clipped * 0x8000 : clipped * 0x7fff;
    if (this.filled === this.frame.length) {
      const chunk = this.frame.slice().buffer;
      this.port.postMessage(chunk, [chunk]);
      this.filled = 0;
    }
  }
}

class VoicePlayback extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.step = options.processorOptions.sourceRate / sampleRate; // source samples per output
    this.queue = []; // Float32Array chunks at the source rate
    this.offset = 0; // fractional read position into queue[0]
    this.port.onmessage = (event) => {
      if (event.data === "clear") {
        this.queue = [];
        this.offset = 0;
        return;
      }
      const pcm = new Int16Array(event.data);
      const chunk = new Float32Array(pcm.length);
      for (let i = 0; i < pcm.length; i++) chunk[i] = pcm[i] / 0x8000;
      this.queue.push(chunk);
    };
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    for (let i = 0; i < out.length; i++) {
      out[i] = this.next();
    }
    return true;
  }

  next() {
    while (this.queue.length && this.offset >= this.queue[0].length) {
      this.offset -= this.queue[0].length;
      this.queue.shift();
    }
    if (!this.queue.length) return 0;
    const chunk = this.queue[0];
    const i = Math.floor(this.offset);
    const frac = this.offset - i;
    const a = chunk[i];
    const b = i + 1 < chunk.length ? chunk[i + 1] : this.queue.length > 1 ? this.queue[1][0] : a;
    this.offset += this.step;
    return a + (b - a) * frac;
  }
}

registerProcessor("voice-capture", VoiceCapture);
registerProcessor("voice-playback", VoicePlayback);
