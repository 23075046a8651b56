import { afterEach, describe, expect, it } from "vitest";
import { pageToken, withToken } from "./access";

describe("access token", () => {
  afterEach(() => window.history.replaceState(null, "", "/"));

  it("is read from the page's own URL", () => {
    expect(pageToken("?token=s3cret")).toBe("s3cret");
    expect(pageToken("?x=1")).toBeNull();
    expect(pageToken("?token=")).toBeNull();
    window.history.replaceState(null, "", "/?token=from-url");
    expect(pageToken()).toBe("from-url");
  });

  it("is passed on, encoded, to the bridge's endpoints", () => {
    expect(withToken("/webrtc/offer", "?token=a b&c")).toBe("/webrtc/offer?token=a%20b");
    expect(withToken("/webrtc/config?x=1", "?token=t")).toBe("/webrtc/config?x=1&token=t");
    expect(withToken("/webrtc/config", "")).toBe("/webrtc/config");
  });
});
