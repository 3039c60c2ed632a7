// The live feed: the shim's Server-Sent Events. When it drops (the daemon restarted or stopped, the
// network, an `overflow` because the page fell behind), the page is told, the stream is opened again
// after a short wait that grows while it keeps failing, and once it is back `onResync` runs so that the
// page reloads what it shows: no state change made while it was away is lost.

const RETRY_FIRST = 500; // ms
const RETRY_MAX = 10000;

export function follow({ onEvent, onState, onResync }) {
  let source = null;
  let timer = null;
  let lost = true; // until the first `open`: the page's first load also runs once subscribed
  let delay = RETRY_FIRST;

  function drop() {
    source?.close();
    source = null;
    lost = true;
    onState("lost");
    clearTimeout(timer);
    timer = setTimeout(open, delay);
    delay = Math.min(delay * 2, RETRY_MAX);
  }

  function open() {
    // The browser's own reconnection is not used: it gives up on an error status (503 while the
    // daemon restarts) and waits 3 s between tries.
    source = new EventSource("/api/v1/events");
    source.addEventListener("open", () => {
      delay = RETRY_FIRST;
      onState("live");
      if (lost) {
        lost = false;
        onResync(); // subscribed first, then reloaded: no change falls between the two
      }
    });
    source.addEventListener("error", drop);
    for (const kind of EVENTS) {
      source.addEventListener(kind, (message) => onEvent(JSON.parse(message.data)));
    }
    // The daemon ends the stream after these: reconnect at once rather than wait for the error.
    for (const kind of ["overflow", "shutdown"]) source.addEventListener(kind, drop);
  }

  open();
  return {
    close() {
      clearTimeout(timer);
      source?.close();
    },
    reconnect() {
      delay = RETRY_FIRST;
      drop();
    },
  };
}

export const EVENTS = [
  "submitted", "started", "progress", "priority_changed", "cancel_requested", "cancelled", "completed",
  "failed", "retried", "unblocked", "requeued",
];
