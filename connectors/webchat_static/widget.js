/*
 * Switchboard web chat widget: plain JavaScript, no build step, no dependencies.
 *
 * Embed on any page whose origin the channel's allowed_origins lists:
 *
 *   <script src="https://HOST/channels/NAME/widget.js" async
 *           data-title="Chat with us" data-name="" data-open="false"></script>
 *
 * data-title     heading of the chat panel
 * data-name      the visitor's name, if the page knows it (sent in hello, unverified)
 * data-open      "true" opens the panel at load
 * data-endpoint  WebSocket URL, when it is not beside widget.js (…/ws)
 *
 * window.SwitchboardChat.open() / .close() / .send(text) control it from the page.
 *
 * Delivery: every message gets a client id and waits in an outbox kept in localStorage until
 * the server acknowledges it (after the record is stored). Unacknowledged messages are resent
 * with the same id after a reconnect, a retry_after, or a page reload; the server turns a resend
 * into the same message, never a second one. Messages are sent one at a time, in order.
 */
(function () {
  "use strict";

  if (window.SwitchboardChat && window.SwitchboardChat.loaded) {
    return;
  }

  var script = document.currentScript;
  if (!script) {
    var candidates = document.querySelectorAll('script[src*="widget.js"]');
    script = candidates[candidates.length - 1];
  }
  var data = (script && script.dataset) || {};
  var src = (script && script.src) || "";
  var endpoint = data.endpoint || src.replace(/\/widget\.js(\?.*)?$/, "/ws").replace(/^http/, "ws");
  var storageKey = "switchboard-chat:" + endpoint;

  var ACK_TIMEOUT_MS = 15000;
  var MAX_BACKOFF_MS = 30000;
  var MAX_LOG = 100;
  var RETRIED = { unavailable: true, rate_limited: true, internal: true };

  // ------------------------------------------------------------------------- state

  var memoryStore = {};
  function readStore() {
    var text = null;
    try {
      text = window.localStorage.getItem(storageKey);
    } catch (e) {
      text = memoryStore[storageKey] || null;
    }
    try {
      var parsed = text ? JSON.parse(text) : null;
      if (parsed && typeof parsed === "object") {
        return parsed;
      }
    } catch (e) {
      /* a corrupt entry starts a new session */
    }
    return {};
  }

  var stored = readStore();
  var state = {
    session: typeof stored.session === "string" ? stored.session : null,
    outbox: Array.isArray(stored.outbox) ? stored.outbox : [],
    log: Array.isArray(stored.log) ? stored.log : []
  };

  function save() {
    state.log = state.log.slice(-MAX_LOG);
    var text = JSON.stringify(state);
    try {
      window.localStorage.setItem(storageKey, text);
    } catch (e) {
      memoryStore[storageKey] = text;
    }
  }

  function newId() {
    if (window.crypto && typeof window.crypto.randomUUID === "function") {
      return window.crypto.randomUUID();
    }
    var bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return Array.prototype.map
      .call(bytes, function (b) {
        return ("0" + b.toString(16)).slice(-2);
      })
      .join("");
  }

  function logEntry(id) {
    for (var i = state.log.length - 1; i >= 0; i--) {
      if (state.log[i].id === id) {
        return state.log[i];
      }
    }
    return null;
  }

  // -------------------------------------------------------------------- connection

  var socket = null;
  var welcomed = false;
  var limits = { max_text_chars: 4000 };
  var inFlight = null;
  var ackTimer = null;
  var retryTimer = null;
  var reconnectTimer = null;
  var backoff = 1000;
  var panelOpen = false;

  function wanted() {
    return panelOpen || state.outbox.length > 0;
  }

  function connect() {
    if (socket || reconnectTimer) {
      return;
    }
    setStatus("Connecting…");
    try {
      socket = new WebSocket(endpoint);
    } catch (e) {
      socket = null;
      scheduleReconnect();
      return;
    }
    socket.onopen = function () {
      transmit({
        type: "hello",
        session: state.session,
        name: data.name || null,
        locale: navigator.language || null,
        page: String(window.location.href).slice(0, 2000)
      });
    };
    socket.onmessage = function (event) {
      var frame;
      try {
        frame = JSON.parse(event.data);
      } catch (e) {
        return;
      }
      handle(frame);
    };
    socket.onclose = function (event) {
      socket = null;
      welcomed = false;
      inFlight = null;
      clearTimeout(ackTimer);
      setStatus("Offline");
      // An idle close with nothing to send waits for the visitor's next message.
      if (wanted() && !(event.code === 1000 && state.outbox.length === 0)) {
        scheduleReconnect();
      }
    };
  }

  function scheduleReconnect() {
    if (reconnectTimer) {
      return;
    }
    var delay = backoff * (0.5 + Math.random() / 2);
    backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
    reconnectTimer = setTimeout(function () {
      reconnectTimer = null;
      connect();
    }, delay);
  }

  function transmit(frame) {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  function handle(frame) {
    if (frame.type === "welcome") {
      welcomed = true;
      backoff = 1000;
      state.session = frame.session;
      limits = frame.limits || limits;
      save();
      setStatus("");
      pump();
    } else if (frame.type === "ack") {
      settle(frame.id, "sent", null);
    } else if (frame.type === "error") {
      onError(frame);
    }
  }

  function onError(frame) {
    if (frame.id === undefined || frame.id === null) {
      if (frame.code === "hello_required" && socket) {
        socket.close();
      }
      return;
    }
    if (RETRIED[frame.code]) {
      if (inFlight === frame.id) {
        inFlight = null;
        clearTimeout(ackTimer);
      }
      setStatus(frame.code === "rate_limited" ? "Sending slowly…" : "Waiting for the server…");
      retryTimer = setTimeout(function () {
        retryTimer = null;
        setStatus("");
        pump();
      }, Math.max(0.5, Number(frame.retry_after) || 1) * 1000);
      return;
    }
    settle(frame.id, "failed", frame.message || frame.code);
  }

  function settle(id, status, detail) {
    state.outbox = state.outbox.filter(function (item) {
      return item.id !== id;
    });
    var entry = logEntry(id);
    if (entry) {
      entry.status = status;
      entry.detail = detail;
    }
    if (inFlight === id) {
      inFlight = null;
      clearTimeout(ackTimer);
    }
    save();
    render();
    pump();
  }

  function pump() {
    if (!welcomed || inFlight || retryTimer) {
      return;
    }
    var next = state.outbox[0];
    if (!next) {
      return;
    }
    inFlight = next.id;
    if (!transmit({ type: "message", id: next.id, text: next.text })) {
      inFlight = null;
      return;
    }
    ackTimer = setTimeout(function () {
      if (inFlight === next.id && socket) {
        socket.close(); // no answer: reconnect and resend the same id
      }
    }, ACK_TIMEOUT_MS);
  }

  function send(text) {
    text = String(text || "").trim();
    if (!text) {
      return false;
    }
    if (text.length > (limits.max_text_chars || 4000)) {
      setStatus("That message is too long.");
      return false;
    }
    var id = newId();
    state.outbox.push({ id: id, text: text });
    state.log.push({ id: id, text: text, status: "sending", at: Date.now() });
    save();
    render();
    connect();
    pump();
    return true;
  }

  // ---------------------------------------------------------------------------- UI

  var CSS =
    ":host{all:initial}" +
    ".sb{position:fixed;bottom:20px;right:20px;z-index:2147483000;font:14px/1.4 system-ui,sans-serif;color:#1f2328}" +
    ".launcher{border:0;border-radius:24px;padding:12px 18px;background:#2f5bea;color:#fff;font:inherit;cursor:pointer;box-shadow:0 4px 14px rgba(0,0,0,.2)}" +
    ".panel{display:none;flex-direction:column;width:320px;height:420px;max-height:80vh;background:#fff;border-radius:12px;box-shadow:0 8px 30px rgba(0,0,0,.25);overflow:hidden}" +
    ".sb.open .panel{display:flex}.sb.open .launcher{display:none}" +
    ".head{display:flex;justify-content:space-between;align-items:center;padding:10px 14px;background:#2f5bea;color:#fff;font-weight:600}" +
    ".head button{border:0;background:none;color:#fff;font-size:20px;cursor:pointer;line-height:1}" +
    ".log{flex:1;overflow-y:auto;padding:10px 12px;background:#f6f8fa}" +
    ".msg{margin:6px 0 6px auto;max-width:85%;padding:8px 10px;border-radius:10px;background:#dbe4ff;white-space:pre-wrap;word-wrap:break-word}" +
    ".msg small{display:block;text-align:right;color:#57606a;font-size:11px}" +
    ".msg.failed{background:#ffe1e1}" +
    ".status{min-height:16px;padding:2px 12px;color:#57606a;font-size:12px}" +
    "form{display:flex;gap:6px;padding:8px;border-top:1px solid #d0d7de}" +
    "textarea{flex:1;resize:none;height:38px;padding:8px;border:1px solid #d0d7de;border-radius:8px;font:inherit}" +
    "form button{border:0;border-radius:8px;padding:0 14px;background:#2f5bea;color:#fff;font:inherit;cursor:pointer}";

  var host = document.createElement("div");
  host.setAttribute("data-switchboard-chat", "");
  var root = host.attachShadow ? host.attachShadow({ mode: "open" }) : host;
  var style = document.createElement("style");
  style.textContent = CSS;
  root.appendChild(style);

  var frame = document.createElement("div");
  frame.className = "sb";
  var launcher = document.createElement("button");
  launcher.className = "launcher";
  launcher.type = "button";
  launcher.textContent = data.title || "Chat with us";
  var panel = document.createElement("div");
  panel.className = "panel";
  panel.setAttribute("role", "dialog");
  panel.setAttribute("aria-label", data.title || "Chat with us");
  var head = document.createElement("div");
  head.className = "head";
  var title = document.createElement("span");
  title.textContent = data.title || "Chat with us";
  var closer = document.createElement("button");
  closer.type = "button";
  closer.setAttribute("aria-label", "Close chat");
  closer.textContent = "×";
  head.appendChild(title);
  head.appendChild(closer);
  var log = document.createElement("div");
  log.className = "log";
  log.setAttribute("aria-live", "polite");
  var status = document.createElement("div");
  status.className = "status";
  var form = document.createElement("form");
  var input = document.createElement("textarea");
  input.setAttribute("aria-label", "Your message");
  input.placeholder = "Type your message…";
  var submit = document.createElement("button");
  submit.type = "submit";
  submit.textContent = "Send";
  form.appendChild(input);
  form.appendChild(submit);
  panel.appendChild(head);
  panel.appendChild(log);
  panel.appendChild(status);
  panel.appendChild(form);
  frame.appendChild(launcher);
  frame.appendChild(panel);
  root.appendChild(frame);

  function setStatus(text) {
    status.textContent = text;
  }

  function render() {
    while (log.firstChild) {
      log.removeChild(log.firstChild);
    }
    state.log.forEach(function (entry) {
      var bubble = document.createElement("div");
      bubble.className = "msg" + (entry.status === "failed" ? " failed" : "");
      bubble.textContent = entry.text; // never innerHTML: the text is untrusted
      var note = document.createElement("small");
      note.textContent =
        entry.status === "sent" ? "Delivered ✓" : entry.status === "failed" ? "Not sent: " + (entry.detail || "") : "Sending…";
      bubble.appendChild(note);
      log.appendChild(bubble);
    });
    log.scrollTop = log.scrollHeight;
  }

  function open() {
    panelOpen = true;
    frame.classList.add("open");
    render();
    connect();
    input.focus();
  }

  function close() {
    panelOpen = false;
    frame.classList.remove("open");
  }

  launcher.addEventListener("click", open);
  closer.addEventListener("click", close);
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (send(input.value)) {
      input.value = "";
    }
  });
  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      if (send(input.value)) {
        input.value = "";
      }
    }
  });

  function mount() {
    document.body.appendChild(host);
    if (data.open === "true") {
      open();
    } else if (state.outbox.length > 0) {
      connect(); // messages left from an earlier page: deliver them
    }
  }

  if (document.body) {
    mount();
  } else {
    document.addEventListener("DOMContentLoaded", mount);
  }

  window.SwitchboardChat = { loaded: true, open: open, close: close, send: send };
})();
