// The hub's only script. Elements with data-live="URL" reload their HTML from URL every
// data-every milliseconds; forms with data-confirm="question" ask before they post.
"use strict";

function keepLive(el) {
  const every = Number(el.dataset.every) || 2000;
  const tick = async () => {
    try {
      const r = await fetch(el.dataset.live, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (r.status === 401) {
        window.location.assign("/hub/login?next=" + encodeURIComponent(window.location.pathname));
        return;
      }
      if (r.ok) {
        el.innerHTML = await r.text();
        el.dataset.updated = String(Date.now());
      }
    } catch (e) {
      // Hearth restarting or the network gone: try again at the next tick.
    }
    window.setTimeout(tick, every);
  };
  window.setTimeout(tick, every);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-live]").forEach(keepLive);
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
});
