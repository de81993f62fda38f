// The metric chart: plain SVG, no library. Points (kept, discarded), crashes as red crosses on the bottom
// edge, the running best as a step line with the spread of its measurement when the log has one.
// The server sends at most ~1600 points (decimated per bucket), so one innerHTML write draws it.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const M = { left: 64, right: 16, top: 12, bottom: 30 };
  const STATUS = ["keep", "discard", "crash"];

  function niceStep(span, count) {
    const raw = span / Math.max(1, count);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const norm = raw / mag;
    return (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
  }

  function ticks(lo, hi, count) {
    if (!(hi > lo)) return [lo];
    const step = niceStep(hi - lo, count);
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }

  function label(v) {
    const a = Math.abs(v);
    if (v === 0) return "0";
    if (a >= 1e6 || a < 1e-3) return v.toExponential(2);
    return String(+v.toPrecision(5));
  }

  // The y range: every value, unless a few outliers would flatten the rest; those are pinned to the edge.
  function yDomain(data) {
    const all = [], kept = [];
    for (let i = 0; i < data.x.length; i++) {
      const y = data.y[i];
      if (y === null) continue;
      all.push(y);
      if (data.k[i] === 0) kept.push(y);
    }
    for (const s of data.best) {
      kept.push(s.v);
      if (s.lo !== undefined) kept.push(s.lo, s.hi);
    }
    if (!all.length && !kept.length) return null;
    let lo = Math.min(...all, ...kept), hi = Math.max(...all, ...kept);
    if (kept.length) {
      const klo = Math.min(...kept), khi = Math.max(...kept);
      const kspan = Math.max(khi - klo, Math.abs(khi) * 1e-6, 1e-12);
      if (hi - lo > 6 * kspan) {
        const sorted = all.slice().sort((a, b) => a - b);
        const q = (p) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
        lo = Math.min(klo - kspan, Math.max(lo, q(0.02)));
        hi = Math.max(khi + kspan, Math.min(hi, q(0.98)));
      }
    }
    if (hi === lo) { const d = Math.abs(hi) * 0.05 || 1; lo -= d; hi += d; }
    const pad = (hi - lo) * 0.06;
    return [lo - pad, hi + pad];
  }

  function draw(box, data, opts) {
    const width = Math.max(320, box.clientWidth || 800);
    const height = Math.max(200, box.clientHeight || 320);
    const total = Math.max(data.total, 1);
    const dom = yDomain(data);
    if (!dom) {
      box.innerHTML = "";
      const p = document.createElement("p");
      p.className = "empty";
      p.textContent = data.total ? "No values yet: every experiment so far crashed." : "No experiments yet.";
      box.appendChild(p);
      return;
    }
    const [y0, y1] = dom;
    const crashes = data.k.includes(2);
    const lane = crashes ? 20 : 0;  // crashes have no value: they get a lane of their own under the plot
    const pw = width - M.left - M.right, ph = height - M.top - M.bottom - lane;
    const sx = (n) => M.left + (total === 1 ? pw / 2 : ((n - 1) / (total - 1)) * pw);
    const sy = (v) => M.top + (1 - (v - y0) / (y1 - y0)) * ph;
    const clampY = (v) => Math.min(M.top + ph, Math.max(M.top, sy(v)));
    const parts = [];
    // grid and axes
    for (const t of ticks(y0, y1, 5)) {
      if (lane && sy(t) > M.top + ph - 8) continue;  // too close to the crash lane's label
      const y = sy(t).toFixed(1);
      parts.push(`<line class="grid" x1="${M.left}" x2="${M.left + pw}" y1="${y}" y2="${y}"/>`);
      parts.push(`<text x="${M.left - 8}" y="${y}" text-anchor="end" dominant-baseline="middle">${label(t)}</text>`);
    }
    for (const t of ticks(1, total, Math.max(2, Math.floor(pw / 90)))) {
      if (t < 1 || t !== Math.round(t)) continue;
      const x = sx(t).toFixed(1);
      parts.push(`<line class="axis" x1="${x}" x2="${x}" y1="${M.top + ph + lane}" y2="${M.top + ph + lane + 4}"/>`);
      parts.push(`<text x="${x}" y="${M.top + ph + lane + 17}" text-anchor="middle">${t}</text>`);
    }
    const axisY = M.top + ph + lane;
    parts.push(`<line class="axis" x1="${M.left}" x2="${M.left + pw}" y1="${axisY}" y2="${axisY}"/>`);
    if (lane) {
      parts.push(`<line class="grid" x1="${M.left}" x2="${M.left + pw}" y1="${M.top + ph}" y2="${M.top + ph}"/>`);
      parts.push(`<text x="${M.left - 8}" y="${M.top + ph + lane / 2}" text-anchor="end" dominant-baseline="middle">crash</text>`);
    }
    parts.push(`<line class="axis" x1="${M.left}" x2="${M.left}" y1="${M.top}" y2="${axisY}"/>`);
    // spread of the best, then the running best as a step line to the last experiment
    const best = data.best;
    if (best.length) {
      let d = "";
      for (let i = 0; i < best.length; i++) {
        const s = best[i], x = sx(s.n), xEnd = sx(i + 1 < best.length ? best[i + 1].n : total);
        if (s.lo !== undefined) {
          const top = clampY(s.hi), bottom = clampY(s.lo);
          parts.push(`<rect class="spread" x="${x.toFixed(1)}" y="${top.toFixed(1)}" width="${Math.max(1, xEnd - x).toFixed(1)}" height="${Math.max(1, bottom - top).toFixed(1)}"/>`);
        }
        d += `${i ? "V" : "M" + x.toFixed(1) + " "}${clampY(s.v).toFixed(1)}H${Math.max(x, xEnd).toFixed(1)}`;
      }
      parts.push(`<path class="best-line" d="${d}"/>`);
    }
    // points: discarded first so kept ones are drawn on top
    const bottom = M.top + ph + lane / 2;
    const few = data.x.length < 300;  // larger dots when there is room for them
    for (const pass of [1, 0, 2]) {
      for (let i = 0; i < data.x.length; i++) {
        if (data.k[i] !== pass) continue;
        const x = sx(data.x[i]).toFixed(1);
        if (pass === 2) {
          parts.push(`<path class="p-crash" d="M${x - 4} ${bottom - 4}l8 8m0 -8l-8 8"/>`);
          continue;
        }
        const v = data.y[i], y = sy(v);
        if (y < M.top || y > M.top + ph) {  // an outlier: a hollow triangle on the edge it left by
          const edge = y < M.top ? M.top + 4 : M.top + ph - 4, dir = y < M.top ? -1 : 1;
          parts.push(`<path class="p-out" d="M${x - 4} ${edge - 3 * dir}l4 ${6 * dir}l4 ${-6 * dir}z"/>`);
          continue;
        }
        parts.push(`<circle class="p-${STATUS[pass]}" cx="${x}" cy="${y.toFixed(1)}" r="${pass === 0 ? (few ? 4.2 : 3.4) : (few ? 3.4 : 2.4)}"/>`);
      }
    }
    parts.push(`<line class="cursor" x1="0" x2="0" y1="${M.top}" y2="${axisY}" stroke="currentColor" stroke-opacity="0" />`);
    box.innerHTML = `<svg xmlns="${SVG}" viewBox="0 0 ${width} ${height}" preserveAspectRatio="none">${parts.join("")}</svg>`;
    hover(box, data, sx, sy, pw, total, opts);
  }

  // A readout of the nearest experiment under the pointer; a click opens its diff (through opts.onPick).
  function hover(box, data, sx, sy, pw, total, opts) {
    const svg = box.firstChild, cursor = svg.lastChild;
    let tip = box.querySelector(".tip");
    if (!tip) {
      tip = document.createElement("div");
      tip.className = "tip";
      tip.hidden = true;
    }
    box.appendChild(tip);
    const nearest = (evt) => {
      const rect = svg.getBoundingClientRect();
      const px = ((evt.clientX - rect.left) / rect.width) * svg.viewBox.baseVal.width;
      const n = total === 1 ? 1 : Math.round(1 + ((px - M.left) / pw) * (total - 1));
      let lo = 0, hi = data.x.length - 1;
      if (hi < 0) return -1;
      while (lo < hi) { const mid = (lo + hi) >> 1; if (data.x[mid] < n) lo = mid + 1; else hi = mid; }
      if (lo > 0 && Math.abs(data.x[lo - 1] - n) <= Math.abs(data.x[lo] - n)) lo -= 1;
      return lo;
    };
    svg.onmousemove = (evt) => {
      const i = nearest(evt);
      if (i < 0) return;
      const x = sx(data.x[i]);
      cursor.setAttribute("x1", x); cursor.setAttribute("x2", x); cursor.setAttribute("stroke-opacity", "0.25");
      const v = data.y[i];
      tip.textContent = `#${data.x[i]}  ${STATUS[data.k[i]]}  ${v === null ? "no value" : opts.format(v)}`;
      tip.hidden = false;
      const rect = svg.getBoundingClientRect();
      tip.style.left = Math.min(rect.width - 150, Math.max(0, (x / svg.viewBox.baseVal.width) * rect.width + 10)) + "px";
    };
    svg.onmouseleave = () => { tip.hidden = true; cursor.setAttribute("stroke-opacity", "0"); };
    svg.onclick = (evt) => { const i = nearest(evt); if (i >= 0 && opts.onPick) opts.onPick(data.x[i]); };
  }

  window.ARChart = { draw, yDomain, ticks };
})();
