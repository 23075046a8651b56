// The page's call state and the reducer that turns pipeline events (spec §4.1) into it.

export type ServerEvent =
  | { type: "transcript"; text: string; latency_ms?: number }
  | { type: "llm_token"; token: string }
  | { type: "llm_done"; text: string; latency_ms?: number }
  | { type: "tts_ready"; latency_ms?: number }
  | {
      type: "metrics";
      asr_ms: number | null;
      llm_ms: number | null;
      tts_ms: number | null;
      total_ms: number | null;
      interrupted?: boolean;
    }
  | { type: "error"; stage?: string; message: string }
  | { type: "hangup"; reason?: string };

export type Status =
  | "idle"
  | "connecting"
  | "listening"
  | "thinking"
  | "speaking"
  | "ended"
  | "error";

export type CallMode = "conversation" | "transcribe_only";

export interface Turn {
  id: number;
  role: "caller" | "bot";
  text: string;
  final: boolean;
  latencyMs?: number;
}

/** One turn's latencies in ms; null where the stage did not finish (error, barge-in). */
export interface TurnMetrics {
  turn: number;
  asr_ms: number | null;
  llm_ms: number | null;
  tts_ms: number | null;
  total_ms: number | null;
  interrupted: boolean;
}

function msOrNull(value: unknown): number | null {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

export interface CallState {
  status: Status;
  mode: CallMode;
  callId: string | null;
  error: string | null;
  endReason: string | null;
  turns: Turn[];
  metrics: TurnMetrics[];
  nextId: number;
}

export type Action =
  | { kind: "start"; mode: CallMode }
  | { kind: "answered"; callId: string }
  | { kind: "connected" }
  | { kind: "event"; event: ServerEvent }
  | { kind: "botAudio"; playing: boolean }
  | { kind: "ended"; reason: string }
  | { kind: "failed"; message: string };

export const initialState: CallState = {
  status: "idle",
  mode: "conversation",
  callId: null,
  error: null,
  endReason: null,
  turns: [],
  metrics: [],
  nextId: 1,
};

const LIVE: ReadonlySet<Status> = new Set(["listening", "thinking", "speaking", "error"]);

/** Whether a call is up (media flowing) in this state. */
export function isLive(state: CallState): boolean {
  return LIVE.has(state.status) && state.endReason === null;
}

/** Whether the page is connecting or in a call (so the Call button is disabled). */
export function isBusy(state: CallState): boolean {
  return state.status === "connecting" || isLive(state);
}

/** Parse one data-channel message; null for anything that is not a known event. */
export function parseEvent(data: unknown): ServerEvent | null {
  if (typeof data !== "string") return null;
  let value: unknown;
  try {
    value = JSON.parse(data);
  } catch {
    return null;
  }
  if (typeof value !== "object" || value === null) return null;
  const type = (value as { type?: unknown }).type;
  const known = ["transcript", "llm_token", "llm_done", "tts_ready", "metrics", "error", "hangup"];
  return typeof type === "string" && known.includes(type) ? (value as ServerEvent) : null;
}

function openBotTurn(turns: Turn[]): Turn | undefined {
  const last = turns[turns.length - 1];
  return last && last.role === "bot" && !last.final ? last : undefined;
}

function onEvent(state: CallState, event: ServerEvent): CallState {
  switch (event.type) {
    case "transcript": {
      const text = (event.text ?? "").trim();
      if (!text) return state;
      const turn: Turn = {
        id: state.nextId,
        role: "caller",
        text,
        final: true,
        latencyMs: event.latency_ms,
      };
      // a caller turn closes any bot turn that was still streaming (barge-in)
      const turns = state.turns.map((t) => (t.role === "bot" && !t.final ? { ...t, final: true } : t));
      return {
        ...state,
        turns: [...turns, turn],
        nextId: state.nextId + 1,
        error: null,
        status: state.mode === "conversation" ? "thinking" : "listening",
      };
    }
    case "llm_token": {
      const open = openBotTurn(state.turns);
      // an error earlier in this turn stays on screen until the caller speaks again
      const status = state.status === "speaking" || state.status === "error" ? state.status : "thinking";
      if (open) {
        const turns = state.turns.slice(0, -1).concat({ ...open, text: open.text + event.token });
        return { ...state, turns, status };
      }
      const turn: Turn = { id: state.nextId, role: "bot", text: event.token, final: false };
      return { ...state, turns: [...state.turns, turn], nextId: state.nextId + 1, status };
    }
    case "llm_done": {
      const open = openBotTurn(state.turns);
      const text = (event.text ?? "").trim();
      if (open) {
        const done = { ...open, text: text || open.text.trim(), final: true, latencyMs: event.latency_ms };
        return { ...state, turns: state.turns.slice(0, -1).concat(done) };
      }
      if (!text) return state;
      const turn: Turn = { id: state.nextId, role: "bot", text, final: true, latencyMs: event.latency_ms };
      return { ...state, turns: [...state.turns, turn], nextId: state.nextId + 1 };
    }
    case "tts_ready":
      return { ...state, status: "speaking" };
    case "metrics": {
      const callerTurns = state.turns.filter((t) => t.role === "caller").length;
      const row: TurnMetrics = {
        turn: Math.max(1, callerTurns),
        asr_ms: msOrNull(event.asr_ms),
        llm_ms: msOrNull(event.llm_ms),
        tts_ms: msOrNull(event.tts_ms),
        total_ms: msOrNull(event.total_ms),
        interrupted: event.interrupted === true,
      };
      return { ...state, metrics: [...state.metrics, row] };
    }
    case "error": {
      const stage = event.stage ? `${event.stage}: ` : "";
      return { ...state, status: "error", error: `${stage}${event.message}` };
    }
    case "hangup":
      return finish(state, event.reason ? `the bridge hung up (${event.reason})` : "the bridge hung up");
  }
}

function finish(state: CallState, reason: string): CallState {
  if (state.status === "ended" || (state.status === "error" && state.endReason !== null)) return state;
  const turns = state.turns.map((t) => (t.final ? t : { ...t, final: true }));
  return { ...state, status: "ended", endReason: reason, turns };
}

/** The call reducer: every state change of the page goes through here. */
export function callReducer(state: CallState, action: Action): CallState {
  switch (action.kind) {
    case "start":
      return { ...initialState, status: "connecting", mode: action.mode };
    case "answered":
      return { ...state, callId: action.callId };
    case "connected":
      return state.status === "connecting" ? { ...state, status: "listening" } : state;
    case "event":
      if (state.endReason !== null) return state;
      return onEvent(state, action.event);
    case "botAudio":
      if (action.playing && (state.status === "listening" || state.status === "thinking")) {
        return { ...state, status: "speaking" };
      }
      if (!action.playing && state.status === "speaking") return { ...state, status: "listening" };
      return state;
    case "ended":
      return finish(state, action.reason);
    case "failed":
      if (state.endReason !== null) return state;
      return { ...state, status: "error", error: action.message, endReason: action.message };
  }
}
