// The live transcription page: microphone -> AudioWorklet (worklet.js) -> WebSocket (/ws) ->
// partial and final results. The protocol is in docs/live.md.
//
// Audio is sent as float32 pieces of 100 ms at 16 kHz, the model's rate: the worklet resamples
// the AudioContext's rate (often 48 kHz) with the server's own filter. Pieces captured before
// the server's "ready" are queued and sent then, so the first words are not lost.
// `window.live` exposes the page's state (used by the tests).

"use strict";

const $ = (id) => document.getElementById(id);
const live = (window.live = {
  status: "idle", ready: false, done: false, finals: [], partial: "", errors: [],
  closeCode: null, closeReason: "", piecesSent: 0, sampleRate: null, deviceRate: null, ended: false,
  droppedMs: null,  // microphone audio the browser itself dropped (its track stats; null: not reported)
  maxStreamSeconds: null, rollovers: 0,  // the server's limit of audio per connection; moves to a new one
  connectionSamples: [],  // samples sent on each connection of this Start
});
const MODEL_RATE = 16000;  // the rate the page sends; the server resamples any other
let ws = null, ctx = null, media = null, node = null, queue = [];
const INSECURE = "No microphone on this page: browsers give it only to https pages, and to http://localhost or " +
  "http://127.0.0.1 on the machine itself. From another machine, start the server with --certfile and --keyfile " +
  "and open https://" + location.host + "/ (docs/live.md, TLS).";
let session = 0;  // Start's number: a Stop (or the next Start) while one is still setting up makes it give up

function setStatus(text) {
  live.status = text;
  $("status").textContent = text;
}

function showError(text) {
  live.errors.push(text);
  $("error").textContent = text;
}

function gap() {  // before new text: nothing, a space, or a new line (the first text of a new Start)
  return !$("finals").hasChildNodes() ? "" : live.finals.length ? " " : "\n";
}

function buttons(running) {
  $("start").disabled = running;
  $("stop").disabled = !running;
}

function wsUrl() {
  const token = new URLSearchParams(location.search).get("token");
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  return scheme + location.host + "/ws" + (token ? "?token=" + encodeURIComponent(token) : "");
}

async function start() {
  const id = ++session;
  buttons(true);
  $("error").textContent = "";  // the transcript stays: this session's text goes on a new line
  Object.assign(live, { ready: false, done: false, finals: [], partial: "", errors: [], closeCode: null,
                        closeReason: "", piecesSent: 0, ended: false, droppedMs: null, rollovers: 0, connectionSamples: [] });
  queue = [];
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showError(INSECURE);
    buttons(false);
    return;
  }
  // The audio graph is ready before the microphone opens, so its first samples are not lost.
  // It runs at the device's own rate; the worklet resamples to the model's rate with the
  // filter the training files went through (docs/live.md). Until the WebSocket is made, the
  // graph and the microphone are this call's own: a Stop meanwhile leaves them to it to close.
  let graph, mic;
  try {
    graph = await buildGraph();
  } catch (e) {
    const reason = await serverTrouble();  // worklet.js is fetched from the server at each Start
    if (id === session) failCapture(reason ? `Could not load worklet.js: ${reason}.` : "Audio processing failed: " + e.message);
    return;
  }
  if (id !== session) return void graph.ctx.close();
  setStatus("asking for the microphone ...");
  try {
    mic = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  } catch (e) {
    graph.ctx.close();
    if (id === session) { failCapture(micError(e)); setStatus("idle"); }
    return;
  }
  if (id !== session) {
    mic.getTracks().forEach((t) => t.stop());
    return void graph.ctx.close();
  }
  ({ ctx, node } = graph);
  media = mic;
  live.sampleRate = graph.rate;
  try {
    ctx.createMediaStreamSource(media).connect(node);
  } catch (e) {
    failCapture("Audio processing failed: " + e.message);
    return;
  }
  setStatus("connecting ...");
  connect();
}

function connect() {
  const w = (ws = new WebSocket(wsUrl()));
  w.binaryType = "arraybuffer";
  w.onopen = () => w.send(JSON.stringify({ type: "start", sample_rate: live.sampleRate, format: "float32" }));
  w.onmessage = (e) => onMessage(JSON.parse(e.data));
  w.onclose = (e) => onClose(e);
}

// A connection carries at most the server's max_stream_seconds of audio (an hour by default).
// Before that the page moves to a new connection by itself: at the first final after the last
// ROLL_MARGIN seconds before the limit began (a segment boundary: no word is cut), or, with no
// endpoint in that time, just before the limit. The old connection gets `end` and its last
// results are still shown; the audio goes on to the new one without a gap (queued until ready).
const MIN_ROLL_SECONDS = 2;  // a shorter limit is not worth a connection each: the server's error says so

function sentSeconds() {  // audio sent on the current connection
  return (live.connectionSamples[live.rollovers] || 0) / live.sampleRate;
}

function rollMargin() {
  return Math.min(60, live.maxStreamSeconds / 2);
}

function rollover() {
  const old = ws;
  old.onmessage = (e) => {  // the old session's tail: its last finals (its partials are superseded)
    const msg = JSON.parse(e.data);
    if (msg.type === "final" && msg.text) {
      $("finals").append(gap() + msg.text);
      live.finals.push(msg.text);
    }
  };
  old.onclose = null;
  if (old.readyState === WebSocket.OPEN) old.send(JSON.stringify({ type: "end" }));
  live.rollovers++;
  live.ready = false;
  queue = [];
  connect();
}

function micError(e) {  // getUserMedia's refusal, in words a user can act on
  const why = {
    NotAllowedError: "permission denied: allow the microphone for this site (the icon in the address bar, or the " +
                     "site's settings), then press Start again",
    NotFoundError: "none found: connect one (or enable it in the system's sound settings), then press Start again",
    NotReadableError: "it could not be opened: another application may be using it, or the system blocks it",
  }[e.name];
  return `Microphone unavailable: ${why ? why + " (" : ""}${e.name}: ${e.message}${why ? ")" : ""}`;
}

function failCapture(message) {
  showError(message);
  stopCapture();
  buttons(false);
}

async function buildGraph() {  // -> {ctx, node, rate}; closed by the caller on a failure after it
  const c = new AudioContext();
  try {
    live.deviceRate = c.sampleRate;
    await c.audioWorklet.addModule("worklet.js");
    const n = new AudioWorkletNode(c, "pcm-pieces", { processorOptions: { pieceSeconds: 0.1, targetRate: MODEL_RATE } });
    const rate = new Promise((resolve) => {
      n.port.onmessage = (e) => {  // the worklet's first message: the rate of its pieces
        n.port.onmessage = (m) => {
          if (n !== node) return;  // a graph that a Stop has left behind
          if (m.data instanceof Float32Array) sendPiece(m.data);
          else if (m.data === "flushed") sendEnd();
        };
        resolve(e.data.rate);
      };
    });
    const mute = c.createGain();
    mute.gain.value = 0;  // the graph runs to the speakers, silently
    n.connect(mute);
    mute.connect(c.destination);
    if (c.state === "suspended") await c.resume();
    return { ctx: c, node: n, rate: await rate };
  } catch (e) {
    c.close();
    throw e;
  }
}

function sendPiece(x) {
  if (live.ended) return;
  if (live.ready && live.maxStreamSeconds >= MIN_ROLL_SECONDS &&
      sentSeconds() + x.length / live.sampleRate > live.maxStreamSeconds - 0.5) rollover();
  if (!live.ready) queue.push(x);
  else transmit(x);
}

function transmit(x) {
  if (ws && ws.readyState === WebSocket.OPEN) {
    ws.send(x.buffer);
    live.piecesSent++;
    live.connectionSamples[live.rollovers] = (live.connectionSamples[live.rollovers] || 0) + x.length;
  }
}

function sendEnd() {  // on a connection not ready yet (Stop during a rollover): sent after its queue, on ready
  if (!live.ended && live.ready && ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "end" }));
  live.ended = true;
}

function onMessage(msg) {
  if (msg.type === "ready") {
    live.ready = true;
    live.maxStreamSeconds = (msg.limits && msg.limits.max_stream_seconds) || null;
    const m = msg.model;
    setStatus(`listening: ${msg.sample_rate} Hz audio -> ${m.encoder} ${m.head} model at ${msg.model_sample_rate} Hz ` +
              `(${Math.round(m.window_seconds * 1000)} ms windows)`);
    for (const x of queue) transmit(x);
    queue = [];
    if (live.ended) ws.send(JSON.stringify({ type: "end" }));  // Stop came during a rollover
  } else if (msg.type === "partial") {
    live.partial = msg.text;
    $("partial").textContent = msg.text ? gap() + msg.text : "";
  } else if (msg.type === "final") {
    live.partial = "";
    $("partial").textContent = "";
    if (msg.text) {
      $("finals").append(gap() + msg.text);
      live.finals.push(msg.text);
    }
    if (live.ready && !live.ended && live.maxStreamSeconds >= MIN_ROLL_SECONDS &&
        sentSeconds() > live.maxStreamSeconds - rollMargin()) rollover();
  } else if (msg.type === "done") {
    live.done = true;
    const dropped = live.droppedMs ? `; the browser dropped ${Math.round(live.droppedMs)} ms of microphone audio (a busy machine?)` : "";
    setStatus(`done: ${msg.audio_seconds.toFixed(1)} s of audio, ${msg.segments} segment(s)${dropped}`);
  } else if (msg.type === "error") {
    showError("Server: " + msg.message + (live.ready ? " The transcript so far is kept; press Start to go on." : ""));
  }
}

function onClose(e) {
  live.closeCode = e.code;
  live.closeReason = e.reason;
  stopCapture();
  buttons(false);
  if (!live.done && live.partial) {  // no more audio will revise it: kept as it stands
    $("partial").textContent = "";
    $("finals").append(gap() + live.partial);
  }
  if (e.code !== 1000 && live.errors.length === 0) {
    const why = { 1001: ": the server shut down", 1006: ": the server stopped or the network failed" }[e.code] || "";
    if (live.ready) {
      showError(`Connection lost (code ${e.code}${e.reason ? ": " + e.reason : ""})${why}. ` +
                "The transcript so far is kept; press Start to go on.");
    }
    else {
      const id = session;
      serverTrouble().then((reason) => {
        reason = reason || "the server answers, but not at its WebSocket endpoint: a proxy without WebSocket support?";
        if (id === session) showError(`Could not connect to ${wsUrl().split("?")[0]} (code ${e.code}): ${reason}.`);
      });
    }
  }
  if (!live.done && live.status !== "idle") setStatus("stopped");
  ws = null;
}

async function serverTrouble() {
  // A browser does not tell a page why a WebSocket did not open (or a module did not load);
  // the page's own server does: GET /stats checks the token as /ws does. null: no trouble seen.
  const token = new URLSearchParams(location.search).get("token");
  try {
    const r = await fetch("stats" + (token ? "?token=" + encodeURIComponent(token) : ""), { method: "HEAD", cache: "no-store" });
    if (r.status !== 401) return null;
    return token ? "the server refused the token in this page's address (?token=...): check it"
                 : "the server needs a token: open this page as /?token=SECRET, SECRET as given to asr serve --token";
  } catch (e) {
    return "the server does not answer: is asr serve running? (press Start again once it is)";
  }
}

function stopCapture() {
  if (media) media.getTracks().forEach((t) => t.stop());
  if (node) node.port.postMessage("stop");
  if (ctx) ctx.close();
  media = null; node = null; ctx = null;
}

function captureStats() {
  // MediaStreamTrack audio stats (Chromium): frames the capture lost to glitches before the page saw them
  const track = media && media.getAudioTracks()[0];
  const s = track && track.stats;
  if (s && typeof s.totalFramesDuration === "number") live.droppedMs = s.totalFramesDuration - s.deliveredFramesDuration;
}

function stop() {
  $("stop").disabled = true;
  if (!ws) {  // Start is still opening the microphone: it gives up (and closes what it opened)
    session++;
    buttons(false);
    setStatus("stopped");
    return;
  }
  setStatus("finishing ...");
  captureStats();
  if (media) media.getTracks().forEach((t) => t.stop());
  if (node && (live.ready || live.rollovers > 0)) {  // (during a rollover: sent once the new connection is ready)
    node.port.postMessage("flush");  // the last samples, then "end"
  } else {  // nothing was decoded yet: closed here, not reported as a failure to connect
    const w = ws, bye = () => w.close(1000, "stopped before the server was ready");
    w.onmessage = w.onclose = null;
    if (w.readyState === WebSocket.CONNECTING) w.onopen = bye;  // closing it now would log an error
    else bye();
    ws = null;
    stopCapture();
    buttons(false);
    setStatus("stopped");
  }
}

function clear() {
  $("finals").textContent = "";
  $("partial").textContent = live.partial;
}

function save() {  // the transcript as shown, the grey partial included, as a text file
  const text = $("transcript").textContent.trim();
  if (!text) {
    setStatus("Nothing to save yet: the transcript is empty.");
    return;
  }
  const stamp = new Date().toISOString().slice(0, 19).replace("T", "-").replace(/:/g, "");
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text + "\n"], { type: "text/plain;charset=utf-8" }));
  a.download = `transcript-${stamp}.txt`;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

if (!window.isSecureContext) showError(INSECURE);  // said before Start is pressed
$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
$("clear").addEventListener("click", clear);
$("save").addEventListener("click", save);
