/* chatwright web page: threads, streamed answers, citations, tools, collections and traces.
 *
 * Plain script, no build step. Everything the server or a model sends is untrusted: user text
 * goes in through textContent; answers are Markdown parsed by marked with raw HTML escaped,
 * then sanitized by DOMPurify (no styles, forms, frames or images; links only http(s)/mailto). */
(function () {
  "use strict";

  const KEY_STORAGE = "chatwright.apiKey";
  const RENDER_EVERY_MS = 60; // re-render a streaming answer at most this often
  const JOB_POLL_MS = 400;
  const RESUME_FIRST_MS = 500; // a broken stream is resumed after this, then twice as late…
  const RESUME_MAX_MS = 8000; // …at most this long between tries…
  const RESUME_FOR_MS = 30000; // …until this long has passed without an event

  // -- small helpers ----------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);

  /** Build an element: h("div", {class: "x", text: "..."}, child, "text", ...). Strings are text. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "text") el.textContent = value;
      else if (key.startsWith("on") && typeof value === "function") {
        el.addEventListener(key.slice(2), value);
      } else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  const enc = encodeURIComponent;

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => ({
      "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
    })[c]);
  }

  function asList(data, ...keys) {
    if (Array.isArray(data)) return data;
    for (const key of [...keys, "items", "data", "results"]) {
      if (data && Array.isArray(data[key])) return data[key];
    }
    return [];
  }

  function pretty(text) {
    if (typeof text !== "string") return JSON.stringify(text, null, 2);
    try {
      return JSON.stringify(JSON.parse(text), null, 2);
    } catch (_) {
      return text;
    }
  }

  function formatMs(ms) {
    if (typeof ms !== "number") return "";
    return ms >= 1000 ? (ms / 1000).toFixed(2) + " s" : ms.toFixed(ms < 10 ? 2 : 0) + " ms";
  }

  function threadPins(thread) {
    if (!thread) return [];
    const pins = thread.pinned_collections ?? thread.pins ?? thread.pinned ?? thread.collections;
    return Array.isArray(pins) ? pins : [];
  }

  // -- state --------------------------------------------------------------------------------
  const state = {
    threads: [],
    threadId: null,
    thread: null,
    collections: [],
    streams: new Map(), // thread id -> {controller, view}
    loadToken: 0,
    loading: null, // the thread being opened (a promise)
    titled: new Set(), // threads whose automatic title was asked for
    uploadTo: null, // the collection the user chose (or just made) for uploads
  };

  // -- the API ----------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(message, hint, type, status) {
      super(message || "request failed");
      this.name = "ApiError";
      this.hint = hint || "";
      this.type = type || "error";
      this.status = status || 0;
    }
  }

  function apiKey() {
    try {
      return localStorage.getItem(KEY_STORAGE) || "";
    } catch (_) {
      return "";
    }
  }

  function headers(extra) {
    const out = Object.assign({}, extra);
    const key = apiKey();
    if (key) out.Authorization = "Bearer " + key;
    return out;
  }

  async function errorFrom(res) {
    let message = `${res.status} ${res.statusText || "error"}`;
    let hint = "";
    let type = "http";
    try {
      const data = await res.json();
      const err = data && (data.error ?? data.detail ?? data);
      if (typeof err === "string") message = err;
      else if (Array.isArray(err) && err.length) {
        message = err.map((e) => (e.loc ? e.loc.join(".") + ": " : "") + (e.msg || "")).join("; ");
      } else if (err && typeof err === "object") {
        message = err.message || message;
        hint = err.hint || "";
        type = err.type || type;
      }
    } catch (_) { /* not JSON: keep the status line */ }
    if (res.status === 401 && !hint) hint = "Enter an API key in Settings (the gear button).";
    return new ApiError(message, hint, type, res.status);
  }

  /** Call the API: JSON in, JSON out; throws ApiError with the server's message and hint. */
  async function api(method, path, body, options) {
    const opts = options || {};
    const accept = { Accept: opts.accept || "application/json" };
    const init = { method, headers: headers(Object.assign(accept, opts.headers)) };
    if (body instanceof FormData) init.body = body;
    else if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    if (opts.signal) init.signal = opts.signal;
    let res;
    try {
      res = await fetch("api" + path, init);
    } catch (e) {
      if (e && e.name === "AbortError") throw e;
      throw new ApiError("Cannot reach the server.", "Check that the chatwright server is running, then retry.", "network");
    }
    if (!res.ok) throw await errorFrom(res);
    if (opts.raw) return res;
    if (res.status === 204) return null;
    const type = res.headers.get("content-type") || "";
    if (type.includes("json")) return res.json();
    const text = await res.text();
    return text ? text : null;
  }

  /** Parse a Server-Sent Events body, calling onEvent(name, data, lastEventId) for each event
   * (the id is the last `id:` seen in this body, "" before any). An event cut off by the end
   * of the body is not dispatched (the SSE rule): a resumed stream sends it again. */
  async function readEvents(res, onEvent) {
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let lastId = "";
    const dispatch = (block) => {
      let name = "message";
      const data = [];
      for (const line of block.split(/\r\n|\r|\n/)) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") name = value;
        else if (field === "data") data.push(value);
        else if (field === "id" && !value.includes("\0")) lastId = value;
      }
      if (!data.length) return;
      let payload = data.join("\n");
      try {
        payload = JSON.parse(payload);
      } catch (_) { /* plain text data */ }
      onEvent(name, payload, lastId);
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let match;
      while ((match = /\r\n\r\n|\n\n|\r\r/.exec(buffer))) {
        const block = buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
        dispatch(block);
      }
    }
  }

  // -- the error banner -------------------------------------------------------------------
  function showError(err) {
    if (!err || err.name === "AbortError") return;
    $("banner").classList.remove("info");
    $("banner-message").textContent = err.message || String(err);
    $("banner-hint").textContent = err.hint || "";
    $("banner").hidden = false;
    // A modal dialog hides the banner behind its backdrop: say it in the dialog too.
    const dialogs = document.querySelectorAll("dialog[open]");
    const dialog = dialogs[dialogs.length - 1];
    if (dialog) {
      let box = dialog.querySelector(".dialog-error");
      if (!box) {
        box = h("p", { class: "dialog-error", role: "alert" });
        const head = dialog.querySelector(".dialog-head");
        if (head) head.after(box);
        else dialog.prepend(box);
      }
      box.textContent = (err.message || String(err)) + (err.hint ? ` (${err.hint})` : "");
      box.hidden = false;
    }
  }

  function hideBanner() {
    $("banner").hidden = true;
  }

  /** Run an async UI action, showing what goes wrong in the banner. */
  function guarded(fn) {
    return async (...args) => {
      try {
        return await fn(...args);
      } catch (e) {
        showError(e);
        return undefined;
      }
    };
  }

  // -- Markdown, safely -------------------------------------------------------------------
  const FORBID_TAGS = [
    "style", "form", "input", "button", "textarea", "select", "option", "iframe", "frame",
    "frameset", "object", "embed", "img", "svg", "math", "video", "audio", "source", "picture",
    "link", "meta", "base", "template", "dialog", "script", "noscript",
  ];
  const FORBID_ATTR = ["style", "id", "name", "srcset", "action", "formaction", "target", "ping"];
  const SAFE_HREF = /^(https?:|mailto:)/i;
  let markdownParser = null;

  function setUpMarkdown() {
    if (markdownParser) return markdownParser;
    if (!window.marked || !window.DOMPurify) return null;
    markdownParser = new window.marked.Marked({ gfm: true, breaks: true, async: false });
    markdownParser.use({
      renderer: {
        // Raw HTML in Markdown is shown as text, never as markup.
        html(token) {
          return escapeHtml(token.text ?? token.raw ?? "");
        },
        // No remote images (the page's CSP blocks them anyway): a link to them instead.
        image(token) {
          const label = token.text || token.href || "image";
          return `<a href="${escapeHtml(token.href || "")}">${escapeHtml(label)}</a>`;
        },
      },
    });
    window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
      if (node.nodeName !== "A") return;
      const href = (node.getAttribute("href") || "").trim();
      if (href && SAFE_HREF.test(href)) {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer");
      } else {
        node.removeAttribute("href");
        node.classList.add("unsafe-link");
        if (href) node.setAttribute("title", "link removed: only http, https and mailto links open");
      }
    });
    return markdownParser;
  }

  /** Sanitized DOM for `text` as Markdown (plain text if the libraries failed to load). */
  function markdownFragment(text) {
    const parser = setUpMarkdown();
    if (!parser) {
      const frag = document.createDocumentFragment();
      frag.append(h("p", { class: "plain", text }));
      return frag;
    }
    const html = parser.parse(String(text || ""));
    return window.DOMPurify.sanitize(html, {
      FORBID_TAGS,
      FORBID_ATTR,
      ALLOW_DATA_ATTR: false,
      ALLOW_ARIA_ATTR: false,
      RETURN_DOM_FRAGMENT: true,
    });
  }

  const CITE_MARK = /\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]/g;

  /** Turn `[n]` in text nodes (not code or links) into buttons to citation n, where it exists. */
  function linkCitations(root, onCite, known) {
    if (!known.size) return;
    const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT, {
      acceptNode(node) {
        for (let p = node.parentNode; p && p !== root; p = p.parentNode) {
          if (p.nodeName === "CODE" || p.nodeName === "PRE" || p.nodeName === "A") return NodeFilter.FILTER_REJECT;
        }
        CITE_MARK.lastIndex = 0;
        return CITE_MARK.test(node.nodeValue) ? NodeFilter.FILTER_ACCEPT : NodeFilter.FILTER_SKIP;
      },
    });
    const nodes = [];
    while (walker.nextNode()) nodes.push(walker.currentNode);
    for (const node of nodes) {
      const text = node.nodeValue;
      const frag = document.createDocumentFragment();
      let last = 0;
      CITE_MARK.lastIndex = 0;
      let match;
      while ((match = CITE_MARK.exec(text))) {
        const numbers = match[1].split(",").map((n) => parseInt(n.trim(), 10));
        if (!numbers.every((n) => known.has(n))) continue;
        frag.append(text.slice(last, match.index));
        for (const n of numbers) {
          frag.append(h("button", {
            type: "button",
            class: "cite-ref",
            "data-cite": n,
            "aria-label": `Source ${n}`,
            onclick: () => onCite(n),
          }, `[${n}]`));
        }
        last = match.index + match[0].length;
      }
      if (last === 0) continue;
      frag.append(text.slice(last));
      node.parentNode.replaceChild(frag, node);
    }
  }

  // -- one assistant turn (streamed or from history) ---------------------------------------
  class TurnView {
    constructor(threadId) {
      this.threadId = threadId;
      this.seq = null;
      this.trace = null;
      this.eventId = ""; // the SSE id of the last event shown: a broken stream resumes after it
      this.done = false; // its last event (done or error) arrived
      this.segment = null; // the Markdown segment text is going into
      this.segments = [];
      this.tools = new Map(); // call id -> tool view
      this.citations = new Map(); // index -> citation
      this.timer = null;
      this.lastRender = 0;
      this.content = h("div", { class: "content" });
      this.citationBox = h("div", { class: "citations", hidden: true });
      this.traceButton = h("button", {
        type: "button", class: "link-button trace-button", hidden: true,
        onclick: guarded(() => this.showTrace()),
      }, "Trace");
      this.note = h("span", { class: "msg-note", hidden: true });
      this.status = h("span", { class: "msg-status", role: "status", hidden: true });
      this.time = timeLabel(Date.now() / 1000);
      this.switcher = h("span", { class: "branch-slot" });
      this.copyButton = copyButton(() => this.plainText(), "Copy answer");
      this.regenerateButton = h("button", {
        type: "button", class: "link-button regenerate-button", hidden: true,
        title: "Answer again (the old answer is kept: switch back with ‹ ›)",
        onclick: guarded(() => regenerate(this)),
      }, "Regenerate");
      this.footer = h("div", { class: "msg-footer" }, this.switcher, this.time, this.copyButton,
        this.regenerateButton, this.traceButton, this.note, this.status);
      this.el = h("article", { class: "msg assistant", "aria-label": "Answer" },
        h("div", { class: "who", "aria-hidden": "true" }, "assistant"),
        this.content, this.citationBox, this.footer);
    }

    /** The answer's text as written (Markdown), for the copy button. */
    plainText() {
      return this.segments.map((seg) => seg.text).filter(Boolean).join("\n\n");
    }

    /** Its versions on other branches (a regenerated answer): "‹ 2/3 ›". */
    setSiblings(seq, siblings) {
      this.switcher.replaceChildren(...[branchSwitcher(this.threadId, seq, siblings)].filter(Boolean));
    }

    setTime(createdAt) {
      const label = timeLabel(createdAt);
      this.time.replaceWith(label);
      this.time = label;
    }

    setStreaming(on) {
      this.el.classList.toggle("streaming", on);
      this.el.setAttribute("aria-busy", on ? "true" : "false");
      if (!on) this.setReconnecting(false);
    }

    /** Say that the stream broke and is being resumed (or no longer). */
    setReconnecting(on) {
      this.el.classList.toggle("reconnecting", on);
      this.status.textContent = on ? "reconnecting…" : "";
      this.status.hidden = !on;
    }

    // text
    appendText(delta) {
      if (!delta) return;
      if (!this.segment) this.newSegment();
      this.segment.text += delta;
      this.scheduleRender();
    }

    addText(text) {
      if (!text) return;
      this.newSegment();
      this.segment.text = text;
      this.renderSegment(this.segment);
    }

    newSegment() {
      this.flush();
      const seg = { text: "", el: h("div", { class: "markdown" }) };
      this.content.append(seg.el);
      this.segments.push(seg);
      this.segment = seg;
    }

    scheduleRender() {
      if (this.timer) return;
      const wait = Math.max(0, RENDER_EVERY_MS - (performance.now() - this.lastRender));
      this.timer = setTimeout(() => {
        this.timer = null;
        if (this.segment) this.renderSegment(this.segment);
      }, wait);
    }

    /** Render what a pending (throttled) render would have. */
    flush() {
      if (!this.timer) return;
      clearTimeout(this.timer);
      this.timer = null;
      if (this.segment) this.renderSegment(this.segment);
    }

    renderSegment(seg) {
      const stick = nearBottom();
      this.lastRender = performance.now();
      const frag = markdownFragment(seg.text);
      linkCitations(frag, (n) => this.openCitation(n), this.citations);
      addCodeCopyButtons(frag);
      seg.el.replaceChildren(frag);
      if (stick) scrollToBottom();
    }

    // tools
    addToolCall(call) {
      if (!call || !call.id) return;
      this.flush();
      this.segment = null;
      let tool = this.tools.get(call.id);
      if (!tool) {
        tool = new ToolView(call, this.threadId);
        this.tools.set(call.id, tool);
        this.content.append(tool.el);
      }
      return tool;
    }

    addToolResult(result) {
      if (!result) return;
      this.flush();
      this.segment = null;
      let tool = this.tools.get(result.tool_call_id);
      if (!tool) tool = this.addToolCall({ id: result.tool_call_id || "result", name: result.name || "tool" });
      tool.setResult(result);
    }

    needApproval(event) {
      const call = event.call || event;
      const tool = this.tools.get(call.id) || this.addToolCall(call);
      tool.askApproval(event, this);
    }

    // citations
    addCitation(citation) {
      if (!citation || typeof citation.index !== "number") return;
      this.citations.set(citation.index, citation);
    }

    renderCitations() {
      const list = [...this.citations.values()].sort((a, b) => a.index - b.index);
      this.citationBox.replaceChildren();
      this.citationBox.hidden = !list.length;
      if (!list.length) return;
      const ol = h("ol", { class: "citation-list" });
      for (const c of list) {
        const name = c.title || c.source || c.document_id || "source";
        const where = [c.source && c.source !== name ? c.source : null,
          c.page !== null && c.page !== undefined ? `page ${c.page}` : null].filter(Boolean).join(", ");
        const path = headingPath(c);
        const details = h("details", { class: "citation", "data-index": c.index },
          h("summary", null,
            h("span", { class: "citation-index" }, `[${c.index}]`), " ",
            h("span", { class: "citation-title" }, name),
            path.length ? h("span", { class: "citation-heading" }, " › " + path.join(" › ")) : null,
            c.page !== null && c.page !== undefined ? h("span", { class: "muted" }, `, p. ${c.page}`) : null),
          h("blockquote", { class: "citation-passage passage-md" }, passageFragment(c.text || "")),
          h("div", { class: "citation-source" },
            "Source: ", where || name,
            c.document_id ? ` · document ${c.document_id}` : ""));
        ol.append(h("li", null, details));
      }
      this.citationBox.append(h("p", { class: "citations-title" }, "Sources"), ol);
      for (const seg of this.segments) this.renderSegment(seg);
    }

    openCitation(n) {
      const details = this.citationBox.querySelector(`details[data-index="${n}"]`);
      if (!details) return;
      details.open = true;
      details.classList.add("flash");
      setTimeout(() => details.classList.remove("flash"), 1200);
      details.scrollIntoView({ block: "nearest" });
      details.querySelector("summary").focus({ preventScroll: true });
    }

    // the end
    finish(info) {
      this.flush();
      this.setStreaming(false);
      this.clearNote();
      if (info.message && Array.isArray(info.message.parts)) {
        for (const part of info.message.parts) if (part.kind === "citation") this.addCitation(part);
      }
      if (!this.segments.length && info.text) this.addText(info.text);
      if (typeof info.seq === "number") this.setSeq(info.seq);
      if (info.trace) this.trace = info.trace;
      this.renderCitations();
      if (info.interrupted) this.setNote("stopped", false);
      const meta = (info.message && info.message.metadata) || {};
      if (!info.interrupted && meta.stopped) this.setNote(`stopped: ${meta.stopped}`, false);
      else if (!info.interrupted && meta.finish && meta.finish !== "stop") this.setNote(finishSentence(meta.finish), false);
    }

    fail(err) {
      this.flush();
      this.setStreaming(false);
      this.setNote(err.message || String(err), true);
    }

    setSeq(seq) {
      this.seq = seq;
      this.el.dataset.seq = String(seq);
      this.traceButton.hidden = false;
      this.regenerateButton.hidden = false;
    }

    setNote(text, isError) {
      this.note.textContent = text;
      this.note.classList.toggle("error", !!isError);
      this.note.hidden = false;
    }

    clearNote() {
      this.note.textContent = "";
      this.note.classList.remove("error");
      this.note.hidden = true;
    }

    async showTrace() {
      let trace = null;
      if (this.seq !== null) {
        const data = await api("GET", `/threads/${enc(this.threadId)}/trace/${this.seq}`);
        trace = data && data.trace && data.stages === undefined ? data.trace : data;
      }
      trace = trace || this.trace;
      if (!trace) throw new ApiError("No trace for this answer.", "Traces are kept when store_traces is on.");
      openTrace(trace, this.seq);
    }
  }

  class ToolView {
    constructor(call, threadId) {
      this.call = call;
      this.threadId = threadId;
      this.state = h("span", { class: "tool-state" }, "running…");
      this.result = h("div", { class: "tool-section tool-result", hidden: true });
      this.details = h("details", { class: "tool", "data-call-id": call.id },
        h("summary", null, "Tool ", h("span", { class: "tool-name" }, call.name || "tool"), this.state),
        h("div", { class: "tool-section" }, h("h4", null, "Arguments"),
          h("pre", { text: pretty(call.arguments ?? "{}") })),
        this.result);
      this.el = h("div", { class: "tool-wrap" }, this.details);
    }

    setResult(result) {
      this.result.replaceChildren(h("h4", null, result.is_error ? "Error" : "Result"),
        h("pre", { text: result.content ?? "" }));
      this.result.hidden = false;
      this.details.classList.toggle("error", !!result.is_error);
      this.details.classList.toggle("ok", !result.is_error);
      this.state.textContent = result.is_error ? "error" : "done";
      if (this.approval) this.approval.remove();
    }

    askApproval(event, turn) {
      this.state.textContent = "waiting for approval";
      if (this.approval) this.approval.remove();
      const decide = async (approved) => {
        for (const b of buttons) b.disabled = true;
        try {
          const res = await api("POST",
            `/threads/${enc(this.threadId)}/approvals/${enc(this.call.id)}`,
            { approved }, { raw: true, accept: "text/event-stream, application/json" });
          this.approval.replaceChildren(h("p", { class: "approval-done" }, approved ? "Approved." : "Denied."));
          this.state.textContent = approved ? "approved, running…" : "denied";
          if (!approved) this.details.classList.add("error");
          const type = res.headers.get("content-type") || "";
          if (type.includes("event-stream")) await consumeTurn(res, turn, this.threadId);
        } catch (e) {
          for (const b of buttons) b.disabled = false;
          showError(e);
        }
      };
      const buttons = [
        h("button", { type: "button", class: "button primary small-button approve", onclick: () => decide(true) }, "Approve"),
        h("button", { type: "button", class: "button small-button deny", onclick: () => decide(false) }, "Deny"),
      ];
      const description = event.description || `Run ${this.call.name}?`;
      this.approval = h("div", { class: "approval", role: "group", "aria-label": `Approve ${this.call.name}` },
        h("p", null, h("strong", null, description)),
        event.reason ? h("p", { class: "small muted" }, event.reason) : null,
        h("pre", { class: "small", text: pretty(this.call.arguments ?? "{}") }),
        h("div", { class: "row" }, buttons));
      this.el.append(this.approval);
      if (nearBottom()) scrollToBottom();
    }
  }

  // -- the conversation -------------------------------------------------------------------
  const messagesEl = () => $("messages");

  function nearBottom() {
    const el = messagesEl();
    return el.scrollHeight - el.scrollTop - el.clientHeight < 120;
  }

  function scrollToBottom() {
    const el = messagesEl();
    el.scrollTop = el.scrollHeight;
  }

  /** A message of the user's; `info` (from the thread's messages): seq, created_at, siblings
   * (its versions on other branches), threadId. Without a seq yet (just sent), Edit waits for
   * setBubbleSeq. */
  function userBubble(text, info) {
    const el = h("article", { class: "msg user", "aria-label": "Your message" },
      h("div", { class: "who", "aria-hidden": "true" }, "you"),
      h("div", { class: "body", text }));
    el.bubble = { text, info: Object.assign({ created_at: Date.now() / 1000 }, info || {}) };
    el.append(h("div", { class: "msg-actions" }));
    fillBubbleActions(el);
    return el;
  }

  function fillBubbleActions(el) {
    const { text, info } = el.bubble;
    if (typeof info.seq === "number") el.dataset.seq = String(info.seq);
    const editable = typeof info.seq === "number" && info.threadId;
    const actions = [
      info.siblings ? branchSwitcher(info.threadId, info.seq, info.siblings) : null,
      timeLabel(info.created_at),
      copyButton(() => text, "Copy message"),
      editable ? h("button", {
        type: "button", class: "link-button edit-button",
        title: "Edit and resend (the old message is kept: switch back with ‹ ›)",
        onclick: () => editMessage(el),
      }, "Edit") : null,
    ];
    // replaceChildren writes a null as the text "null": only the actions that apply
    el.querySelector(".msg-actions").replaceChildren(...actions.filter(Boolean));
  }

  function setBubbleSeq(el, threadId, seq) {
    if (!el || !el.bubble || typeof seq !== "number") return;
    Object.assign(el.bubble.info, { seq, threadId });
    fillBubbleActions(el);
  }

  /** "14:05" (today) or "3 Dec, 14:05"; the full date and time on hover. */
  function timeLabel(seconds) {
    if (typeof seconds !== "number") return h("span", { class: "msg-time" });
    const when = new Date(seconds * 1000);
    const today = new Date().toDateString() === when.toDateString();
    const options = today ? { hour: "2-digit", minute: "2-digit" }
      : { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" };
    return h("time", { class: "msg-time", datetime: when.toISOString(), title: when.toLocaleString() },
      when.toLocaleString(undefined, options));
  }

  async function copyText(text) {
    try {
      await navigator.clipboard.writeText(text);
      return;
    } catch (_) { /* not allowed (an insecure origin): the old way */ }
    const area = h("textarea", { class: "copy-buffer", "aria-hidden": "true" });
    area.value = text;
    document.body.append(area);
    area.select();
    try {
      document.execCommand("copy");
    } finally {
      area.remove();
    }
  }

  function copyButton(getText, label) {
    const button = h("button", { type: "button", class: "link-button copy-button", "aria-label": label }, "Copy");
    button.addEventListener("click", guarded(async () => {
      await copyText(getText());
      button.textContent = "Copied";
      setTimeout(() => { button.textContent = "Copy"; }, 1500);
    }));
    return button;
  }

  /** A copy button on each code block of a rendered answer. */
  function addCodeCopyButtons(root) {
    for (const pre of root.querySelectorAll("pre")) {
      const code = pre.querySelector("code") || pre;
      pre.classList.add("has-copy");
      pre.prepend(copyButton(() => code.textContent, "Copy code"));
    }
  }

  /** "‹ 2/3 ›": which of a message's versions (on different branches) is shown; the arrows
   * switch the thread to the branch of the previous or next one. */
  function branchSwitcher(threadId, seq, siblings) {
    const at = siblings.findIndex((s) => s.seq === seq);
    if (at < 0 || siblings.length < 2) return null;
    const go = (i) => guarded(() => switchBranch(threadId, siblings[i].branch));
    return h("span", { class: "branch-switch", role: "group", "aria-label": "Versions" },
      h("button", { type: "button", class: "link-button branch-prev", "aria-label": "Previous version",
        disabled: at === 0, onclick: go(at - 1) }, "‹"),
      h("span", { class: "branch-count" }, `${at + 1}/${siblings.length}`),
      h("button", { type: "button", class: "link-button branch-next", "aria-label": "Next version",
        disabled: at === siblings.length - 1, onclick: go(at + 1) }, "›"));
  }

  async function switchBranch(threadId, branch) {
    if (state.streams.has(threadId)) throw new ApiError("An answer is still streaming.", "Stop it first, or wait for it.");
    await api("PUT", `/threads/${enc(threadId)}/branch`, { branch });
    await reloadHistory(threadId);
  }

  /** Show the thread as stored (after a branch changed what its active path is). */
  async function reloadHistory(threadId) {
    const messages = await loadMessages(threadId);
    if (threadId === state.threadId && !state.streams.has(threadId)) renderHistory(threadId, messages);
  }

  /** Answer again: a new branch forks before the answer of `turn`. */
  async function regenerate(turn) {
    const threadId = turn.threadId;
    if (state.streams.has(threadId) || turn.seq === null) return;
    const seq = turn.seq;
    const view = new TurnView(threadId);
    view.setStreaming(true);
    while (turn.el.nextElementSibling) turn.el.nextElementSibling.remove();
    turn.el.replaceWith(view.el);
    await redo(view, threadId, `/messages/${seq}/regenerate`, {});
  }

  /** Edit a message of the user's in place, then resend it on a new branch. */
  function editMessage(el) {
    const { text, info } = el.bubble;
    if (state.streams.has(info.threadId)) return;
    const area = h("textarea", { class: "edit-input", rows: 3, "aria-label": "Edit your message" });
    area.value = text;
    const cancel = () => form.replaceWith(body);
    const body = el.querySelector(".body");
    const form = h("form", { class: "edit-form" }, area,
      h("div", { class: "row" },
        h("button", { type: "submit", class: "button primary small-button" }, "Send"),
        h("button", { type: "button", class: "button small-button", onclick: cancel }, "Cancel")));
    form.addEventListener("submit", guarded(async (event) => {
      event.preventDefault();
      const next = area.value;
      if (!next.trim()) return;
      const bubble = userBubble(next, { threadId: info.threadId });
      el.replaceWith(bubble);
      while (bubble.nextElementSibling) bubble.nextElementSibling.remove();
      const view = new TurnView(info.threadId);
      view.setStreaming(true);
      messagesEl().append(view.el);
      view.userBubble = bubble;
      await redo(view, info.threadId, `/messages/${info.seq}/edit`, { text: next });
    }));
    body.replaceWith(form);
    area.focus();
  }

  /** Stream a regeneration or an edit into `view`, then show the thread as stored (its new
   * branch, with "‹ n/m ›" on the versions). */
  async function redo(view, threadId, path, body) {
    updateEmpty();
    scrollToBottom();
    const controller = new AbortController();
    const payload = Object.assign({ stream: true }, body);
    const bot = chosenBot();
    if (bot) payload.bot = bot;
    const open = () => api("POST", `/threads/${enc(threadId)}${path}`, payload,
      { raw: true, signal: controller.signal, accept: "text/event-stream" });
    await streamTurn(view, threadId, controller, open);
    // As stored: the new branch, or (refused, failed) the thread as it was; an error stays in
    // the banner.
    await reloadHistory(threadId).catch(() => {});
  }

  function updateEmpty() {
    $("empty-state").hidden = messagesEl().children.length > 0;
  }

  /** Show the thread's messages; returns the view of the last answer when it ends the thread. */
  function renderHistory(threadId, messages) {
    const root = messagesEl();
    root.replaceChildren();
    let turn = null;
    let lastTurn = null;
    let lastAssistant = null;
    const close = () => {
      if (turn) {
        turn.finish({ seq: lastAssistant ? lastAssistant.seq : undefined });
        const meta = (lastAssistant && lastAssistant.metadata) || {};
        if (meta.interrupted || meta.finish === "interrupted") {
          turn.setNote(meta.reason ? `cut short: ${meta.reason}` : "cut short", false);
        }
        else if (meta.stopped) turn.setNote(`stopped: ${meta.stopped}`, false);
        else if (meta.error) turn.setNote(String(meta.error), true);
        else if (meta.finish && meta.finish !== "stop") turn.setNote(finishSentence(meta.finish), false);
      }
      turn = null;
      lastAssistant = null;
    };
    for (const m of messages) {
      if (m.role === "user") {
        close();
        root.append(userBubble(m.text ?? "", {
          seq: m.seq, created_at: m.created_at, siblings: m.siblings, threadId,
        }));
      } else if (m.role === "assistant" || m.role === "tool") {
        if (!turn) {
          turn = lastTurn = new TurnView(threadId);
          root.append(turn.el);
          if (typeof m.created_at === "number") turn.setTime(m.created_at);
          if (m.siblings) turn.setSiblings(m.seq, m.siblings);
        }
        const parts = Array.isArray(m.parts) ? m.parts : [{ kind: "text", text: m.text }];
        for (const part of parts) {
          if (part.kind === "text") turn.addText(part.text);
          else if (part.kind === "tool_call") turn.addToolCall(part);
          else if (part.kind === "tool_result") turn.addToolResult(part);
          else if (part.kind === "citation") turn.addCitation(part);
        }
        if (m.role === "assistant") lastAssistant = m;
      } else {
        close();
        root.append(h("article", { class: "msg system", "aria-label": "System note" },
          h("div", { class: "body", text: m.text ?? "" })));
      }
    }
    close();
    updateEmpty();
    scrollToBottom();
    return lastTurn && root.lastElementChild === lastTurn.el ? lastTurn : null;
  }

  function handleEvent(view, name, data, threadId) {
    const d = data || {};
    switch (name) {
      case "start":
        setBubbleSeq(view.userBubble, threadId, d.user_seq);
        break;
      case "text_delta":
      case "delta":
        view.appendText(typeof d === "string" ? d : d.text);
        break;
      case "tool_call":
        view.addToolCall(d.call || d);
        break;
      case "tool_result":
        view.addToolResult(d.result || d);
        break;
      case "approval_needed":
        view.needApproval(d);
        break;
      case "citation":
        view.addCitation(d.citation || d);
        break;
      case "trace":
        view.trace = d.trace || d;
        break;
      case "done":
        view.finish(d);
        view.done = true;
        titleThenRefresh(threadId);
        break;
      case "error": {
        const err = new ApiError(d.message || "the turn failed", d.hint, d.type);
        view.fail(err);
        view.done = true;
        showError(err);
        break;
      }
      default:
        break;
    }
  }

  /** Read a turn's events from `res` into `view`. With `options.resume`, a stream that breaks
   * before the turn's last event (a network error, a connection closed early: the replica
   * behind a load balancer restarted) is resumed after the last event shown, on any replica
   * (resumeTurn). Throws an AbortError when `options.signal` aborts (Stop). */
  async function consumeTurn(res, view, threadId, options) {
    const opts = options || {};
    const type = res.headers.get("content-type") || "";
    if (!type.includes("event-stream")) {
      // A server that answered in one piece: {text, seq, message, ...}.
      const data = type.includes("json") ? await res.json() : { text: await res.text() };
      view.finish(data.answer || data);
      view.done = true;
      return;
    }
    const onEvent = (name, data, id) => {
      if (id) view.eventId = id;
      handleEvent(view, name, data, threadId);
    };
    let broken = null;
    try {
      await readEvents(res, onEvent);
    } catch (e) {
      if (aborted(e, opts.signal)) throw e;
      broken = e;
    }
    if (view.done) return;
    // Without ids (an older server) there is no telling where to resume from.
    if (!opts.resume || !view.eventId) {
      if (broken) throw broken;
      return;
    }
    await resumeTurn(view, threadId, onEvent, opts.signal, broken);
  }

  function aborted(err, signal) {
    return (err && err.name === "AbortError") || !!(signal && signal.aborted);
  }

  /** Wait `ms`; rejects with an AbortError when `signal` aborts first. */
  function sleep(ms, signal) {
    return new Promise((resolve, reject) => {
      const stopped = () => reject(new DOMException("stopped", "AbortError"));
      if (signal && signal.aborted) return stopped();
      const timer = setTimeout(() => {
        if (signal) signal.removeEventListener("abort", onAbort);
        resolve();
      }, ms);
      const onAbort = () => {
        clearTimeout(timer);
        stopped();
      };
      if (signal) signal.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** Resume a broken turn stream after `view.eventId` (GET .../stream with Last-Event-ID)
   * until the turn's last event, retrying with backoff while RESUME_FOR_MS pass without a new
   * event. Fails for good with an ApiError marked `lost` (the caller shows what was stored). */
  async function resumeTurn(view, threadId, onEvent, signal, cause) {
    let reason = cause;
    let delay = RESUME_FIRST_MS;
    let since = Date.now();
    view.setReconnecting(true);
    try {
      while (Date.now() - since < RESUME_FOR_MS) {
        await sleep(delay, signal);
        delay = Math.min(delay * 2, RESUME_MAX_MS);
        const before = view.eventId;
        let ended = false;
        try {
          const res = await api("GET", `/threads/${enc(threadId)}/stream`, undefined, {
            raw: true, signal, accept: "text/event-stream", headers: { "Last-Event-ID": before },
          });
          view.setReconnecting(false);
          await readEvents(res, onEvent);
          ended = true;
        } catch (e) {
          if (aborted(e, signal)) throw e;
          reason = e;
          // Refused (a bad id, a key no longer valid): asking again will not help.
          if (e.status >= 400 && e.status < 500 && ![404, 408, 429].includes(e.status)) break;
        }
        if (view.done) return;
        if (view.eventId !== before) {
          since = Date.now(); // it moved on: the backoff starts over
          delay = RESUME_FIRST_MS;
        } else if (ended) {
          reason = null; // the stream ended without its last event: nothing more will come
          break;
        }
        view.setReconnecting(true);
      }
    } finally {
      view.setReconnecting(false);
    }
    const err = reason instanceof ApiError && reason.status ? reason : new ApiError(
      reason ? "The connection to the server was lost before the answer ended."
        : "The answer's stream ended before the answer did.",
      "What the server stored of this turn is shown.", "stream_lost");
    err.lost = true;
    throw err;
  }

  /** Stream a turn into `view` as the thread's running turn (Stop aborts `controller`), from
   * the response that `open()` gives, resuming it when the stream breaks. */
  async function streamTurn(view, threadId, controller, open) {
    state.streams.set(threadId, { controller, view });
    updateComposer();
    let lost = false;
    try {
      const res = await open();
      await consumeTurn(res, view, threadId, { resume: true, signal: controller.signal });
      if (!view.done) view.finish({});
    } catch (e) {
      if (e && e.name === "AbortError") {
        view.finish({});
        view.setNote("stopped: what arrived is kept", false);
      } else {
        view.fail(e);
        showError(e);
        lost = !!e.lost;
      }
    } finally {
      if (state.streams.get(threadId)?.view === view) state.streams.delete(threadId);
      updateComposer();
    }
    if (lost) await showStored(threadId, view);
  }

  /** After a stream that could not be resumed: the thread as stored, the error on its last
   * answer (or the live view, with what arrived, when no answer is stored yet). */
  async function showStored(threadId, view) {
    let messages;
    try {
      messages = await loadMessages(threadId);
    } catch (_) {
      return;
    }
    if (threadId !== state.threadId || state.streams.has(threadId)) return;
    const stored = renderHistory(threadId, messages);
    if (stored) stored.setNote(view.note.textContent, true);
    else {
      messagesEl().append(view.el);
      updateEmpty();
      scrollToBottom();
    }
  }

  async function send(text) {
    if (!text.trim()) return;
    if (state.loading) await state.loading; // a thread still opening would wipe the new turn
    let threadId = state.threadId;
    if (!threadId) {
      const thread = await api("POST", "/threads", { title: titleFrom(text) });
      threadId = thread.id;
      state.thread = thread;
      state.threads = [thread, ...state.threads.filter((t) => t.id !== thread.id)];
      state.threadId = threadId;
      setHash(threadId);
      renderThreads();
      renderHeader();
      messagesEl().replaceChildren();
    }
    const input = $("composer-input");
    input.value = "";
    autosize();
    const bubble = userBubble(text, { threadId });
    messagesEl().append(bubble);
    const view = new TurnView(threadId);
    view.userBubble = bubble;
    view.setStreaming(true);
    messagesEl().append(view.el);
    updateEmpty();
    scrollToBottom();

    const controller = new AbortController();
    const body = { text, stream: true };
    const bot = chosenBot();
    if (bot) body.bot = bot;
    const open = () => api("POST", `/threads/${enc(threadId)}/messages`, body,
      { raw: true, signal: controller.signal, accept: "text/event-stream" });
    await streamTurn(view, threadId, controller, open);
  }

  function titleFrom(text) {
    const line = text.trim().split(/\n/)[0];
    return line.length > 60 ? line.slice(0, 57) + "…" : line;
  }

  function stop() {
    const id = state.threadId;
    const stream = state.streams.get(id);
    if (stream) stream.controller.abort();
    // Stop the turn on the server too (a closed connection alone does not): what arrived is
    // stored, marked as cut short.
    if (id) api("POST", `/threads/${enc(id)}/cancel`).catch(() => {});
  }

  function updateComposer() {
    const streaming = state.streams.has(state.threadId);
    $("stop-button").hidden = !streaming;
    $("send-button").hidden = streaming;
  }

  function autosize() {
    const input = $("composer-input");
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight + 2, Math.round(window.innerHeight * 0.4)) + "px";
  }

  // -- threads ----------------------------------------------------------------------------
  function idFromHash() {
    const m = /^#thread=(.+)$/.exec(location.hash);
    if (!m) return null;
    try {
      return decodeURIComponent(m[1]);
    } catch (_) {
      return null;
    }
  }

  function setHash(id) {
    const want = id ? "#thread=" + enc(id) : "";
    if (location.hash === want) return;
    if (id) location.hash = want;
    else history.replaceState(null, "", location.pathname + location.search);
  }

  async function refreshThreads() {
    try {
      state.threads = asList(await api("GET", "/threads?limit=200"), "threads");
      const current = state.threads.find((t) => t.id === state.threadId);
      if (current) state.thread = Object.assign({}, state.thread, current);
      renderThreads();
      renderHeader();
    } catch (e) {
      showError(e);
    }
  }

  function renderThreads() {
    const list = $("thread-list");
    list.replaceChildren();
    for (const t of state.threads) {
      const title = t.title || "Untitled thread";
      const active = t.id === state.threadId;
      list.append(h("li", { class: "thread-item" + (active ? " active" : ""), "data-thread-id": t.id },
        h("button", {
          type: "button", class: "thread-open", title,
          "aria-current": active ? "page" : null,
          onclick: () => selectThread(t.id),
        }, title),
        h("span", { class: "thread-actions" },
          h("button", {
            type: "button", class: "icon-button thread-rename", "aria-label": `Rename ${title}`,
            title: "Rename", onclick: guarded(() => renameThread(t)),
          }, "✎"),
          h("button", {
            type: "button", class: "icon-button thread-delete", "aria-label": `Delete ${title}`,
            title: "Delete", onclick: guarded(() => deleteThread(t)),
          }, "✕"))));
    }
    $("thread-empty").hidden = state.threads.length > 0;
  }

  function renderHeader() {
    const t = state.thread;
    $("thread-title").textContent = t && t.id ? t.title || "Untitled thread" : "";
    $("export-menu").hidden = !(t && t.id);
    document.title = t && t.title ? `${t.title} · chatwright` : "chatwright";
    const pins = threadPins(t);
    const bar = $("pins-bar");
    bar.replaceChildren();
    if (t && pins.length) {
      bar.append("Pinned: ", ...pins.map((p) => h("span", { class: "chip" }, p)));
      bar.hidden = false;
    } else bar.hidden = true;
  }

  function selectThread(id) {
    closeSidebar();
    if (id === state.threadId) return;
    setHash(id);
    openThread(id);
  }

  function openThread(id) {
    state.loading = loadThread(id);
    return state.loading;
  }

  async function loadThread(id) {
    const token = ++state.loadToken;
    state.threadId = id;
    state.thread = state.threads.find((t) => t.id === id) || { id };
    renderThreads();
    renderHeader();
    updateComposer();
    if (!id) {
      messagesEl().replaceChildren();
      updateEmpty();
      return;
    }
    try {
      const [thread, messages] = await Promise.all([
        api("GET", `/threads/${enc(id)}`),
        loadMessages(id),
      ]);
      if (token !== state.loadToken) return;
      state.thread = Object.assign({}, state.thread, thread && thread.thread ? thread.thread : thread);
      renderHeader();
      renderHistory(id, messages);
      const stream = state.streams.get(id);
      if (stream) {
        // A turn still streaming into this thread: show its live view instead of the partial.
        const last = messagesEl().lastElementChild;
        if (last && last.classList.contains("assistant")) last.remove();
        messagesEl().append(stream.view.el);
        updateEmpty();
      } else {
        // A turn that began before this page (a reload mid-answer) runs on at the server.
        const waiting = await pendingApprovals(id);
        if (token === state.loadToken && (waiting.length || unfinished(messages))) {
          followTurn(id, token, waiting);
        }
      }
    } catch (e) {
      if (token !== state.loadToken) return;
      if (e.status === 404) {
        state.threadId = null;
        state.thread = null;
        setHash(null);
        renderThreads();
        renderHeader();
        messagesEl().replaceChildren();
        updateEmpty();
      }
      showError(e);
    }
  }

  async function pendingApprovals(id) {
    try {
      const data = await api("GET", `/threads/${enc(id)}/approvals`);
      const calls = asList(data, "calls");
      if (calls.length) return calls;
      // a server without call details: ids only
      return asList(data, "pending").map((callId) => ({ id: callId, name: "tool", arguments: "" }));
    } catch (_) {
      return [];
    }
  }

  /** Whether the last turn looks like it is still running (recent, without its answer). */
  function unfinished(messages) {
    const last = messages[messages.length - 1];
    if (!last) return false;
    const recent = typeof last.created_at !== "number" || Date.now() / 1000 - last.created_at < 600;
    if (!recent || (last.metadata && last.metadata.interrupted)) return false;
    if (last.role === "user" || last.role === "tool") return true;
    const parts = Array.isArray(last.parts) ? last.parts : [];
    return last.role === "assistant" && parts.some((p) => p.kind === "tool_call") &&
      !parts.some((p) => p.kind === "text");
  }

  /** Show a turn that runs without this page's stream (a reload mid-answer): follow it live
   * through the thread's recorded stream (replayed from its start, it takes the place of what
   * the history shows of the turn); where the server has none, show the approvals it waits on
   * and poll the thread until its answer is stored. */
  async function followTurn(id, token, waiting) {
    const view = new TurnView(id);
    view.setStreaming(true);
    view.setNote("still answering (started before this page was loaded)…", false);
    const controller = new AbortController();
    let res = null;
    try {
      res = await api("GET", `/threads/${enc(id)}/stream`, undefined,
        { raw: true, signal: controller.signal, accept: "text/event-stream" });
    } catch (_) { /* no recorded stream: poll */ }
    if (token !== state.loadToken || state.streams.has(id)) {
      controller.abort();
      return;
    }
    if (res) {
      const partial = messagesEl().lastElementChild;
      if (partial && partial.classList.contains("assistant")) partial.remove();
    }
    messagesEl().append(view.el);
    updateEmpty();
    scrollToBottom();
    if (res) {
      await streamTurn(view, id, controller, async () => res);
      if (!controller.signal.aborted && !view.note.classList.contains("error")) {
        // Ended: show it as stored (the stream may be of an older turn, or end early).
        const messages = await loadMessages(id).catch(() => null);
        if (messages && id === state.threadId && !state.streams.has(id) && view.el.isConnected) {
          renderHistory(id, messages);
        }
      }
      return;
    }
    for (const call of waiting) {
      const tool = view.addToolCall({ id: call.id, name: call.name, arguments: call.arguments });
      tool.askApproval({
        call: { id: call.id, name: call.name, arguments: call.arguments },
        description: call.description || "A tool call is waiting for your approval.",
        reason: call.reason || "",
      }, view);
    }
    scrollToBottom();
    const started = Date.now();
    while (Date.now() - started < 180000) {
      await new Promise((r) => setTimeout(r, 1000));
      if (token !== state.loadToken || state.streams.has(id)) return;
      let messages;
      try {
        messages = await loadMessages(id);
      } catch (_) {
        continue;
      }
      const still = await pendingApprovals(id);
      if (token !== state.loadToken || state.streams.has(id)) return;
      if (!unfinished(messages) && !still.length) {
        renderHistory(id, messages);
        refreshThreads();
        return;
      }
    }
    view.setStreaming(false);
    view.setNote("no answer yet: reopen the thread later to see it", false);
  }

  /** All of a thread's messages, following `next_after` when the server pages them. */
  async function loadMessages(id) {
    const all = [];
    let after = null;
    for (let page = 0; page < 100; page++) {
      const query = after === null ? "" : `?after=${enc(after)}`;
      const data = await api("GET", `/threads/${enc(id)}/messages${query}`);
      all.push(...asList(data, "messages"));
      after = data && !Array.isArray(data) ? data.next_after : null;
      if (after === null || after === undefined) break;
    }
    return all;
  }

  async function newThread() {
    closeSidebar();
    const thread = await api("POST", "/threads", {});
    state.threads = [thread, ...state.threads.filter((t) => t.id !== thread.id)];
    setHash(thread.id);
    await openThread(thread.id);
    $("composer-input").focus();
  }

  async function renameThread(t) {
    const title = await ask("Rename the thread", { input: t.title || "", label: "Title", ok: "Rename" });
    if (title === null || !title.trim()) return;
    const updated = await api("PATCH", `/threads/${enc(t.id)}`, { title: title.trim() });
    Object.assign(t, updated && updated.id ? updated : { title: title.trim() });
    if (t.id === state.threadId) state.thread = Object.assign({}, state.thread, t);
    renderThreads();
    renderHeader();
  }

  async function deleteThread(t) {
    const ok = await ask(`Delete “${t.title || "Untitled thread"}” and all its messages?`, { ok: "Delete" });
    if (ok === null) return;
    await api("DELETE", `/threads/${enc(t.id)}`);
    state.threads = state.threads.filter((x) => x.id !== t.id);
    if (t.id === state.threadId) {
      setHash(null);
      await openThread(null);
    } else renderThreads();
  }

  // -- a small confirm / prompt dialog -----------------------------------------------------
  function ask(text, options) {
    const opts = options || {};
    const dialog = $("confirm-dialog");
    $("confirm-text").textContent = text;
    $("confirm-ok").textContent = opts.ok || "OK";
    const hasInput = opts.input !== undefined;
    $("prompt-label").hidden = !hasInput;
    $("prompt-label-text").textContent = opts.label || "";
    $("prompt-input").value = hasInput ? opts.input : "";
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => {
        if (dialog.returnValue !== "ok") resolve(null);
        else resolve(hasInput ? $("prompt-input").value : true);
      }, { once: true });
      dialog.returnValue = "";
      dialog.showModal();
      if (hasInput) {
        $("prompt-input").focus();
        $("prompt-input").select();
      }
    });
  }

  // -- collections ------------------------------------------------------------------------
  async function loadCollections() {
    state.collections = asList(await api("GET", "/collections"), "collections");
    renderCollections();
  }

  function collectionName(c) {
    return typeof c === "string" ? c : c.name;
  }

  function renderCollections() {
    const list = $("collection-list");
    list.replaceChildren();
    const pins = threadPins(state.thread);
    const hasThread = !!state.threadId;
    for (const c of state.collections) {
      const name = collectionName(c);
      const docs = c.documents ?? c.document_count ?? c.documents_count;
      const chunks = c.chunks ?? c.chunk_count;
      const meta = [c.description,
        typeof docs === "number" ? `${docs} document${docs === 1 ? "" : "s"}` : null,
        typeof chunks === "number" ? `${chunks} passages` : null].filter(Boolean).join(" · ");
      const box = h("input", {
        type: "checkbox", class: "pin-checkbox", "data-collection": name,
        disabled: !hasThread,
        "aria-label": `Pin ${name} to this thread`,
      });
      box.checked = pins.includes(name);
      box.addEventListener("change", guarded(async () => {
        try {
          await setPin(name, box.checked);
        } catch (e) {
          box.checked = !box.checked;
          throw e;
        }
      }));
      list.append(h("li", { class: "collection-item", "data-collection": name },
        h("div", { class: "collection-info" },
          h("div", { class: "collection-name" }, name),
          meta ? h("div", { class: "collection-meta" }, meta) : null),
        h("label", { class: "pin-toggle", title: hasThread ? "" : "Open a thread first" }, box, "Pinned"),
        h("button", {
          type: "button", class: "icon-button collection-delete", "aria-label": `Delete collection ${name}`,
          title: "Delete collection", onclick: guarded(() => deleteCollection(name)),
        }, "✕")));
    }
    $("collection-empty").hidden = state.collections.length > 0;
    const select = $("upload-collection");
    const previous = select.value;
    // With several collections nothing is chosen for the user: an upload must not land in
    // the first one because the selector went unnoticed (the select is required).
    const several = state.collections.length > 1;
    select.replaceChildren(
      ...(several ? [h("option", { value: "", disabled: true }, "Choose a collection…")] : []),
      ...state.collections.map((c) => h("option", { value: collectionName(c) }, collectionName(c))));
    const chosen = state.uploadTo || previous;
    if (chosen && state.collections.some((c) => collectionName(c) === chosen)) select.value = chosen;
    else select.value = several ? "" : (state.collections[0] ? collectionName(state.collections[0]) : "");
  }

  async function setPin(name, on) {
    if (!state.threadId) throw new ApiError("Open a thread first.", "Pins belong to a thread.");
    const current = threadPins(state.thread).filter((p) => p !== name);
    const collections = on ? [...current, name] : current;
    const data = await api("PUT", `/threads/${enc(state.threadId)}/pins`, { collections });
    let pins = collections;
    if (Array.isArray(data)) pins = data;
    else if (data && Array.isArray(data.collections)) pins = data.collections;
    else if (data && data.id) pins = threadPins(data).length || !collections.length ? threadPins(data) : collections;
    state.thread = Object.assign({}, state.thread, { pinned: pins, pinned_collections: pins, pins, collections: pins });
    renderHeader();
  }

  async function createCollection(event) {
    event.preventDefault();
    const name = $("collection-name").value.trim();
    const description = $("collection-description").value.trim();
    if (!name) return;
    const body = { name };
    if (description) body.description = description;
    await api("POST", "/collections", body);
    $("collection-name").value = "";
    $("collection-description").value = "";
    state.uploadTo = name;  // the new collection is where the next upload goes
    await loadCollections();
  }

  /** Download the open thread as a file (JSON: every branch, what Import reads; Markdown: the
   * conversation as shown). Fetched with the API key, then saved from a blob URL. */
  async function exportThread(format) {
    const id = state.threadId;
    if (!id) throw new ApiError("Open a thread first.");
    $("export-menu").open = false;
    const res = await api("GET", `/threads/${enc(id)}/export?format=${enc(format)}`, undefined,
      { raw: true, accept: format === "json" ? "application/json" : "text/markdown" });
    const disposition = res.headers.get("content-disposition") || "";
    const named = /filename="?([^";]+)"?/.exec(disposition);
    const filename = named ? named[1] : `thread.${format === "json" ? "json" : "md"}`;
    const url = URL.createObjectURL(await res.blob());
    const link = h("a", { href: url, download: filename, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  }

  async function deleteCollection(name) {
    const ok = await ask(`Delete the collection “${name}” and its documents?`, { ok: "Delete" });
    if (ok === null) return;
    await api("DELETE", `/collections/${enc(name)}`);
    await loadCollections();
    await refreshThreads();
  }

  async function upload(event) {
    event.preventDefault();
    const name = $("upload-collection").value;
    const files = $("upload-files").files;
    if (!name) {
      throw state.collections.length
        ? new ApiError("Choose the collection these files go to.", "The Collection selector above.")
        : new ApiError("Create a collection first.", "Then choose it here.");
    }
    if (!files || !files.length) throw new ApiError("Choose one or more files.");
    const form = new FormData();
    for (const f of files) form.append("files", f, f.name);
    const status = $("upload-status");
    const text = $("upload-text");
    const progress = $("upload-progress");
    const errors = $("upload-errors");
    status.hidden = false;
    status.classList.remove("done", "failed");
    errors.replaceChildren();
    progress.removeAttribute("value");
    text.textContent = `Uploading ${files.length} file${files.length === 1 ? "" : "s"}…`;
    $("upload-button").disabled = true;
    try {
      const job = await api("POST", `/collections/${enc(name)}/documents`, form);
      const jobId = job && (job.job_id ?? job.id);
      const final = jobId ? await pollJob(jobId) : job;
      const errs = asList(final && final.errors, "errors");
      for (const e of errs) errors.append(h("li", null, describeJobError(e)));
      const failed = final && final.status === "failed";
      status.classList.add(failed ? "failed" : "done");
      progress.max = 1;
      progress.value = 1;
      const report = (final && final.report) || {};
      const counts = ["added", "updated", "unchanged"]
        .filter((k) => typeof report[k] === "number" && report[k] > 0)
        .map((k) => `${report[k]} ${k}`);
      if (final && typeof final.chunks === "number") counts.push(`${final.chunks} passages`);
      text.textContent = failed
        ? "Failed: no file could be read."
        : `Done: ${final && typeof final.done === "number" ? final.done : files.length} of ` +
          `${final && typeof final.total === "number" ? final.total : files.length} files` +
          (counts.length ? ` (${counts.join(", ")})` : "") +
          (errs.length ? `; ${errs.length} with errors` : "") + ".";
      $("upload-files").value = "";
    } catch (e) {
      status.classList.add("failed");
      text.textContent = "Upload failed.";
      throw e;
    } finally {
      $("upload-button").disabled = false;
      loadCollections().catch(showError);
    }
  }

  function describeJobError(e) {
    if (typeof e === "string") return e;
    const where = e.source || e.file || e.path || e.name || "";
    const what = e.reason || e.message || e.error || JSON.stringify(e);
    return (where ? where + ": " : "") + what + (e.hint ? ` (${e.hint})` : "");
  }

  async function pollJob(jobId) {
    const progress = $("upload-progress");
    const text = $("upload-text");
    let first = null; // the first poll that saw the job running: rates are measured from it
    for (;;) {
      const job = await api("GET", `/jobs/${enc(jobId)}`);
      const total = typeof job.total === "number" ? job.total : 0;
      const done = typeof job.done === "number" ? job.done : 0;
      const chunks = typeof job.chunks === "number" ? job.chunks : 0;
      if (total > 0) {
        progress.max = total;
        progress.value = done;
      }
      if (job.status === "done" || job.status === "failed") return job;
      if (job.status === "running" && !first) first = { at: performance.now(), done, chunks };
      text.textContent = job.status === "queued" ? "Queued…"
        : `Ingesting ${done} of ${total || "?"} files · ${chunks} passages` +
          jobRates(first, done, total, chunks) + (job.current ? ` · ${job.current}` : "") + "…";
      await new Promise((r) => setTimeout(r, JOB_POLL_MS));
    }
  }

  // " · 12 passages/s · about 40 s left", from what changed since the ``first`` running poll
  // (the browser's clock: no skew with the server's).
  function jobRates(first, done, total, chunks) {
    const seconds = first ? (performance.now() - first.at) / 1000 : 0;
    if (seconds < 1) return "";
    let out = ` · ${((chunks - first.chunks) / seconds).toFixed(1)} passages/s`;
    const filesPerS = (done - first.done) / seconds;
    if (filesPerS > 0 && total > done) out += ` · about ${duration((total - done) / filesPerS)} left`;
    return out;
  }

  function duration(seconds) {
    const s = Math.max(1, Math.round(seconds));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  }

  // -- memory -----------------------------------------------------------------------------
  async function loadMemory() {
    const items = asList(await api("GET", "/memory"), "memory", "memories", "facts");
    const list = $("memory-list");
    list.replaceChildren(...items.map((m) => h("li", { class: "item", "data-memory-id": m.id },
      h("div", { class: "item-main" }, m.text ?? String(m),
        m.created_at ? h("div", { class: "item-meta" }, new Date(m.created_at).toLocaleString()) : null),
      h("button", {
        type: "button", class: "icon-button", "aria-label": "Forget this",
        title: "Forget", onclick: guarded(async () => {
          await api("DELETE", `/memory/${enc(m.id)}`);
          await loadMemory();
        }),
      }, "✕"))));
    $("memory-empty").hidden = items.length > 0;
  }

  async function addMemory(event) {
    event.preventDefault();
    const text = $("memory-text").value.trim();
    if (!text) return;
    await api("POST", "/memory", { text });
    $("memory-text").value = "";
    await loadMemory();
  }

  // -- tools ------------------------------------------------------------------------------
  async function loadTools() {
    const bot = chosenBot();
    const tools = asList(await api("GET", "/tools" + (bot ? `?bot=${enc(bot)}` : "")), "tools");
    $("tool-list").replaceChildren(...tools.map((t) => {
      const risky = t.side_effects || t.requires_approval || t.approval || t.needs_approval;
      return h("li", { class: "item" },
        h("div", { class: "item-main" },
          h("span", { class: "tool-name" }, t.name || ""),
          risky ? h("span", { class: "badge warn" }, "asks approval") : null,
          t.source ? h("span", { class: "badge" }, t.source) : null,
          t.description ? h("div", { class: "item-meta" }, t.description) : null));
    }));
    $("tool-empty").hidden = tools.length > 0;
  }

  // -- trace ------------------------------------------------------------------------------
  function openTrace(trace, seq) {
    const body = $("trace-body");
    body.replaceChildren();
    $("trace-title").textContent = seq !== null && seq !== undefined ? `Trace of message ${seq}` : "Trace";
    const summary = [trace.model ? `model ${trace.model}` : null,
      typeof trace.total_ms === "number" ? `total ${formatMs(trace.total_ms)}` : null,
      typeof trace.input_tokens === "number" ? `${trace.input_tokens} tokens in` : null,
      typeof trace.output_tokens === "number" ? `${trace.output_tokens} out` : null].filter(Boolean).join(" · ");
    body.append(h("p", { class: "trace-summary" }, summary));
    const rows = asList(trace.stages, "stages").map((s) => h("tr", { class: s.skipped ? "skipped" : "" },
      h("td", null, s.name || ""),
      h("td", { class: "num" }, s.skipped ? "skipped" : formatMs(s.ms)),
      h("td", null,
        s.note ? h("div", null, s.note) : null,
        s.data && Object.keys(s.data).length
          ? h("details", null, h("summary", null, "data"), h("pre", { text: JSON.stringify(s.data, null, 2) }))
          : null)));
    body.append(h("table", null,
      h("thead", null, h("tr", null, h("th", { scope: "col" }, "Stage"), h("th", { scope: "col", class: "num" }, "Time"), h("th", { scope: "col" }, "Details"))),
      h("tbody", null, rows)));
    const notes = asList(trace.notes, "notes");
    if (notes.length) {
      body.append(h("h3", null, "Notes"), h("ul", { class: "trace-notes" }, notes.map((n) => h("li", null, String(n)))));
    }
    $("trace-dialog").showModal();
  }

  // -- settings ---------------------------------------------------------------------------
  function openSettings() {
    $("api-key").value = apiKey();
    $("settings-dialog").returnValue = "";
    $("settings-dialog").showModal();
    $("api-key").focus();
  }

  function settingsClosed() {
    const value = $("settings-dialog").returnValue;
    try {
      if (value === "save") {
        const key = $("api-key").value.trim();
        if (key) localStorage.setItem(KEY_STORAGE, key);
        else localStorage.removeItem(KEY_STORAGE);
      } else if (value === "clear") localStorage.removeItem(KEY_STORAGE);
      else return;
    } catch (_) {
      showError(new ApiError("This browser does not let the page store the key.", "Allow site data, or use a key-less loopback server."));
      return;
    }
    $("api-key").value = "";
    hideBanner();
    start();
  }

  // -- the sidebar on phones --------------------------------------------------------------
  function toggleSidebar(open) {
    const app = $("app");
    const on = open === undefined ? !app.classList.contains("sidebar-open") : open;
    app.classList.toggle("sidebar-open", on);
    $("sidebar-toggle").setAttribute("aria-expanded", on ? "true" : "false");
    $("sidebar-toggle").setAttribute("aria-label", on ? "Hide threads" : "Show threads");
    if (on) {
      const first = document.querySelector("#sidebar button");
      if (first) first.focus();
    }
  }

  function closeSidebar() {
    if ($("app").classList.contains("sidebar-open")) toggleSidebar(false);
  }

  // -- threads: search, import, automatic titles (api_thread_admin.py) ------------------------
  let searchTimer = null;
  let searchToken = 0;

  function searchChanged() {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(guarded(runSearch), 200);
  }

  async function runSearch() {
    const query = $("thread-search-input").value.trim();
    const token = ++searchToken;
    const results = $("search-results");
    if (!query) {
      results.hidden = true;
      results.replaceChildren();
      $("thread-list").hidden = false;
      $("thread-empty").hidden = state.threads.length > 0;
      return;
    }
    const data = await api("GET", `/search?q=${enc(query)}&limit=30`);
    if (token !== searchToken) return; // a newer search is on its way
    const hits = asList(data, "results");
    results.replaceChildren(...hits.map((hit) => {
      const t = hit.thread || {};
      const title = t.title || "Untitled thread";
      return h("li", { class: "thread-item search-hit", "data-thread-id": t.id },
        h("button", { type: "button", class: "thread-open", onclick: guarded(() => openHit(hit)) },
          h("span", { class: "hit-title" }, title),
          hit.seq !== null && hit.seq !== undefined
            ? h("span", { class: "hit-snippet" }, hit.snippet || "") : null));
    }));
    if (!hits.length) results.append(h("li", { class: "muted small search-none" }, `No thread matches “${query}”.`));
    results.hidden = false;
    $("thread-list").hidden = true;
    $("thread-empty").hidden = true;
  }

  /** Open a search hit's thread and show the message that matched. */
  async function openHit(hit) {
    selectThread(hit.thread.id);
    if (state.loading) await state.loading;
    if (typeof hit.seq !== "number" || state.threadId !== hit.thread.id) return;
    const el = messagesEl().querySelector(`[data-seq="${hit.seq}"]`);
    if (!el) return; // on another branch, or not shown
    for (const old of messagesEl().querySelectorAll(".search-match")) old.classList.remove("search-match");
    el.classList.add("search-match");
    el.scrollIntoView({ block: "center" });
  }

  async function importFiles() {
    const input = $("import-files");
    const files = input.files;
    if (!files || !files.length) return;
    const form = new FormData();
    for (const f of files) form.append("files", f, f.name);
    input.value = "";
    const data = await api("POST", "/import", form);
    const made = asList(data, "threads");
    await refreshThreads();
    if (made.length) selectThread(made[0].id);
  }

  /** After a thread's first answer here: ask the server for a title. It replaces only a
   * placeholder (the first message cut short), so a title the user chose stays. */
  async function autoTitle(threadId) {
    if (state.titled.has(threadId)) return;
    state.titled.add(threadId);
    const bot = chosenBot();
    try {
      await api("POST", `/threads/${enc(threadId)}/title` + (bot ? `?bot=${enc(bot)}` : ""));
    } catch (e) {
      console.warn("no automatic title:", e.message);
    }
  }

  function titleThenRefresh(threadId) {
    autoTitle(threadId).finally(() => {
      if (threadId === state.threadId) refreshThreads();
    });
  }

  /** Why an answer stopped, as a sentence (the stored finish reason is a bare word). */
  function finishSentence(reason) {
    const known = {
      length: "stopped: answer length limit",
      content_filter: "stopped: the provider's content filter",
      max_tokens: "stopped: answer length limit",
      tool_calls: "stopped: waiting for tools",
      interrupted: "cut short",
    };
    return known[reason] || `stopped: ${String(reason).replace(/_/g, " ")}`;
  }

  // -- the welcome state (GET /api/welcome) ----------------------------------------------------
  async function loadWelcome() {
    const bot = chosenBot();
    let data;
    try {
      data = await api("GET", "/welcome" + (bot ? `?bot=${enc(bot)}` : ""));
    } catch (e) {
      return; // the plain line in index.html stays
    }
    const info = data.bot || {};
    const collections = asList(data.collections, "collections");
    const box = $("welcome");
    const prompts = asList(data.prompts, "prompts").map((p) => h("button", {
      type: "button", class: "prompt-chip",
      onclick: guarded(async () => {
        $("composer-input").value = p;
        autosize();
        await send(p);
      }),
    }, p));
    box.replaceChildren(
      h("h2", { class: "welcome-title" }, `Hi, I'm ${info.name || "chatwright"}`),
      h("p", { class: "muted welcome-model" },
        info.description ? `${info.description} · ` : "", "model ", h("code", null, info.model || "?")),
      collections.length
        ? h("p", { class: "welcome-collections" }, "I can search: ",
          ...collections.map((c) => h("span", { class: "chip", title: c.description || "" },
            `${c.name} (${c.documents} document${c.documents === 1 ? "" : "s"})`)))
        : h("p", { class: "muted small" }, "Add documents under Collections and I will cite them."),
      h("div", { class: "prompt-list", "aria-label": "Example prompts" }, ...prompts));
  }

  // -- a cited passage: sanitized Markdown, without leftover HTML tags or admonition markers ----
  let passageParser = null;

  function textOfHtml(raw) {
    // The tags dropped, their text kept (escaped by the caller: it is only ever text). Not
    // parsed as HTML: even an inert document would compile an onerror handler (CSP error).
    return String(raw || "").replace(/<!--[\s\S]*?-->/g, "").replace(/<\/?[A-Za-z][^>]*>/g, "");
  }

  function passageFragment(text) {
    if (!passageParser && window.marked && setUpMarkdown()) {
      passageParser = new window.marked.Marked({ gfm: true, breaks: false, async: false });
      passageParser.use({ renderer: {
        html(token) { return escapeHtml(textOfHtml(token.text ?? token.raw)); },
        image(token) { return escapeHtml(token.text || ""); },
      } });
    }
    const cleaned = String(text || "")
      .replace(/^\/{3}\s*\w+(?:\s*\|\s*(.*))?$/gm, (m, title) => (title ? `**${title.trim()}**` : ""))
      .replace(/^\/{3}\s*$/gm, "");
    if (!passageParser) {
      const frag = document.createDocumentFragment();
      frag.append(h("p", { class: "plain", text: cleaned }));
      return frag;
    }
    return window.DOMPurify.sanitize(passageParser.parse(cleaned), {
      FORBID_TAGS, FORBID_ATTR, ALLOW_DATA_ATTR: false, ALLOW_ARIA_ATTR: false, RETURN_DOM_FRAGMENT: true,
    });
  }

  /** The headings above a cited passage, without the document's title repeated. */
  function headingPath(c) {
    const path = Array.isArray(c.heading_path) ? c.heading_path : (c.heading ? [c.heading] : []);
    const kept = path.filter((x) => typeof x === "string" && x.trim());
    return kept.length && kept[0] === (c.title || c.source) ? kept.slice(1) : kept;
  }

  // -- bots -------------------------------------------------------------------------------
  function renderBots(me) {
    const bots = asList(me && me.bots, "bots");
    const select = $("bot-select");
    const previous = select.value;
    select.replaceChildren(...bots.map((b) => h("option", {
      value: b.name, title: b.description || b.model || "",
    }, b.description ? `${b.name} (${b.description})` : b.name)));
    const names = bots.map((b) => b.name);
    if (names.includes(previous)) select.value = previous;
    else if (me && names.includes(me.default_bot)) select.value = me.default_bot;
    state.defaultBot = me ? me.default_bot : null;
    $("bot-picker").hidden = bots.length < 2;
  }

  function chosenBot() {
    if ($("bot-picker").hidden) return null;
    const value = $("bot-select").value;
    return value && value !== state.defaultBot ? value : null;
  }

  // -- start ------------------------------------------------------------------------------
  async function start() {
    try {
      const me = await api("GET", "/me");
      const who = me && (me.user || me.name || me.id);
      $("whoami").textContent = who ? `Signed in as ${who}` : "";
      renderBots(me);
      loadWelcome();
    } catch (e) {
      showError(e);
      if (e.status === 401) return;
    }
    await refreshThreads();
    const id = idFromHash();
    await openThread(id);
  }

  function wire() {
    $("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      if (state.streams.has(state.threadId)) return;
      const text = $("composer-input").value;
      if (!text.trim()) return;
      guarded(send)(text);
    });
    $("composer-input").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        $("composer").requestSubmit();
      }
    });
    $("composer-input").addEventListener("input", autosize);
    $("stop-button").addEventListener("click", stop);
    $("new-thread").addEventListener("click", guarded(newThread));
    $("thread-search").addEventListener("submit", (event) => { event.preventDefault(); guarded(runSearch)(); });
    $("thread-search-input").addEventListener("input", searchChanged);
    $("import-open").addEventListener("click", () => $("import-files").click());
    $("import-files").addEventListener("change", guarded(importFiles));
    $("bot-select").addEventListener("change", loadWelcome);
    $("banner-close").addEventListener("click", hideBanner);
    $("sidebar-toggle").addEventListener("click", () => toggleSidebar());
    $("sidebar-backdrop").addEventListener("click", closeSidebar);
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape") closeSidebar();
    });
    window.addEventListener("hashchange", () => {
      const id = idFromHash();
      if (id !== state.threadId) openThread(id);
    });

    $("collections-open").addEventListener("click", guarded(async () => {
      $("collections-dialog").showModal();
      await loadCollections();
    }));
    $("collection-create").addEventListener("submit", guarded(createCollection));
    $("upload-form").addEventListener("submit", guarded(upload));
    for (const b of document.querySelectorAll("#export-menu [data-format]")) {
      b.addEventListener("click", guarded(() => exportThread(b.dataset.format)));
    }
    $("upload-collection").addEventListener("change", (e) => { state.uploadTo = e.target.value; });
    $("settings-open").addEventListener("click", openSettings);
    $("memory-open").addEventListener("click", guarded(async () => {
      closeSidebar();
      $("memory-dialog").showModal();
      await loadMemory();
    }));
    $("memory-add").addEventListener("submit", guarded(addMemory));
    $("tools-open").addEventListener("click", guarded(async () => {
      closeSidebar();
      $("tools-dialog").showModal();
      await loadTools();
    }));
    $("settings-dialog").addEventListener("close", settingsClosed);
    for (const button of document.querySelectorAll(".dialog-close")) {
      button.addEventListener("click", () => button.closest("dialog").close());
    }
    for (const dialog of document.querySelectorAll("dialog")) {
      dialog.addEventListener("close", () => {
        const box = dialog.querySelector(".dialog-error");
        if (box) box.hidden = true;
      });
      // A click on the backdrop closes a dialog.
      dialog.addEventListener("click", (event) => {
        if (event.target === dialog) {
          const r = dialog.getBoundingClientRect();
          const inside = event.clientX >= r.left && event.clientX <= r.right &&
            event.clientY >= r.top && event.clientY <= r.bottom;
          if (!inside) dialog.close();
        }
      });
    }
  }

  function init() {
    setUpMarkdown();
    wire();
    autosize();
    start();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();

  // For tests and debugging: the pure helpers, nothing that holds secrets.
  window.chatwright = Object.freeze({ markdownFragment, passageFragment, readEvents });
})();
