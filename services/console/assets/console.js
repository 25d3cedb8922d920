// The Leads console's own script: every page works without it; with it, times show in the
// reader's time zone, changes arrive live, the drawer keeps focus, and exports show progress.
(function () {
  "use strict";

  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var at = new Date(el.getAttribute("datetime"));
      if (!isNaN(at)) {
        el.textContent = at.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
        el.title = el.getAttribute("datetime");
      }
    });
  }

  function timeZoneFields(root) {
    root.querySelectorAll("[data-tz-offset]").forEach(function (el) {
      el.value = String(-new Date().getTimezoneOffset());
    });
    var zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "your time";
    root.querySelectorAll("[data-tz-name]").forEach(function (el) { el.textContent = zone; });
  }

  function selection() {
    var count = document.getElementById("selected-count");
    if (!count) { return; }
    var boxes = document.querySelectorAll('input[name="lead_ids"][form="bulk"]');
    var checked = 0;
    boxes.forEach(function (box) { if (box.checked) { checked += 1; } });
    var all = document.querySelector('input[name="all_matching"]');
    if (all && all.checked) {
      count.textContent = "Every matching active lead selected.";
    } else {
      count.textContent = checked === 0 ? "Select active leads to change them together." : checked + " selected.";
    }
  }

  function refreshRow(id) {
    var row = document.getElementById("lead-" + id);
    if (!row) { return; }
    fetch("/leads/" + encodeURIComponent(id) + "/row", { headers: { "hx-request": "true" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html) { replaceRow(id, html); } });
  }

  function replaceRow(id, html) {
    var row = document.getElementById("lead-" + id);
    if (!row) { return false; }
    var checked = row.querySelector('input[name="lead_ids"]');
    var wasChecked = checked && checked.checked;
    var body = document.createElement("tbody");
    body.innerHTML = html.trim();
    var fresh = body.firstElementChild;
    if (!fresh) { return false; }
    // A row read before a newer change already shown (a refetch overtaken by a live update)
    // is older than what the page holds: keep the newer one.
    if (Number(fresh.getAttribute("data-version")) < Number(row.getAttribute("data-version"))) { return false; }
    row.replaceWith(fresh);
    var box = fresh.querySelector('input[name="lead_ids"]');
    if (box && wasChecked) { box.checked = true; }
    fresh.classList.add("updated");
    localTimes(fresh);
    if (window.htmx) { window.htmx.process(fresh); }
    return true;
  }

  function live() {
    var banner = document.getElementById("live");
    if (!banner || !window.EventSource) { return; }
    var link = document.getElementById("new-leads");
    var fresh = 0;
    var source = new EventSource(banner.getAttribute("data-watch"));
    source.addEventListener("created", function (e) {
      var change = JSON.parse(e.data);
      if (document.getElementById("lead-" + change.lead_id)) { replaceRow(change.lead_id, change.row); return; }
      fresh += 1;
      link.textContent = fresh + (fresh === 1 ? " new lead" : " new leads") + ": show";
      banner.hidden = false;
    });
    source.addEventListener("changed", function (e) {
      var change = JSON.parse(e.data);
      replaceRow(change.lead_id, change.row);
    });
    source.addEventListener("left", function (e) {
      var change = JSON.parse(e.data);
      var row = document.getElementById("lead-" + change.lead_id);
      if (row) { row.remove(); }
    });
    source.addEventListener("reload", function () {
      link.textContent = "The list changed while you were away: reload";
      banner.hidden = false;
    });
    document.body.setAttribute("data-live", "connecting");
    source.onopen = function () { document.body.setAttribute("data-live", "open"); };
    source.onerror = function () { document.body.setAttribute("data-live", "reconnecting"); };
    window.leadsLive = source;
  }

  function exportWithProgress(event) {
    var link = event.target.closest("a[data-export]");
    if (!link || !window.fetch || !window.ReadableStream) { return; }
    event.preventDefault();
    var progress = document.getElementById("export-progress");
    var rows = 0;
    var parts = [];
    progress.textContent = "Exporting…";
    fetch(link.href, { credentials: "same-origin" }).then(function (response) {
      if (!response.ok) { throw new Error("the export was refused (" + response.status + ")"); }
      var name = (response.headers.get("content-disposition") || "").replace(/.*filename="([^"]+)".*/, "$1") || "leads.csv";
      var reader = response.body.getReader();
      function pump() {
        return reader.read().then(function (step) {
          if (step.done) {
            var url = URL.createObjectURL(new Blob(parts, { type: "text/csv" }));
            var a = document.createElement("a");
            a.href = url; a.download = name; document.body.appendChild(a); a.click(); a.remove();
            setTimeout(function () { URL.revokeObjectURL(url); }, 10000);
            progress.textContent = "Exported " + Math.max(rows - 1, 0) + " rows.";
            return;
          }
          parts.push(step.value);
          for (var i = 0; i < step.value.length; i += 1) { if (step.value[i] === 10) { rows += 1; } }
          progress.textContent = "Exporting… " + Math.max(rows - 1, 0) + " rows so far";
          return pump();
        });
      }
      return pump();
    }).catch(function (error) { progress.textContent = "Export failed: " + error.message; });
  }

  function menus(event) {
    if (event.key === "Escape") {
      var open = document.querySelector("details.menu[open]");
      if (open) { open.removeAttribute("open"); open.querySelector("summary").focus(); return; }
      var drawer = document.getElementById("drawer");
      if (drawer && drawer.contains(document.activeElement) && drawer.firstElementChild) {
        var close = drawer.querySelector("[data-close-drawer]");
        if (close) { close.click(); }
      }
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    timeZoneFields(document);
    selection();
    live();
    var heading = document.getElementById("drawer-title");
    if (heading && location.hash === "") { heading.focus(); }
  });
  document.addEventListener("change", function (e) {
    if (e.target.matches('input[name="lead_ids"], input[name="all_matching"]')) { selection(); }
  });
  document.addEventListener("click", exportWithProgress);
  document.addEventListener("keydown", menus);
  document.addEventListener("toggle", function (e) {
    if (e.target.matches && e.target.matches("details.menu") && e.target.open) {
      document.querySelectorAll("details.menu[open]").forEach(function (d) { if (d !== e.target) { d.removeAttribute("open"); } });
    }
  }, true);
  document.addEventListener("htmx:afterSwap", function (e) {
    localTimes(e.target);
    timeZoneFields(e.target);
    if (e.target.id === "bulk-results") {
      // Each lead by its contact's name where the page shows its row, and that row as it now is.
      e.target.querySelectorAll("[data-bulk-lead]").forEach(function (link) {
        var id = link.getAttribute("data-bulk-lead");
        var name = document.querySelector("#lead-" + CSS.escape(id) + " .contact");
        if (name) { link.textContent = name.textContent; }
        refreshRow(id);
      });
    }
    if (e.target.id === "drawer") {
      document.querySelectorAll("details.menu[open]").forEach(function (d) { d.removeAttribute("open"); });
      var title = document.getElementById("drawer-title");
      if (title) { title.focus(); }
    }
  });
  document.addEventListener("lead-changed", function () {
    var detail = document.querySelector("#drawer [data-lead]");
    if (detail) { refreshRow(detail.getAttribute("data-lead")); }
  });
})();
