// Search as you type: the server renders the result list; this only fetches it and swaps it in.
// Without JavaScript the search form submits as a plain GET.
(function () {
  "use strict";
  var input = document.getElementById("q");
  var results = document.getElementById("results");
  if (!input || !results) return;
  var timer = null;
  var asked = 0;
  function run() {
    var mine = ++asked;
    var query = input.value;
    results.setAttribute("aria-busy", "true");
    fetch(results.dataset.src + "?q=" + encodeURIComponent(query), { credentials: "same-origin" })
      .then(function (response) {
        if (response.redirected) { window.location.href = response.url; return null; } // the sign-in page
        return response.text();
      })
      .then(function (html) {
        if (html === null || mine !== asked) return; // an older answer after a newer question
        results.innerHTML = html; // rendered and escaped by the server's templates
        results.removeAttribute("aria-busy");
        var url = new URL(window.location.href);
        if (query) { url.searchParams.set("q", query); } else { url.searchParams.delete("q"); }
        url.searchParams.delete("cursor");
        window.history.replaceState(null, "", url);
      })
      .catch(function () { results.removeAttribute("aria-busy"); });
  }
  input.addEventListener("input", function () {
    window.clearTimeout(timer);
    timer = window.setTimeout(run, 200);
  });
})();
