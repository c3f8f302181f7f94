/*!
 * streamfan.js: the browser client of the streamfan WebSocket gateway.
 * Dependency-free ES2020; load it as a classic <script> (it defines
 * globalThis.Streamfan) or require() it.
 *
 *   const sf = new Streamfan.Client({ token });          // ws(s)://this host/ws
 *   const sub = sf.subscribe(streamId, {
 *     from: "0",                     // "0" everything, "$" what comes next, or an entry id
 *     onText: (text) => { el.textContent = text; },   // choice 0's content so far
 *     onEvent: ({ id, event }) => {},
 *     onEnd: (result) => {},         // { status: done|error|cancelled, text, usage, ... }
 *     onError: (err) => {},          // a Streamfan.StreamfanError with a .code
 *   });
 *   for await (const { id, event } of sub) { ... }     // or iterate instead of callbacks
 *   await sub.cancel();  sf.close();
 *
 * Every gateway "error" names the op it answers in reply_to ("subscribe",
 * "cancel", ...; null when it answers nothing: a subscription that was confirmed
 * has failed since), so a refused cancel never ends a subscription.
 *
 * Wire format (docs/protocol.md): client -> gateway one JSON object per frame;
 * gateway -> client one or more JSON messages per frame, "\n" between them.
 *
 * Reconnects with exponential backoff and jitter, and resumes every live
 * subscription after the last entry id it saw (before its first event: after
 * the "last_id" its "subscribed" gave); ids at or below that are dropped, so a
 * reply is never lost nor doubled across drops and restarts.
 *
 * Why a WebSocket and not EventSource, which the gateway also serves
 * (GET /streams/{ID}/events resumes by itself with Last-Event-ID): one socket
 * carries every stream a page follows and the cancel op, where EventSource
 * takes one HTTP connection per stream (browsers allow six per origin over
 * HTTP/1.1) and cannot send anything back. A page that reads one stream and
 * never cancels needs no library at all: new EventSource(url) is enough (the
 * demo page's second reader is one).
 */
(function (root) {
  "use strict";

  const VERSION = "0.1.0";

  const DEFAULTS = Object.freeze({
    /** First reconnect delay (ms); doubles per failed attempt up to maxDelay. */
    minDelay: 200,
    maxDelay: 10000,
    /** Send {"op":"ping"} this often (ms) ... */
    pingInterval: 20000,
    /** ... and call the connection dead when nothing came back within this (ms). */
    pongTimeout: 10000,
    /** After a handshake that failed, GET the same URL once to tell a refused
     * token (401/403: stop) from a gateway that is down (retry). */
    probeRefusals: true,
  });

  /** Error codes of the gateway's "error" message. */
  const ERROR_CODES = Object.freeze([
    "bad_request",
    "not_found",
    "forbidden",
    "too_many_subscriptions",
    "too_slow",
    "unavailable",
    "gone",
  ]);

  // Close codes after which reconnecting the same way fails the same way: the
  // same set and ranges as streamfan/protocol.py (should_reconnect; a test
  // compares them). Every other code reconnects: 1001 going away, 1006 abnormal,
  // 1011 internal error, 1012-1014 restart/overload, 4000-4499, and any code a
  // proxy in between sends.
  const TERMINAL_CLOSE_CODES = new Set([1002, 1003, 1007, 1008, 1009, 1010]);
  const RECONNECT_CLOSE_RANGE = [4000, 4499];
  const TERMINAL_CLOSE_RANGE = [4500, 4999];

  function shouldReconnect(code) {
    if (code >= RECONNECT_CLOSE_RANGE[0] && code <= RECONNECT_CLOSE_RANGE[1]) return true;
    if (code >= TERMINAL_CLOSE_RANGE[0] && code <= TERMINAL_CLOSE_RANGE[1]) return false;
    return !TERMINAL_CLOSE_CODES.has(code);
  }

  const STREAM_ID = /^[A-Za-z0-9._:-]{1,128}$/;
  const ENTRY_ID = /^\d{1,20}(-\d{1,20})?$/;
  const TERMINAL_TYPES = { done: "done", error: "error", cancelled: "cancelled" };

  class StreamfanError extends Error {
    /**
     * code: a gateway error code (see ERROR_CODES), "closed" (the connection was
     * closed for good; closeCode says why), "refused" (the handshake was refused:
     * status says how), or "bad_frame". replyTo: for a gateway error, the op it
     * answers ("subscribe", "unsubscribe", "cancel"), or null.
     */
    constructor(code, message, { stream = null, closeCode = null, status = null, replyTo = null } = {}) {
      super(message || code);
      this.name = "StreamfanError";
      this.code = code;
      this.stream = stream;
      this.closeCode = closeCode;
      this.status = status;
      this.replyTo = replyTo;
    }
  }

  // --- entry ids ------------------------------------------------------------------

  function stripZeros(digits) {
    const s = digits.replace(/^0+/, "");
    return s === "" ? "0" : s;
  }

  /** "ms" or "ms-seq" -> normalised "ms-seq" (the gateway's form). */
  function normalizeId(id) {
    const [ms, seq = "0"] = String(id).split("-");
    return stripZeros(ms) + "-" + stripZeros(seq);
  }

  function compareDigits(a, b) {
    if (a.length !== b.length) return a.length < b.length ? -1 : 1;
    return a < b ? -1 : a > b ? 1 : 0;
  }

  /** Compare two Redis stream entry ids exactly (no float rounding): -1, 0 or 1. */
  function compareIds(a, b) {
    const [am, as] = normalizeId(a).split("-");
    const [bm, bs] = normalizeId(b).split("-");
    return compareDigits(am, bm) || compareDigits(as, bs);
  }

  // --- helpers --------------------------------------------------------------------

  function report(err) {
    // An exception thrown by an application callback must not break the client.
    if (typeof root.reportError === "function") root.reportError(err);
    else setTimeout(() => { throw err; }, 0);
  }

  function call(fn, ...args) {
    if (typeof fn !== "function") return;
    try {
      fn(...args);
    } catch (err) {
      report(err);
    }
  }

  function defaultUrl() {
    const loc = root.location;
    if (!loc || !loc.host) throw new Error("streamfan: no location; pass options.url");
    return (loc.protocol === "https:" ? "wss://" : "ws://") + loc.host + "/ws";
  }

  function withToken(url, token) {
    if (!token) return url;
    return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
  }

  const decoder = typeof TextDecoder === "function" ? new TextDecoder() : null;

  function frameText(data) {
    if (typeof data === "string") return data;
    if (decoder && (data instanceof ArrayBuffer || ArrayBuffer.isView(data))) {
      return decoder.decode(data);
    }
    return String(data);
  }

  /** Choice 0's content in a delta event ("" when it has none). */
  function deltaContent(event) {
    const choices = Array.isArray(event.choices) ? event.choices : [];
    let text = "";
    for (const choice of choices) {
      if (!choice || (choice.index ?? 0) !== 0) continue;
      const content = choice.delta && choice.delta.content;
      if (typeof content === "string") text += content;
    }
    return text;
  }

  // --- a subscription ---------------------------------------------------------------

  class Subscription {
    constructor(client, streamId, options) {
      this.client = client;
      this.streamId = streamId;
      /** Where it started: "0", "$" or an entry id. */
      this.from = options.from;
      /**
       * The resume position: the last entry id received; before the first event,
       * the id the gateway's "subscribed" said the subscription starts after
       * ("$" resolved), so a drop before any event loses nothing either.
       */
      this.lastId = options.from === "0" || options.from === "$" ? null : normalizeId(options.from);
      /**
       * subscribing -> live -> ended (the stream finished: "end" came),
       * failed (an error ended it), unsubscribed or closed.
       */
      this.state = "subscribing";
      /** The stream's status: from "subscribed" (queued/running/...), then "end". */
      this.status = null;
      /** Choice 0's content; a "reset" event clears it. */
      this.text = "";
      this.model = null;
      this.usage = null;
      this.finishReason = null;
      /** The stream's own "error" event, when it ended with one. */
      this.streamError = null;
      /** A StreamfanError when the subscription failed. */
      this.error = null;
      this.eventCount = 0;
      this._options = options;
      this._terminal = null;
      this._textDirty = false;
      this._retries = 0;
      this._retryTimer = null;
      this._iterators = new Set();
      /** Resolves (never rejects) with the result once the subscription is over. */
      this.finished = new Promise((resolve) => {
        this._resolveFinished = resolve;
      });
    }

    /** Where a (re)subscribe starts: after the last id seen, else where it began. */
    get position() {
      return this.lastId ?? this.from;
    }

    get active() {
      return this.state === "subscribing" || this.state === "live";
    }

    result() {
      return {
        stream: this.streamId,
        state: this.state,
        status: this.status,
        text: this.text,
        usage: this.usage,
        finishReason: this.finishReason,
        model: this.model,
        streamError: this.streamError,
        error: this.error,
        lastId: this.lastId,
      };
    }

    cancel() {
      return this.client.cancel(this.streamId);
    }

    unsubscribe() {
      this.client.unsubscribe(this.streamId);
    }

    /** An async iterator of {id, event}: everything received after it was made. */
    [Symbol.asyncIterator]() {
      const queue = [];
      let waiting = null;
      let over = !this.active;
      let failure = over ? this.error : null;
      const iterators = this._iterators;
      const sink = {
        push(item) {
          if (waiting) {
            const w = waiting;
            waiting = null;
            w.resolve({ value: item, done: false });
          } else queue.push(item);
        },
        end(err) {
          over = true;
          failure = err || null;
          iterators.delete(sink);
          if (waiting) {
            const w = waiting;
            waiting = null;
            if (failure && queue.length === 0) w.reject(failure);
            else w.resolve({ value: undefined, done: true });
          }
        },
      };
      if (!over) iterators.add(sink);
      return {
        next() {
          if (queue.length) return Promise.resolve({ value: queue.shift(), done: false });
          if (over) {
            if (failure) {
              const err = failure;
              failure = null;
              return Promise.reject(err);
            }
            return Promise.resolve({ value: undefined, done: true });
          }
          return new Promise((resolve, reject) => {
            waiting = { resolve, reject };
          });
        },
        return() {
          iterators.delete(sink);
          over = true;
          failure = null;
          queue.length = 0;
          return Promise.resolve({ value: undefined, done: true });
        },
        [Symbol.asyncIterator]() {
          return this;
        },
      };
    }

    // --- driven by the client ---

    _subscribeMessage() {
      return { op: "subscribe", stream: this.streamId, from: this.position };
    }

    _onSubscribed(status, lastId) {
      if (!this.active) return;
      this._retries = 0;
      this.state = "live";
      if (typeof status === "string") this.status = status;
      // Everything that follows comes after lastId: resume from it, not from "$"
      // (which would skip what is written while the connection is down).
      if (this.lastId === null && typeof lastId === "string" && ENTRY_ID.test(lastId)) {
        this.lastId = normalizeId(lastId);
      }
      call(this._options.onSubscribed, { stream: this.streamId, status: this.status, lastId: this.lastId });
    }

    /** Returns false for a duplicate (an id at or below the last one seen). */
    _onEvent(id, event) {
      if (!this.active || typeof id !== "string" || !event || typeof event !== "object") {
        return true;
      }
      if (this.lastId !== null && compareIds(id, this.lastId) <= 0) return false;
      this.lastId = id;
      this.eventCount += 1;
      this._apply(event);
      const item = { id, event };
      call(this._options.onEvent, item);
      for (const it of this._iterators) it.push(item);
      return true;
    }

    _apply(event) {
      switch (event.type) {
        case "start":
          if (typeof event.model === "string") this.model = event.model;
          if (this.status === "queued") this.status = "running";
          break;
        case "delta": {
          const text = deltaContent(event);
          if (text) {
            this.text += text;
            this._textDirty = true;
          }
          break;
        }
        case "usage":
          this.usage = event.usage ?? null;
          break;
        case "reset":
          // A retry starts over: drop what the earlier attempt built.
          this.text = "";
          this.usage = null;
          this.finishReason = null;
          this._textDirty = true;
          break;
        case "done":
          this.finishReason = event.finish_reason ?? null;
          if (event.usage) this.usage = event.usage;
          break;
        case "error":
          this.streamError = event;
          break;
        default:
          break;
      }
      if (TERMINAL_TYPES[event.type]) this._terminal = TERMINAL_TYPES[event.type];
    }

    _flushText() {
      if (!this._textDirty) return;
      this._textDirty = false;
      call(this._options.onText, this.text);
    }

    /** "end": the stream is over; no resubscribe. */
    _onEnd(status) {
      if (!this.active) return;
      this._flushText();
      this.status = typeof status === "string" ? status : this._terminal;
      this._finish("ended", null);
      call(this._options.onEnd, this.result());
    }

    _fail(err) {
      if (!this.active) return;
      this._flushText();
      this.error = err;
      this._finish("failed", err);
      call(this._options.onError, err);
    }

    _finish(state, err) {
      this.state = state;
      clearTimeout(this._retryTimer);
      this._retryTimer = null;
      for (const it of [...this._iterators]) it.end(err);
      this._resolveFinished(this.result());
    }
  }

  // --- the connection -----------------------------------------------------------------

  class Client {
    /**
     * options:
     *   url        the gateway's WebSocket URL (default ws(s)://this host/ws)
     *   token      a JWT, or a function returning one (or a promise of one); called
     *              on every (re)connect, so it may hand out a fresh token
     *   onState    (state, info) on every change: connecting, open, reconnecting
     *              (info.delay ms, info.code, info.reason), idle, closed, failed
     *   onError    (err) errors that belong to no subscription
     *   minDelay, maxDelay, pingInterval, pongTimeout, probeRefusals (see DEFAULTS)
     *   WebSocket, fetch   replacements for the globals (tests)
     */
    constructor(options = {}) {
      this.options = { ...DEFAULTS, ...options };
      this.url = options.url || defaultUrl();
      this.state = "idle";
      this.stats = { connects: 0, frames: 0, messages: 0, duplicates: 0, reconnects: 0 };
      this._WebSocket = options.WebSocket || root.WebSocket;
      this._fetch = options.fetch || (typeof root.fetch === "function" ? root.fetch.bind(root) : null);
      this._subs = new Map();
      this._cancels = new Map();
      this._conn = null;
      this._attempt = 0;
      this._timer = null;
      this._closed = false;
      this._gen = 0;
      this._onOnline = () => {
        if (this.state === "reconnecting") this._connectNow();
      };
      if (typeof root.addEventListener === "function") {
        root.addEventListener("online", this._onOnline);
      }
    }

    /** Subscribe to a stream; see Subscription. Connects if needed. */
    subscribe(streamId, options = {}) {
      if (this._closed) throw new Error("streamfan: the client is closed");
      if (typeof streamId !== "string" || !STREAM_ID.test(streamId)) {
        throw new TypeError("streamfan: invalid stream id " + JSON.stringify(streamId));
      }
      const from = options.from === undefined ? "0" : String(options.from);
      if (from !== "$" && !ENTRY_ID.test(from)) {
        throw new TypeError('streamfan: "from" must be "0", "$" or an entry id');
      }
      const existing = this._subs.get(streamId);
      if (existing && existing.active) {
        throw new Error("streamfan: already subscribed to " + streamId);
      }
      const sub = new Subscription(this, streamId, { ...options, from });
      this._subs.set(streamId, sub);
      if (this._isOpen()) this._send(sub._subscribeMessage());
      else this._ensureConnecting();
      return sub;
    }

    subscription(streamId) {
      return this._subs.get(streamId) || null;
    }

    unsubscribe(streamId) {
      const sub = this._subs.get(streamId);
      if (!sub) return;
      this._subs.delete(streamId);
      if (sub.active) {
        if (this._isOpen()) this._send({ op: "unsubscribe", stream: streamId });
        sub._finish("unsubscribed", null);
      }
      this._subscriptionOver(sub);
    }

    /**
     * Ask the gateway to cancel a stream's job (the token needs cancel: true).
     * Settles on the gateway's answer: rejects with its error (err.replyTo is
     * "cancel"); once accepted ("cancelling"), resolves with the result of this
     * client's subscription to the stream when that is over, or, with none, with
     * {stream, status}: the stream's status after the cancel ("running" while its
     * worker stops; "cancelled", or "done"/"error" if it had finished already).
     */
    cancel(streamId) {
      if (this._closed) return Promise.reject(new Error("streamfan: the client is closed"));
      const pending = this._cancels.get(streamId);
      if (pending) return pending.promise;
      let entry;
      const promise = new Promise((resolve, reject) => {
        // accepted: the gateway's "cancelling"; over: the subscription's result,
        // when it ended before that answer came.
        entry = { resolve, reject, accepted: null, over: null };
      });
      entry.promise = promise;
      this._cancels.set(streamId, entry);
      if (this._isOpen()) this._sendCancel(streamId);
      else this._ensureConnecting();
      return promise;
    }

    /**
     * Drop the connection as a network failure would (for demos and tests): the
     * socket is abandoned without a close handshake, the client reconnects with
     * its usual backoff and resumes every subscription after its last id.
     */
    drop() {
      const conn = this._conn;
      if (!conn || this._closed) return;
      this._dispose(conn, 4000, "dropped by the page");
      this._onClose(conn, 1006, "dropped by the page");
    }

    /** Close for good: no reconnect; every subscription ends (status "closed"). */
    close() {
      if (this._closed) return;
      this._closed = true;
      clearTimeout(this._timer);
      this._timer = null;
      if (typeof root.removeEventListener === "function") {
        root.removeEventListener("online", this._onOnline);
      }
      const conn = this._conn;
      this._conn = null;
      if (conn) this._dispose(conn, 1000, "client closed");
      for (const sub of this._subs.values()) sub._finish("closed", null);
      this._subs.clear();
      for (const entry of this._cancels.values()) {
        entry.reject(new StreamfanError("closed", "the client was closed"));
      }
      this._cancels.clear();
      this._setState("closed", {});
    }

    // --- connecting ---

    _isOpen() {
      return this._conn !== null && this._conn.opened;
    }

    _wanted() {
      for (const sub of this._subs.values()) if (sub.active) return true;
      return this._cancels.size > 0;
    }

    _ensureConnecting() {
      if (this._closed || this._conn || this.state === "connecting") return;
      if (this.state === "reconnecting") return; // the timer will connect
      this._connectNow();
    }

    _connectNow() {
      if (this._closed) return;
      clearTimeout(this._timer);
      this._timer = null;
      const gen = ++this._gen;
      this._setState("connecting", { attempt: this._attempt });
      let token;
      try {
        const t = this.options.token;
        token = typeof t === "function" ? t() : t;
      } catch (err) {
        this._scheduleReconnect({ reason: "token: " + err.message });
        return;
      }
      Promise.resolve(token).then(
        (tok) => {
          if (gen === this._gen && !this._closed) this._open(tok);
        },
        (err) => {
          if (gen === this._gen && !this._closed) {
            this._scheduleReconnect({ reason: "token: " + (err && err.message) });
          }
        },
      );
    }

    _open(token) {
      const url = withToken(this.url, token);
      let ws;
      try {
        ws = new this._WebSocket(url);
      } catch (err) {
        this._failAll(new StreamfanError("bad_request", "cannot open " + this.url + ": " + err.message));
        return;
      }
      try {
        ws.binaryType = "arraybuffer";
      } catch (_) {
        /* not every implementation has it */
      }
      const conn = { ws, url, opened: false, gotMessage: false, pingTimer: null, pongTimer: null };
      this._conn = conn;
      ws.onopen = () => this._onOpen(conn);
      ws.onmessage = (e) => this._onFrame(conn, e.data);
      ws.onclose = (e) => this._onClose(conn, e.code, e.reason);
      ws.onerror = () => {}; // a close event follows
    }

    _onOpen(conn) {
      if (conn !== this._conn) return;
      conn.opened = true;
      this.stats.connects += 1;
      if (this.stats.connects > 1) this.stats.reconnects += 1;
      this._setState("open", { url: this.url });
      let sent = 0;
      for (const sub of this._subs.values()) {
        if (!sub.active) continue;
        if (sub._terminal) {
          // It saw its terminal event but not "end": it is over all the same.
          this._ended(sub, sub._terminal);
          continue;
        }
        sub.state = "subscribing";
        this._send(sub._subscribeMessage());
        sent += 1;
      }
      // A cancel sent on a connection that dropped may be lost: cancelling is
      // idempotent, so send every unanswered one again.
      for (const [streamId, entry] of this._cancels) {
        if (entry.accepted) continue;
        this._sendCancel(streamId);
        sent += 1;
      }
      if (sent === 0) this._send({ op: "ping" }); // the gateway wants a first message
      conn.pingTimer = setInterval(() => this._ping(conn), this.options.pingInterval);
    }

    _ping(conn) {
      if (conn !== this._conn || conn.pongTimer) return;
      this._send({ op: "ping" });
      conn.pongTimer = setTimeout(() => {
        if (conn !== this._conn) return;
        // Nothing came back: the connection is dead (a half-open TCP, a sleeping
        // laptop). Do not wait for the browser to notice.
        this._dispose(conn, 4000, "no pong");
        this._onClose(conn, 1006, "no answer to ping");
      }, this.options.pongTimeout);
    }

    _send(msg) {
      const conn = this._conn;
      if (!conn || !conn.opened) return false;
      try {
        conn.ws.send(JSON.stringify(msg));
        return true;
      } catch (_) {
        return false; // the close event follows
      }
    }

    _sendCancel(streamId) {
      // Answered by "cancelling" or by an error with reply_to "cancel".
      this._send({ op: "cancel", stream: streamId });
    }

    _dispose(conn, code, reason) {
      clearInterval(conn.pingTimer);
      clearTimeout(conn.pongTimer);
      conn.pingTimer = conn.pongTimer = null;
      const ws = conn.ws;
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      try {
        ws.close(code, reason);
      } catch (_) {
        try {
          ws.close();
        } catch (__) {
          /* already closed */
        }
      }
    }

    _onClose(conn, code, reason) {
      if (conn !== this._conn) return;
      this._conn = null;
      clearInterval(conn.pingTimer);
      clearTimeout(conn.pongTimer);
      if (this._closed) return;
      const info = { code, reason: reason || "" };
      for (const sub of this._subs.values()) {
        clearTimeout(sub._retryTimer);
        sub._retryTimer = null;
        if (sub.state === "live") sub.state = "subscribing"; // until the next "subscribed"
      }
      if (!conn.opened) {
        this._probe(conn.url).then((refusal) => {
          if (this._closed || this._conn) return;
          if (refusal) this._failAll(refusal);
          else this._afterDrop(info);
        });
        return;
      }
      if (!shouldReconnect(code)) {
        this._failAll(
          new StreamfanError("closed", "the gateway closed the connection: " + code + " " + info.reason, {
            closeCode: code,
          }),
        );
        return;
      }
      this._afterDrop(info);
    }

    _afterDrop(info) {
      if (this._wanted()) this._scheduleReconnect(info);
      else this._setState("idle", info);
    }

    /** After a failed handshake: a StreamfanError if the gateway refused it for good. */
    async _probe(wsUrl) {
      if (!this.options.probeRefusals || !this._fetch) return null;
      try {
        const res = await this._fetch(wsUrl.replace(/^ws/, "http"), { cache: "no-store" });
        if (res.status !== 401 && res.status !== 403) return null;
        const body = (await res.text()).trim();
        return new StreamfanError("refused", body || "HTTP " + res.status, { status: res.status });
      } catch (_) {
        return null; // unreachable, or another origin without CORS: retry
      }
    }

    _scheduleReconnect(info) {
      const base = Math.min(this.options.maxDelay, this.options.minDelay * 2 ** this._attempt);
      const delay = Math.round(base / 2 + (Math.random() * base) / 2);
      this._attempt = Math.min(this._attempt + 1, 30);
      clearTimeout(this._timer);
      this._timer = setTimeout(() => {
        this._timer = null;
        this._connectNow();
      }, delay);
      this._setState("reconnecting", { ...info, delay, attempt: this._attempt, at: Date.now() + delay });
    }

    /** Drop this connection and reconnect at once (after "too_slow"). */
    _reconnect(code, reason) {
      const conn = this._conn;
      if (!conn) return;
      this._dispose(conn, 4000, reason);
      this._onClose(conn, code, reason);
    }

    _failAll(err) {
      const subs = [...this._subs.values()];
      const cancels = [...this._cancels.values()];
      this._subs.clear();
      this._cancels.clear();
      this._setState("failed", { error: err });
      for (const sub of subs) sub._fail(err);
      for (const entry of cancels) entry.reject(err);
      call(this.options.onError, err);
    }

    _setState(state, info) {
      if (this._closed && state !== "closed") return;
      this.state = state;
      call(this.options.onState, state, info);
    }

    // --- receiving ---

    _onFrame(conn, data) {
      if (conn !== this._conn) return;
      if (conn.pongTimer) {
        clearTimeout(conn.pongTimer);
        conn.pongTimer = null;
      }
      if (!conn.gotMessage) {
        conn.gotMessage = true;
        this._attempt = 0; // this connection works: the next drop starts the backoff over
      }
      this.stats.frames += 1;
      const touched = new Set();
      for (const line of frameText(data).split("\n")) {
        if (!line) continue;
        let msg;
        try {
          msg = JSON.parse(line);
        } catch (_) {
          call(this.options.onError, new StreamfanError("bad_frame", "not JSON: " + line.slice(0, 80)));
          continue;
        }
        if (!msg || typeof msg !== "object") continue;
        this.stats.messages += 1;
        this._dispatch(msg, touched);
        if (conn !== this._conn) break; // the message closed this connection
      }
      for (const sub of touched) sub._flushText();
    }

    _dispatch(msg, touched) {
      const sub = typeof msg.stream === "string" ? this._subs.get(msg.stream) : undefined;
      switch (msg.op) {
        case "event":
          if (!sub) return;
          if (!sub._onEvent(msg.id, msg.event)) this.stats.duplicates += 1;
          touched.add(sub);
          return;
        case "subscribed":
          if (sub) sub._onSubscribed(msg.status, msg.last_id);
          return;
        case "end":
          if (sub) this._ended(sub, msg.status);
          return;
        case "cancelling":
          this._onCancelling(msg, sub);
          return;
        case "error":
          this._onError(msg, sub);
          return;
        default:
          return; // pong, or an op from a newer gateway
      }
    }

    _ended(sub, status) {
      this._subs.delete(sub.streamId);
      sub._onEnd(status);
      this._subscriptionOver(sub);
    }

    /** A subscription is over: a cancel of its stream resolves with its result once accepted. */
    _subscriptionOver(sub) {
      const entry = this._cancels.get(sub.streamId);
      if (!entry) return;
      if (entry.accepted) this._settleCancel(sub.streamId, (e) => e.resolve(sub.result()));
      else entry.over = sub.result();
    }

    _settleCancel(streamId, settle) {
      const entry = this._cancels.get(streamId);
      if (!entry) return;
      this._cancels.delete(streamId);
      settle(entry);
    }

    /** The gateway accepted a cancel: settle it now, or when the subscription ends. */
    _onCancelling(msg, sub) {
      const stream = typeof msg.stream === "string" ? msg.stream : null;
      const entry = stream === null ? undefined : this._cancels.get(stream);
      if (!entry) return;
      const accepted = { stream, status: typeof msg.status === "string" ? msg.status : null };
      if (sub && sub.active) entry.accepted = accepted; // resolves when the subscription is over
      else this._settleCancel(stream, (e) => e.resolve(e.over || accepted));
    }

    _onError(msg, sub) {
      const stream = typeof msg.stream === "string" ? msg.stream : null;
      const replyTo = typeof msg.reply_to === "string" ? msg.reply_to : null;
      const err = new StreamfanError(String(msg.code), msg.message, { stream, replyTo });
      if (err.code === "too_slow") {
        this._reconnect(4000, "too_slow");
        return;
      }
      if (replyTo === "cancel") {
        // The cancel was refused (forbidden, not_found, unavailable); any
        // subscription to the stream carries on.
        const cancel = stream === null ? undefined : this._cancels.get(stream);
        if (cancel) this._settleCancel(stream, (entry) => entry.reject(err));
        else call(this.options.onError, err);
        return;
      }
      if (stream === null || (replyTo !== null && replyTo !== "subscribe")) {
        // About no subscription: a frame the gateway could not read, say.
        call(this.options.onError, err);
        return;
      }
      // reply_to "subscribe": the subscribe was refused; null: the subscription
      // failed after it was confirmed. Either way it is over, unless Redis was
      // away for a moment ("unavailable"): then subscribe again (idempotent).
      if (!sub) return;
      if (err.code === "unavailable") {
        if (sub.active) this._retry(sub);
        return;
      }
      this._subs.delete(stream);
      sub._fail(err);
      this._subscriptionOver(sub);
    }

    _retry(sub) {
      const base = Math.min(this.options.maxDelay, this.options.minDelay * 2 ** sub._retries);
      sub._retries = Math.min(sub._retries + 1, 30);
      clearTimeout(sub._retryTimer);
      sub._retryTimer = setTimeout(() => {
        sub._retryTimer = null;
        if (!sub.active || this._subs.get(sub.streamId) !== sub || !this._isOpen()) return;
        // unsubscribe first: harmless if the gateway already dropped it.
        this._send({ op: "unsubscribe", stream: sub.streamId });
        sub.state = "subscribing";
        this._send(sub._subscribeMessage());
      }, Math.round(base / 2 + (Math.random() * base) / 2));
    }
  }

  const Streamfan = {
    VERSION,
    DEFAULTS,
    ERROR_CODES,
    Client,
    Subscription,
    StreamfanError,
    shouldReconnect,
    compareIds,
    normalizeId,
    deltaContent,
  };
  root.Streamfan = Streamfan;
  if (typeof module === "object" && module && module.exports) module.exports = Streamfan;
})(typeof globalThis !== "undefined" ? globalThis : this);
