// The scrolling transcript of caller and bot turns.

import { useEffect, useRef } from "react";
import type { Turn } from "../callState";

/** Caller and bot turns in order; keeps the newest in view. */
export function TranscriptPanel({ turns }: { turns: Turn[] }) {
  const end = useRef<HTMLLIElement | null>(null);
  useEffect(() => {
    end.current?.scrollIntoView?.({ block: "end" });
  }, [turns]);
  return (
    <section className="panel transcript-panel" aria-label="Transcript">
      <h2>Transcript</h2>
      <ol className="transcript" data-testid="transcript">
        {turns.length === 0 && <li className="empty">Nothing said yet.</li>}
        {turns.map((t) => (
          <li
            key={t.id}
            className={`turn turn-${t.role}${t.final ? "" : " streaming"}`}
            data-testid={`turn-${t.role}`}
          >
            <span className="who">{t.role === "caller" ? "You" : "Bot"}</span>
            <span className="text">{t.text}</span>
          </li>
        ))}
        <li ref={end} aria-hidden="true" className="end" />
      </ol>
    </section>
  );
}
