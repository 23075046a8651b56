// File mode: a WAV/MP3 decoded by Web Audio and played, at real time, into a MediaStream
// that the peer connection sends like a microphone.

export interface FileSource {
  /** The stream to add to the peer connection (one mono audio track). */
  stream: MediaStream;
  /** Length of the decoded file in seconds. */
  durationS: number;
  /** Start playing the file into the stream (call once the connection is up). */
  start(onEnded?: () => void): void;
  /** Stop playback and release the nodes. */
  stop(): void;
}

/** Decode `file` with `ctx` and wire it to a `MediaStreamAudioDestinationNode`. */
export async function openFileSource(file: File, ctx: AudioContext): Promise<FileSource> {
  let buffer: AudioBuffer;
  try {
    buffer = await ctx.decodeAudioData(await file.arrayBuffer());
  } catch (err) {
    throw new Error(`cannot decode ${file.name} as audio (WAV or MP3): ${String(err)}`);
  }
  const destination = ctx.createMediaStreamDestination();
  destination.channelCount = 1;
  let node: AudioBufferSourceNode | null = null;
  return {
    stream: destination.stream,
    durationS: buffer.duration,
    start(onEnded) {
      if (node) return;
      node = ctx.createBufferSource();
      node.buffer = buffer;
      node.connect(destination);
      if (onEnded) node.onended = () => onEnded();
      void ctx.resume();
      node.start();
    },
    stop() {
      if (!node) return;
      node.onended = null;
      try {
        node.stop();
      } catch {
        // already stopped
      }
      node.disconnect();
      node = null;
    },
  };
}
