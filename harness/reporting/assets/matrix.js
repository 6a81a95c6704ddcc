(function(){
  const table = document.getElementById('matrix');
  const tbody = table.tBodies[0];
  const rows = Array.from(tbody.rows);
  const rank = JSON.parse(document.getElementById('status-rank').textContent);
  const ctl = {family: document.getElementById('f-family'), adapter: document.getElementById('f-adapter'),
               status: document.getElementById('f-status'), q: document.getElementById('f-q')};
  let state = {family: '', adapter: '', status: '', q: '', sort: '', dir: 'asc'};
  function readHash(){
    const p = new URLSearchParams(location.hash.replace(/^#/, ''));
    for (const k of Object.keys(state)) { if (p.has(k)) state[k] = p.get(k); }
    if (state.dir !== 'desc') state.dir = 'asc';
    for (const k of ['family','adapter','status','q']) ctl[k].value = state[k];
  }
  function writeHash(){
    const p = new URLSearchParams();
    for (const [k,v] of Object.entries(state)) { if (v && !(k === 'dir' && v === 'asc')) p.set(k, v); }
    const h = p.toString();
    history.replaceState(null, '', h ? '#' + h : location.pathname + location.search);
  }
  function key(row, col){
    if (col.startsWith('env:')) {
      const td = row.querySelector('td[data-env="' + CSS.escape(col.slice(4)) + '"]');
      const s = td ? td.dataset.status : '';
      return [s in rank ? rank[s] : 99, row.dataset.cell];
    }
    return [row.dataset[col] || '', row.dataset.cell];
  }
  function cmp(a, b){ for (let i = 0; i < a.length; i++){ if (a[i] < b[i]) return -1; if (a[i] > b[i]) return 1; } return 0; }
  function apply(){
    const q = state.q.toLowerCase();
    let shown = 0;
    for (const row of rows){
      const ok = (!state.family || row.dataset.family === state.family)
        && (!state.adapter || row.dataset.adapter === state.adapter)
        && (!state.status || row.dataset.statuses.split(' ').includes(state.status))
        && (!q || row.textContent.toLowerCase().includes(q));
      row.hidden = !ok; if (ok) shown++;
    }
    let ordered = rows.slice();
    if (state.sort){
      ordered.sort((a, b) => cmp(key(a, state.sort), key(b, state.sort)));
      if (state.dir === 'desc') ordered.reverse();
    }
    for (const row of ordered) tbody.appendChild(row);
    for (const th of table.tHead.rows[0].cells){
      th.setAttribute('aria-sort', th.dataset.col === state.sort ? (state.dir === 'desc' ? 'descending' : 'ascending') : 'none');
    }
    const count = document.getElementById('count');
    count.textContent = shown + ' of ' + rows.length + ' rows shown';
    count.dataset.shown = String(shown);
    document.body.dataset.ready = 'yes';
    writeHash();
  }
  for (const k of ['family','adapter','status']) ctl[k].addEventListener('change', () => { state[k] = ctl[k].value; apply(); });
  ctl.q.addEventListener('input', () => { state.q = ctl.q.value; apply(); });
  for (const th of table.tHead.rows[0].cells){
    th.addEventListener('click', () => {
      const col = th.dataset.col;
      if (state.sort === col) state.dir = state.dir === 'asc' ? 'desc' : 'asc'; else { state.sort = col; state.dir = 'asc'; }
      apply();
    });
  }
  window.addEventListener('hashchange', () => { readHash(); apply(); });
  readHash(); apply();
})();
