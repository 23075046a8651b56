import { act, cleanup, fireEvent, render, screen } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";
import { App } from "./App";
import { callReducer, initialState, type Action, type ServerEvent } from "./callState";
import { CallPanel } from "./components/CallPanel";
import { MetricsPanel } from "./components/MetricsPanel";
import { TranscriptPanel } from "./components/TranscriptPanel";

afterEach(() => {
  cleanup();
  vi.unstubAllGlobals();
});

const TURN: ServerEvent[] = [
  { type: "transcript", text: "Can you hear me?", latency_ms: 140 },
  { type: "llm_token", token: "Yes," },
  { type: "llm_token", token: " loud and clear." },
  { type: "llm_done", text: "Yes, loud and clear.", latency_ms: 320 },
  { type: "tts_ready", latency_ms: 180 },
  { type: "metrics", asr_ms: 140.4, llm_ms: 320, tts_ms: 180, total_ms: 655.6 },
];

function stateAfter(events: ServerEvent[]) {
  const actions: Action[] = [
    { kind: "start", mode: "conversation" },
    { kind: "connected" },
    ...events.map((event) => ({ kind: "event", event }) as Action),
  ];
  return actions.reduce(callReducer, initialState);
}

describe("rendering events", () => {
  it("shows caller and bot turns in order", () => {
    render(<TranscriptPanel turns={stateAfter(TURN).turns} />);
    expect(screen.getByTestId("turn-caller").textContent).toContain("Can you hear me?");
    expect(screen.getByTestId("turn-bot").textContent).toContain("Yes, loud and clear.");
    const roles = Array.from(screen.getByTestId("transcript").querySelectorAll(".turn")).map((li) =>
      li.getAttribute("data-testid"),
    );
    expect(roles).toEqual(["turn-caller", "turn-bot"]);
  });

  it("shows the latest turn's four latencies, rounded", () => {
    render(<MetricsPanel metrics={stateAfter(TURN).metrics} />);
    expect(screen.getByTestId("metric-asr").textContent).toBe("140");
    expect(screen.getByTestId("metric-llm").textContent).toBe("320");
    expect(screen.getByTestId("metric-tts").textContent).toBe("180");
    expect(screen.getByTestId("metric-total").textContent).toBe("656");
    expect(screen.getAllByTestId("metrics-row")).toHaveLength(1);
  });

  it("shows dashes before the first turn and for stages that did not finish", () => {
    render(<MetricsPanel metrics={[]} />);
    expect(screen.getByTestId("metric-total").textContent).toBe("–");
    cleanup();
    const state = stateAfter([
      { type: "transcript", text: "hi" },
      { type: "metrics", asr_ms: 90, llm_ms: null, tts_ms: null, total_ms: null, interrupted: true },
    ]);
    render(<MetricsPanel metrics={state.metrics} />);
    expect(screen.getByTestId("metric-asr").textContent).toBe("90");
    expect(screen.getByTestId("metric-llm").textContent).toBe("–");
    expect(screen.getByTestId("metrics-row").textContent).toContain("1*");
  });

  it("shows the status and the error text", () => {
    const state = stateAfter([{ type: "error", stage: "tts", message: "piper at http://piper:5100: connect" }]);
    const noop = () => undefined;
    render(
      <CallPanel
        state={state}
        source="mic"
        ttsEngine="piper"
        mode="conversation"
        file={null}
        onSource={noop}
        onTtsEngine={noop}
        onMode={noop}
        onFile={noop}
        onCall={noop}
        onHangup={noop}
      />,
    );
    expect(screen.getByTestId("status").getAttribute("data-status")).toBe("error");
    expect(screen.getByTestId("error").textContent).toBe("tts: piper at http://piper:5100: connect");
    expect((screen.getByTestId("call-button") as HTMLButtonElement).disabled).toBe(true);
    expect((screen.getByTestId("hangup-button") as HTMLButtonElement).disabled).toBe(false);
  });
});

describe("App", () => {
  it("takes the default TTS engine from the bridge and needs a file in file mode", async () => {
    const fetchMock = vi.fn(async () => new Response(JSON.stringify({ iceServers: [], defaultTtsEngine: "coqui" })));
    vi.stubGlobal("fetch", fetchMock);
    await act(async () => {
      render(<App />);
    });
    expect(fetchMock).toHaveBeenCalledWith("/webrtc/config");
    expect((screen.getByTestId("tts-engine") as HTMLSelectElement).value).toBe("coqui");
    expect(screen.getByTestId("status").getAttribute("data-status")).toBe("idle");
    fireEvent.click(screen.getByTestId("source-file"));
    expect((screen.getByTestId("call-button") as HTMLButtonElement).disabled).toBe(true);
    const file = new File([new Uint8Array(8)], "hello.wav", { type: "audio/wav" });
    fireEvent.change(screen.getByTestId("file-input"), { target: { files: [file] } });
    expect((screen.getByTestId("call-button") as HTMLButtonElement).disabled).toBe(false);
  });
});

describe("App with an access token", () => {
  it("passes the token from its own URL on to /webrtc/config", async () => {
    window.history.replaceState(null, "", "/?token=s3cret");
    const fetchMock = vi.fn(async () => new Response(JSON.stringify({ iceServers: [] })));
    vi.stubGlobal("fetch", fetchMock);
    try {
      await act(async () => {
        render(<App />);
      });
      expect(fetchMock).toHaveBeenCalledWith("/webrtc/config?token=s3cret");
    } finally {
      window.history.replaceState(null, "", "/");
    }
  });
});
