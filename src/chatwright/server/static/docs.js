// The API docs at /docs: Swagger UI from static/vendor (no CDN: they work offline).
(function () {
  "use strict";
  function start() {
    if (!window.SwaggerUIBundle) {
      document.getElementById("swagger-ui").textContent =
        "Swagger UI did not load; the API description is at /openapi.json.";
      return;
    }
    window.ui = window.SwaggerUIBundle({
      url: "/openapi.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
      layout: "BaseLayout",
      presets: [window.SwaggerUIBundle.presets.apis],
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
