// The dashboard's only script: uploading a patch file as the request
// body (the API takes the file's bytes, not a multipart form).
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("upload");
  if (!form) return;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const file = form.querySelector("input[type=file]").files[0];
    const out = document.getElementById("upload-result");
    if (!file) { out.textContent = "choose a .hsp file first"; return; }
    const channel = form.querySelector("input[name=channel]").value;
    const csrf = form.querySelector("input[name=csrf]").value;
    const r = await fetch("/ui/patches/upload?channel=" + encodeURIComponent(channel), {
      method: "POST", body: file, headers: { "X-CSRF-Token": csrf, "Content-Type": "application/octet-stream" },
      credentials: "same-origin",
    });
    const t = await r.text();
    out.textContent = r.ok ? "stored: " + t : "refused (" + r.status + "): " + t;
    if (r.ok) setTimeout(() => location.reload(), 500);
  });
});
