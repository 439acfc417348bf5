/*
 * triorelay.js: a browser client of the relay's `triorelay.v1` framing
 * (docs/reference/framing.md). Plain JavaScript (ES2017), no build step, no dependencies:
 *
 *   <script src="triorelay.js"></script>
 *   <script>
 *     const sub = triorelay.subscribe("wss://relay.example.com", "chat", {
 *       since: localStorage.position,   // "epoch:offset" to resume from (optional)
 *       onMessage(msg) {                // {channel, epoch, offset, position, data, binary}
 *         show(msg.data);               // a string, or a Uint8Array for a binary message
 *         localStorage.position = msg.position;
 *       },
 *       onControl(ctrl) {},             // {triorelay: "subscribed" | "dropped" | "gap", ...}
 *     });
 *     // sub.position: where the stream is ("epoch:offset"); sub.close() ends it.
 *   </script>
 *
 * Other options: recover ("best_effort", the relay's default, or "required"); token (a string,
 * or a function returning one or a promise of one, called before each connection; sent as
 * ?token=); onClose(event) (each close, a CloseEvent); minDelayMs and maxDelayMs (the
 * reconnection backoff, 250 ms to 30 s). sub.refresh(token) hands the relay a new token.
 *
 * When a connection ends the client reconnects (exponential backoff with jitter) with
 * ?since= its position, so that it misses no message the channel's history still holds; the
 * next `subscribed` says whether that worked (`recovered`) or why not (`reason`). It stops
 * after sub.close() and after a close no retry can mend: 1008 (a bad channel name), 4403
 * (forbidden), 4410 (recover: "required" and the resume cannot be done), and 4401 (the token
 * was refused) unless token is a function. Frame kinds and control kinds it does not know are
 * ignored. Offsets past 2**53 would lose precision (JavaScript numbers).
 */
(function (global) {
  "use strict";

  const PROTOCOL = "triorelay.v1";
  const FINAL_CLOSES = new Set([1008, 4403, 4410]);
  const ascii = new TextDecoder(); // header lines are ASCII

  function subscribe(url, channel, options = {}) {
    const noop = () => {};
    const { recover = null, onMessage = noop, onControl = noop, onClose = noop } = options;
    const { minDelayMs = 250, maxDelayMs = 30000 } = options;
    let token = options.token || null;
    let epoch = null; // the position: the epoch of the last `subscribed` (or `gap` with one)...
    let offset = 0; // ...and the offset of the last message (or of the subscription)
    if (options.since) {
      const colon = options.since.lastIndexOf(":");
      [epoch, offset] = [options.since.slice(0, colon), Number(options.since.slice(colon + 1))];
    }
    const endpoint = `${url.replace(/^http/, "ws").replace(/\/+$/, "")}/ws/consumer/${channel}`;
    let socket = null;
    let timer = null;
    let attempts = 0;
    let stopped = false;

    async function connect() {
      const query = new URLSearchParams();
      if (epoch !== null) query.set("since", `${epoch}:${offset}`);
      if (recover) query.set("recover", recover);
      try {
        const bearer = typeof token === "function" ? await token() : token;
        if (bearer) query.set("token", bearer);
      } catch (error) {
        console.error("triorelay: no token", error);
        return retry();
      }
      if (stopped) return;
      const search = query.toString();
      socket = new WebSocket(endpoint + (search ? `?${search}` : ""), PROTOCOL);
      socket.binaryType = "arraybuffer";
      socket.onmessage = (event) => receive(event.data);
      socket.onclose = (event) => {
        socket = null;
        if (FINAL_CLOSES.has(event.code) || (event.code === 4401 && typeof token !== "function")) {
          stopped = true;
        }
        onClose(event);
        retry();
      };
    }

    function retry() {
      if (stopped) return;
      const delay = Math.min(maxDelayMs, minDelayMs * 2 ** attempts++);
      timer = setTimeout(connect, delay / 2 + (Math.random() * delay) / 2);
    }

    function receive(frame) {
      if (typeof frame === "string") {
        if (frame.startsWith("{")) return control(JSON.parse(frame));
        const newline = frame.indexOf("\n");
        return message(frame.slice(0, newline), frame.slice(newline + 1), false, newline);
      }
      const bytes = new Uint8Array(frame);
      const newline = bytes.indexOf(10);
      const header = ascii.decode(bytes.subarray(0, newline));
      return message(header, bytes.subarray(newline + 1), true, newline);
    }

    function message(header, data, binary, newline) {
      if (newline < 0) throw new Error("triorelay: a message frame without a header line");
      const [kind, name, number] = header.split(" ");
      if (kind !== "m") return; // a frame kind of a later version
      if (!/^[0-9]+$/.test(number)) throw new Error(`triorelay: bad message header ${header}`);
      offset = Number(number);
      onMessage({ channel: name, epoch, offset, position: `${epoch}:${offset}`, data, binary });
    }

    function control(ctrl) {
      if (ctrl.triorelay === "subscribed") {
        attempts = 0; // the relay took the subscription: the next retry starts short again
        // Resumed: the replay goes on from our own offset. Otherwise the stream goes on from
        // the relay's (a first subscription, or a resume that could not be done).
        if (!(ctrl.recovering && ctrl.recovered)) offset = ctrl.offset;
        epoch = ctrl.epoch;
      } else if (ctrl.triorelay === "gap") {
        if (ctrl.epoch) [epoch, offset] = [ctrl.epoch, 0]; // a new history, from its start
      } else if (ctrl.triorelay !== "dropped") {
        return; // a control kind of a later version
      }
      onControl(ctrl);
    }

    connect();
    return {
      get position() {
        return epoch === null ? null : `${epoch}:${offset}`;
      },
      refresh(newToken) {
        if (typeof token !== "function") token = newToken; // for the next connections too
        if (socket && socket.readyState === WebSocket.OPEN) {
          socket.send(JSON.stringify({ triorelay: "refresh", token: newToken }));
        }
      },
      close() {
        stopped = true;
        clearTimeout(timer);
        if (socket) socket.close(1000);
      },
    };
  }

  global.triorelay = { subscribe, PROTOCOL };
})(typeof window !== "undefined" ? window : globalThis);
