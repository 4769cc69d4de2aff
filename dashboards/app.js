// Feature dashboards: a single-page app over JSON-P data files (see saelens_lite/dashboards/site.py).
// Every string from the data (token text above all) reaches the page through textContent or
// createTextNode, never innerHTML, so it can neither run nor change the page's structure.
(function () {
  'use strict';

  var S = { meta: null, index: null, shards: {}, waiting: {}, sortKey: 'density', sortDir: -1,
            query: '', shown: 300, live: false, info: null, explain: null };

  window.saeMeta = function (m) { S.meta = m; };
  window.saeIndex = function (d) { S.index = d; };
  window.saeShard = function (i, d) {
    S.shards[i] = d;
    (S.waiting[i] || []).forEach(function (cb) { cb(d); });
    delete S.waiting[i];
  };

  // ---------------------------------------------------------------- helpers
  function el(tag, attrs) {
    var e = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        var v = attrs[k];
        if (v === null || v === undefined) return;
        if (k === 'text') e.textContent = v;
        else if (k === 'cls') e.className = v;
        else if (k === 'on') Object.keys(v).forEach(function (ev) { e.addEventListener(ev, v[ev]); });
        else e.setAttribute(k, v);
      });
    }
    for (var i = 2; i < arguments.length; i++) {  // null children are skipped
      var c = arguments[i];
      if (c === null || c === undefined) continue;
      e.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
    }
    return e;
  }
  var SVG = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs) {
    var e = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    return e;
  }
  function pad5(i) { return ('0000' + i).slice(-5); }
  function fmt(x) {
    if (x === null || x === undefined) return '–';
    if (x === 0) return '0';
    var a = Math.abs(x);
    if (a >= 1e6 || a < 0.001) return x.toExponential(2);
    if (a >= 1000) return Math.round(x).toLocaleString('en-US');
    return x.toPrecision(3).replace(/\.?0+$/, '');
  }
  function pct(d) { return d === 0 ? '0%' : (d * 100 < 0.001 ? (d * 100).toExponential(1) : fmt(d * 100)) + '%'; }
  // Whitespace made visible; the text is still set with textContent.
  // Isolated tokens (chips, logit tables) also show spaces, which would be invisible there.
  function showTok(s, isolated) {
    if (s === undefined || s === null) return '?';
    if (s === '') return '∅';
    s = s.replace(/\n/g, '↵').replace(/\t/g, '→').replace(/\r/g, '␍');
    return isolated ? s.replace(/ /g, '␣') : s;
  }
  function chipText(t) { return showTok(t, true); }
  function heat(a, max) {
    if (!(a > 0) || !(max > 0)) return '';
    var t = Math.min(a / max, 1);
    return 'rgba(255, 120, 20, ' + (0.12 + 0.78 * t).toFixed(3) + ')';
  }
  function loadShard(i, cb) {
    if (S.shards[i]) { cb(S.shards[i]); return; }
    if (S.waiting[i]) { S.waiting[i].push(cb); return; }
    S.waiting[i] = [cb];
    var s = document.createElement('script');
    s.src = 'data/f/' + pad5(i) + '.js';
    s.onerror = function () { app().replaceChildren(el('p', { cls: 'error', text: 'Could not load ' + s.src })); };
    document.head.appendChild(s);
  }
  function app() { return document.getElementById('app'); }
  function nFeatures() { return S.meta ? S.meta.n_features : 0; }

  // ---------------------------------------------------------------- index view
  var COLS = [
    ['id', 'Feature'], ['density', 'Density'], ['max', 'Max act'], ['mean', 'Mean act'], ['top', 'Top tokens']
  ];
  // With explanations (saelens-lite dashboard --explanations): their text, then each scorer's AUROC.
  function columns() {
    if (!S.index.expl) return COLS;
    return COLS.concat([['expl', 'Explanation']], Object.keys(S.index.scores).sort().map(function (n) {
      return ['s:' + n, n + ' AUROC'];
    }));
  }
  function isText(k) { return k === 'id' || k === 'top' || k === 'expl'; }
  function keyOf(k, i) {
    if (k === 'id') return i;
    if (k === 'top') return (S.index.top[i] || []).join(' ');
    if (k === 'expl') return S.index.expl[i];
    if (k.indexOf('s:') === 0) return S.index.scores[k.slice(2)][i];
    return S.index[k][i];
  }
  function matches(i, q) {
    if (!q) return true;
    if (/^\d+$/.test(q)) return String(i).indexOf(q) === 0;
    var toks = S.index.top[i] || [];
    for (var j = 0; j < toks.length; j++) if (toks[j].toLowerCase().indexOf(q) >= 0) return true;
    var e = S.index.expl && S.index.expl[i];
    return !!e && e.toLowerCase().indexOf(q) >= 0;
  }
  function renderIndex() {
    var root = app();
    var search = el('input', { id: 'search', type: 'search',
                               placeholder: S.index.expl ? 'Search: feature id, token or explanation text'
                                                         : 'Search: feature id or token text',
                               value: S.query, autocomplete: 'off' });
    var count = el('span', { id: 'count', cls: 'muted' });
    var tbody = el('tbody');
    var more = el('button', { id: 'more', cls: 'more', text: 'Show more' });
    var head = el('tr');
    var cols = columns();
    cols.forEach(function (c) {
      var arrow = S.sortKey === c[0] ? (S.sortDir < 0 ? ' ▼' : ' ▲') : '';
      head.appendChild(el('th', { 'data-key': c[0], tabindex: '0', on: { click: function () {
        if (S.sortKey === c[0]) S.sortDir = -S.sortDir; else { S.sortKey = c[0]; S.sortDir = isText(c[0]) ? 1 : -1; }
        renderIndex();
      } } }, c[1] + arrow));
    });
    function fill() {
      var q = S.query.trim().toLowerCase();
      var ids = [];
      for (var i = 0; i < nFeatures(); i++) if (matches(i, q)) ids.push(i);
      var k = S.sortKey, d = S.sortDir;
      ids.sort(function (a, b) {
        var x = keyOf(k, a), y = keyOf(k, b);
        var nx = x === null || x === undefined, ny = y === null || y === undefined;
        if (nx || ny) return nx && ny ? a - b : nx ? 1 : -1;  // features without a value last, either way
        return (x < y ? -1 : x > y ? 1 : a - b) * d;
      });
      count.textContent = ids.length + ' of ' + nFeatures() + ' features';
      var rows = [];
      ids.slice(0, S.shown).forEach(function (i) {
        var dead = S.index.density[i] === 0;
        var toks = el('td', { cls: 'toks' });
        (S.index.top[i] || []).forEach(function (t) { toks.appendChild(el('span', { cls: 'chip', text: chipText(t) })); });
        rows.push(el.apply(null, ['tr', { cls: dead ? 'dead' : null, 'data-id': String(i) },
          el('td', null, el('a', { href: '#f' + i, text: '#' + i })),
          el('td', { cls: 'num' }, pct(S.index.density[i])),
          el('td', { cls: 'num' }, fmt(S.index.max[i])),
          el('td', { cls: 'num' }, fmt(S.index.mean[i])),
          toks].concat(explCells(i))));
      });
      tbody.replaceChildren.apply(tbody, rows);
      more.style.display = ids.length > S.shown ? '' : 'none';
    }
    var timer = null;
    search.addEventListener('input', function () {
      clearTimeout(timer);
      timer = setTimeout(function () { S.query = search.value; S.shown = 300; fill(); }, 120);
    });
    more.addEventListener('click', function () { S.shown += 1000; fill(); });
    var m = S.meta;
    var dead = 0;
    for (var i = 0; i < nFeatures(); i++) if (S.index.density[i] === 0) dead++;
    root.replaceChildren.apply(root, [
      el('section', { cls: 'summary' },
        el('h1', null, 'Features of ' + m.architecture + ' SAE'),
        el('p', { cls: 'muted' }, m.model + ' · ' + m.hook + ' · ' + m.d_in + ' → ' + m.d_sae + ' features · ' +
           m.n_tokens.toLocaleString() + ' tokens · ' + dead + ' dead')),
      trainingBox(),
      liveBox(),
      explainCard(),
      el('div', { cls: 'controls' }, search, count),
      el('table', { id: 'features', cls: 'features' }, el('thead', null, head), tbody),
      more].filter(Boolean));
    fill();
    search.focus();
  }

  function explCells(i) {
    if (!S.index.expl) return [];
    return [el('td', { cls: 'expl', text: S.index.expl[i] || '' })].concat(Object.keys(S.index.scores).sort().map(function (n) {
      return el('td', { cls: 'num' }, fmt(S.index.scores[n][i]));
    }));
  }

  // ---------------------------------------------------------------- feature view
  function histogram(f) {
    var W = 560, H = 150, padL = 40, padB = 22, n = f.hist.length;
    var maxC = Math.max.apply(null, f.hist.concat([1]));
    var s = svg('svg', { id: 'hist', viewBox: '0 0 ' + W + ' ' + H, width: W, height: H, role: 'img' });
    var t = svg('title'); t.textContent = 'Activation histogram of feature ' + f.i; s.appendChild(t);
    var bw = (W - padL - 4) / n;
    f.hist.forEach(function (c, b) {
      var h = c ? Math.max(1, (H - padB - 6) * c / maxC) : 0;
      var r = svg('rect', { x: padL + b * bw + 0.5, y: H - padB - h, width: Math.max(bw - 1, 1), height: h,
                            fill: heat((b + 0.5) / n * f.max, f.max) || '#ddd', 'class': 'bar' });
      var tt = svg('title');
      tt.textContent = '[' + fmt(b * f.max / n) + ', ' + fmt((b + 1) * f.max / n) + '): ' + c;
      r.appendChild(tt);
      s.appendChild(r);
    });
    s.appendChild(svg('line', { x1: padL, y1: H - padB, x2: W - 4, y2: H - padB, stroke: '#888' }));
    [[0, 'start'], [0.5, 'middle'], [1, 'end']].forEach(function (p) {
      var lab = svg('text', { x: padL + p[0] * (W - padL - 4), y: H - 6, 'text-anchor': p[1], 'class': 'axis' });
      lab.textContent = fmt(p[0] * f.max);
      s.appendChild(lab);
    });
    var top = svg('text', { x: padL - 4, y: 12, 'text-anchor': 'end', 'class': 'axis' });
    top.textContent = String(maxC);
    s.appendChild(top);
    return s;
  }

  function example(ex, tok, max, extra) {
    var toks = ex[0], acts = ex[1], c = ex[2];
    var line = el('div', { cls: 'example' },
      el('span', { cls: 'val', text: fmt(acts[c]) }));
    var text = el('span', { cls: 'ctx' });
    toks.forEach(function (id, j) {
      var s = el('span', { cls: 'tok' + (j === c ? ' centre' : ''), text: showTok(tok[id]),
                           title: (tok[id] === undefined ? '?' : JSON.stringify(tok[id])) + '  act = ' + fmt(acts[j]) });
      var bg = heat(acts[j], max);
      if (bg) s.style.background = bg;
      text.appendChild(s);
    });
    line.appendChild(text);
    if (extra) line.appendChild(extra);
    return line;
  }

  function tokenTable(title, ids, vals, tok, cls) {
    var t = el('table', { cls: 'logits ' + cls }, el('caption', { text: title }));
    ids.forEach(function (id, j) {
      t.appendChild(el('tr', null, el('td', { cls: 'tokcell' }, el('span', { cls: 'tok', text: chipText(tok[id]) })),
                       el('td', { cls: 'num', text: (vals[j] > 0 ? '+' : '') + fmt(vals[j]) })));
    });
    return t;
  }

  function renderFeature(fi) {
    var m = S.meta;
    if (!(fi >= 0 && fi < m.n_features)) { app().replaceChildren(el('p', { cls: 'error', text: 'No feature ' + fi })); return; }
    app().replaceChildren(el('p', { cls: 'muted', text: 'Loading feature ' + fi + '…' }));
    var shard = Math.floor(fi / m.shard_features);
    loadShard(shard, function (d) {
      if (location.hash !== '#f' + fi) return;  // the user moved on
      var f = d.features[fi - shard * m.shard_features], tok = d.tok;
      var nav = el('nav', { cls: 'fnav' },
        el('a', { href: '#', text: '← all features' }),
        el('span', { cls: 'muted', text: '(← → keys step)' }),
        fi > 0 ? el('a', { href: '#f' + (fi - 1), id: 'prev', text: '‹ #' + (fi - 1) }) : null,
        fi + 1 < m.n_features ? el('a', { href: '#f' + (fi + 1), id: 'next', text: '#' + (fi + 1) + ' ›' }) : null);
      var density = f.n / m.n_tokens;
      var stats = el('div', { cls: 'stats' },
        stat('Density', pct(density) + (f.n ? ' (1 in ' + Math.round(1 / density).toLocaleString() + ')' : '')),
        stat('Max activation', fmt(f.max)), stat('Mean activation', fmt(f.mean)),
        stat('Active on', f.n.toLocaleString() + ' tokens'));
      var side = el('div', { cls: 'side' });
      if (f.pos) {
        side.appendChild(el('h3', { text: 'Logit effects' }));
        if (m.target_hook) {
          side.appendChild(el('p', { cls: 'muted note', text: 'Through the decoder direction, written to ' +
            m.target_hook + '; the activations are read at ' + m.hook + '.' }));
        }
        side.appendChild(el('div', { cls: 'logit-pair' },
          tokenTable('Boosts', f.pos[0], f.pos[1], tok, 'pos'), tokenTable('Suppresses', f.neg[0], f.neg[1], tok, 'neg')));
      } else if (m.logits_note) {
        side.appendChild(el('h3', { text: 'Logit effects' }));
        side.appendChild(el('p', { cls: 'muted note', text: m.logits_note }));
      }
      if (f.near) {
        var ul = el('ul', { cls: 'near' });
        f.near[0].forEach(function (g, j) {
          ul.appendChild(el('li', null, el('a', { href: '#f' + g, text: '#' + g }), ' ',
            el('span', { cls: 'muted', text: 'cos ' + fmt(f.near[1][j]) }),
            ' ', el('span', { cls: 'chip', text: (S.index.top[g] || []).slice(0, 2).map(chipText).join(' ') })));
        });
        side.appendChild(el('h3', { text: 'Nearest features (decoder cosine)' }));
        side.appendChild(ul);
      }
      var main = el('div', { cls: 'fmain' },
        el('h3', { text: 'Activation histogram' }), f.n ? histogram(f) : el('p', { cls: 'muted', text: 'This feature never fired on the cache.' }));
      var top = el('section', { id: 'top-examples', cls: 'examples' }, el('h3', { text: 'Top activations' }));
      f.top.forEach(function (ex) { top.appendChild(example(ex, tok, f.max)); });
      if (!f.top.length) top.appendChild(el('p', { cls: 'muted', text: 'No examples.' }));
      main.appendChild(top);
      f.quant.forEach(function (q) {
        if (!q.ex.length) return;
        var sec = el('section', { cls: 'examples quantile' },
          el('h4', null, 'Activations in [' + fmt(q.lo) + ', ' + fmt(q.hi) + ')',
             el('span', { cls: 'muted' }, ' · ' + q.n.toLocaleString() + ' tokens (' + pct(f.n ? q.n / f.n : 0) + ' of firings)')));
        q.ex.forEach(function (ex) { sec.appendChild(example(ex, tok, f.max)); });
        main.appendChild(sec);
      });
      app().replaceChildren(nav, el('h1', { id: 'feature-title', text: 'Feature #' + fi }), stats,
        explanationBox(d.expl && d.expl[fi], fi), interventionsBox(fi, f, tok), el('div', { cls: 'fgrid' }, main, side));
      window.scrollTo(0, 0);
    });
  }
  // The explanation, its explainer and every score beside the same score of a shuffled explanation
  // (another feature's): a score no better than its shuffled one measures the judge, not the text.
  function explanationBox(x, fi) {
    var ask = explainButton(fi);
    if (!S.meta.explanations && !x) return ask ? el('section', { id: 'explanation', cls: 'explanation' }, ask) : null;
    if (!x) return el('section', { id: 'explanation', cls: 'explanation' },
                      el('p', { cls: 'muted', text: 'No explanation for this feature.' }), ask);
    var rows = [];
    Object.keys(x.scores || {}).sort().forEach(function (n) {
      var sc = x.scores[n];
      Object.keys(sc).sort().forEach(function (m) {
        if (m.indexOf('shuffled_') === 0 || m === 'n_pos' || m === 'n_neg') return;
        rows.push(el('tr', null, el('td', { text: n }), el('td', { text: m.replace(/_/g, ' ') }),
          el('td', { cls: 'num', text: fmt(sc[m]) }), el('td', { cls: 'num muted', text: fmt(sc['shuffled_' + m]) })));
      });
    });
    var sh = x.shuffled || {};
    return el('section', { id: 'explanation', cls: 'explanation' },
      el('h3', { text: x.live ? 'Explanation (made now)' : 'Explanation' }),
      el('p', { id: 'explanation-text', cls: 'expl-text', text: x.text || '' }),
      el('p', { cls: 'muted', text: 'by ' + (x.explainer || '?') }),
      rows.length ? el('table', { id: 'explanation-scores', cls: 'scores' },
        el('thead', null, el('tr', null, el('th', { text: 'Scorer' }), el('th', { text: 'Metric' }),
                             el('th', { text: 'Score' }), el('th', { text: 'Shuffled' }))),
        el.apply(null, ['tbody', null].concat(rows))) : null,
      sh.explanation ? el('p', { cls: 'muted note' }, 'Shuffled: the explanation of ',
                          el('a', { href: '#f' + sh.feature, text: '#' + sh.feature }), ': ' + sh.explanation) : null);
  }
  // Served with --activations: explain this feature now (POST /api/explain); the answer replaces
  // the box, in the same form as a saelens-lite explain record.
  function explainButton(fi) {
    if (fi === undefined || !S.live || !S.info.explain) return null;
    var btn = el('button', { id: 'explain-run', text: 'Explain this feature' });
    var out = el('div', { id: 'explain-out' });
    runner(btn, out, function () {
      return post('api/explain', { feature: fi }).then(function (j) {
        var box = document.getElementById('explanation');
        if (box) box.replaceWith(explanationBox(Object.assign({ live: true }, j)));
      });
    });
    return el('div', { cls: 'explain-ask' }, btn,
      el('span', { cls: 'muted', text: ' by ' + S.info.explain.explainer + ', scored by ' +
                                        (S.info.explain.scorers.join(', ') || 'nothing') }), out);
  }
  function stat(label, value) { return el('div', { cls: 'stat' }, el('div', { cls: 'label', text: label }), el('div', { cls: 'value', text: value })); }

  // ---------------------------------------------------------------- training curves (when the run had them)
  // A PNG copied into the site by the builder; closed by default so the feature table stays on
  // the first screen. The image links to itself at full size.
  function trainingBox() {
    var src = S.meta.training_curves;
    if (!src) return null;
    var alt = 'Training curves of this SAE (' + S.meta.architecture + ', ' + S.meta.hook + '): loss, ' +
              'in-sample FVU (on the training batches), L0 and dead-latent fraction against tokens trained';
    return el('section', { id: 'training', cls: 'training' },
      el('h3', { text: 'Training' }),
      el('details', null,
        el('summary', { text: 'Training curves: loss, FVU (in-sample), L0 and dead latents against tokens' }),
        el('a', { href: src, title: 'open at full size' }, el('img', { id: 'training-curves', src: src, alt: alt }))));
  }

  // ---------------------------------------------------------------- live box (served mode only)
  function liveBox() {
    if (!S.live) return null;
    var ta = el('textarea', { id: 'live-text', rows: '3', placeholder: 'Type text to see which features fire on each token' });
    var out = el('div', { id: 'live-out', cls: 'live-out' });
    var detail = el('div', { id: 'live-detail', cls: 'live-detail' });
    var btn = el('button', { id: 'live-run', text: 'Run' });
    btn.addEventListener('click', function () {
      btn.disabled = true;
      fetch('api/encode', { method: 'POST', headers: { 'Content-Type': 'application/json' },
                            body: JSON.stringify({ text: ta.value }) })
        .then(function (r) { return r.json(); })
        .then(function (j) {
          if (j.error) { out.replaceChildren(el('p', { cls: 'error', text: j.error })); return; }
          var mx = 0;
          j.features.forEach(function (fs) { if (fs.length) mx = Math.max(mx, fs[0][1]); });
          var spans = j.tokens.map(function (t, i) {
            var fs = j.features[i];
            var s = el('span', { cls: 'tok', text: showTok(t), tabindex: '0',
                                 title: fs.slice(0, 5).map(function (p) { return '#' + p[0] + ' ' + fmt(p[1]); }).join('\n') });
            var bg = fs.length ? heat(fs[0][1], mx) : '';
            if (bg) s.style.background = bg;
            s.addEventListener('click', function () {
              var ul = el('ul', { cls: 'near' });
              fs.forEach(function (p) {
                ul.appendChild(el('li', null, el('a', { href: '#f' + p[0], text: '#' + p[0] }), ' ',
                  el('span', { cls: 'muted', text: fmt(p[1]) }), ' ',
                  el('span', { cls: 'chip', text: (S.index.top[p[0]] || []).slice(0, 2).map(chipText).join(' ') })));
              });
              detail.replaceChildren(el('h4', { text: 'Features on ' + JSON.stringify(t) }), ul);
            });
            return s;
          });
          out.replaceChildren.apply(out, spans);
        })
        .catch(function (e) { out.replaceChildren(el('p', { cls: 'error', text: String(e) })); })
        .then(function () { btn.disabled = false; });
    });
    return el('section', { cls: 'live' }, el('h3', { text: 'Try it' }), ta, btn, out, detail);
  }

  // ---------------------------------------------------------------- model panels (served mode only)
  // Shown when /api/info says a model and an SAE are loaded. Every string the server sends back
  // (generated text, token text) goes into the page through textContent, as everywhere else.
  function post(path, body) {
    return fetch(path, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) })
      .then(function (r) { return r.json().then(function (j) { if (!r.ok) throw new Error(j.error || r.statusText); return j; }); });
  }
  function numInput(id, value, min, max, step) {
    return el('input', { id: id, type: 'number', value: String(value), min: String(min), max: String(max), step: String(step) });
  }
  function field(label, input) { return el('label', { cls: 'field' }, el('span', { cls: 'muted', text: label }), input); }
  // Run `job` on click with the button disabled meanwhile; errors show in `out`.
  function runner(btn, out, job) {
    btn.addEventListener('click', function () {
      btn.disabled = true;
      out.replaceChildren(el('p', { cls: 'muted', text: 'Running…' }));
      job().catch(function (e) { out.replaceChildren(el('p', { cls: 'error', text: String(e.message || e) })); })
        .then(function () { btn.disabled = false; });
    });
  }
  function isSpecial(t) { return /^<\|?[^<>\s]*\|?>$/.test(t || ''); }
  // The text of a top example (special tokens at its ends dropped): a ready input for the panels.
  function exampleText(f, tok) {
    if (!f.top.length) return '';
    var ts = f.top[0][0].map(function (id) { return tok[id] || ''; });
    while (ts.length && isSpecial(ts[0])) ts.shift();
    while (ts.length && isSpecial(ts[ts.length - 1])) ts.pop();
    return ts.join('');
  }

  function interventionsBox(fi, f, tok) {
    if (!S.live) return null;
    return el('section', { id: 'interventions', cls: 'live interventions' },
      steerPanel(fi, f), ablatePanel(fi, f, tok));
  }

  function steerPanel(fi, f) {
    var L = S.info.limits, byMax = S.info.strength_unit === 'max_activation';
    var prompt = el('textarea', { id: 'steer-prompt', rows: '2', placeholder: 'A prompt to continue, e.g. "The weather today"' });
    var strength = numInput('steer-strength', 4, -L.max_strength, L.max_strength, 0.5);
    var ntok = numInput('steer-tokens', 24, 1, L.max_new_tokens, 1);
    var btn = el('button', { id: 'steer-run', text: 'Steer' });
    var out = el('div', { id: 'steer-out', cls: 'steer-out' });
    var unit = byMax ? '× max activation (' + fmt(f.max) + ')' : '× unit decoder direction';
    runner(btn, out, function () {
      return post('api/steer', { prompt: prompt.value, feature: fi, strength: parseFloat(strength.value),
                                 max_new_tokens: parseInt(ntok.value, 10) }).then(function (j) {
        function column(id, title, text) {
          return el('div', { cls: 'steer-col' }, el('h4', { text: title }),
            el('div', { id: id, cls: 'gen' }, el('span', { cls: 'muted', text: j.prompt }), text));
        }
        out.replaceChildren(
          column('steer-baseline', 'Baseline', j.baseline),
          column('steer-steered', 'Steered: +' + fmt(j.strength) + ' ' + (j.unit === 'max_activation' ? '× max activation' : '× unit direction'), j.steered));
      });
    });
    return el('details', { id: 'steer', cls: 'panel' },
      el('summary', { text: 'Steer with this feature: continue a prompt with it added at every token' }),
      el('p', { cls: 'muted note', text: 'Greedy continuations of the clean model and of the model with strength ' + unit +
        ' times this feature\'s decoder direction added to ' + S.info.hook + ' at every position (the SAE\'s error term kept).' }),
      prompt,
      el('div', { cls: 'row' }, field('Strength', strength), el('span', { cls: 'muted', text: unit }), field('Tokens', ntok), btn),
      out);
  }

  // Loss change per token, coloured: red where ablating the feature makes the token harder to
  // predict (it helped), blue where easier; tokens where the feature fires are underlined.
  function deltaColour(d, max) {
    if (d === null || !(max > 0) || d === 0) return '';
    var t = Math.min(Math.abs(d) / max, 1);
    return (d > 0 ? 'rgba(214, 39, 40, ' : 'rgba(31, 119, 180, ') + (0.1 + 0.75 * t).toFixed(3) + ')';
  }
  function ablatePanel(fi, f, tok) {
    var L = S.info.limits;
    var text = el('textarea', { id: 'ablate-text', rows: '3', placeholder: 'Text to score (2 to ' + L.text_tokens + ' tokens)' });
    text.value = exampleText(f, tok);
    var btn = el('button', { id: 'ablate-run', text: 'Ablate' });
    var out = el('div', { id: 'ablate-out', cls: 'ablate-out' });
    runner(btn, out, function () {
      return post('api/ablate', { text: text.value, feature: fi }).then(function (j) {
        var max = 0;
        j.tokens.forEach(function (t) { if (t.delta !== null) max = Math.max(max, Math.abs(t.delta)); });
        var line = el('div', { id: 'ablate-tokens', cls: 'ctx' });
        j.tokens.forEach(function (t) {
          var act = t.activations[0];
          var tip = JSON.stringify(t.token) + '\n' + (t.delta === null ? 'first token: no prediction' :
            'Δloss ' + (t.delta > 0 ? '+' : '') + fmt(t.delta) + ' nats (' + fmt(t.loss_clean) + ' → ' + fmt(t.loss_edited) + ')') +
            '\nact of #' + fi + ' here: ' + fmt(act);
          var s = el('span', { cls: 'tok' + (act > 0 ? ' fires' : ''), text: showTok(t.token), title: tip, 'data-delta': String(t.delta) });
          var bg = deltaColour(t.delta, max);
          if (bg) s.style.background = bg;
          line.appendChild(s);
        });
        var tot = j.totals;
        out.replaceChildren(line, el('p', { cls: 'muted legend' },
          el('span', { cls: 'key up', text: 'harder to predict' }), ' ', el('span', { cls: 'key down', text: 'easier' }),
          ' without #' + fi + ' · underlined: #' + fi + ' fires · mean Δloss over ' + tot.n_scored + ' scored tokens: ' +
          (tot.delta === null ? '–' : (tot.delta > 0 ? '+' : '') + fmt(tot.delta)) + ' nats · hover a token for its numbers'));
      });
    });
    return el('details', { id: 'ablate', cls: 'panel' },
      el('summary', { text: 'Ablate this feature: how much each token of a text relied on it' }),
      el('p', { cls: 'muted note', text: 'Next-token loss of each token with feature #' + fi + ' set to 0 at every position, ' +
        'minus the loss without the edit (the SAE spliced in with its error term, so the unedited run is the clean model).' }),
      text, el('div', { cls: 'row' }, btn), out);
  }

  // ---------------------------------------------------------------- explain this output
  function explainCard() {
    if (!S.live) return null;
    return el('section', { id: 'explain-card', cls: 'live' },
      el('h3', null, el('a', { id: 'explain-link', href: '#explain', text: 'Explain this output →' })),
      el('p', { cls: 'muted', text: 'Give a prompt; see which features make the model predict its next token ' +
        '(attribution: activation × gradient), each linked to its page.' }));
  }
  function renderExplain() {
    var L = S.info.limits, last = S.explain;
    var prompt = el('textarea', { id: 'explain-prompt', rows: '3', placeholder: 'e.g. The Eiffel Tower is in the city of' });
    var target = el('input', { id: 'explain-target', type: 'text', maxlength: String(L.token_chars), placeholder: "the model's own next token" });
    var contrast = el('input', { id: 'explain-contrast', type: 'text', maxlength: String(L.token_chars), placeholder: 'optional, e.g. " Rome"' });
    var btn = el('button', { id: 'explain-run', text: 'Explain' });
    var out = el('div', { id: 'explain-out' });
    if (last) { prompt.value = last.req.prompt; target.value = last.req.target || ''; contrast.value = last.req.contrast || ''; }
    runner(btn, out, function () {
      var req = { prompt: prompt.value, target: target.value || null, contrast: contrast.value || null, top: 30 };
      return post('api/attribute', req).then(function (j) { S.explain = { req: req, res: j }; showExplain(out, j); });
    });
    app().replaceChildren(
      el('nav', { cls: 'fnav' }, el('a', { href: '#', text: '← all features' })),
      el('h1', { text: 'Explain this output' }),
      el('p', { cls: 'muted', text: 'Attribution patching: for each active (token, feature) of ' + S.info.hook +
        ', activation × gradient of the target\'s logit at the last token, the first-order change if the feature were ' +
        'zeroed there. Summed over tokens per feature below; tokens must be single tokens (mind a leading space).' }),
      el('section', { cls: 'live' }, prompt,
        el('div', { cls: 'row' }, field('Target token', target), field('Contrast token', contrast), btn)),
      out);
    if (last) showExplain(out, last.res);
  }
  function attrBar(a, max) {
    var bar = el('span', { cls: 'bar ' + (a >= 0 ? 'pos' : 'neg') });
    bar.style.width = (max > 0 ? Math.max(1, 80 * Math.abs(a) / max) : 0).toFixed(1) + 'px';
    return el('td', { cls: 'num attr' }, bar, (a > 0 ? '+' : '') + fmt(a));
  }
  function showExplain(out, j) {
    var what = 'logit of ' + JSON.stringify(j.target.token) + (j.contrast ? ' minus logit of ' + JSON.stringify(j.contrast.token) : '') +
      (j.target_is_prediction ? ' (the model\'s most likely next token)' : '');
    var errs = Object.keys(j.error_totals).map(function (h) { return fmt(j.error_totals[h]); }).join(', ');
    var max = 0;
    j.by_feature.forEach(function (r) { max = Math.max(max, Math.abs(r.attribution)); });
    var t = el('table', { id: 'explain-features', cls: 'features' }, el('thead', null, el('tr', null,
      el('th', { text: '#' }), el('th', { text: 'Feature' }), el('th', { text: 'Attribution' }),
      el('th', { text: 'Strongest at token' }), el('th', { text: 'Top tokens' }))));
    var tb = el('tbody');
    j.by_feature.forEach(function (r, k) {
      var toks = el('td', { cls: 'toks' });
      (S.index.top[r.feature] || []).forEach(function (x) { toks.appendChild(el('span', { cls: 'chip', text: chipText(x) })); });
      tb.appendChild(el('tr', { 'data-id': String(r.feature) }, el('td', { cls: 'num muted', text: String(k + 1) }),
        el('td', null, el('a', { href: '#f' + r.feature, text: '#' + r.feature })), attrBar(r.attribution, max),
        el('td', null, el('span', { cls: 'chip', text: chipText(r.top_token) }),
          el('span', { cls: 'muted', text: ' pos ' + r.top_position + (r.n_positions > 1 ? ' (+' + (r.n_positions - 1) + ' more)' : '') })),
        toks));
    });
    t.appendChild(tb);
    var prompt = el('div', { id: 'explain-tokens', cls: 'ctx' });
    j.tokens.forEach(function (x, i) { prompt.appendChild(el('span', { cls: 'tok' + (i === j.position ? ' centre' : ''), text: showTok(x) })); });
    out.replaceChildren(
      el('p', null, 'Explaining the ', el('b', { text: what }), ' after the last token: ', el('b', { text: fmt(j.metric) }),
        el('span', { cls: 'muted', text: ' · SAE error term: ' + errs + ' · ' + j.n_features + ' active (token, feature) pairs' })),
      prompt, t);
  }

  // ---------------------------------------------------------------- routing
  function route() {
    var m = /^#f(\d+)$/.exec(location.hash);
    if (m) renderFeature(parseInt(m[1], 10));
    else if (location.hash === '#explain' && S.live) renderExplain();
    else renderIndex();
  }
  function boot() {
    if (!S.meta || !S.index) {
      app().replaceChildren(el('p', { cls: 'error', text: 'Dashboard data not found (data/meta.js, data/index.js).' }));
      return;
    }
    document.getElementById('subtitle').textContent = S.meta.model + ' · ' + S.meta.hook +
      (S.meta.target_hook ? ' → ' + S.meta.target_hook + ' (transcoder)' : '');
    window.addEventListener('hashchange', route);
    // Arrow keys step through features (not while typing).
    document.addEventListener('keydown', function (e) {
      var m = /^#f(\d+)$/.exec(location.hash);
      if (!m || e.altKey || e.ctrlKey || e.metaKey || /^(INPUT|TEXTAREA)$/.test(e.target.tagName)) return;
      var i = parseInt(m[1], 10) + (e.key === 'ArrowRight' ? 1 : e.key === 'ArrowLeft' ? -1 : 0);
      if (i !== parseInt(m[1], 10) && i >= 0 && i < nFeatures()) location.hash = '#f' + i;
    });
    if (location.protocol === 'http:' || location.protocol === 'https:') {
      fetch('api/info').then(function (r) { return r.ok ? r.json() : {}; }).then(function (j) {
        if (j.encode) { S.live = true; S.info = j; route(); }
      }).catch(function () {});
    }
    route();
  }
  document.addEventListener('DOMContentLoaded', boot);
})();
