// The access token the page was opened with (`/?token=...`, ACCESS_TOKENS on the bridge):
// the page passes it on to /webrtc/config and /webrtc/offer, which refuse calls without it.

/** The page's `token` query parameter, or null when it has none. */
export function pageToken(search: string = window.location.search): string | null {
  const token = new URLSearchParams(search).get("token");
  return token ? token : null;
}

/** `path` with the page's token added as `?token=` (unchanged when the page has none). */
export function withToken(path: string, search: string = window.location.search): string {
  const token = pageToken(search);
  if (!token) return path;
  const sep = path.includes("?") ? "&" : "?";
  return `${path}${sep}token=${encodeURIComponent(token)}`;
}
