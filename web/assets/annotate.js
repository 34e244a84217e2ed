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
