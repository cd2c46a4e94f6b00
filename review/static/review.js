// Keyboard labelling: d, g, s press the part page's buttons (the form posts, the server answers
// with the next part). Nothing else here: every page works without JavaScript.
document.addEventListener("keydown", (event) => {
  if (event.target.closest("input, select, textarea") || event.ctrlKey || event.metaKey || event.altKey) return;
  const button = { d: "label-defect", g: "label-good", s: "label-skip" }[event.key];
  if (button && document.getElementById(button)) {
    event.preventDefault();
    document.getElementById(button).click();
  }
});
