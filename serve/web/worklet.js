// AudioWorklet processor of the live transcription page (serve/web/index.html).
//
// Collects the microphone's samples (mono: channels averaged) at the AudioContext's own rate
// into pieces of `pieceSeconds` (100 ms by default) and posts each piece to the page as a
// Float32Array (its buffer transferred). The page sends the pieces as they are; the server
// resamples to the model's rate (serve.features.StreamingResampler, the same filter training
// used on files), so no resampling happens in the browser.

class PcmPieces extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const seconds = (options.processorOptions && options.processorOptions.pieceSeconds) || 0.1;
    this.size = Math.max(128, Math.round(seconds * sampleRate));
    this.piece = new Float32Array(this.size);
    this.used = 0;
    this.running = true;
    this.port.onmessage = (e) => {
      if (e.data === "flush") {  // the last samples, then nothing more
        if (this.used > 0) this.post();
        this.running = false;
        this.port.postMessage("flushed");
      } else if (e.data === "stop") {
        this.running = false;
      }
    };
  }

  post() {
    const out = this.piece.slice(0, this.used);
    this.port.postMessage(out, [out.buffer]);
    this.used = 0;
  }

  process(inputs) {
    const input = inputs[0];
    if (!this.running) return false;
    if (!input || input.length === 0) return true;  // no source connected yet
    const n = input[0].length;
    for (let i = 0; i < n; i++) {
      let v = 0;
      for (let c = 0; c < input.length; c++) v += input[c][i];
      this.piece[this.used++] = v / input.length;
      if (this.used === this.size) this.post();
    }
    return true;
  }
}

registerProcessor("pcm-pieces", PcmPieces);
