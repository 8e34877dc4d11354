// Caracal's status page, live: applies what /status/events sends to the server-rendered page.
// The page works without this script; with it, changes arrive without a reload, and a banner
// says when the feed is lost. No framework, no build step.
"use strict";
(() => {
  const main = document.getElementById("main");
  const banner = document.getElementById("feed-lost");
  if (!main || !banner || !main.dataset.eventId || !window.EventSource) return;

  // The feed position the page shows; the server resumes from it.
  let last = main.dataset.eventId;
  let source = null;
  let heard = Date.now();
  // The server pings every 5 s: silence for longer than this means the feed is gone.
  const SILENCE_MS = 12000;

  const lost = (yes) => {
    banner.hidden = !yes;
    document.body.classList.toggle("feed-lost", yes);
  };
  const fragment = (html) => document.createRange().createContextualFragment(html);
  const setAsOf = (rfc3339) => {
    const el = document.getElementById("as-of");
    if (!el || !rfc3339) return;
    el.dateTime = rfc3339;
    el.textContent = rfc3339.replace("T", " ").replace("Z", " UTC");
  };
  // A page showing every target: new ones join it live. A page of a larger fleet (or a
  // search) only updates the cards it shows.
  const complete = () => document.getElementById("targets")?.dataset.complete === "true";
  // A target's card replaces its old one, or goes in name order.
  const place = (name, html) => {
    const card = fragment(html).firstElementChild;
    const old = document.getElementById("t-" + name);
    if (old) {
      old.replaceWith(card);
      return;
    }
    if (!complete()) return;
    const list = document.getElementById("targets");
    const next = [...list.children].find((el) => el.dataset.name > name);
    list.insertBefore(card, next || null);
    document.getElementById("no-targets")?.remove();
  };
  const handlers = {
    target: (d) => place(d.name, d.html),
    removed: (d) => document.getElementById("t-" + d.name)?.remove(),
    platform: (d) => document.getElementById("platform")?.replaceWith(fragment(d.html)),
    summary: (d) => {
      document.getElementById("summary")?.replaceWith(fragment(d.html));
      setAsOf(d.as_of);
    },
    // The server could not resume from our position: everything, as of now.
    reset: (d) => {
      // The server sends its first page; a later page or a search asks for itself again.
      if (!complete()) {
        location.reload();
        return;
      }
      main.replaceChildren(fragment(d.html));
      document.getElementById("summary")?.replaceWith(fragment(d.summary));
      setAsOf(d.as_of);
    },
  };

  const connect = () => {
    if (source) source.close();
    heard = Date.now();
    source = new EventSource("/status/events?since=" + encodeURIComponent(last));
    source.onopen = () => {
      heard = Date.now();
      lost(false);
    };
    source.onerror = () => {
      lost(true);
      // EventSource retries by itself (sending Last-Event-ID) unless the answer was not a
      // stream at all; then try again shortly.
      if (source.readyState === EventSource.CLOSED) setTimeout(connect, 2000);
    };
    const heardFrom = (e) => {
      heard = Date.now();
      lost(false);
      if (e.lastEventId) last = e.lastEventId;
    };
    source.addEventListener("ping", heardFrom);
    for (const [kind, handle] of Object.entries(handlers)) {
      source.addEventListener(kind, (e) => {
        heardFrom(e);
        handle(JSON.parse(e.data));
      });
    }
  };

  setInterval(() => {
    if (Date.now() - heard > SILENCE_MS) {
      lost(true);
      connect();
    }
  }, 2000);
  connect();
})();
