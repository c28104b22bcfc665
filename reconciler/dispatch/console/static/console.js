// The New webhook form's progressive enhancement: check as you type (POST
// /ui/new/check with the session's CSRF token), show located problems, the YAML
// and the request preview; insert substitutions; copy. Without it, the form's
// Check button posts the same check and the page shows the same result.
(function () {
  "use strict";
  var form = document.getElementById("new-webhook");
  if (!form) { return; }
  var body = document.getElementById("n-body");
  var problems = document.getElementById("problems");
  var yaml = document.getElementById("yaml");
  var path = document.getElementById("path");
  var pathLine = document.getElementById("path-line");
  var preview = document.getElementById("preview");
  var download = document.getElementById("download");
  var copy = document.getElementById("copy");
  var timer = null;

  function show(result) {
    problems.textContent = "";
    if (result.problems.length) {
      var list = document.createElement("ul");
      result.problems.forEach(function (p) {
        var item = document.createElement("li");
        item.textContent = p.text;
        list.appendChild(item);
      });
      problems.appendChild(list);
    }
    yaml.value = result.yaml || "";
    path.textContent = result.path || "";
    pathLine.hidden = !result.yaml;
    preview.value = result.request || "";
    if (result.download) {
      download.href = result.download;
      download.hidden = false;
    } else {
      download.hidden = true;
    }
  }

  function check() {
    var data = new URLSearchParams(new FormData(form));
    fetch(form.getAttribute("data-check"), {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": data.get("csrf_token") },
      body: data
    }).then(function (r) { return r.ok ? r.json() : null; }).then(function (result) {
      if (result) { show(result); }
    });
  }

  form.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(check, 250);
  });
  Array.prototype.forEach.call(document.querySelectorAll("button.insert"), function (button) {
    button.hidden = false;
    button.addEventListener("click", function () {
      var text = button.getAttribute("data-insert");
      var start = body.selectionStart, end = body.selectionEnd;
      body.value = body.value.slice(0, start) + text + body.value.slice(end);
      body.focus();
      body.selectionStart = body.selectionEnd = start + text.length;
      check();
    });
  });
  if (navigator.clipboard) {
    copy.hidden = false;
    copy.addEventListener("click", function () {
      navigator.clipboard.writeText(yaml.value).then(function () { copy.textContent = "Copied"; });
    });
  }
})();
