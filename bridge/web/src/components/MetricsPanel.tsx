// Per-turn latency breakdown (ASR / LLM / TTS / total) from the pipeline's metrics events.

import type { TurnMetrics } from "../callState";

const STAGES = [
  ["asr", "ASR"],
  ["llm", "LLM"],
  ["tts", "TTS"],
  ["total", "Total"],
] as const;

function ms(value: number | null | undefined): string {
  return value === null || value === undefined ? "–" : `${Math.round(value)}`;
}

/** The latest turn's latencies in large type, every turn in the table below. */
export function MetricsPanel({ metrics }: { metrics: TurnMetrics[] }) {
  const last = metrics[metrics.length - 1];
  return (
    <section className="panel metrics-panel" aria-label="Latency">
      <h2>Latency (ms)</h2>
      <dl className="latest">
        {STAGES.map(([key, label]) => (
          <div key={key} className={`metric metric-${key}`}>
            <dt>{label}</dt>
            <dd data-testid={`metric-${key}`}>{ms(last?.[`${key}_ms`])}</dd>
          </div>
        ))}
      </dl>
      {metrics.length > 0 && (
        <table data-testid="metrics-table">
          <thead>
            <tr>
              <th>Turn</th>
              {STAGES.map(([key, label]) => (
                <th key={key}>{label}</th>
              ))}
            </tr>
          </thead>
          <tbody>
            {metrics.map((m, i) => (
              <tr
                key={i}
                data-testid="metrics-row"
                className={m.interrupted ? "interrupted" : undefined}
                title={m.interrupted ? "the caller interrupted this reply" : undefined}
              >
                <td>
                  {m.turn}
                  {m.interrupted ? "*" : ""}
                </td>
                {STAGES.map(([key]) => (
                  <td key={key}>{ms(m[`${key}_ms`])}</td>
                ))}
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
