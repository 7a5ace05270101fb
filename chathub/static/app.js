// chathub web client: plain JS, no build step, no external resources.
// Speaks the wire protocol in shared PROTOCOL.md / docs/protocol.md over ws(s)://HOST/ws.
// User data is only ever put on the page with textContent.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const el = {
    connState: $("conn-state"), whoami: $("whoami"), serverInfo: $("server-info"),
    loginForm: $("login-form"), userField: $("user-field"), user: $("user"),
    tokenField: $("token-field"), token: $("token"), connect: $("connect"),
    joinForm: $("join-form"), room: $("room"), join: $("join"), roomName: $("room-name"),
    log: $("log"), older: $("older"), messages: $("messages"), empty: $("empty"),
    sendForm: $("send-form"), text: $("text"), send: $("send"), status: $("status"),
  };

  const params = new URLSearchParams(location.search);
  const ROOM_RE = /^[A-Za-z0-9_.:\-]{1,64}$/;
  const REQUEST_TIMEOUT_MS = 15000;

  const CLOSE_REASONS = {
    1000: "The connection was closed.",
    1001: "The server is going away (restart or shutdown).",
    1006: "The connection was lost.",
    1008: "The server refused the connection by policy (banned, or origin not allowed).",
    1009: "A message was too large; the server closed the connection.",
    1011: "The server hit an internal error.",
    1013: "The server is overloaded; try again later.",
    4001: "Not authorized: the token is missing, invalid or expired.",
    4008: "Rate limits were exceeded too often; the server closed the connection.",
    4009: "Too many connections for this user.",
  };
  // Close codes after which reconnecting with the same token cannot help.
  const FINAL_CLOSE = new Set([1000, 1008, 4001, 4009]);

  const state = {
    info: null,          // GET /info
    token: null,
    ws: null,
    ready: null,         // the `ready` event
    nextId: 1,
    pending: new Map(),  // request id -> {resolve, reject, timer}
    room: null,          // joined room
    bySeq: new Map(),    // seq -> message element (current room)
    lastSeq: 0,          // highest seq seen in the current room
    retry: 0,
    retryTimer: null,
    wantJoin: null,      // room to join as soon as we are ready
  };

  // ---------------------------------------------------------------- status line ----
  function setStatus(text, kind = "info") {
    el.status.textContent = text;
    el.status.className = "status " + kind;
  }
  function showError(err, prefix) {
    const e = err && err.error ? err.error : err;
    let text = e && e.code ? `${e.code}: ${e.message || ""}`.trim() : String(e && e.message || e);
    if (e && e.reason) text += ` (${e.reason})`;
    if (e && e.retry_after_ms) text += ` — retry in ${(e.retry_after_ms / 1000).toFixed(1)} s`;
    setStatus((prefix ? prefix + ": " : "") + text, "error");
  }

  function setConn(text, cls) {
    el.connState.textContent = text;
    el.connState.className = "pill " + cls;
  }

  function updateControls() {
    const ready = !!state.ready && state.ws && state.ws.readyState === WebSocket.OPEN;
    el.join.disabled = !ready;
    el.text.disabled = el.send.disabled = !(ready && state.room);
    el.empty.hidden = el.messages.childElementCount > 0;
    if (!el.empty.hidden) {
      el.empty.textContent = !ready ? "Connect, then join a room."
        : !state.room ? "Join a room to see its messages." : "No messages yet. Say hello!";
    }
  }

  // ----------------------------------------------------------------- helpers ----
  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16));  // works outside secure contexts
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  async function getJSON(url) {
    const r = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
    if (!r.ok) throw new Error(`${url} answered HTTP ${r.status}`);
    return r.json();
  }

  // ------------------------------------------------------------------ socket ----
  function request(op, fields = {}) {
    return new Promise((resolve, reject) => {
      const ws = state.ws;
      if (!ws || ws.readyState !== WebSocket.OPEN) {
        reject({ code: "unavailable", message: "not connected" });
        return;
      }
      const id = state.nextId++;
      const timer = setTimeout(() => {
        state.pending.delete(id);
        reject({ code: "timeout", message: `no reply to ${op} within ${REQUEST_TIMEOUT_MS / 1000} s` });
      }, REQUEST_TIMEOUT_MS);
      state.pending.set(id, { resolve, reject, timer });
      ws.send(JSON.stringify({ op, ...fields, id }));
    });
  }

  function failPending(reason) {
    for (const [, p] of state.pending) { clearTimeout(p.timer); p.reject(reason); }
    state.pending.clear();
  }

  async function decode(data) {
    if (typeof data === "string") return JSON.parse(data);
    // Binary frames carry gzip-compressed JSON (only if compression was asked for).
    const stream = new Blob([data]).stream().pipeThrough(new DecompressionStream("gzip"));
    return JSON.parse(await new Response(stream).text());
  }

  function connect(token, { retry = false } = {}) {
    clearTimeout(state.retryTimer);
    if (state.ws) { state.ws.onclose = null; state.ws.close(1000); failPending({ code: "unavailable", message: "reconnecting" }); }
    if (!retry) {  // a new login starts from a clean page
      state.retry = 0;
      state.room = null;
      el.roomName.textContent = "";
      clearMessages();
    }
    state.token = token;
    state.ready = null;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/ws?token=${encodeURIComponent(token)}`);
    ws.binaryType = "arraybuffer";
    state.ws = ws;
    setConn("connecting…", "wait");
    updateControls();

    // Frames are handled one after the other, in arrival order (a gzip frame takes a few
    // ticks to decode; the text frame after it must wait for it).
    let inbox = Promise.resolve();
    ws.onmessage = (event) => {
      inbox = inbox.then(() => decode(event.data)).then(
        (msg) => { if (state.ws === ws) onFrame(msg); },
        (e) => setStatus("Unreadable frame from server: " + e, "error"),
      );
    };
    function onFrame(msg) {
      if (!msg || typeof msg !== "object") return;
      if (msg.id !== undefined && msg.id !== null && state.pending.has(msg.id)) {
        const p = state.pending.get(msg.id);
        state.pending.delete(msg.id);
        clearTimeout(p.timer);
        if (msg.ok) p.resolve(msg); else p.reject(msg.error || { code: "internal", message: "request failed" });
        return;
      }
      if (msg.ok === false) { showError(msg.error); return; }  // failure of a command without id
      if (msg.ev) onEvent(msg);
    }
    ws.onclose = (event) => {
      if (state.ws !== ws) return;
      const wasReady = !!state.ready;
      state.ready = null;
      failPending({ code: "unavailable", message: "connection closed" });
      const sentence = !wasReady && event.code === 1006
        ? "Could not open the connection: the server is unreachable or refused it (bad token?)."
        : CLOSE_REASONS[event.code] || `The connection closed (code ${event.code}).`;
      const why = event.reason ? ` ${event.reason}` : "";
      setConn("disconnected", "off");
      updateControls();
      const retrying = wasReady || state.retry > 0;  // only a connection that once worked
      if (FINAL_CLOSE.has(event.code) || !retrying || state.retry >= 6) {
        setStatus(`${sentence}${why} (close code ${event.code})`, event.code === 1000 ? "info" : "error");
        state.retry = 0;
        return;
      }
      // Unexpected close of a working connection: reconnect, then catch up with since_seq.
      const delay = Math.min(15000, 1000 * 2 ** state.retry++);
      setStatus(`${sentence}${why} (close code ${event.code}) Reconnecting in ${delay / 1000} s…`, "error");
      if (wasReady) state.wantJoin = state.room;
      state.retryTimer = setTimeout(() => connect(state.token, { retry: true }), delay);
    };
  }

  function onEvent(msg) {
    switch (msg.ev) {
      case "ready": {
        state.ready = msg;
        state.retry = 0;
        setConn("connected", "on");
        el.whoami.textContent = `user ${msg.user_id} · tenant ${msg.tenant_id}`;
        setStatus(`Connected as user ${msg.user_id}.`);
        updateControls();
        const room = state.wantJoin;
        state.wantJoin = null;
        if (room) joinRoom(room, { resume: room === state.room });
        break;
      }
      case "message":
        if (msg.room === state.room) addMessage(msg);
        break;
      case "edited":
        if (msg.room === state.room && state.bySeq.has(msg.seq)) {
          const node = state.bySeq.get(msg.seq);
          node.querySelector(".text").textContent = msg.text;
          node.classList.add("edited");
        }
        break;
      case "deleted":
        if (msg.room === state.room && state.bySeq.has(msg.seq)) {
          const node = state.bySeq.get(msg.seq);
          node.querySelector(".text").textContent = "message deleted";
          node.classList.add("deleted");
        }
        break;
      case "joined":
      case "left":
        if (msg.room === state.room && state.ready && msg.user_id !== state.ready.user_id) {
          setStatus(`user ${msg.user_id} ${msg.ev} ${msg.room}`);
        }
        break;
      case "moderation":
        setStatus(`Moderation in ${msg.room}: ${msg.action}${msg.reason ? " — " + msg.reason : ""}`, "error");
        break;
      case "error":
        showError(msg.error || msg, "Server error");
        break;
      default:
        break;  // typing, receipt, presence, reaction: not shown by this small client
    }
  }

  // ---------------------------------------------------------------- messages ----
  function formatTime(ts) {
    const d = new Date(ts);
    if (Number.isNaN(d.getTime())) return "";
    const sameDay = d.toDateString() === new Date().toDateString();
    return sameDay ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
      : d.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
  }

  function addMessage(m) {
    const seq = Number(m.seq);
    if (!Number.isFinite(seq) || state.bySeq.has(seq)) return;  // dedupe by seq
    const mine = state.ready && Number(m.from) === Number(state.ready.user_id);

    const node = document.createElement("div");
    node.className = "msg" + (mine ? " mine" : "");
    node.dataset.seq = String(seq);
    node.dataset.from = String(m.from);
    const meta = document.createElement("div");
    meta.className = "meta";
    const from = document.createElement("span");
    from.className = "from";
    from.textContent = mine ? `you (${m.from})` : `user ${m.from}`;
    const time = document.createElement("time");
    time.className = "time";
    time.textContent = formatTime(m.ts);
    if (m.ts) time.dateTime = new Date(m.ts).toISOString();
    const seqEl = document.createElement("span");
    seqEl.className = "seq";
    seqEl.textContent = `#${seq}`;
    meta.append(from, time, seqEl);
    const text = document.createElement("div");
    text.className = "text";
    text.textContent = m.text == null ? "" : String(m.text);
    node.append(meta, text);

    // Keep the list ordered by seq: find the first message with a larger seq.
    const atBottom = el.log.scrollHeight - el.log.scrollTop - el.log.clientHeight < 40;
    let before = null;
    if (seq < state.lastSeq) {
      for (const child of el.messages.children) {
        if (Number(child.dataset.seq) > seq) { before = child; break; }
      }
    }
    el.messages.insertBefore(node, before);
    state.bySeq.set(seq, node);
    state.lastSeq = Math.max(state.lastSeq, seq);
    if (!before && (atBottom || mine)) el.log.scrollTop = el.log.scrollHeight;
    updateControls();
  }

  function clearMessages() {
    el.messages.replaceChildren();
    state.bySeq.clear();
    state.lastSeq = 0;
    el.older.hidden = true;
  }

  async function loadHistory(room, beforeSeq) {
    const fields = { room, limit: 50 };
    if (beforeSeq) fields.before_seq = beforeSeq;
    const reply = await request("history", fields);
    if (room !== state.room) return;
    const keepBottom = !beforeSeq;
    const oldHeight = el.log.scrollHeight;
    for (const m of reply.messages || []) addMessage({ room, ...m });
    el.older.hidden = !reply.has_more;
    if (keepBottom) el.log.scrollTop = el.log.scrollHeight;
    else el.log.scrollTop += el.log.scrollHeight - oldHeight;  // keep the view where it was
  }

  async function joinRoom(room, { resume = false } = {}) {
    if (!ROOM_RE.test(room)) {
      setStatus("Room names are 1–64 characters of A–Z a–z 0–9 _ - . :", "error");
      return;
    }
    const previous = state.room;
    if (previous && previous !== room) request("leave", { room: previous }).catch(() => {});
    const sinceSeq = resume && state.lastSeq ? state.lastSeq : null;
    if (!resume || previous !== room) clearMessages();
    state.room = room;
    el.roomName.textContent = `in #${room}`;
    updateControls();
    try {
      const reply = await request("join", sinceSeq ? { room, since_seq: sinceSeq } : { room });
      if (state.room !== room) return;
      const members = Array.isArray(reply.members) ? reply.members.length : 0;
      setStatus(`Joined ${room}${members ? ` · ${members} online` : ""}.`);
      if (!sinceSeq || reply.recovered === false) await loadHistory(room);
      updateControls();
      el.text.focus();
    } catch (err) {
      if (state.room === room) { state.room = previous === room ? null : previous; el.roomName.textContent = ""; }
      showError(err, `Could not join ${room}`);
      updateControls();
    }
  }

  async function sendText(text) {
    const room = state.room;
    try {
      const reply = await request("send", { room, text, client_msg_id: uuid() });
      // The server does not echo `message` to the sender: show ours from the reply.
      if (room === state.room) {
        addMessage({ room, seq: reply.seq, msg_id: reply.msg_id, ts: reply.ts, text, from: state.ready.user_id });
      }
    } catch (err) {
      if (!el.text.value) el.text.value = text;  // give the text back
      showError(err, "Not sent");
    }
  }

  // -------------------------------------------------------------------- login ----
  async function devToken(user) {
    const tenant = params.get("tenant") || "0";
    const r = await getJSON(`/dev/token?user=${encodeURIComponent(user)}&tenant=${encodeURIComponent(tenant)}`);
    if (!r.token) throw new Error("/dev/token gave no token");
    return r.token;
  }

  async function startConnect() {
    try {
      let token;
      if (!el.userField.hidden) {  // dev mode: ask the server for a token
        const user = el.user.value.trim();
        if (!/^\d+$/.test(user)) { setStatus("The user id must be a whole number.", "error"); return; }
        setStatus(`Getting a dev token for user ${user}…`);
        token = await devToken(user);
      } else {
        token = el.token.value.trim();
        if (!token) { setStatus("Paste a token first.", "error"); return; }
      }
      connect(token);
    } catch (err) {
      showError(err, "Could not connect");
    }
  }

  // ------------------------------------------------------------------- wiring ----
  el.loginForm.addEventListener("submit", (e) => { e.preventDefault(); startConnect(); });
  el.joinForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const room = el.room.value.trim();
    if (state.ready) joinRoom(room, { resume: false });
  });
  el.sendForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = el.text.value;
    if (!text.trim() || !state.room) return;
    el.text.value = "";
    sendText(text);
  });
  el.older.addEventListener("click", () => {
    const first = el.messages.firstElementChild;
    if (state.room && first) loadHistory(state.room, Number(first.dataset.seq)).catch((err) => showError(err, "History"));
  });

  async function init() {
    if (params.get("room")) el.room.value = params.get("room");
    updateControls();
    try {
      state.info = await getJSON("/info");
      const impl = String(state.info.implementation || "");
      el.serverInfo.textContent = [`v${state.info.version}`, impl.split(" (")[0], state.info.dev_mode ? "dev mode" : ""]
        .filter(Boolean).join(" · ");
      el.serverInfo.title = impl;
    } catch (err) {
      state.info = { dev_mode: false };
      showError(err, "Server info unavailable");
    }
    const dev = !!state.info.dev_mode;
    const urlToken = params.get("token");
    el.userField.hidden = !dev || !!urlToken;
    el.tokenField.hidden = dev && !urlToken;
    el.user.value = params.get("user") || String(1000 + Math.floor(Math.random() * 9000));
    if (urlToken) el.token.value = urlToken;

    // ?token=… (or ?user=… in dev mode) connects at once; ?room=… then joins that room.
    if (urlToken || (dev && params.get("user"))) {
      state.wantJoin = params.get("room") ? el.room.value.trim() : null;
      startConnect();
    } else {
      (dev ? el.user : el.token).focus();
    }
  }

  init();
})();
