// The latent explorer of the VAE and CVAE chapters. On the left, the codes (z_mean) of the test
// digits, coloured by their class, as a plane: click or drag on it to choose a code z. On the
// right, the digit that the lesson's trained decoder makes of z, decoded here, in the page, by
// ONNX Runtime Web. scripts/build_explorer.py exported the decoder from Keras (decoder.onnx) and
// wrote explorer.json (the codes, the busiest dimensions, their ranges); the book's extension
// _ext/explorer.py put a <div class="latent-explorer"> where the chapter asks for one.

import * as ort from "./explorer/ort/ort.wasm.min.mjs";

// ONNX Runtime Web runs the model in WebAssembly. Several threads would need a cross-origin
// isolated page, which a plain static server does not make: one thread, which is plenty for
// one small decoder. Its WebAssembly files come from this site's own copy, not from a CDN.
ort.env.wasm.numThreads = 1;
ort.env.wasm.wasmPaths = new URL("./explorer/ort/", import.meta.url).href;

const PLANE_SIZE = 320;  // pixels of the plane's canvas
const DECIMALS = 2;      // z is shown, and decoded, to two decimals

const round = (value) => Number(value.toFixed(DECIMALS));

for (const element of document.querySelectorAll(".latent-explorer")) {
  explore(element).catch((error) => {
    element.textContent = `The explorer could not start: ${error.message}`;
    throw error;
  });
}

async function explore(element) {
  const folder = new URL(element.dataset.explorer, document.baseURI);
  const info = await (await fetch(new URL("explorer.json", folder))).json();
  const session = await ort.InferenceSession.create(new URL(info.decoder, folder).href);

  // The state: a code z (every dimension not on the plane or a slider stays at its average
  // over the test digits) and, for the CVAE, the label the decoder is given.
  const z = info.mean.map(round);
  let label = 0;

  const [plane, side] = [document.createElement("canvas"), document.createElement("div")];
  const digit = document.createElement("canvas");
  const shown = document.createElement("p");
  plane.className = "plane";
  plane.width = plane.height = PLANE_SIZE;
  plane.tabIndex = 0;  // arrow keys move z too
  plane.setAttribute("aria-label", `codes of the test digits on z${info.plane[0]} and ` +
                     `z${info.plane[1]}; click, drag or use the arrow keys to move z`);
  [digit.width, digit.height] = [info.image_shape[1], info.image_shape[0]];
  digit.className = "digit";
  shown.className = "z";
  side.className = "side";
  side.append(digit, shown);
  element.replaceChildren(plane, side);

  // Where a code lies on the plane: the plane's first dimension across, its second up.
  const [across, up] = info.plane;
  const toPixel = (dim, value) =>
    (value - info.low[dim]) / (info.high[dim] - info.low[dim]) * PLANE_SIZE;
  const toCode = (dim, fraction) =>
    round(info.low[dim] + fraction * (info.high[dim] - info.low[dim]));

  function drawPlane() {
    const context = plane.getContext("2d");
    context.clearRect(0, 0, PLANE_SIZE, PLANE_SIZE);
    info.points.forEach(([x, y], i) => {
      // For the CVAE, the digits of the chosen class stand out: z is their style.
      context.globalAlpha = info.conditional && info.labels[i] !== label ? 0.12 : 0.7;
      context.fillStyle = info.colours[info.labels[i]];
      context.fillRect(toPixel(across, x) - 1.5, PLANE_SIZE - toPixel(up, y) - 1.5, 3, 3);
    });
    context.globalAlpha = 1;
    context.fillStyle = "#555";
    context.fillText(`z${across} →`, PLANE_SIZE - 34, PLANE_SIZE - 6);
    context.fillText(`↑ z${up}`, 4, 12);
    const [x, y] = [toPixel(across, z[across]), PLANE_SIZE - toPixel(up, z[up])];
    context.strokeStyle = "#000";
    context.lineWidth = 2;
    context.beginPath();  // a cross where z is
    context.moveTo(x - 8, y); context.lineTo(x + 8, y);
    context.moveTo(x, y - 8); context.lineTo(x, y + 8);
    context.stroke();
  }

  // Decoding: the decoder gives logits, one per pixel; the sigmoid turns each into the
  // probability of ink (the Bernoulli mean), drawn as a grey level from black (0) to white (1).
  async function decode() {
    const code = z.slice();
    const inputs = {[info.inputs[0]]: new ort.Tensor("float32", Float32Array.from(code),
                                                     [1, code.length])};
    if (info.conditional) {  // the CVAE's decoder is also given the label, one-hot
      const oneHot = new Float32Array(info.class_names.length);
      oneHot[label] = 1;
      inputs[info.inputs[1]] = new ort.Tensor("float32", oneHot, [1, oneHot.length]);
    }
    const logits = (await session.run(inputs))[session.outputNames[0]].data;
    const image = new ImageData(digit.width, digit.height);
    logits.forEach((logit, i) => {
      const grey = Math.round(255 / (1 + Math.exp(-logit)));
      image.data.set([grey, grey, grey, 255], 4 * i);
    });
    digit.getContext("2d").putImageData(image, 0, 0);
    shown.textContent = `z = (${code.map((v) => v.toFixed(DECIMALS)).join(", ")})` +
      (info.conditional ? `, digit ${info.class_names[label]}` : "");
  }

  // One decoding at a time; a move made meanwhile is decoded as soon as it ends. data-busy
  // says when the digit shown is that of the last z asked for, data-drawn how many were drawn.
  let running = null, again = false, drawn = 0;
  async function redraw() {
    drawPlane();
    if (running) { again = true; return running; }
    element.dataset.busy = "true";
    running = (async () => {
      do { again = false; await decode(); element.dataset.drawn = ++drawn; } while (again);
    })();
    await running;
    running = null;
    element.dataset.busy = "false";
  }

  // Moving on the plane: a click, a drag (the pointer stays captured while the button is
  // down), or the arrow keys, a fiftieth of the plane at a time.
  const moveTo = (event) => {
    const box = plane.getBoundingClientRect();
    const fx = Math.min(Math.max((event.clientX - box.left) / box.width, 0), 1);
    const fy = Math.min(Math.max((event.clientY - box.top) / box.height, 0), 1);
    [z[across], z[up]] = [toCode(across, fx), toCode(up, 1 - fy)];
    redraw();
  };
  plane.addEventListener("pointerdown", (event) => {
    plane.setPointerCapture(event.pointerId);
    moveTo(event);
  });
  plane.addEventListener("pointermove", (event) => {
    if (plane.hasPointerCapture(event.pointerId)) moveTo(event);
  });
  plane.addEventListener("keydown", (event) => {
    const steps = {ArrowLeft: [across, -1], ArrowRight: [across, 1],
                   ArrowDown: [up, -1], ArrowUp: [up, 1]}[event.key];
    if (!steps) return;
    event.preventDefault();
    const [dim, sign] = steps;
    const step = (info.high[dim] - info.low[dim]) / 50;
    z[dim] = round(Math.min(Math.max(z[dim] + sign * step, info.low[dim]), info.high[dim]));
    redraw();
  });

  // A latent space wider than 2: a slider for each of the next busiest dimensions.
  for (const dim of info.sliders) {
    const row = document.createElement("label");
    const slider = document.createElement("input");
    const value = document.createElement("output");
    Object.assign(slider, {type: "range", min: info.low[dim], max: info.high[dim],
                           step: 10 ** -DECIMALS, value: z[dim]});
    slider.dataset.dim = dim;
    value.textContent = z[dim].toFixed(DECIMALS);
    slider.addEventListener("input", () => {
      z[dim] = round(Number(slider.value));
      value.textContent = z[dim].toFixed(DECIMALS);
      redraw();
    });
    row.append(`z${dim} `, slider, value);
    side.append(row);
  }

  // The classes in their colours on the plane; for the CVAE, a digit picker too: the label
  // changes, z (the style) stays.
  const legend = document.createElement("fieldset");
  legend.className = "labels";
  legend.append(Object.assign(document.createElement("legend"),
                              {textContent: info.conditional ? "digit" : "classes"}));
  info.class_names.forEach((name, value) => {
    const choice = document.createElement("label");
    choice.style.color = info.colours[value];
    if (info.conditional) {
      const radio = Object.assign(document.createElement("input"),
                                  {type: "radio", name: `label-${info.lesson}`, value,
                                   checked: value === label});
      radio.addEventListener("change", () => { label = value; redraw(); });
      choice.append(radio);
    }
    choice.append(name);
    legend.append(choice);
  });
  side.append(legend);

  await redraw();
}
