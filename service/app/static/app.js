// Progressive enhancement only: every page works without this script.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  // Print button (no inline handlers: the CSP allows no inline script).
  document.querySelectorAll("[data-action=print]").forEach(function (button) {
    button.addEventListener("click", function () { window.print(); });
  });
  // A form is sent once: later clicks (a double click) are ignored. The server is idempotent
  // anyway (one submission key per form), this only spares the second request.
  document.querySelectorAll("form").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (form.dataset.sent === "1") { event.preventDefault(); return; }
      form.dataset.sent = "1";
      form.querySelectorAll("[data-once]").forEach(function (b) {
        b.setAttribute("aria-disabled", "true");
        b.classList.add("sending");
        b.textContent = "Sending…";
      });
    });
  });
});
