// The research tree: plain SVG, no library. x is the run's position in the session, y its lane (the server
// lays the lanes out: tree_layout.py). Each chain is a line from the node it started from; the best lineage is
// drawn over them, thick; a combine run has a dashed line from the other run it merged; a node is a dot (kept:
// larger; frontier: a ring), and clicking one opens its diff.
// Texts from the session go into <title> elements with textContent, never parsed as markup.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const M = { left: 14, right: 14, top: 14, bottom: 14 };
  const LANE = 18; // pixels between lanes
  const MIN_DX = 9, MAX_DX = 48; // pixels between consecutive runs: wide enough to click one at 500 nodes

  function make(tag, attrs, parent) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (parent) parent.appendChild(node);
    return node;
  }

  function draw(box, data, opts) {
    const nodes = data.nodes;
    box.replaceChildren();
    if (!nodes.length) {
      const p = document.createElement("p");
      p.className = "empty";
      p.textContent = "No experiments yet.";
      box.appendChild(p);
      return;
    }
    const first = nodes[0].n, count = nodes[nodes.length - 1].n - first + 1;
    const room = Math.max(200, box.clientWidth - M.left - M.right);
    const dx = Math.max(MIN_DX, Math.min(MAX_DX, room / Math.max(1, count)));
    const width = M.left + M.right + dx * Math.max(0, count - 1);
    const height = M.top + M.bottom + LANE * Math.max(0, data.lanes - 1);
    const x = (n) => M.left + (n - first) * dx;
    const y = (lane) => M.top + lane * LANE;
    const byN = new Map(nodes.map((node) => [node.n, node]));

    const svg = make("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
    svg.setAttribute("aria-label", "research tree");
    const edges = make("g", { class: "t-edges" }, svg);
    for (const chain of data.chains) {
      const start = chain.anchor !== null && byN.has(chain.anchor) ? byN.get(chain.anchor) : null;
      const lane = y(chain.lane);
      const d = start
        ? `M${x(start.n)},${y(start.lane)} V${lane} H${x(chain.last)}`
        : `M${x(chain.first)},${lane} H${x(chain.last)}`;
      make("path", { d, class: "t-edge" }, edges);
    }
    const lineage = make("g", { class: "t-lineage" }, svg);
    for (let i = 1; i < data.lineage.length; i++) {
      const a = byN.get(data.lineage[i - 1]), b = byN.get(data.lineage[i]);
      if (!a || !b) continue;
      make("path", { d: `M${x(a.n)},${y(a.lane)} V${y(b.lane)} H${x(b.n)}`, class: "t-lineage-step" }, lineage);
    }
    // A combine run: a dashed line from the run it merged that is not its parent.
    const merges = make("g", { class: "t-merges" }, svg);
    const byId = new Map(nodes.map((node) => [node.run_id, node]));
    for (const node of nodes) {
      for (const other of node.combined || []) {
        const from = byId.get(other);
        if (!from || other === node.parent) continue;
        make("path", { d: `M${x(from.n)},${y(from.lane)} L${x(node.n)},${y(node.lane)}`, class: "t-merge" }, merges);
      }
    }
    const dots = make("g", { class: "t-nodes" }, svg);
    for (const node of nodes) {
      const cls = ["t-node", "t-" + node.status];
      if (node.lineage) cls.push("t-on-lineage");
      if (node.best) cls.push("t-best");
      if (node.frontier) cls.push("t-frontier");
      if (node.near_miss) cls.push("t-near");
      const r = node.best ? 6 : node.status === "keep" ? 4.5 : 3;
      const dot = make("circle", { cx: x(node.n), cy: y(node.lane), r, class: cls.join(" ") }, dots);
      dot.dataset.runId = node.run_id;
      const title = make("title", {}, dot);
      const merged = node.combined && node.combined.length ? ` · combines ${node.combined.join(" + ")}` : "";
      const from = (node.parent ? ` · from ${node.parent}` : " · baseline") + merged;
      title.textContent = `${node.run_id} · ${node.status} · ${opts.format(node.value)} · depth ${node.depth}${from}\n${node.description}`;
      dot.addEventListener("click", () => opts.onPick(node));
    }
    box.appendChild(svg);
    box.scrollLeft = box.scrollWidth; // the newest runs first in view
  }

  window.ARTree = { draw };
})();
