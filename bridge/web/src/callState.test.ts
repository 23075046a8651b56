import { describe, expect, it } from "vitest";
import { callReducer, initialState, parseEvent, type Action, type CallState, type ServerEvent } from "./callState";

function run(events: ServerEvent[], mode: "conversation" | "transcribe_only" = "conversation"): CallState {
  const actions: Action[] = [
    { kind: "start", mode },
    { kind: "answered", callId: "abc" },
    { kind: "connected" },
    ...events.map((event) => ({ kind: "event", event }) as Action),
  ];
  return actions.reduce(callReducer, initialState);
}

describe("callReducer", () => {
  it("goes connecting → listening", () => {
    const s1 = callReducer(initialState, { kind: "start", mode: "conversation" });
    expect(s1.status).toBe("connecting");
    expect(callReducer(s1, { kind: "connected" }).status).toBe("listening");
  });

  it("builds caller and bot turns from transcript and streamed tokens", () => {
    const s = run([
      { type: "transcript", text: " What time is it? ", latency_ms: 140 },
      { type: "llm_token", token: "It is" },
      { type: "llm_token", token: " noon." },
    ]);
    expect(s.status).toBe("thinking");
    expect(s.turns.map((t) => [t.role, t.text, t.final])).toEqual([
      ["caller", "What time is it?", true],
      ["bot", "It is noon.", false],
    ]);
    const done = callReducer(s, { kind: "event", event: { type: "llm_done", text: "It is noon.", latency_ms: 300 } });
    expect(done.turns[1]).toMatchObject({ role: "bot", text: "It is noon.", final: true, latencyMs: 300 });
  });

  it("tts_ready means speaking, and silence afterwards means listening", () => {
    const s = run([{ type: "transcript", text: "hi" }, { type: "tts_ready", latency_ms: 90 }]);
    expect(s.status).toBe("speaking");
    expect(callReducer(s, { kind: "botAudio", playing: false }).status).toBe("listening");
  });

  it("records one metrics row per turn", () => {
    const s = run([
      { type: "transcript", text: "one" },
      { type: "metrics", asr_ms: 140, llm_ms: 210, tts_ms: 180, total_ms: 640 },
      { type: "transcript", text: "two" },
      { type: "metrics", asr_ms: 150, llm_ms: 220, tts_ms: 190, total_ms: 700 },
    ]);
    expect(s.metrics).toEqual([
      { turn: 1, asr_ms: 140, llm_ms: 210, tts_ms: 180, total_ms: 640, interrupted: false },
      { turn: 2, asr_ms: 150, llm_ms: 220, tts_ms: 190, total_ms: 700, interrupted: false },
    ]);
  });

  it("keeps stages that did not finish as null", () => {
    const s = run([
      { type: "transcript", text: "one" },
      { type: "metrics", asr_ms: 140, llm_ms: null, tts_ms: null, total_ms: null, interrupted: true },
    ]);
    expect(s.metrics[0]).toEqual({
      turn: 1,
      asr_ms: 140,
      llm_ms: null,
      tts_ms: null,
      total_ms: null,
      interrupted: true,
    });
  });

  it("shows pipeline errors and keeps the call live", () => {
    const s = run([{ type: "error", stage: "llm", message: "ollama at http://x: timeout" }]);
    expect(s.status).toBe("error");
    expect(s.error).toBe("llm: ollama at http://x: timeout");
    expect(s.endReason).toBeNull();
    const next = callReducer(s, { kind: "event", event: { type: "transcript", text: "again" } });
    expect(next.status).toBe("thinking");
    expect(next.error).toBeNull();
  });

  it("keeps a turn's error on screen while the reply streams on", () => {
    const s = run([
      { type: "transcript", text: "hi" },
      { type: "error", stage: "tts", message: "coqui: unavailable" },
      { type: "llm_token", token: "Hello" },
    ]);
    expect(s.status).toBe("error");
    expect(s.turns[1].text).toBe("Hello");
  });

  it("stays listening in transcribe-only mode", () => {
    const s = run([{ type: "transcript", text: "hello there" }], "transcribe_only");
    expect(s.status).toBe("listening");
    expect(s.turns).toHaveLength(1);
  });

  it("ends on hangup and ignores later events", () => {
    const s = run([{ type: "llm_token", token: "Half" }, { type: "hangup", reason: "shutdown" }]);
    expect(s.status).toBe("ended");
    expect(s.endReason).toBe("the bridge hung up (shutdown)");
    expect(s.turns[0].final).toBe(true);
    expect(callReducer(s, { kind: "event", event: { type: "transcript", text: "late" } })).toBe(s);
  });

  it("a failed connection is an error that ends the call", () => {
    const s = callReducer(callReducer(initialState, { kind: "start", mode: "conversation" }), {
      kind: "failed",
      message: "too many calls, try again later",
    });
    expect(s).toMatchObject({ status: "error", error: "too many calls, try again later" });
    expect(s.endReason).not.toBeNull();
  });
});

describe("parseEvent", () => {
  it("accepts the spec's events and rejects anything else", () => {
    expect(parseEvent('{"type":"llm_token","token":"a"}')).toEqual({ type: "llm_token", token: "a" });
    expect(parseEvent("not json")).toBeNull();
    expect(parseEvent('{"type":"bogus"}')).toBeNull();
    expect(parseEvent("[1,2]")).toBeNull();
    expect(parseEvent(new ArrayBuffer(2))).toBeNull();
  });
});
