// The page: draw on the canvas (or choose a photo), send it to POST /predict, show the answer.
"use strict";

const canvas = document.getElementById("canvas");
const pen = canvas.getContext("2d");
const $ = (id) => document.getElementById(id);
// The drawing is sent at a quarter of the canvas's side, 2.5 times the model's 28x28: more
// pixels show the model nothing more, and cost the server's preprocessing time.
const SENT_SIDE = canvas.width / 4;
// While the pen moves, a prediction waits for this pause, so that requests don't pile up.
const DEBOUNCE_MS = 120;
// A drawing less than this many pen widths across is mostly stroke: the model sees a blob and
// answers with confidence (an 8), so the page answers that it is too small to read.
const SMALLEST_DRAWING = 3.5;
// A photo over the server's limit on a body (a 48 or 50 MP phone's JPEG) is sent as a JPEG of
// at most this many pixels a side, a 12 MP phone's, smaller again until it fits.
const SHRUNK_SIDE = 4000;

let classes = [];
let canDraw = false;
let version = 0; // counts changes to the image; #result[data-version] tells which one it shows
let shown = 0;
let stroke = null; // the pointer drawing now, and its last point
let timer = null;
let sending = false;
let again = false;
let extent = null; // the box of the pen's path on the canvas: [left, top, right, bottom]
let maxBody = Infinity; // the server's limit on a body, from /health

function blank() {
  extent = null;
  pen.fillStyle = "#000";
  pen.fillRect(0, 0, canvas.width, canvas.height);
}

function setUpPen() {
  // White ink on black, as MNIST's digits are; round-capped and about as thick, for a digit
  // that fills the canvas, as MNIST's strokes are in their 28x28.
  pen.strokeStyle = "#fff";
  pen.lineWidth = canvas.width / 12;
  pen.lineCap = "round";
  pen.lineJoin = "round";
}

function changed() {
  version += 1;
  canvas.dataset.version = String(version);
}

function point(event) {
  const box = canvas.getBoundingClientRect();
  return [(event.clientX - box.left) * canvas.width / box.width,
          (event.clientY - box.top) * canvas.height / box.height];
}

function line(from, to) {
  const [xs, ys] = [[from[0], to[0]], [from[1], to[1]]];
  const [left, top, right, bottom] = extent || [Infinity, Infinity, -Infinity, -Infinity];
  extent = [Math.min(left, ...xs), Math.min(top, ...ys), Math.max(right, ...xs),
            Math.max(bottom, ...ys)];
  pen.beginPath();
  if (from[0] === to[0] && from[1] === to[1]) { // a tap: a dot, which a line of no length isn't
    pen.fillStyle = pen.strokeStyle;
    pen.arc(from[0], from[1], pen.lineWidth / 2, 0, 2 * Math.PI);
    pen.fill();
    return;
  }
  pen.moveTo(from[0], from[1]);
  pen.lineTo(to[0], to[1]);
  pen.stroke();
}

canvas.addEventListener("pointerdown", (event) => {
  // The main button (a mouse's left, a finger's or a pen's touch) draws; the others open menus.
  if (!canDraw || stroke || event.button !== 0) return;
  event.preventDefault();
  if (canvas.dataset.photo) { clearAll(); }
  canvas.setPointerCapture(event.pointerId);
  const at = point(event);
  stroke = { id: event.pointerId, last: at };
  line(at, at);
  changed();
  schedule(DEBOUNCE_MS);
});

canvas.addEventListener("pointermove", (event) => {
  if (!stroke || event.pointerId !== stroke.id) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const each of events.length ? events : [event]) {
    const at = point(each);
    line(stroke.last, at);
    stroke.last = at;
  }
  changed();
  schedule(DEBOUNCE_MS);
});

function endStroke(event) {
  if (!stroke || event.pointerId !== stroke.id) return;
  stroke = null;
  schedule(0); // the finished stroke is read at once
}
canvas.addEventListener("pointerup", endStroke);
canvas.addEventListener("pointercancel", endStroke);

function schedule(delay) {
  clearTimeout(timer);
  timer = setTimeout(sendDrawing, delay);
}

function sendDrawing() {
  if (sending) { again = true; return; } // one request at a time; the latest drawing next
  const small = document.createElement("canvas");
  small.width = small.height = SENT_SIDE;
  const context = small.getContext("2d");
  context.imageSmoothingQuality = "high";
  context.drawImage(canvas, 0, 0, SENT_SIDE, SENT_SIDE);
  const sent = version;
  const box = extent && [...extent]; // the drawing's box as sent, for its answer
  sending = true;
  small.toBlob((blob) => predict(blob, sent, box).finally(() => {
    sending = false;
    if (again) { again = false; sendDrawing(); }
  }), "image/png");
}

async function predict(file, sent, box = null) {
  let answer;
  try {
    const response = await fetch("predict", {
      method: "POST", body: file,
      headers: { "Content-Type": file.type || "application/octet-stream" },
    });
    answer = await response.json();
  } catch (error) {
    answer = { error: `no answer from the server (${error.message})` };
  }
  answered(answer, sent, box);
}

function answered(answer, sent, box = null) {
  if (sent < shown) return; // an answer for an image cleared or replaced since
  shown = sent;
  show(answer, box);
  $("result").dataset.version = String(sent);
}

function show(answer, box) {
  $("error").textContent = answer.error || "";
  if (answer.error) {
    reset(false);
    return;
  }
  const digits = answer.digits || [];
  if (digits.length > 1) { // a number: each digit's probability in the note, no bars
    showNumber(answer, digits);
    return;
  }
  const tiny = box !== null && pen.lineWidth + Math.max(box[2] - box[0], box[3] - box[1])
    < SMALLEST_DRAWING * pen.lineWidth;
  const read = answer.is_digit && !tiny;
  $("digit").textContent = read ? answer.name : "?";
  $("probability").textContent = read ? percent(answer.probability) : "";
  $("note").textContent = tiny ? "too small to read: draw the digit larger"
    : !answer.is_digit
      ? `no digit: this does not look like one (digit score ${percent(answer.digit_score)})`
      : answer.confident ? "" : "low confidence: check what the model saw";
  showBars({ top: answer.top, name: read ? answer.name : null }); // no answer, no top bar
  showSeen(answer, 1);
}

function showNumber(answer, digits) {
  const whole = digits.reduce((product, digit) => product * digit.probability, 1);
  // Two reasons apart: a digit sure of its class may still not look like a digit at all.
  const refused = digits.filter((digit) => !digit.is_digit).length;
  const unsure = digits.filter((digit) => digit.is_digit && !digit.confident).length;
  const notes = [];
  if (refused) notes.push(`${refused} ${refused > 1 ? "do" : "does"} not look like a digit`);
  if (unsure) notes.push(`low confidence in ${unsure}`);
  $("digit").textContent = answer.number;
  $("probability").textContent = percent(whole);
  $("note").textContent = `${digits.length} digits: ` +
    digits.map((digit) => `${digit.name} ${percent(digit.probability)}`).join(", ") +
    (notes.length ? ` (${notes.join("; ")}: check what the model saw)` : "");
  $("bars").hidden = true; // ten bars of one digit's classes say nothing of a number
  showSeen(answer, digits.length);
}

function showBars(answer) {
  $("bars").hidden = false;
  const probabilities = new Map(answer.top.map((entry) => [entry.name, entry.probability]));
  for (const row of $("bars").children) {
    const p = probabilities.get(row.dataset.name) || 0;
    row.querySelector(".fill").style.width = `${100 * p}%`;
    row.querySelector(".value").textContent = percent(p);
    row.classList.toggle("top", row.dataset.name === answer.name);
  }
}

function showSeen(answer, digits) {
  $("seen").width = 84 * digits; // the inputs side by side, each 28x28 shown at 84x84
  $("seen").src = answer.input;
  $("seen").title = `read in ${answer.milliseconds.toFixed(1)} ms on the server`;
}

function percent(p) {
  return `${(100 * p).toFixed(p > 0.999 || p < 0.001 ? 0 : 1)}%`;
}

function reset(withError) {
  $("digit").textContent = "?";
  $("probability").textContent = "";
  $("note").textContent = "";
  if (withError) $("error").textContent = "";
  $("bars").hidden = false;
  for (const row of $("bars").children) {
    row.querySelector(".fill").style.width = "0";
    row.querySelector(".value").textContent = "";
    row.classList.remove("top");
  }
  $("seen").removeAttribute("src");
  $("seen").width = 84;
}

function clearAll() {
  clearTimeout(timer);
  again = false; // the drawing waiting to be sent is gone
  blank();
  delete canvas.dataset.photo;
  changed();
  reset(true);
  shown = version;
  $("result").dataset.version = String(version);
}

function ground(image) {
  // What the server puts behind a photo's transparent areas (preprocess.on_ground): white
  // paper, or black where the photo is mostly transparent and all that is drawn on it is light.
  const probe = document.createElement("canvas");
  probe.width = probe.height = 64;
  const context = probe.getContext("2d");
  context.imageSmoothingQuality = "high"; // averaged: a thin stroke's colour survives
  context.drawImage(image, 0, 0, probe.width, probe.height);
  const rgba = context.getImageData(0, 0, probe.width, probe.height).data;
  let opacity = 0;
  let drawn = 0;
  let dark = 0;
  for (let i = 0; i < rgba.length; i += 4) {
    opacity += rgba[i + 3] / 255;
    if (rgba[i + 3] === 0) continue;
    drawn += 1;
    dark += 0.299 * rgba[i] + 0.587 * rgba[i + 1] + 0.114 * rgba[i + 2] < 128;
  }
  const mostlyClear = opacity > 0 && opacity <= 0.5 * (rgba.length / 4); // MOSTLY_CLEAR
  return mostlyClear && dark < 0.05 * drawn ? "#000" : "#fff"; // DARK_ON_CLEAR
}

function sendPhoto(file) {
  if (!file) return;
  clearAll();
  changed(); // the photo: a new image, whose answer is to come
  canvas.dataset.photo = file.name;
  const url = URL.createObjectURL(file);
  const preview = new Image();
  const mine = version;
  const tooLarge = file.size > maxBody;
  preview.onload = () => { // the photo on the canvas, whole, as a preview
    URL.revokeObjectURL(url);
    if (version !== mine) return; // cleared, drawn on or replaced while it loaded
    const scale = Math.min(canvas.width / preview.width, canvas.height / preview.height);
    const [w, h] = [preview.width * scale, preview.height * scale];
    pen.fillStyle = ground(preview);
    pen.fillRect((canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
    pen.drawImage(preview, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
    if (tooLarge) sendShrunk(preview, file, mine, SHRUNK_SIDE);
  };
  preview.onerror = () => {
    URL.revokeObjectURL(url);
    // Under the limit, the file is on its way: the server says what is wrong with it.
    if (tooLarge) {
      const megabytes = (maxBody / 2 ** 20).toFixed(0);
      answered({ error: `not an image this browser can read, and over the server's limit of ` +
                        `${megabytes} MiB: send a PNG or a JPEG` }, mine);
    }
  };
  preview.src = url;
  if (!tooLarge) predict(file, mine); // the file itself: the server reads it as a photo
}

function sendShrunk(image, file, mine, side) {
  // The photo as a JPEG of at most `side` pixels a side, on the ground the server would give
  // it; smaller again while it is over the server's limit (down to about a quarter of
  // SHRUNK_SIDE), unless the image has been cleared or replaced meanwhile.
  if (version !== mine) return;
  const scale = Math.min(1, side / Math.max(image.naturalWidth, image.naturalHeight));
  const small = document.createElement("canvas");
  small.width = Math.max(1, Math.round(image.naturalWidth * scale));
  small.height = Math.max(1, Math.round(image.naturalHeight * scale));
  const context = small.getContext("2d");
  context.fillStyle = ground(image);
  context.fillRect(0, 0, small.width, small.height);
  context.imageSmoothingQuality = "high";
  context.drawImage(image, 0, 0, small.width, small.height);
  small.toBlob((blob) => {
    if (version !== mine) return;
    if (blob && blob.size > maxBody && side > SHRUNK_SIDE / 4) {
      sendShrunk(image, file, mine, side * 0.7);
    } else {
      predict(blob || file, mine);
    }
  }, "image/jpeg", 0.92);
}

$("clear").addEventListener("click", clearAll);
$("photo").addEventListener("change", (event) => {
  sendPhoto(event.target.files[0]);
  event.target.value = ""; // the same file chosen again is read again
});

const drop = $("drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("dragging");
});
drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("dragging");
  sendPhoto(event.dataTransfer.files[0]);
});

function describe(model) {
  classes = model.classes;
  maxBody = model.max_body_bytes || Infinity;
  canDraw = model.dataset === "mnist";
  canvas.classList.toggle("photo-only", !canDraw);
  if (canDraw) {
    $("about").textContent = `${model.model} reads the digit you draw, or the one in a photo.`;
  } else {
    $("title").textContent = "Show a photo";
    const framing = model.dataset === "cifar10" ? "in the middle of the photo"
      : "on a plain background";
    $("about").textContent = `${model.model} knows ${model.dataset}: ${classes.join(", ")}. ` +
      `The canvas is for digits: choose (or drop) a photo of one of these, ${framing}.`;
    $("hint").textContent = "Choose a photo, or drop one on the canvas.";
  }
  $("bars").replaceChildren(...classes.map((name) => {
    const row = document.createElement("li");
    row.dataset.name = name;
    row.innerHTML = '<span class="name"></span><span class="track"><span class="fill">' +
      '</span></span><span class="value"></span>';
    row.querySelector(".name").textContent = name;
    return row;
  }));
  document.body.dataset.ready = "true";
}

setUpPen();
blank();
fetch("health").then((response) => response.json()).then(describe).catch((error) => {
  $("error").textContent = `can't reach the server (${error.message})`;
});
