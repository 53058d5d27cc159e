// The answer browser of report.html: filters the rows of #answers-table by model, task, category and
// verdict (and a text search). The only script of the page: its hash is in the Content-Security-Policy,
// so no other script (for instance one hidden in a model's answer) can run. A link such as
// report.html#answers?verdict=unclear&category=Hate opens the browser filtered.
(function () {
  "use strict";
  var table = document.getElementById("answers-table");
  if (!table) { return; }
  var rows = Array.prototype.slice.call(table.tBodies[0].rows);
  var fields = ["model", "task", "category", "verdict"];
  var selects = {};
  fields.forEach(function (f) { selects[f] = document.getElementById("ab-" + f); });
  var search = document.getElementById("ab-search");
  var count = document.getElementById("ab-count");
  var section = document.getElementById("answers");

  function apply() {
    var want = {};
    fields.forEach(function (f) { want[f] = selects[f].value; });
    var query = search.value.trim().toLowerCase();
    var shown = 0;
    rows.forEach(function (row) {
      var keep = fields.every(function (f) { return !want[f] || row.dataset[f] === want[f]; });
      if (keep && query) { keep = row.textContent.toLowerCase().indexOf(query) !== -1; }
      row.hidden = !keep;
      if (keep) { shown += 1; }
    });
    count.textContent = shown + " of " + rows.length + " answers shown";
    section.setAttribute("data-shown", String(shown));
  }

  function fromHash() {
    var hash = window.location.hash;
    var at = hash.indexOf("?");
    if (at < 0) { return; }
    var params = new URLSearchParams(hash.slice(at + 1));
    fields.forEach(function (f) {
      if (params.has(f)) {
        selects[f].value = params.get(f);
        selects[f].dispatchEvent(new Event("change"));
      }
    });
    if (params.has("q")) {
      search.value = params.get("q");
      search.dispatchEvent(new Event("input"));
    }
  }

  fields.forEach(function (f) { selects[f].addEventListener("change", apply); });
  search.addEventListener("input", apply);
  window.addEventListener("hashchange", fromHash);
  section.setAttribute("data-ready", "1");
  apply();
  fromHash();
})();
