(function(){
  'use strict';
  // compat.html's script: filters for the heat map, the detail panel, and the URL fragment that holds both
  // (#family=..&method=..&status=..&env=..&q=.. for the filters; #cell=<cell id>&at=<env> for an entry;
  // #cell=<cell id> for a cell across environments; #w=<writer>&r=<reader> for a square of the cross grid,
  // #w=<writer>&r=<reader>&read=<cell id> for one read in it).
  const heat = document.getElementById('heat');
  const panel = document.getElementById('panel');
  const body = document.getElementById('panel-body');
  const ctl = {family: document.getElementById('f-family'), method: document.getElementById('f-method'),
               status: document.getElementById('f-status'), env: document.getElementById('f-env'),
               q: document.getElementById('f-q')};
  const FILTERS = ['family', 'method', 'status', 'env', 'q'];
  const PANEL = ['cell', 'at', 'w', 'r', 'read'];  // what the panel shows
  const envNames = Array.from(heat.tHead.rows[0].cells).slice(1).map(th => th.textContent);
  const groups = Array.from(heat.tBodies).map(tb => ({tb, family: tb.dataset.family, method: tb.dataset.method,
    rows: Array.from(tb.rows).slice(1).map(tr => ({tr, id: tr.id, lower: tr.id.toLowerCase(),
      st: Array.from(tr.cells).slice(1).map(td => td.className.slice(3))}))}));
  let data = null;
  function D(){ if (!data) data = JSON.parse(document.getElementById('page-data').textContent); return data; }
  let state = {};

  function esc(s){ return String(s == null ? '' : s).replace(/[&<>"']/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c])); }
  function isWeb(u){ return typeof u === 'string' && /^https?:\/\/[^\s<>"'`\\]+$/i.test(u) && /^https?:\/\/[^\/?#]+/i.test(u); }
  function ref(u){ return isWeb(u) ? '<a href="' + esc(u) + '">' + esc(u) + '</a>' : esc(u); }
  function q(s){ return "'" + String(s).replace(/'/g, "'\\''") + "'"; }
  function safeName(id){ return id.replace(/[^A-Za-z0-9_.-]+/g, '_').replace(/^_+|_+$/g, ''); }
  function fmt(x){ return x == null ? '–' : x === 0 ? '0' : (Math.abs(x) >= 1e-3 && Math.abs(x) < 1e4 ? String(+x.toPrecision(3)) : x.toExponential(2)); }
  function hashOf(obj){ const p = new URLSearchParams(); for (const [k, v] of Object.entries(obj)) if (v) p.set(k, v); return p.toString(); }

  // --- filters ------------------------------------------------------------------------------------------------
  const sets = JSON.parse(document.getElementById('status-sets').textContent);  // from harness/specs/statuses.py
  const RED = new Set(sets.red), FAILING = new Set(sets.failing);
  function statusOk(st){
    const want = state.status;
    if (!want) return true;
    const idx = state.env ? envNames.indexOf(state.env) : -1;
    const list = idx >= 0 ? [st[idx]] : st;
    if (want === 'red') return list.some(s => RED.has(s));
    if (want === 'failing') return list.some(s => FAILING.has(s));
    return list.includes(want);
  }
  function applyFilters(){
    const needle = (state.q || '').toLowerCase();
    let shown = 0, total = 0;
    for (const g of groups){
      const gOk = (!state.family || g.family === state.family) && (!state.method || g.method === state.method);
      let any = false;
      for (const r of g.rows){
        total++;
        const ok = gOk && (!needle || r.lower.includes(needle)) && statusOk(r.st);
        if (r.tr.hidden === ok) r.tr.hidden = !ok;
        if (ok){ any = true; shown++; }
      }
      g.tb.hidden = !any;
    }
    const count = document.getElementById('count');
    count.textContent = shown + ' of ' + total + ' cells shown';
    count.dataset.shown = String(shown);
  }

  // --- the panel ----------------------------------------------------------------------------------------------
  function envLine(e){ return esc(e.name) + ' <span class="muted">(peft ' + esc(e.peft || '?') + ', transformers ' + esc(e.transformers || '?') + ', torch ' + esc(e.torch || '?') + (e.python ? ', python ' + esc(e.python) : '') + ')</span>'; }
  function list(items){ return items && items.length ? '<ul>' + items.map(x => '<li><code>' + esc(x) + '</code></li>').join('') + '</ul>' : '<span class="muted">none</span>'; }
  function dl(pairs){ return '<dl>' + pairs.filter(p => p).map(([k, v]) => '<dt>' + k + '</dt><dd>' + v + '</dd>').join('') + '</dl>'; }
  function badge(s){ const d = D(); return '<span class="badge st-' + esc(s) + '">' + esc(d.glyphs[d.statuses.indexOf(s)]) + ' ' + esc(s) + '</span>'; }
  function reproduce(cellId, env){
    const e = D().envs.find(x => x.name === env) || {};
    const k = q(cellId);
    const redirect = 'PEFT_COMPAT_REPORTS=repro PEFT_COMPAT_ARTIFACTS=repro/artifacts';
    return '<h4>Reproduce</h4><pre class="cmd" data-cmd="reproduce">' + esc(
      '# the same cell in the same environment (reports go to repro/, not over reports/' + env + '.json)\n' +
      redirect + ' tox -e ' + env + ' -- -k ' + k + '\n' +
      '# keep the checkpoint, record.json and a standalone repro.py (torch, transformers, peft, safetensors only)\n' +
      redirect + ' tox -e ' + env + ' -- -k ' + k + ' --keep-failed kept/\n' +
      '.tox/' + env + '/bin/python kept/' + safeName(cellId) + '/repro.py\n' +
      '# without tox, in a fresh virtual environment\n' +
      'pip install -c constraints.txt -e . ' + q('peft==' + (e.peft || '?')) + ' ' + q('transformers==' + (e.transformers || '?')) + '\n' +
      'python -m harness run -k ' + k + ' --keep-failed kept/ --out kept/report.json') + '</pre>';
  }
  function rowStrip(cellId, row, at){
    const d = D();
    return '<p class="strip">' + row.e.map((x, i) => {
      const s = d.statuses[x[0]], env = d.envs[i].name;
      return '<a class="st-' + esc(s) + '" style="display:inline-block;width:15px;text-align:center;text-decoration:none' + (env === at ? ';outline:2px solid #0969da' : '') + '" title="' + esc(env + ': ' + s) + '" href="#' + esc(hashOf({cell: cellId, at: env})) + '">' + esc(d.glyphs[x[0]]) + '</a>';
    }).join('') + '</p>';
  }
  function entryPanel(cellId, env){
    const d = D(), row = d.rows[cellId];
    if (!row) return '<p>No cell <code>' + esc(cellId) + '</code> in this table.</p>';
    const i = d.envs.findIndex(e => e.name === env);
    if (i < 0) return cellPanel(cellId);
    const S = k => k == null ? null : (Array.isArray(k) ? k.map(S) : d.strings[k]);  // the string table
    const x = row.e[i].map((v, j) => [3, 4, 5, 7, 8, 9, 11].includes(j) ? S(v) : v), s = d.statuses[x[0]];
    const tol = x[10] != null ? x[10] : row.tol;
    let diff = fmt(x[2]);
    if (x[2] != null && tol != null) diff += (x[2] <= tol ? ' ≤ ' : ' > ') + 'tolerance ' + fmt(tol);
    else if (tol != null) diff += ' (tolerance ' + fmt(tol) + ')';
    const link = '#' + hashOf({cell: cellId, at: env});
    return '<h3 id="panel-title"><code>' + esc(cellId) + '</code></h3>' +
      '<p>at ' + envLine(d.envs[i]) + ' · <a id="permalink" href="' + esc(link) + '">permalink</a></p>' +
      rowStrip(cellId, row, env) +
      dl([['status', badge(s) + (x[6] != null ? ' <span class="muted">observed: ' + esc(d.statuses[x[6]] || x[6]) + '</span>' : '')],
          ['stage', esc(x[1] || '–')], ['exception', '<code>' + esc(x[3] || '–') + '</code>'],
          x[4] || x[11] ? ['message', '<pre>' + esc(x[4] || x[11]) + '</pre>'] : null,
          ['max abs diff', esc(diff)],
          x[5] ? ['known issue', ref(x[5])] : null,
          ['missing keys', x[7] ? list(x[7]) : '<span class="muted">not recorded</span>'],
          ['unexpected keys', x[8] ? list(x[8]) : '<span class="muted">not recorded</span>'],
          ['warnings', list(x[9] || [])],
          ['case', '<code>' + esc(row.case) + '</code>: ' + esc(row.family) + ', ' + esc(row.adapter) + ' (' + esc(row.apply || '?') + '), save ' + esc(row.save || '?') + ' → load ' + esc(row.load || '?') + ', ' + esc(row.device) + ' ' + esc(row.dtype)],
          row.refs.length ? ['references', row.refs.map(ref).join('<br>')] : null,
          ['since when', esc(row.since || '–')]]) +
      reproduce(cellId, env);
  }
  function cellPanel(cellId){
    const d = D(), row = d.rows[cellId];
    if (!row) return '<p>No cell <code>' + esc(cellId) + '</code> in this table.</p>';
    return '<h3 id="panel-title"><code>' + esc(cellId) + '</code></h3><p>Across the environments (oldest first); open one:</p>' +
      rowStrip(cellId, row, null) + dl([['since when', esc(row.since || '–')],
        ['case', '<code>' + esc(row.case) + '</code>: ' + esc(row.family) + ', ' + esc(row.adapter) + ', save ' + esc(row.save || '?') + ' → load ' + esc(row.load || '?')]]) +
      '<ul>' + row.e.map((x, i) => '<li><a href="#' + esc(hashOf({cell: cellId, at: d.envs[i].name})) + '">' + esc(d.envs[i].name) + '</a>: ' + badge(d.statuses[x[0]]) + (x[1] ? ' at ' + esc(x[1]) : '') + '</li>').join('') + '</ul>';
  }
  // --- a square of the writer x reader grid (its own JSON document, "cross-data": render.cross_data) ----------
  let crossData;
  function X(){ if (crossData === undefined){ const el = document.getElementById('cross-data'); crossData = el ? JSON.parse(el.textContent) : null; } return crossData; }
  function firstLine(t){ return String(t || '').trim().split('\n')[0]; }
  function crossGroups(x, sq){
    const d = D(), S = k => k == null ? null : x.strings[k];
    return sq.g.map(g => { const f = x.failures[g[0]];
      return {status: d.statuses[f[0]], stage: S(f[1]), reason: S(f[2]), known: S(f[3]), message: S(f[4]), dropped: S(f[5]),
              cells: g[1].map(k => x.cells[k]), diffs: g[2] || []}; });
  }
  function groupText(g){ return g.known ? firstLine(g.message) || firstLine(g.reason) : (g.reason || firstLine(g.message)); }
  const SHOWN_READS = 12;  // a longer group shows its first reads and folds the others
  function readLinks(w, r, g, read){
    const links = g.cells.map((c, i) => '<a class="read' + (c === read ? ' sel' : '') + '" data-read="' + esc(c) + '" href="#' + esc(hashOf({w, r, read: c})) + '"><code>' + esc(c) + '</code></a>' +
      (g.diffs[i] != null ? ' <span class="muted">' + esc(fmt(g.diffs[i])) + '</span>' : ''));
    if (links.length <= SHOWN_READS + 2) return '<p class="reads">' + links.join(' · ') + '</p>';
    const open = g.cells.indexOf(read) >= SHOWN_READS ? ' open' : '';
    return '<p class="reads">' + links.slice(0, SHOWN_READS).join(' · ') + '</p><details class="more"' + open + '><summary>' +
      (links.length - SHOWN_READS) + ' more read(s) of this group</summary><p class="reads">' + links.slice(SHOWN_READS).join(' · ') + '</p></details>';
  }
  function groupBlock(w, r, g, read){
    const shown = groupText(g), msg = g.message && (g.message.trim() !== firstLine(g.message) || g.message.length > 200) ? g.message : null;
    return '<div class="rgroup" data-status="' + esc(g.status) + '" data-n="' + g.cells.length + '"><p>' + badge(g.status) +
      (g.stage ? ' at ' + esc(g.stage) : '') + ' · <b>' + g.cells.length + '</b> read(s)' +
      (g.known ? ' <span class="muted">known: ' + ref(g.known) + '</span>' : '') +
      (shown ? '<br><span class="why">' + esc(shown) + '</span>' : '') + '</p>' +
      (msg ? '<details><summary>message</summary><pre>' + esc(msg) + '</pre></details>' : '') +
      (g.dropped ? '<p class="muted">saved config fields this reader does not know: ' + esc(g.dropped) + '</p>' : '') +
      readLinks(w, r, g, read) + '</div>';
  }
  function readBox(w, r, read, found, x, nPass){
    if (!found){
      const k = x.cells.indexOf(read), sq = x.squares[w + '|' + r];
      if (k < 0) return '<div id="read"><p>No cell <code>' + esc(read) + '</code> in the cross-version table.</p></div>';
      if (sq.u != null && x.unread[sq.u].includes(k))
        return '<div id="read" data-status="none"><h4><code>' + esc(read) + '</code></h4><p>Not read: no read of this cell by <code>' + esc(r) +
          '</code> from <code>' + esc(w) + '</code> is recorded (usually: the writer saved no artifact of it).</p></div>';
      return '<div id="read" data-status="pass"><h4>this read: <code>' + esc(read) + '</code></h4><p>' + badge('pass') +
        ' it reproduced the writer\'s logits (one of the ' + nPass + ' passing reads, which are counted, not listed).</p></div>';
    }
    const g = found.g, diff = g.diffs[found.i];
    return '<div id="read" data-status="' + esc(g.status) + '"><h4>this read: <code>' + esc(read) + '</code></h4>' + dl([
      ['status', badge(g.status)], ['stage', esc(g.stage || '–')],
      g.reason ? ['reason', esc(g.reason)] : null,
      g.message && !(g.reason || '').includes(g.message.trim()) ? ['message', '<pre>' + esc(g.message) + '</pre>'] : null,
      ['max abs diff', esc(fmt(diff))],
      g.known ? ['known issue', ref(g.known)] : null,
      g.dropped ? ['unknown config fields', esc(g.dropped)] : null,
      ['own round trips', '<a href="#' + esc(hashOf({cell: read, at: w})) + '">at the writer, ' + esc(w) + '</a> · <a href="#' + esc(hashOf({cell: read, at: r})) + '">at the reader, ' + esc(r) + '</a> <span class="muted">(the heat map)</span>']]) + '</div>';
  }
  function crossPanel(w, r, read){
    const d = D(), x = X();
    const sq = x && x.squares[w + '|' + r];
    if (!sq) return '<p>No reads of <code>' + esc(w) + '</code> by <code>' + esc(r) + '</code>.</p>';
    const total = sq.c.reduce((a, sn) => a + sn[1], 0);
    const nPass = (sq.c.find(sn => d.statuses[sn[0]] === 'pass') || [0, 0])[1];
    const groups = crossGroups(x, sq), listed = groups.filter(g => g.status !== 'not-applicable'), na = groups.filter(g => g.status === 'not-applicable');
    let found = null;
    if (read) for (const g of groups){ const i = g.cells.indexOf(read); if (i >= 0){ found = {g, i}; break; } }
    const nListed = listed.reduce((a, g) => a + g.cells.length, 0), nNa = na.reduce((a, g) => a + g.cells.length, 0);
    const cell = found ? read : (listed.length ? listed[0].cells[0] : '<cell id>');
    const dropped = sq.d ? ' ' + sq.d[0] + ' of them saved config fields this reader does not know (dropped, and it still passed): ' +
      sq.d[1].map(fn => esc(fn[0]) + ' (' + fn[1] + ')').join(', ') + '.' : '';
    const redirect = 'PEFT_COMPAT_REPORTS=repro PEFT_COMPAT_ARTIFACTS=repro/artifacts';
    return '<h3 id="panel-title">written by <code>' + esc(w) + '</code>, read by <code>' + esc(r) + '</code></h3>' +
      '<p>' + total + ' read(s) · <a id="permalink" href="#' + esc(hashOf({w, r})) + '">permalink</a></p>' +
      '<p class="counts" id="cross-counts">' + sq.c.map(sn => badge(d.statuses[sn[0]]) + ' <b data-count="' + esc(d.statuses[sn[0]]) + '">' + sn[1] + '</b>').join(' · ') + '</p>' +
      (read ? readBox(w, r, read, found, x, nPass) : '') +
      '<p class="muted" id="pass-note">The <b>' + nPass + '</b> passing read(s) are counted, not listed: a cell that no group below names passed here' +
        (sq.u != null ? ' (' + x.unread[sq.u].length + ' cell(s) of the table were not read by this pair)' : '') + '.' + dropped + '</p>' +
      (listed.length ? '<h4>' + nListed + ' read(s) that did not pass, in ' + listed.length + ' group(s) of identical failures (each cell links to its read)</h4>' +
        listed.map(g => groupBlock(w, r, g, read)).join('') : '<h4>Every read that applies passed.</h4>') +
      (na.length ? '<details id="not-applicable"' + (found && found.g.status === 'not-applicable' ? ' open' : '') + '><summary>' + nNa + ' not applicable</summary>' + na.map(g => groupBlock(w, r, g, read)).join('') + '</details>' : '') +
      '<h4>Reproduce ' + (found ? 'this read' : 'one read') + '</h4><pre class="cmd">' + esc(
        '# write with ' + w + ', then read its artifact with ' + r + '\n' +
        redirect + ' tox -e ' + w + ' -- -k ' + q(cell) + '\n' + redirect + ' tox -e ' + r + '-read -- --writer ' + w + ' -k ' + q(cell)) + '</pre>';
  }
  let selected = null;
  function select(td, tr){
    if (selected) for (const el of selected) el.classList.remove('sel');
    selected = [td, tr].filter(Boolean);
    for (const el of selected) el.classList.add('sel');
  }
  function openPanel(){
    let html = null, td = null, tr = null;
    if (state.cell){
      tr = document.getElementById(state.cell);
      if (state.at){
        html = entryPanel(state.cell, state.at);
        const i = envNames.indexOf(state.at);
        if (tr && i >= 0) td = tr.cells[i + 1];
      } else html = cellPanel(state.cell);
    } else if (state.w && state.r){
      html = crossPanel(state.w, state.r, state.read);
      td = document.querySelector('#crossgrid td[data-w="' + CSS.escape(state.w) + '"][data-r="' + CSS.escape(state.r) + '"]');
    }
    select(td, tr);
    if (html === null){ panel.hidden = true; body.innerHTML = ''; return; }
    body.innerHTML = html;
    panel.hidden = false;
    panel.dataset.cell = state.cell || '';
    panel.dataset.at = state.at || '';
    panel.scrollTop = 0;
    if (tr){
      if (tr.hidden){ tr.hidden = false; tr.parentNode.hidden = false; }
      (td || tr).scrollIntoView({block: 'center', inline: 'center'});
    } else if (td) td.scrollIntoView({block: 'center', inline: 'nearest'});
  }

  // --- state <-> URL fragment ---------------------------------------------------------------------------------
  function readHash(){
    const raw = location.hash.replace(/^#/, '');
    const p = new URLSearchParams(raw);
    state = {};
    for (const k of [...FILTERS, ...PANEL]) if (p.get(k)) state[k] = p.get(k);
    if (raw && !raw.includes('=')){ const id = decodeURIComponent(raw); if (D().rows[id]) state.cell = id; }
    for (const k of FILTERS) ctl[k].value = state[k] || '';
  }
  function writeHash(){
    const h = hashOf(Object.fromEntries([...FILTERS, ...PANEL].map(k => [k, state[k]])));
    history.replaceState(null, '', h ? '#' + h : location.pathname + location.search);
  }
  function render(){ applyFilters(); openPanel(); }
  for (const k of FILTERS){
    ctl[k].addEventListener(k === 'q' ? 'input' : 'change', () => { state[k] = ctl[k].value; writeHash(); applyFilters(); });
  }
  heat.addEventListener('click', ev => {
    const td = ev.target.closest('td');
    if (!td || !heat.contains(td)) return;
    const tr = td.parentNode;
    Object.assign(state, {cell: tr.id, at: envNames[td.cellIndex - 1], w: '', r: '', read: ''});
    writeHash(); openPanel();
  });
  document.getElementById('panel-close').addEventListener('click', () => {
    Object.assign(state, {cell: '', at: '', w: '', r: '', read: ''}); writeHash(); openPanel();
  });
  window.addEventListener('hashchange', () => { readHash(); render(); });
  readHash(); render();
  document.body.dataset.ready = 'yes';
})();
