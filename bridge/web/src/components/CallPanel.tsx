// Call controls: source (mic or file), TTS engine, mode, Call / Hang up, and the call status.

import type { CallMode, CallState } from "../callState";
import { isBusy, isLive } from "../callState";
import type { Source, TtsEngine } from "../hooks/useVoiceCall";

export interface CallPanelProps {
  state: CallState;
  source: Source;
  ttsEngine: TtsEngine;
  mode: CallMode;
  file: File | null;
  onSource(source: Source): void;
  onTtsEngine(engine: TtsEngine): void;
  onMode(mode: CallMode): void;
  onFile(file: File | null): void;
  onCall(): void;
  onHangup(): void;
}

const STATUS_TEXT: Record<CallState["status"], string> = {
  idle: "Ready",
  connecting: "Connecting…",
  listening: "Listening",
  thinking: "Thinking…",
  speaking: "Speaking",
  ended: "Call ended",
  error: "Error",
};

/** The left column: what to call with, and how the call is going. */
export function CallPanel(props: CallPanelProps) {
  const { state } = props;
  const busy = isBusy(state);
  const canCall = !busy && (props.source === "mic" || props.file !== null);
  return (
    <section className="panel call-panel" aria-label="Call">
      <fieldset disabled={busy}>
        <legend>Audio source</legend>
        <label>
          <input
            type="radio"
            name="source"
            data-testid="source-mic"
            checked={props.source === "mic"}
            onChange={() => props.onSource("mic")}
          />
          Microphone
        </label>
        <label>
          <input
            type="radio"
            name="source"
            data-testid="source-file"
            checked={props.source === "file"}
            onChange={() => props.onSource("file")}
          />
          Audio file (WAV/MP3)
        </label>
        {props.source === "file" && (
          <input
            type="file"
            accept="audio/wav,audio/x-wav,audio/mpeg,.wav,.mp3"
            data-testid="file-input"
            onChange={(e) => props.onFile(e.target.files?.[0] ?? null)}
          />
        )}
      </fieldset>
      <fieldset disabled={busy}>
        <legend>Options</legend>
        <label>
          TTS engine{" "}
          <select
            data-testid="tts-engine"
            value={props.ttsEngine}
            onChange={(e) => props.onTtsEngine(e.target.value as TtsEngine)}
          >
            <option value="piper">Piper</option>
            <option value="coqui">Coqui</option>
          </select>
        </label>
        <label>
          Mode{" "}
          <select
            data-testid="call-mode"
            value={props.mode}
            onChange={(e) => props.onMode(e.target.value as CallMode)}
          >
            <option value="conversation">Conversation</option>
            <option value="transcribe_only">Transcribe only</option>
          </select>
        </label>
      </fieldset>
      <div className="buttons">
        <button type="button" data-testid="call-button" disabled={!canCall} onClick={props.onCall}>
          Call
        </button>
        <button
          type="button"
          data-testid="hangup-button"
          disabled={!busy}
          onClick={props.onHangup}
        >
          Hang up
        </button>
      </div>
      <p className={`status status-${state.status}`} data-testid="status" data-status={state.status}>
        {STATUS_TEXT[state.status]}
        {isLive(state) && state.callId ? <span className="call-id"> · call {state.callId}</span> : null}
      </p>
      {state.error && (
        <p className="error" role="alert" data-testid="error">
          {state.error}
        </p>
      )}
      {state.status === "ended" && state.endReason && (
        <p className="ended" data-testid="end-reason">
          {state.endReason}
        </p>
      )}
    </section>
  );
}
