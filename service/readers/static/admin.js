// RankIQ admin page: sign-out button (the page itself is rendered by the server and refreshes).
"use strict";
(function () {
  const csrf = document.getElementById("admin").dataset.csrf;
  document.getElementById("logout").addEventListener("click", async () => {
    await fetch("/logout", { method: "POST", credentials: "same-origin",
                             headers: { "X-CSRF-Token": csrf } });
    window.location.href = "/";
  });
  document.body.dataset.state = "ready";
})();
