// AudioWorklet processor of the live transcription page (serve/web/index.html).
//
// Takes the microphone's samples (mono: channels averaged) at the AudioContext's rate, resamples
// them to `targetRate` (16 kHz, the model's rate) and posts pieces of `pieceSeconds` (100 ms by
// default) to the page as Float32Arrays (buffers transferred). Its first message, before any
// audio, is {rate}: the rate of the pieces.
//
// The resampler is serve.features.StreamingResampler in JavaScript: scipy's resample_poly
// (a 2L+1-tap Kaiser-windowed low-pass, L = 10 max(up, down), beta 5), evaluated in float64,
// so the page sends the samples the server would have made from the device-rate audio, and
// the ones training files went through. Device rates whose up/down ratio makes the filter
// unreasonably long (no common rate does) are sent as they are; the server resamples those.

const MAX_TABLE = 1 << 20;  // up * taps per phase: 160 * 56 for 44.1 kHz, 1 * 61 for 48 kHz

function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return a;
}

function besselI0(x) {
  // sum_k ((x/2)^k / k!)^2, to double precision for the arguments a Kaiser window uses
  let sum = 1, term = 1;
  for (let k = 1; k < 200; k++) {
    term *= (x / (2 * k)) * (x / (2 * k));
    sum += term;
    if (term < sum * 1e-17) break;
  }
  return sum;
}

// scipy.signal.firwin(numtaps, cutoff, window=("kaiser", beta)): low-pass, unit gain at DC,
// cutoff as a fraction of the Nyquist frequency.
function firwinKaiser(numtaps, cutoff, beta) {
  const h = new Float64Array(numtaps);
  const alpha = 0.5 * (numtaps - 1);
  const i0beta = besselI0(beta);
  let sum = 0;
  for (let n = 0; n < numtaps; n++) {
    const m = n - alpha;
    const x = cutoff * m;
    const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
    const r = 2 * n / (numtaps - 1) - 1;
    const w = besselI0(beta * Math.sqrt(Math.max(0, 1 - r * r))) / i0beta;
    h[n] = cutoff * sinc * w;
    sum += h[n];
  }
  for (let n = 0; n < numtaps; n++) h[n] /= sum;
  return h;
}

class StreamingResampler {
  constructor(fromRate, toRate) {
    const g = gcd(fromRate, toRate);
    this.up = toRate / g;
    this.down = fromRate / g;
    this.half = 10 * Math.max(this.up, this.down);
    this.taps = Math.ceil((2 * this.half + 1) / this.up);  // taps per phase
    this.ok = this.up * this.taps <= MAX_TABLE;
    if (!this.ok) return;
    const h = firwinKaiser(2 * this.half + 1, 1 / Math.max(this.up, this.down), 5.0);
    this.table = new Float64Array(this.up * this.taps);  // table[p][j] = up * h[p + j*up]
    for (let p = 0; p < this.up; p++)
      for (let j = 0; p + j * this.up < h.length; j++) this.table[p * this.taps + j] = this.up * h[p + j * this.up];
    this.buf = new Float64Array(4096);  // input samples [base, base + len)
    this.len = 0;
    this.base = 0;
    this.nIn = 0;
    this.nOut = 0;
  }

  push(x) {  // Float32Array -> the output samples that became ready
    if (this.len + x.length > this.buf.length) {
      const grown = new Float64Array(Math.max(2 * this.buf.length, this.len + x.length));
      grown.set(this.buf.subarray(0, this.len));
      this.buf = grown;
    }
    this.buf.set(x, this.len);
    this.len += x.length;
    this.nIn += x.length;
    // outputs whose newest input sample has arrived: (n*down + half) // up < nIn
    return this.emit(Math.max(0, Math.ceil((this.nIn * this.up - this.half) / this.down)));
  }

  flush() {  // the rest, the input read as zeros past its end
    return this.emit(Math.ceil((this.nIn * this.up) / this.down));
  }

  emit(nEnd) {
    const count = Math.max(0, nEnd - this.nOut);
    const out = new Float32Array(count);
    const { up, down, half, taps, table, buf, len, base } = this;
    for (let k = 0; k < count; k++) {
      const pos = (this.nOut + k) * down + half;
      const i0 = Math.floor(pos / up), row = (pos % up) * taps;
      let s = 0;
      for (let j = 0; j < taps; j++) {
        const idx = i0 - j - base;
        if (idx >= 0 && idx < len) s += table[row + j] * buf[idx];
      }
      out[k] = s;
    }
    this.nOut += count;
    // keep only the history the next output needs
    const need = Math.floor((this.nOut * down + half) / up) - (taps - 1);
    const drop = Math.min(Math.max(0, need - base), len);
    if (drop > 0) {
      buf.copyWithin(0, drop, len);
      this.len = len - drop;
      this.base = base + drop;
    }
    return out;
  }
}

class PcmPieces extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions || {};
    const seconds = opts.pieceSeconds || 0.1;
    const target = opts.targetRate || sampleRate;
    this.resampler = target !== sampleRate ? new StreamingResampler(sampleRate, target) : null;
    if (this.resampler && !this.resampler.ok) this.resampler = null;
    this.rate = this.resampler ? target : sampleRate;
    this.size = Math.max(128, Math.round(seconds * this.rate));
    this.piece = new Float32Array(this.size);
    this.used = 0;
    this.mono = new Float32Array(128);
    this.running = true;
    this.port.postMessage({ rate: this.rate });
    this.port.onmessage = (e) => {
      if (e.data === "flush") {  // the last samples, then nothing more
        if (this.resampler) this.add(this.resampler.flush());
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

  add(x) {
    for (let i = 0; i < x.length; i++) {
      this.piece[this.used++] = x[i];
      if (this.used === this.size) this.post();
    }
  }

  process(inputs) {
    const input = inputs[0];
    if (!this.running) return false;
    if (!input || input.length === 0) return true;  // no source connected yet
    const n = input[0].length;
    if (this.mono.length !== n) this.mono = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      let v = 0;
      for (let c = 0; c < input.length; c++) v += input[c][i];
      this.mono[i] = v / input.length;
    }
    this.add(this.resampler ? this.resampler.push(this.mono) : this.mono);
    return true;
  }
}

registerProcessor("pcm-pieces", PcmPieces);
