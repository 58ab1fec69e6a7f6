// OmniQ dashboard: keeps a server-rendered page current from the server's event stream.
// It never asks the database anything itself: the server pushes what changed, once for all
// browsers. Without JavaScript every page still works; it just does not move.
(function () {
  "use strict";
  var body = document.body;
  var root = body.dataset.root || "";
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  // -- relative times ("12 s ago", "in 3 min"), kept current every second -----------------
  function span(s) {
    s = Math.abs(s);
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 60) return (s < 10 ? s.toFixed(1) : Math.round(s)) + " s";
    var m = Math.floor(s / 60), sec = Math.floor(s % 60);
    if (m < 60) return m < 10 && sec ? m + " min " + sec + " s" : m + " min";
    var h = Math.floor(m / 60); m = m % 60;
    if (h < 24) return m ? h + " h " + m + " min" : h + " h";
    var d = Math.floor(h / 24); h = h % 24;
    return h ? d + " d " + h + " h" : d + " d";
  }
  function tick() {
    var now = Date.now();
    document.querySelectorAll("time[data-ago]").forEach(function (el) {
      var delta = (now - Date.parse(el.getAttribute("datetime"))) / 1000;
      el.textContent = Math.abs(delta) < 1 ? "now" : delta > 0 ? span(delta) + " ago" : "in " + span(delta);
    });
  }
  setInterval(tick, 1000);

  // -- forms: confirmation, CSRF token in pushed fragments, select-all ------------------
  document.addEventListener("submit", function (e) {
    var button = e.submitter, form = e.target;
    var question = (button && button.dataset.confirm) || form.dataset.confirm;
    if (button && button.hasAttribute("data-needs-selection") &&
        !form.querySelector('input[name="id"]:checked')) {
      e.preventDefault();
      alert("Select some tasks first (the boxes on the left).");
      return;
    }
    if (question && !window.confirm(question)) e.preventDefault();
  });
  document.addEventListener("change", function (e) {
    if (e.target.hasAttribute("data-select-all")) {
      e.target.form.querySelectorAll('input[name="id"]').forEach(function (box) {
        box.checked = e.target.checked;
      });
    }
  });
  function fillCsrf() {
    document.querySelectorAll('input[name="csrf_token"]').forEach(function (i) { i.value = csrf; });
  }

  // -- live updates ---------------------------------------------------------------------
  var views = body.dataset.views || "";
  var watchEl = document.getElementById("watch");
  var watch = watchEl ? JSON.parse(watchEl.textContent).slice(0, 100) : [];
  var counting = document.querySelector("[data-count]");
  var live = document.getElementById("live");
  if (!window.EventSource || !(views || watch.length || counting)) {
    if (live) { live.textContent = "static"; live.title = "nothing on this page updates live"; }
    return;
  }
  var query = "views=" + encodeURIComponent(views) +
    watch.map(function (id) { return "&watch=" + encodeURIComponent(id); }).join("");
  var source = new EventSource(root + "/events?" + query);
  source.onopen = function () { live.textContent = "live"; live.className = "pill on"; };
  source.onerror = function () { live.textContent = "reconnecting"; live.className = "pill off"; };

  source.addEventListener("fragments", function (e) {
    var parts = JSON.parse(e.data);
    Object.keys(parts).forEach(function (id) {
      var el = document.getElementById(id);
      if (el) el.outerHTML = parts[id];
    });
    fillCsrf();
    tick();
  });

  source.addEventListener("counts", function (e) {
    var counts = JSON.parse(e.data).queues;
    document.querySelectorAll("[data-count]").forEach(function (el) {
      var key = el.dataset.count.split("|"), queue = key[0], state = key[1], n = 0;
      Object.keys(counts).forEach(function (name) {
        if (queue !== "*" && name !== queue) return;
        var q = counts[name];
        n += state === "pending" ? q.ready + q.later : q[state] || 0;
      });
      el.textContent = n.toLocaleString("en-US");
    });
  });

  var reloading = false;
  function reloadDetail() {  // the task shown changed: fetch its page once, swap the content
    if (reloading) return;
    reloading = true;
    fetch(location.href, { credentials: "same-origin" }).then(function (r) { return r.text(); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").querySelector("main");
        if (fresh) document.querySelector("main").innerHTML = fresh.innerHTML;
        fillCsrf();
        tick();
      })
      .finally(function () { reloading = false; });
  }

  source.addEventListener("tasks", function (e) {
    var states = JSON.parse(e.data);
    document.querySelectorAll("[data-task-id]").forEach(function (el) {
      var id = el.dataset.taskId, now = states[id];
      if (!now || now === el.dataset.status) return;
      if (id === body.dataset.detail && el.id === "task-head") { reloadDetail(); return; }
      el.dataset.status = now;
      var badge = el.querySelector(".state .badge");
      if (badge) { badge.className = "badge s-" + now; badge.textContent = now; }
      el.classList.add("changed");
    });
  });

  source.addEventListener("arrived", function (e) {
    var banner = document.getElementById("arrived");
    if (!banner) return;
    var queues = JSON.parse(e.data), want = banner.dataset.queue, status = banner.dataset.status;
    if (status && ["pending", "waiting"].indexOf(status) < 0) return;
    if (!want || queues.indexOf("*") >= 0 || queues.indexOf(want) >= 0) banner.hidden = false;
  });
})();
