// The live feed: the shim's Server-Sent Events. When it drops (the daemon restarted, the network), the
// browser reconnects by itself; each time it is back, `onResync` runs so the page reloads what it shows
// and no state change made while it was away is lost.

export function follow({ onEvent, onState, onResync }) {
  let source = null;
  let lost = false;
  let timer = null;

  function open() {
    source = new EventSource("/api/v1/events", { withCredentials: true });
    source.addEventListener("open", () => {
      onState("live");
      if (lost) {
        lost = false;
        onResync();
      }
    });
    source.addEventListener("error", () => {
      lost = true;
      onState("lost");
      if (source.readyState === EventSource.CLOSED) {
        // The server ended the stream for good (it stopped, or refused us): try again later.
        source.close();
        clearTimeout(timer);
        timer = setTimeout(open, 1000);
      }
    });
    for (const kind of EVENTS) {
      source.addEventListener(kind, (message) => onEvent(JSON.parse(message.data)));
    }
  }

  open();
  return () => {
    clearTimeout(timer);
    source?.close();
  };
}

export const EVENTS = [
  "submitted", "started", "progress", "priority_changed", "cancel_requested", "cancelled", "completed",
  "failed", "retried", "unblocked", "requeued", "paused", "resumed", "shutdown", "overflow",
];
