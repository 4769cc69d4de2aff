// Attribution graph pages (see saelens_lite/dashboards/graphs.py): layers by token positions,
// nodes sized by influence, edges by weight and sign; feature nodes open their feature page;
// supernodes made by hand, saved to the server (served) or this browser (from disk).
// Every string from the data reaches the page through textContent, never innerHTML.
(function () {
  'use strict';

  var G = { index: null, graphs: {}, served: /^https?:$/.test(location.protocol), dashIndex: {},
            showErrors: true, selectMode: false, selected: {}, supernodes: [], doc: null, slug: null, dash: {} };
  var STORE = 'saelens-lite:supernodes:' + location.pathname + ':';
  var PALETTE = ['#d45f00', '#7b3fb5', '#1b9e77', '#c2185b', '#386cb0', '#8c6d31', '#e7298a', '#4d9221'];
  var captured = null;

  window.saeGraphIndex = function (d) { G.index = d; };
  window.saeGraph = function (slug, d) { G.graphs[slug] = d; };
  window.saeIndex = function (d) { captured = d; };  // a feature dashboard's data/index.js

  // ---------------------------------------------------------------- helpers
  function el(tag, attrs) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined) return;
      if (k === 'text') e.textContent = v;
      else if (k === 'cls') e.className = v;
      else if (k === 'on') Object.keys(v).forEach(function (ev) { e.addEventListener(ev, v[ev]); });
      else e.setAttribute(k, v);
    });
    for (var i = 2; i < arguments.length; i++) {
      var c = arguments[i];
      if (c === null || c === undefined) continue;
      e.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
    }
    return e;
  }
  function svg(tag, attrs, text) {
    var e = document.createElementNS('http://www.w3.org/2000/svg', tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function fmt(x) {
    if (x === null || x === undefined) return '–';
    var a = Math.abs(x);
    if (a !== 0 && (a >= 1e5 || a < 0.001)) return x.toExponential(2);
    return x.toPrecision(3).replace(/\.?0+$/, '');
  }
  function app() { return document.getElementById('app'); }
  function fail(e) { app().replaceChildren(el('p', { cls: 'error', text: String(e && e.message || e) })); }
  function loadScript(src) {
    return new Promise(function (resolve, reject) {
      var s = document.createElement('script');
      s.src = src;
      s.onload = function () { s.remove(); resolve(); };
      s.onerror = function () { s.remove(); reject(new Error('Could not load ' + src)); };
      document.head.appendChild(s);
    });
  }
  function api(path, opts) {
    return fetch('../api/' + path, opts).then(function (r) {
      return r.json().then(function (j) { if (!r.ok) throw new Error(j.error || r.statusText); return j; });
    });
  }
  function kind(n) {
    var t = n.feature_type;
    return t === 'embedding' ? 'embedding' : t === 'logit' ? 'logit' : /error/.test(t) ? 'error' : 'feature';
  }
  function tokenAt(i) { var t = G.doc.metadata.prompt_tokens || []; return t[i] === undefined ? '' : t[i]; }
  function hrefOf(n) {
    var d = G.dash[n.layer];
    return kind(n) === 'feature' && d && n.feature >= 0 && n.feature < d.n_features
      ? '../' + d.path + 'index.html#f' + n.feature : null;
  }
  function labelOf(n) {
    if (n.clerp) return n.clerp;
    var ix = kind(n) === 'feature' && G.dashIndex[(G.dash[n.layer] || {}).path];
    return (ix && ix.expl && ix.expl[n.feature]) || '';
  }
  function nameOf(n) {
    var k = kind(n);
    if (k === 'feature') return 'L' + n.layer + ' #' + n.feature + ' @' + n.ctx_idx;
    if (k === 'error') return 'error L' + n.layer + ' @' + n.ctx_idx;
    if (k === 'embedding') return 'token @' + n.ctx_idx + ' ' + JSON.stringify(tokenAt(n.ctx_idx));
    return n.clerp || 'logit ' + n.feature;
  }

  // ---------------------------------------------------------------- data
  function loadIndex() {
    if (G.served) return api('graphs');
    return G.index ? Promise.resolve(G.index) : Promise.reject(new Error('Graph data not found (data/index.js).'));
  }
  function loadGraph(slug) {
    var enc = encodeURIComponent(slug);
    if (G.served) {
      return Promise.all([api('graphs/' + enc), api('graphs/' + enc + '/supernodes')])
        .then(function (r) { return { doc: r[0], supernodes: r[1].supernodes }; });
    }
    return (G.graphs[slug] ? Promise.resolve() : loadScript('data/' + enc + '.js')).then(function () {
      var doc = G.graphs[slug], saved = null;
      if (!doc) throw new Error('No graph ' + slug + ' in this site');
      try { saved = JSON.parse(localStorage.getItem(STORE + slug) || 'null'); } catch (e) { saved = null; }
      return { doc: doc, supernodes: saved || (doc.qParams && doc.qParams.supernodes) || [] };
    });
  }
  // The explanations of the linked feature dashboards (their data/index.js), one at a time.
  function loadLabels() {
    var paths = {};
    G.doc.nodes.forEach(function (n) { var d = G.dash[n.layer]; if (kind(n) === 'feature' && d) paths[d.path] = true; });
    return Object.keys(paths).reduce(function (p, path) {
      return p.then(function () {
        if (path in G.dashIndex) return null;
        captured = null;
        return loadScript('../' + path + 'data/index.js').then(function () { G.dashIndex[path] = captured; },
                                                               function () { G.dashIndex[path] = null; });
      });
    }, Promise.resolve());
  }
  function cleanGroups(groups) {  // drop members not in the graph (or already grouped), and empty groups
    var ids = {}, seen = {};
    G.doc.nodes.forEach(function (n) { ids[n.node_id] = true; });
    return (groups || []).map(function (g) {
      return [g[0]].concat(g.slice(1).filter(function (id) { var ok = ids[id] && !seen[id]; seen[id] = true; return ok; }));
    }).filter(function (g) { return typeof g[0] === 'string' && g.length > 1; });
  }

  // ---------------------------------------------------------------- list of graphs
  function renderList(index) {
    var tb = el('tbody');
    index.graphs.forEach(function (g) {
      var s = g.scores || {};
      tb.appendChild(el('tr', { 'data-slug': g.slug },
        el('td', null, el('a', { href: '#g/' + encodeURIComponent(g.slug), text: g.slug })),
        el('td', { cls: 'tok', text: g.prompt || '' }), el('td', { text: g.model || '' }),
        el('td', { cls: 'num', text: String(g.n_nodes) }), el('td', { cls: 'num', text: String(g.n_links) }),
        el('td', { cls: 'num', text: fmt(s.replacement) }), el('td', { cls: 'num', text: fmt(s.completeness) })));
    });
    var dash = Object.keys(index.dashboards || {}).map(function (m) {
      return m + ': layer ' + Object.keys(index.dashboards[m]).join(', ');
    }).join('; ');
    document.getElementById('subtitle').textContent = '';
    app().replaceChildren(el('h1', { text: 'Attribution graphs' }),
      el('table', { id: 'graphs', cls: 'graphs' }, el('thead', null, el('tr', null,
        el('th', { text: 'Graph' }), el('th', { text: 'Prompt' }), el('th', { text: 'Model' }), el('th', { text: 'Nodes' }),
        el('th', { text: 'Links' }), el('th', { text: 'Replacement' }), el('th', { text: 'Completeness' }))), tb),
      el('p', { cls: 'muted', text: 'Feature pages linked: ' + (dash || 'none (no transcoder dashboard in this site)') }));
  }

  // ---------------------------------------------------------------- layout
  function radius(n) {
    var k = kind(n);
    if (k === 'logit') return 4 + 8 * Math.sqrt(n.token_prob || 0);
    if (k === 'embedding') return 6;
    var inf = typeof n.influence === 'number' ? Math.min(Math.max(n.influence, 0), 1) : 1;
    return 3 + 7 * (1 - inf);  // influence: the cumulative share, smallest for the most influential
  }
  function layout(width) {
    var nodes = G.doc.nodes, P = (G.doc.metadata.prompt_tokens || []).length, layers = {};
    nodes.forEach(function (n) {
      P = Math.max(P, n.ctx_idx + 1);
      if (kind(n) === 'feature' || kind(n) === 'error') layers[+n.layer] = true;
    });
    var rows = ['E'].concat(Object.keys(layers).map(Number).sort(function (a, b) { return a - b; }).map(String), ['logit']);
    var L = { left: 64, top: 26, rowH: 58, rows: rows, P: P, pos: {} };
    L.colW = Math.max(60, Math.min(180, (width - L.left - 16) / P));
    L.width = L.left + P * L.colW + 16;
    L.height = L.top + rows.length * L.rowH + 34;
    var cells = {};
    nodes.forEach(function (n) {
      var k = kind(n), row = k === 'embedding' ? 'E' : k === 'logit' ? 'logit' : String(+n.layer);
      (cells[row + '|' + n.ctx_idx] = cells[row + '|' + n.ctx_idx] || []).push(n);
    });
    Object.keys(cells).forEach(function (key) {
      var parts = key.split('|'), r = rows.indexOf(parts[0]), pos = +parts[1], ns = cells[key];
      ns.sort(function (a, b) { return radius(b) - radius(a); });
      // side by side; in a crowded cell they shrink so that none covers another (max radius 12)
      var step = Math.min(26, (L.colW - 10) / Math.max(ns.length, 1)), scale = Math.min(1, step / 26);
      ns.forEach(function (n, k) {
        L.pos[n.node_id] = { x: L.left + (pos + 0.5) * L.colW + (k - (ns.length - 1) / 2) * step,
                             y: L.top + (rows.length - 1 - r + 0.5) * L.rowH, r: Math.max(1.5, radius(n) * scale), k: k };
      });
    });
    return L;
  }

  // ---------------------------------------------------------------- drawing
  function visible(n) { return G.showErrors || kind(n) !== 'error'; }
  function groupOf() {
    var g = {};
    G.supernodes.forEach(function (s, i) { s.slice(1).forEach(function (id) { g[id] = i; }); });
    return g;
  }
  function draw() {
    var box = document.getElementById('canvas');
    var L = layout(box.clientWidth || 900), byId = {}, owner = groupOf();
    var root = svg('svg', { id: 'graph-svg', 'class': 'graph', width: L.width, height: L.height });
    G.doc.nodes.forEach(function (n) { byId[n.node_id] = n; });
    L.rows.forEach(function (row, r) {
      var y = L.top + (L.rows.length - 1 - r + 0.5) * L.rowH;
      root.appendChild(svg('line', { 'class': 'row', x1: L.left, x2: L.width - 8, y1: y, y2: y }));
      root.appendChild(svg('text', { 'class': 'axis', x: 6, y: y + 4 }, row === 'E' ? 'tokens' : row === 'logit' ? 'logits' : 'L' + row));
    });
    for (var p = 0; p < L.P; p++) {
      root.appendChild(svg('text', { 'class': 'tok', x: L.left + (p + 0.5) * L.colW, y: L.height - 10, 'text-anchor': 'middle' },
                           JSON.stringify(tokenAt(p)).slice(1, -1).replace(/ /g, '␣').slice(0, 14)));
    }
    var links = G.doc.links.filter(function (l) { return visible(byId[l.source]) && visible(byId[l.target]); });
    var maxW = links.reduce(function (m, l) { return Math.max(m, Math.abs(l.weight)); }, 0) || 1;
    var edges = svg('g', { 'class': 'edges' }), touching = {};
    links.forEach(function (l) {
      var a = L.pos[l.source], b = L.pos[l.target], w = Math.abs(l.weight) / maxW;
      var e = svg('path', { 'class': 'edge ' + (l.weight >= 0 ? 'pos' : 'neg'), 'data-source': l.source, 'data-target': l.target,
                            d: 'M' + a.x.toFixed(1) + ',' + a.y.toFixed(1) + 'L' + b.x.toFixed(1) + ',' + b.y.toFixed(1),
                            'stroke-width': (0.4 + 4.6 * w).toFixed(2), 'stroke-opacity': (0.15 + 0.7 * w).toFixed(2) });
      e.appendChild(svg('title', {}, l.source + ' → ' + l.target + ': ' + fmt(l.weight)));
      [l.source, l.target].forEach(function (id) { (touching[id] = touching[id] || []).push(e); });
      edges.appendChild(e);
    });
    root.appendChild(edges);
    G.supernodes.forEach(function (s, i) { drawSupernode(root, s, i, L, byId); });
    G.doc.nodes.forEach(function (n) { if (visible(n)) root.appendChild(drawNode(n, L.pos[n.node_id], owner[n.node_id], root, touching[n.node_id] || [])); });
    box.replaceChildren(root);
    document.getElementById('n-drawn').textContent = G.doc.nodes.filter(visible).length + ' nodes, ' + links.length + ' links shown';
    document.getElementById('n-selected').textContent = Object.keys(G.selected).length + ' selected';
  }
  function drawNode(n, at, group, root, edges) {
    var k = kind(n), href = hrefOf(n), label = labelOf(n), g = svg('g', {});
    var cls = 'node ' + k + (href ? ' linked' : '') + (G.selected[n.node_id] ? ' selected' : '') + (group !== undefined ? ' grouped' : '');
    var attrs = { 'class': cls, 'data-id': n.node_id, 'data-kind': k };
    var shape = k === 'error' ? svg('rect', Object.assign(attrs, { x: at.x - at.r, y: at.y - at.r, width: 2 * at.r, height: 2 * at.r }))
                              : svg('circle', Object.assign(attrs, { cx: at.x, cy: at.y, r: at.r }));
    if (href) shape.setAttribute('data-href', href);
    if (label) shape.setAttribute('data-label', label);
    if (group !== undefined && !G.selected[n.node_id]) shape.setAttribute('stroke', PALETTE[group % PALETTE.length]);
    shape.appendChild(svg('title', {}, nameOf(n) + (label ? '\n' + label : '') + (href ? '\n(click: feature page)' : '')));
    shape.addEventListener('click', function (e) { onNodeClick(n, e); });
    shape.addEventListener('mouseenter', function () {
      root.classList.add('focus');
      edges.forEach(function (x) { x.classList.add('hot'); });
      showInfo(n);
    });
    shape.addEventListener('mouseleave', function () {
      root.classList.remove('focus');
      edges.forEach(function (x) { x.classList.remove('hot'); });
    });
    g.appendChild(shape);
    if (k === 'feature' && label) g.appendChild(svg('text', { 'class': 'label', x: at.x + at.r + 2, y: at.y + 3 }, label.slice(0, 24)));
    if (k === 'logit') g.appendChild(svg('text', { 'class': 'label', x: at.x, y: at.y - at.r - 3 - 11 * (at.k % 3), 'text-anchor': 'middle' }, (n.clerp || '').slice(0, 28)));  // staggered
    return g;
  }
  function drawSupernode(root, s, i, L, byId) {
    var pts = s.slice(1).filter(function (id) { return byId[id] && visible(byId[id]); }).map(function (id) { return L.pos[id]; });
    if (!pts.length) return;
    var x0 = Math.min.apply(null, pts.map(function (p) { return p.x - p.r; })) - 5;
    var x1 = Math.max.apply(null, pts.map(function (p) { return p.x + p.r; })) + 5;
    var y0 = Math.min.apply(null, pts.map(function (p) { return p.y - p.r; })) - 5;
    var y1 = Math.max.apply(null, pts.map(function (p) { return p.y + p.r; })) + 5;
    var colour = PALETTE[i % PALETTE.length];
    root.appendChild(svg('rect', { 'class': 'supernode', 'data-name': s[0], x: x0, y: y0, width: x1 - x0, height: y1 - y0, rx: 6, stroke: colour }));
    root.appendChild(svg('text', { 'class': 'sn-label', x: x0, y: y0 - 3, fill: colour }, s[0]));
  }
  function showInfo(n) {
    var href = hrefOf(n), dl = el('dl');
    [['node', n.node_id], ['kind', n.feature_type], ['layer', n.layer], ['position', n.ctx_idx + ' ' + JSON.stringify(tokenAt(n.ctx_idx))],
     ['feature', kind(n) === 'feature' ? String(n.feature) : null], ['activation', n.activation === null ? null : fmt(n.activation)],
     ['influence', n.influence === null ? null : fmt(n.influence) + ' (cumulative share)'],
     ['probability', kind(n) === 'logit' ? fmt(n.token_prob) : null], ['label', labelOf(n) || null]].forEach(function (r) {
      if (r[1] !== null && r[1] !== undefined) { dl.appendChild(el('dt', { text: r[0] })); dl.appendChild(el('dd', { text: String(r[1]) })); }
    });
    document.getElementById('node-info').replaceChildren(el('h3', { text: nameOf(n) }), dl,
      href ? el('a', { href: href, text: 'Open the feature page →' }) : null);
  }

  // ---------------------------------------------------------------- interaction
  function onNodeClick(n, e) {
    if (G.selectMode || e.shiftKey || e.ctrlKey || e.metaKey) {
      if (G.selected[n.node_id]) delete G.selected[n.node_id]; else G.selected[n.node_id] = true;
      draw();
      return;
    }
    var href = hrefOf(n);
    if (href) location.href = href; else showInfo(n);
  }
  function status(text, bad) {
    var s = document.getElementById('save-status');
    s.textContent = text;
    s.className = bad ? 'bad' : 'muted';
  }
  function persist() {
    if (G.served) {
      return api('graphs/' + encodeURIComponent(G.slug) + '/supernodes', {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ supernodes: G.supernodes })
      }).then(function (j) { G.supernodes = j.supernodes; status('Saved on the server'); },
              function (e) { status('Not saved: ' + e.message, true); });
    }
    try {
      localStorage.setItem(STORE + G.slug, JSON.stringify(G.supernodes));
      status('Saved in this browser (Download JSON keeps it in a file)');
    } catch (e) { status('Not saved: ' + e.message, true); }
    return Promise.resolve();
  }
  function makeSupernode() {
    var input = document.getElementById('supernode-name'), name = input.value.trim(), ids = Object.keys(G.selected);
    if (!name) { status('Name the supernode first', true); return; }
    if (!ids.length) { status('Select nodes first: shift-click them, or tick "Select nodes"', true); return; }
    G.supernodes = G.supernodes.filter(function (g) { return g[0] !== name; }).map(function (g) {
      return [g[0]].concat(g.slice(1).filter(function (id) { return !G.selected[id]; }));
    }).filter(function (g) { return g.length > 1; });
    G.supernodes.push([name].concat(ids));
    G.selected = {};
    input.value = '';
    renderSupernodeList();
    draw();
    persist();
  }
  function ungroup(name) {
    G.supernodes = G.supernodes.filter(function (g) { return g[0] !== name; });
    renderSupernodeList();
    draw();
    persist();
  }
  function renderSupernodeList() {
    var ul = document.getElementById('supernode-list');
    ul.replaceChildren.apply(ul, G.supernodes.map(function (g, i) {
      var sw = el('span', { cls: 'swatch' });
      sw.style.background = PALETTE[i % PALETTE.length];
      return el('li', { 'data-name': g[0] }, sw, el('span', { text: g[0] }), el('span', { cls: 'muted', text: '(' + (g.length - 1) + ')' }),
                el('button', { cls: 'ungroup', text: 'ungroup', on: { click: function () { ungroup(g[0]); } } }));
    }));
    if (!G.supernodes.length) ul.appendChild(el('li', { cls: 'muted', text: 'none yet' }));
  }
  function exportJson() {
    var doc = JSON.parse(JSON.stringify(G.doc));
    doc.qParams = Object.assign({}, doc.qParams || {}, { supernodes: G.supernodes });
    doc.nodes.forEach(function (n, i) { if (!n.clerp) n.clerp = labelOf(G.doc.nodes[i]); });
    var a = el('a', { href: URL.createObjectURL(new Blob([JSON.stringify(doc)], { type: 'application/json' })),
                      download: G.slug + '.json' });
    document.body.appendChild(a);
    a.click();
    a.remove();
  }

  // ---------------------------------------------------------------- graph view
  function renderGraph(slug, index) {
    app().replaceChildren(el('p', { cls: 'muted', text: 'Loading ' + slug + '…' }));
    loadGraph(slug).then(function (r) {
      G.slug = slug; G.doc = r.doc; G.selected = {};
      G.dash = (index.dashboards || {})[G.doc.metadata.model] || {};
      G.supernodes = cleanGroups(r.supernodes);
      return loadLabels();
    }).then(function () {
      var md = G.doc.metadata, s = md.scores || {};
      document.getElementById('subtitle').textContent = (md.model || '') + ' · ' + JSON.stringify(md.prompt || '');
      var errs = el('input', { id: 'show-errors', type: 'checkbox' }), sel = el('input', { id: 'select-mode', type: 'checkbox' });
      errs.checked = G.showErrors;
      sel.checked = G.selectMode;
      errs.addEventListener('change', function () { G.showErrors = errs.checked; draw(); });
      sel.addEventListener('change', function () { G.selectMode = sel.checked; });
      app().replaceChildren(
        el('nav', null, el('a', { href: '#', text: '← all graphs' })),
        el('h1', { id: 'graph-title', text: slug }),
        el('p', { cls: 'muted', text: 'replacement score ' + fmt(s.replacement) + ' · completeness score ' + fmt(s.completeness) +
          ' · node threshold ' + fmt(md.node_threshold) + (md.edge_threshold !== undefined ? ', edge threshold ' + fmt(md.edge_threshold) : '') }),
        el('div', { cls: 'bar' },
          el('label', null, errs, ' Error nodes'), el('label', null, sel, ' Select nodes (clicks select; or shift-click)'),
          el('span', { id: 'n-selected', cls: 'muted' }),
          el('input', { id: 'supernode-name', type: 'text', placeholder: 'supernode name', maxlength: '200' }),
          el('button', { id: 'make-supernode', text: 'Group selected', on: { click: makeSupernode } }),
          el('button', { id: 'clear-selection', text: 'Clear selection', on: { click: function () { G.selected = {}; draw(); } } }),
          el('button', { id: 'export', text: 'Download JSON', on: { click: exportJson } }),
          el('span', { id: 'save-status', cls: 'muted' })),
        el('div', { cls: 'layout' },
          el('div', null, el('div', { id: 'canvas', cls: 'canvas' }), el('p', { id: 'n-drawn', cls: 'muted' })),
          el('div', { cls: 'side' },
            el('section', { id: 'node-info' }, el('p', { cls: 'muted', text: 'Hover a node for its details; click a feature for its page.' })),
            el('section', null, el('h3', { text: 'Supernodes' }), el('ul', { id: 'supernode-list' })),
            el('section', { cls: 'legend' }, el('h3', { text: 'Legend' }),
              el('p', { text: 'Rows: layers (tokens at the bottom, logits at the top); columns: token positions. Circle size: ' +
                'influence on the logits (1 − the cumulative share); squares: error nodes; logits sized by probability. ' +
                'Edges: direct effects, width by |weight|, blue positive, red negative. Darker orange: a feature with a feature page.' })))));
      renderSupernodeList();
      draw();
    }).catch(fail);
  }

  // ---------------------------------------------------------------- routing
  function route() {
    loadIndex().then(function (index) {
      var m = /^#g\/(.+)$/.exec(location.hash);
      if (m) renderGraph(decodeURIComponent(m[1]), index); else renderList(index);
    }).catch(fail);
  }
  document.addEventListener('DOMContentLoaded', function () {
    window.addEventListener('hashchange', route);
    route();
  });
})();
