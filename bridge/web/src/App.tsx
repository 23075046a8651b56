// The voicebridge page: call controls, transcript, latency panel and the bot's audio.

import { useEffect, useState } from "react";
import type { CallMode } from "./callState";
import { CallPanel } from "./components/CallPanel";
import { MetricsPanel } from "./components/MetricsPanel";
import { TranscriptPanel } from "./components/TranscriptPanel";
import { useVoiceCall, type Source, type TtsEngine } from "./hooks/useVoiceCall";
import { withToken } from "./access";

/** The whole page. */
export function App() {
  const { state, start, hangup, audioRef } = useVoiceCall();
  const [source, setSource] = useState<Source>("mic");
  const [ttsEngine, setTtsEngine] = useState<TtsEngine>("piper");
  const [mode, setMode] = useState<CallMode>("conversation");
  const [file, setFile] = useState<File | null>(null);

  useEffect(() => {
    fetch(withToken("/webrtc/config"))
      .then((r) => (r.ok ? r.json() : null))
      .then((c: { defaultTtsEngine?: TtsEngine } | null) => {
        if (c?.defaultTtsEngine) setTtsEngine(c.defaultTtsEngine);
      })
      .catch(() => undefined);
  }, []);

  return (
    <main className="app">
      <header>
        <h1>voicebridge</h1>
        <p className="tagline">Talk to the bot over WebRTC, or play it a recording.</p>
      </header>
      <div className="columns">
        <CallPanel
          state={state}
          source={source}
          ttsEngine={ttsEngine}
          mode={mode}
          file={file}
          onSource={setSource}
          onTtsEngine={setTtsEngine}
          onMode={setMode}
          onFile={setFile}
          onCall={() => void start({ source, file, ttsEngine, mode })}
          onHangup={hangup}
        />
        <TranscriptPanel turns={state.turns} />
        <MetricsPanel metrics={state.metrics} />
      </div>
      <audio ref={audioRef} autoPlay data-testid="bot-audio" />
    </main>
  );
}
