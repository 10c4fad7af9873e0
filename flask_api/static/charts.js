// Draws every chart of the page: each <div data-chart="ID"> gets the Vega-Lite spec in the JSON
// <script id="ID-spec"> as SVG (vendored vega + vega-lite; no network). The table beside each chart
// holds the same figures, so the page reads without this script too.
(function () {
  "use strict";
  function draw(el) {
    var spec = JSON.parse(document.getElementById(el.dataset.chart + "-spec").textContent);
    var view = new vega.View(vega.parse(vegaLite.compile(spec).spec), {renderer: "svg", container: el, hover: true});
    return view.runAsync().then(function () {
      el.dataset.rendered = "true";
    }).catch(function (err) {
      el.dataset.rendered = "failed";
      el.textContent = "This chart could not be drawn; its table below has the figures.";
      if (window.console) { console.error(err); }
    });
  }
  document.querySelectorAll("[data-chart]").forEach(draw);
})();
