// Annotate page keyboard shortcuts (only while its chart is on the page and no text box has focus):
// ArrowLeft / ArrowRight: previous / next day; u or Ctrl+Z: undo; Delete: delete the selected
// annotation; Escape: cancel a pending entry.
document.addEventListener("keydown", function (ev) {
  if (!document.getElementById("ann-chart")) return;
  var t = ev.target;
  if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable)) return;
  var id = null;
  if (ev.key === "ArrowLeft") id = "ann-prev";
  else if (ev.key === "ArrowRight") id = "ann-next";
  else if (ev.key === "u" || (ev.key === "z" && (ev.ctrlKey || ev.metaKey))) id = "ann-undo";
  else if (ev.key === "Delete") id = "ann-delete";
  else if (ev.key === "Escape") id = "ann-cancel";
  if (!id) return;
  var b = document.getElementById(id);
  if (b) { ev.preventDefault(); b.click(); }
});

// The smaller charts are requested only once the main chart shows the requested days (its uirevision),
// so the main chart is drawn first; after 15 s they come anyway.
window.dash_clientside = Object.assign({}, window.dash_clientside, {
  annotate: {
    afterMain: function (req) {
      if (!req) return window.dash_clientside.no_update;
      return new Promise(function (resolve) {
        var end = Date.now() + 15000;
        (function poll() {
          var g = document.querySelector("#ann-chart .js-plotly-plot");
          var drawn = g && g._fullLayout && g.layout && g.layout.uirevision === req.rev;
          if (drawn || Date.now() > end) {
            requestAnimationFrame(function () { setTimeout(function () { resolve(req); }, 0); });
          } else {
            setTimeout(poll, 30);
          }
        })();
      });
    }
  }
});
