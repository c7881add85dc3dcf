"""The web page of ``ssltk serve`` (``GET /``): choose a scan, submit, see the prediction and
its Grad-CAM overlay. Self-contained (no external script, style or font: it works offline)."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ssltk: {{model}}</title>
<style>
 body { font-family: system-ui, sans-serif; max-width: 58rem; margin: 2rem auto; padding: 0 1rem;
        color: #1d2330; }
 h1 { font-size: 1.4rem; margin-bottom: .2rem; }
 .meta { color: #5a6272; font-size: .9rem; margin-bottom: 1.2rem; }
 form { display: flex; gap: .8rem; align-items: center; padding: 1rem; background: #f2f4f8;
        border-radius: .5rem; }
 button { padding: .45rem 1.2rem; font-size: 1rem; }
 #status { margin: 1rem 0; min-height: 1.2rem; }
 #error { color: #b00020; }
 table { border-collapse: collapse; margin: .5rem 0 1rem; }
 td, th { padding: .25rem .8rem; border-bottom: 1px solid #dde1e8; text-align: left; }
 .bar { background: #3b6fd8; height: .7rem; border-radius: .2rem; }
 #predicted { font-weight: 600; font-size: 1.15rem; }
 img { max-width: 100%; border: 1px solid #dde1e8; border-radius: .3rem; }
</style>
</head>
<body>
<h1>ssltk model: {{model}}</h1>
<div class="meta">weights {{sha}}&hellip; &middot; outputs: {{classes}}</div>
<form id="form">
  <input type="file" id="file" name="file" accept=".nii,.gz,.png,.jpg,.jpeg" required>
  <label><input type="checkbox" id="gradcam" checked> Grad-CAM</label>
  <button type="submit" id="submit">Predict</button>
</form>
<div id="status"></div>
<div id="error"></div>
<div id="result" hidden>
  <div>Predicted: <span id="predicted"></span></div>
  <table id="probabilities"></table>
  <img id="overlay" alt="Grad-CAM overlay" hidden>
</div>
<script>
const form = document.getElementById("form");
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = document.getElementById("file").files[0];
  const status = document.getElementById("status"), error = document.getElementById("error");
  const result = document.getElementById("result");
  error.textContent = ""; result.hidden = true;
  if (!file) { error.textContent = "Choose a file first."; return; }
  status.textContent = "Running the model on " + file.name + "...";
  const body = new FormData();
  body.append("file", file, file.name);
  const gradcam = document.getElementById("gradcam").checked;
  try {
    const response = await fetch("predict?gradcam=" + gradcam, {method: "POST", body: body});
    const data = await response.json();
    status.textContent = "";
    if (!response.ok) { error.textContent = "Error " + response.status + ": " + data.detail; return; }
    show(data);
  } catch (e) {
    status.textContent = ""; error.textContent = "Request failed: " + e;
  }
});
function show(data) {
  const table = document.getElementById("probabilities");
  table.replaceChildren();
  if (data.probabilities) {
    document.getElementById("predicted").textContent = data.predicted_class;
    for (const [name, p] of Object.entries(data.probabilities)) {
      const row = table.insertRow();
      row.insertCell().textContent = name;
      row.insertCell().textContent = p.toFixed(3);
      const bar = document.createElement("div");
      bar.className = "bar"; bar.style.width = Math.round(200 * p) + "px";
      row.insertCell().appendChild(bar);
    }
  } else {
    document.getElementById("predicted").textContent = data.prediction.toPrecision(4);
  }
  const img = document.getElementById("overlay");
  if (data.gradcam_png) { img.src = "data:image/png;base64," + data.gradcam_png; img.hidden = false; }
  else { img.hidden = true; }
  document.getElementById("result").hidden = false;
}
</script>
</body>
</html>
"""
