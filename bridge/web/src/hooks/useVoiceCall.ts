// One WebRTC call to the bridge: media source, peer connection, "events" data channel,
// HTTP signalling (POST /webrtc/offer), bot audio playback and RTP statistics.

import { useCallback, useEffect, useReducer, useRef } from "react";
import { callReducer, initialState, parseEvent, type CallMode } from "../callState";
import { openFileSource, type FileSource } from "./fileSource";
import { withToken } from "../access";

export type Source = "mic" | "file";
export type TtsEngine = "piper" | "coqui";

export interface StartOptions {
  source: Source;
  file?: File | null;
  ttsEngine: TtsEngine;
  mode: CallMode;
}

/** RTP counters of the call, also published on `window.__voicebridgeStats` for tests. */
export interface AudioStats {
  connectionState: string;
  packetsSent: number;
  packetsReceived: number;
  totalSamplesReceived: number;
  totalAudioEnergy: number;
  audioLevel: number;
}

declare global {
  interface Window {
    __voicebridgeStats?: AudioStats;
  }
}

const EMPTY_STATS: AudioStats = {
  connectionState: "new",
  packetsSent: 0,
  packetsReceived: 0,
  totalSamplesReceived: 0,
  totalAudioEnergy: 0,
  audioLevel: 0,
};
const STATS_INTERVAL_MS = 250;
const ICE_GATHER_TIMEOUT_MS = 3000;
const BOT_SILENT_POLLS = 3;

interface Resources {
  pc: RTCPeerConnection;
  channel: RTCDataChannel;
  stream: MediaStream;
  ctx: AudioContext | null;
  file: FileSource | null;
  timer: number | null;
}

async function iceServers(): Promise<RTCIceServer[]> {
  try {
    const res = await fetch(withToken("/webrtc/config"));
    if (!res.ok) return [];
    const body = (await res.json()) as { iceServers?: RTCIceServer[] };
    return body.iceServers ?? [];
  } catch {
    return [];
  }
}

function gatheringComplete(pc: RTCPeerConnection): Promise<void> {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      pc.removeEventListener("icegatheringstatechange", check);
      window.clearTimeout(timer);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") done();
    };
    const timer = window.setTimeout(done, ICE_GATHER_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

async function captureSource(
  options: StartOptions,
): Promise<{ stream: MediaStream; ctx: AudioContext | null; file: FileSource | null }> {
  if (options.source === "mic") {
    if (!navigator.mediaDevices?.getUserMedia) {
      throw new Error(
        "the microphone needs a secure page: open it as https:// or http://localhost, or use file mode",
      );
    }
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: {
        channelCount: 1,
        echoCancellation: false,
        noiseSuppression: false,
        autoGainControl: false,
      },
    });
    return { stream, ctx: null, file: null };
  }
  if (!options.file) throw new Error("choose a WAV or MP3 file first");
  const ctx = new AudioContext();
  try {
    const file = await openFileSource(options.file, ctx);
    return { stream: file.stream, ctx, file };
  } catch (err) {
    void ctx.close();
    throw err;
  }
}

/** The call's state and its two actions, plus the ref for the bot's `<audio>` element. */
export function useVoiceCall() {
  const [state, dispatch] = useReducer(callReducer, initialState);
  const audioRef = useRef<HTMLAudioElement | null>(null);
  const res = useRef<Resources | null>(null);

  const release = useCallback((sayHangup: boolean) => {
    const r = res.current;
    res.current = null;
    if (!r) return;
    if (r.timer !== null) window.clearInterval(r.timer);
    if (sayHangup && r.channel.readyState === "open") {
      r.channel.send(JSON.stringify({ type: "hangup" }));
    }
    r.file?.stop();
    r.stream.getTracks().forEach((t) => t.stop());
    // give the hangup message a moment to leave before the transport goes
    window.setTimeout(() => r.pc.close(), sayHangup ? 100 : 0);
    if (r.ctx) void r.ctx.close();
    if (window.__voicebridgeStats) window.__voicebridgeStats.connectionState = "closed";
  }, []);

  const pollStats = useCallback((pc: RTCPeerConnection) => {
    let lastEnergy = 0;
    let quiet = 0;
    let playing = false;
    return async () => {
      const report = await pc.getStats();
      const stats: AudioStats = { ...EMPTY_STATS, connectionState: pc.connectionState };
      report.forEach((s: Record<string, unknown>) => {
        if (s.kind !== "audio") return;
        if (s.type === "inbound-rtp") {
          stats.packetsReceived = Number(s.packetsReceived ?? 0);
          stats.totalSamplesReceived = Number(s.totalSamplesReceived ?? 0);
          stats.totalAudioEnergy = Number(s.totalAudioEnergy ?? 0);
          stats.audioLevel = Number(s.audioLevel ?? 0);
        } else if (s.type === "outbound-rtp") {
          stats.packetsSent = Number(s.packetsSent ?? 0);
        }
      });
      window.__voicebridgeStats = stats;
      const speaking = stats.totalAudioEnergy - lastEnergy > 1e-6 || stats.audioLevel > 0.003;
      lastEnergy = stats.totalAudioEnergy;
      quiet = speaking ? 0 : quiet + 1;
      if (speaking !== playing && (speaking || quiet >= BOT_SILENT_POLLS)) {
        playing = speaking;
        dispatch({ kind: "botAudio", playing });
      }
    };
  }, []);

  const start = useCallback(
    async (options: StartOptions) => {
      release(true);
      dispatch({ kind: "start", mode: options.mode });
      window.__voicebridgeStats = { ...EMPTY_STATS };
      let source: Awaited<ReturnType<typeof captureSource>>;
      try {
        source = await captureSource(options);
      } catch (err) {
        dispatch({ kind: "failed", message: err instanceof Error ? err.message : String(err) });
        return;
      }
      const pc = new RTCPeerConnection({ iceServers: await iceServers() });
      const channel = pc.createDataChannel("events");
      const r: Resources = { pc, channel, ...source, timer: null };
      res.current = r;
      const current = () => res.current === r;

      source.stream.getAudioTracks().forEach((t) => pc.addTrack(t, source.stream));
      channel.onmessage = (msg) => {
        const event = parseEvent(msg.data);
        if (!event || !current()) return;
        dispatch({ kind: "event", event });
        if (event.type === "hangup") release(false);
      };
      channel.onclose = () => {
        if (!current()) return;
        dispatch({ kind: "ended", reason: "the bridge closed the call" });
        release(false);
      };
      pc.ontrack = (ev) => {
        const audio = audioRef.current;
        if (!audio) return;
        audio.srcObject = ev.streams[0] ?? new MediaStream([ev.track]);
        audio.muted = false;
        void audio.play().catch(() => undefined);
      };
      pc.onconnectionstatechange = () => {
        if (!current()) return;
        if (pc.connectionState === "connected") {
          dispatch({ kind: "connected" });
          r.file?.start();
        } else if (pc.connectionState === "failed") {
          dispatch({ kind: "failed", message: "the connection to the bridge failed (ICE/DTLS)" });
          release(false);
        } else if (pc.connectionState === "closed") {
          dispatch({ kind: "ended", reason: "the connection closed" });
          release(false);
        }
      };
      const poll = pollStats(pc);
      r.timer = window.setInterval(() => void poll().catch(() => undefined), STATS_INTERVAL_MS);

      try {
        await pc.setLocalDescription(await pc.createOffer());
        await gatheringComplete(pc);
        const local = pc.localDescription;
        if (!local) throw new Error("the browser produced no SDP offer");
        const reply = await fetch(withToken("/webrtc/offer"), {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({
            sdp: local.sdp,
            type: local.type,
            tts_engine: options.ttsEngine,
            mode: options.mode,
          }),
        });
        const body = (await reply.json().catch(() => ({}))) as {
          sdp?: string;
          type?: RTCSdpType;
          call_id?: string;
          error?: string;
        };
        if (!reply.ok || !body.sdp) {
          throw new Error(body.error ?? `the bridge answered HTTP ${reply.status}`);
        }
        if (!current()) return;
        dispatch({ kind: "answered", callId: body.call_id ?? "" });
        await pc.setRemoteDescription({ type: body.type ?? "answer", sdp: body.sdp });
      } catch (err) {
        if (!current()) return;
        dispatch({ kind: "failed", message: err instanceof Error ? err.message : String(err) });
        release(false);
      }
    },
    [release, pollStats],
  );

  const hangup = useCallback(() => {
    release(true);
    dispatch({ kind: "ended", reason: "you hung up" });
  }, [release]);

  useEffect(() => () => release(true), [release]);

  return { state, start, hangup, audioRef };
}
