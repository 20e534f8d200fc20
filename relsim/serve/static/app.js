// relsim serve: what needs JavaScript. Everything else works with plain forms and links.
"use strict";
(function () {
  // Drop an image on the upload box (or anywhere on the page): it is put in the file field and searched.
  const form = document.getElementById("upload-form");
  const input = document.getElementById("image");
  if (form && input) {
    const over = (event) => { event.preventDefault(); form.classList.add("dragging"); };
    const leave = () => form.classList.remove("dragging");
    document.addEventListener("dragover", over);
    document.addEventListener("dragleave", leave);
    document.addEventListener("drop", (event) => {
      event.preventDefault();
      leave();
      const files = event.dataTransfer && event.dataTransfer.files;
      if (!files || !files.length) return;
      input.files = files;
      form.requestSubmit();
    });
    document.getElementById("drop-hint").textContent = "…or drop an image anywhere on this page.";
  }
  // "Show heatmap" links show the map in place instead of opening the PNG.
  document.addEventListener("click", (event) => {
    const link = event.target.closest("a.heatmap-link");
    if (!link) return;
    event.preventDefault();
    const panel = link.closest("details");
    if (panel.querySelector("img.heatmap")) return;
    const image = document.createElement("img");
    image.className = "heatmap";
    image.alt = "heatmap: where in this image the similarity to the query comes from";
    image.src = link.href;
    image.addEventListener("error", () => {
      const note = document.createElement("p");
      note.setAttribute("role", "alert");
      note.textContent = "The heatmap could not be made.";
      image.replaceWith(note);
    });
    const paragraph = link.parentElement;
    paragraph.after(image);
    paragraph.textContent = "Where in this image the similarity to the query comes from:";
  });
})();
