// tumorseg viewer page: NiiVue (window.niivue, the vendored UMD build) over the viewer's JSON API,
// or over the data of a static report (window.TUMORSEG_STATIC, volumes in volumes/*.js).
(function () {
  'use strict';
  const NV = window.niivue;
  const STATIC = window.TUMORSEG_STATIC || null;
  const $ = (id) => document.getElementById(id);
  const PAGE_SIZE = 50;
  const state = {
    summary: null, modality: null, windows: {}, hidden: new Set(), opacity: 0.6,
    compare: 'side', list: { offset: 0, sort: 'case_id', order: 'asc', q: '' },
    lookup: {}, loading: null,
  };
  const buffers = new Map();
  let nvMain = null, nvRef = null, nv3d = null;
  window.tumorsegViewer = state; // for scripts and tests: the open case and its settings

  function fmt(x, d) { return x == null ? '' : Number(x).toFixed(d == null ? 2 : d); }
  function enc(s) { return encodeURIComponent(s); }

  // -- data: the server's API or a static report --------------------------------------------
  async function getJSON(url) {
    const r = await fetch(url);
    const d = await r.json();
    if (!r.ok) throw new Error(d.error || r.statusText);
    return d;
  }
  function staticPage(p) {
    let rows = STATIC.cases.filter((r) => !p.q || r.case_id.toLowerCase().includes(p.q.toLowerCase()));
    if (p.sort !== 'case_id') {
      const [field, region] = p.sort.startsWith('dice_') ? ['dice', p.sort.slice(5)] : ['volumes_ml', p.sort];
      const val = (r) => (r[field] || {})[region];
      const known = rows.filter((r) => val(r) != null).sort((a, b) => val(a) - val(b));
      if (p.order === 'desc') known.reverse();
      rows = known.concat(rows.filter((r) => val(r) == null));
    } else if (p.order === 'desc') rows = rows.slice().reverse();
    return { cases: rows.slice(p.offset, p.offset + PAGE_SIZE), total: rows.length, offset: p.offset,
      limit: PAGE_SIZE, models: [], pending: 0 };
  }
  async function listPage(p) {
    if (STATIC) return staticPage(p);
    const q = new URLSearchParams({ offset: p.offset, limit: PAGE_SIZE, sort: p.sort, order: p.order, q: p.q });
    return getJSON('api/cases?' + q);
  }
  async function caseSummary(id) {
    if (STATIC) {
      const s = STATIC.summaries[id];
      if (!s) throw new Error('no case ' + id);
      return s;
    }
    return getJSON('api/cases/' + enc(id));
  }
  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const s = document.createElement('script');
      s.src = src; s.onload = resolve; s.onerror = () => reject(new Error('cannot load ' + src));
      document.head.appendChild(s);
    });
  }
  window.TUMORSEG_VOLUMES = window.TUMORSEG_VOLUMES || {};
  async function volumeBuffer(id, name) {
    const key = id + '\u0000' + name;
    if (!buffers.has(key)) {
      let promise;
      if (STATIC) {
        promise = (async () => {
          if (!window.TUMORSEG_VOLUMES[id]) await loadScript(STATIC.summaries[id].volume_script);
          const text = atob(window.TUMORSEG_VOLUMES[id][name]);
          const bytes = new Uint8Array(text.length);
          for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
          return bytes.buffer;
        })();
      } else {
        promise = fetch('api/volume/' + enc(id) + '/' + name + '.nii.gz').then((r) => {
          if (!r.ok) throw new Error(name + ': ' + r.status);
          return r.arrayBuffer();
        });
      }
      buffers.set(key, promise);
      if (buffers.size > 24) buffers.delete(buffers.keys().next().value);
    }
    return buffers.get(key);
  }
  async function image(name, opts) {
    const buf = await volumeBuffer(state.summary.case_id, name);
    return NV.NVImage.loadFromUrl(Object.assign({ url: name + '.nii.gz', name: name + '.nii.gz', buffer: buf.slice(0) }, opts));
  }

  // -- the case list ----------------------------------------------------------------------------
  async function loadCases(select) {
    const d = await listPage(state.list);
    const tb = $('cases'); tb.innerHTML = '';
    for (const c of d.cases) {
      const tr = document.createElement('tr'); tr.className = 'case'; tr.dataset.case = c.case_id;
      const v = c.volumes_ml || {}; const dc = c.dice;
      const dice = dc ? [dc.WT, dc.TC, dc.ET].map((x) => fmt(x, 3)).join(' / ') : (c.pending ? '...' : '');
      tr.innerHTML = `<td></td><td>${fmt(v.WT)}</td><td>${fmt(v.TC)}</td><td>${fmt(v.ET)}</td><td>${dice}</td>`;
      tr.firstChild.textContent = c.case_id + (c.error ? ' (unreadable)' : '');
      if (state.summary && c.case_id === state.summary.case_id) tr.classList.add('sel');
      tr.onclick = () => openCase(c.case_id);
      tb.appendChild(tr);
    }
    const end = Math.min(d.offset + d.cases.length, d.total);
    $('range').textContent = d.total ? `${d.offset + 1}-${end} of ${d.total}` : '0 cases';
    $('prev').disabled = d.offset <= 0; $('next').disabled = end >= d.total;
    $('list-status').textContent = d.pending ? `${d.pending} case(s): figures being computed` : '';
    if (d.pending) setTimeout(() => loadCases(), 3000);
    document.querySelectorAll('th button').forEach((b) => {
      b.classList.toggle('on', b.dataset.sort === state.list.sort);
      b.title = b.dataset.sort === state.list.sort ? state.list.order : '';
    });
    if ($('model')) {
      const m = $('model'); m.innerHTML = '';
      for (const name of d.models) { const o = document.createElement('option'); o.value = o.textContent = name; m.appendChild(o); }
      if (!d.models.length) { $('upload-box').disabled = true; $('job-status').textContent = 'uploads disabled (no model)'; }
    }
    const want = select || decodeURIComponent((location.hash.match(/case=([^&]+)/) || [])[1] || '');
    if (want && (!state.summary || state.summary.case_id !== want)) await openCase(want);
    else if (!state.summary && d.cases.length) await openCase(d.cases[0].case_id);
  }
  document.querySelectorAll('th button').forEach((b) => {
    b.onclick = () => {
      const l = state.list;
      l.order = l.sort === b.dataset.sort && l.order === 'asc' ? 'desc' : (l.sort === b.dataset.sort ? 'asc' : (b.dataset.sort === 'case_id' ? 'asc' : 'desc'));
      l.sort = b.dataset.sort; l.offset = 0; loadCases();
    };
  });
  $('prev').onclick = () => { state.list.offset = Math.max(0, state.list.offset - PAGE_SIZE); loadCases(); };
  $('next').onclick = () => { state.list.offset += PAGE_SIZE; loadCases(); };
  let filterTimer = null;
  $('filter').oninput = () => {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(() => { state.list.q = $('filter').value.trim(); state.list.offset = 0; loadCases(); }, 200);
  };

  // -- NiiVue -------------------------------------------------------------------------------
  function labelColormap() {
    const cm = { R: [0], G: [0], B: [0], A: [0], I: [0], labels: ['background'] };
    for (const l of state.summary.labels) {
      cm.R.push(l.colour[0]); cm.G.push(l.colour[1]); cm.B.push(l.colour[2]);
      cm.A.push(state.hidden.has(l.name) ? 0 : 255); cm.I.push(l.value); cm.labels.push(l.name);
    }
    return cm;
  }
  function labelName(value) {
    if (value == null || isNaN(value)) return '';
    const v = Math.round(value);
    if (v === 0) return 'background (0)';
    const l = state.summary.labels.find((x) => x.value === v);
    return (l ? l.name : 'label') + ' (' + v + ')';
  }
  async function makeNV(canvasId, opts) {
    const nv = new NV.Niivue(Object.assign({
      backColor: [0, 0, 0, 1], crosshairColor: [0.25, 0.6, 1, 1], isColorbar: false,
      dragAndDropEnabled: false, isRadiologicalConvention: true, show3Dcrosshair: false,
      multiplanarShowRender: NV.SHOW_RENDER.NEVER, isNearestInterpolation: false, logLevel: 'error',
      loadingText: 'loading...',
    }, opts || {}));
    await nv.attachTo(canvasId);
    if (nv.setMouseEventConfig) {
      nv.setMouseEventConfig({
        leftButton: { primary: NV.DRAG_MODE.crosshair, withShift: NV.DRAG_MODE.pan, withCtrl: NV.DRAG_MODE.windowing },
        rightButton: NV.DRAG_MODE.windowing, centerButton: NV.DRAG_MODE.pan,
      });
    }
    return nv;
  }
  async function ensureViewers() {
    if (nvMain) return;
    nvMain = await makeNV('nv-pred');
    nvRef = await makeNV('nv-ref');
    nv3d = await makeNV('nv-3d', { backColor: [0.08, 0.08, 0.1, 1] });
    nvMain.setSliceType(nvMain.sliceTypeMultiplanar);
    nvRef.setSliceType(nvRef.sliceTypeMultiplanar);
    nv3d.setSliceType(nv3d.sliceTypeRender);
    nvMain.broadcastTo([nvRef], { '2d': true, '3d': false });
    nvRef.broadcastTo([nvMain], { '2d': true, '3d': false });
    nvMain.onLocationChange = readout; nvRef.onLocationChange = readout;
    // Hovering shows the voxel under the pointer; leaving the canvas shows the crosshair's again.
    for (const nv of [nvMain, nvRef]) {
      nv.canvas.addEventListener('mousemove', (e) => {
        if (!state.ready || !nv.volumes.length) return;
        const r = nv.canvas.getBoundingClientRect(); const dpr = nv.uiData.dpr || 1;
        const frac = nv.canvasPos2frac([(e.clientX - r.left) * dpr, (e.clientY - r.top) * dpr]);
        if (frac[0] >= 0) readout({ mm: nv.frac2mm(frac) }, 'pointer');
      });
      nv.canvas.addEventListener('mouseleave', () => { if (state.ready) nvMain.createOnLocationChange(); });
    }
    const intensity = (vol) => {
      if (!state.modality || !vol || !vol.name.startsWith(state.modality + '.')) return;
      state.windows[state.modality] = [vol.cal_min, vol.cal_max];
      showWindow(); applyWindow();
    };
    nvMain.onIntensityChange = intensity; nvRef.onIntensityChange = intensity;
  }
  async function clear(nv) {
    while (nv.volumes.length) nv.removeVolume(nv.volumes[nv.volumes.length - 1]);
  }
  function labelled(img) { img.setColormapLabel(labelColormap()); return img; }
  async function sceneFor(nv, labels) {
    // The modality as the background, then the label volumes with the project's colours.
    const s = state.summary; const vols = [];
    if (state.modality) {
      const [lo, hi] = state.windows[state.modality];
      vols.push(await image(state.modality, { colormap: 'gray', cal_min: lo, cal_max: hi, trustCalMinMax: true }));
    }
    for (const [name, opacity] of labels) {
      if (!s.volumes.includes(name)) continue;
      vols.push(labelled(await image(name, { opacity: opacity })));
    }
    const pos = nv.volumes.length ? nv.scene.crosshairPos.slice() : null;
    const pan = nv.volumes.length ? nv.scene.pan2Dxyzmm.slice() : null;
    await clear(nv);
    for (const v of vols) nv.addVolume(v);
    if (pos) { nv.scene.crosshairPos = pos; nv.scene.pan2Dxyzmm = pan; }
    nv.updateGLVolume();
  }
  async function loadScene(keepPosition) {
    const s = state.summary; const outline = state.compare === 'outline' && s.has_reference;
    const side = state.compare === 'side' && s.has_reference;
    $('pane-ref').hidden = !side;
    $('cap-pred').textContent = outline ? 'reference (fill) + prediction (outline)' : 'prediction';
    // Outline on fill: the reference at half the opacity, the prediction's boundary opaque on it.
    const mainLabels = outline ? [['ref', state.opacity / 2], ['pred_outline', 1]] : [['pred', state.opacity]];
    if (!keepPosition) { await clear(nvMain); await clear(nvRef); }
    await sceneFor(nvMain, mainLabels);
    if (side) { await sceneFor(nvRef, [['ref', state.opacity]]); nvRef.resizeListener(); } else await clear(nvRef);
    if (!keepPosition) {
      const frac = nvMain.mm2frac(s.focus_mm);
      nvMain.scene.crosshairPos = frac; nvRef.scene.crosshairPos = frac.slice ? frac.slice() : frac;
      nvMain.drawScene(); if (side) nvRef.drawScene();
    }
    nvMain.createOnLocationChange();
  }
  async function load3d() {
    await clear(nv3d);
    nv3d.addVolume(labelled(await image('pred', { opacity: 1 })));
    nv3d.setRenderAzimuthElevation(110, 20);
    nv3d.updateGLVolume();
  }
  function readout(data, where) {
    const s = state.summary; if (!s || !data || !data.mm) return;
    const mm = Array.from(data.mm).slice(0, 3);
    const parts = [(where || 'crosshair') + ' ' + mm.map((x) => x.toFixed(1)).join(' x ') + ' mm'];
    const val = (img) => {
      if (!img) return null;
      const v = img.mm2vox(mm);
      for (let i = 0; i < 3; i++) if (v[i] < 0 || v[i] >= img.dimsRAS[i + 1]) return null;
      return img.getValue(v[0], v[1], v[2]);
    };
    if (state.modality) parts.push(state.modality + ' ' + fmt(val(state.lookup.image), 1));
    parts.push('prediction ' + labelName(val(state.lookup.pred)));
    if (s.has_reference) parts.push('reference ' + labelName(val(state.lookup.ref)));
    $('voxel').textContent = parts.join(' | ');
    if (!where) state.location = mm;
  }
  async function refreshLookup() {
    const s = state.summary;
    state.lookup = {
      image: state.modality ? await image(state.modality, {}) : null,
      pred: await image('pred', {}),
      ref: s.has_reference ? await image('ref', {}) : null,
    };
  }

  // -- controls -------------------------------------------------------------------------------
  function showWindow() {
    const [lo, hi] = state.windows[state.modality] || [0, 1];
    $('win-level').value = Number(((lo + hi) / 2).toPrecision(5));
    $('win-width').value = Number((hi - lo).toPrecision(5));
  }
  function applyWindow() {
    const [lo, hi] = state.windows[state.modality];
    for (const nv of [nvMain, nvRef]) {
      if (!nv.volumes.length || !state.modality) continue;
      nv.volumes[0].cal_min = lo; nv.volumes[0].cal_max = hi; nv.updateGLVolume();
    }
  }
  function windowFromInputs() {
    const level = parseFloat($('win-level').value), width = parseFloat($('win-width').value);
    if (!state.modality || isNaN(level) || isNaN(width) || width <= 0) return;
    state.windows[state.modality] = [level - width / 2, level + width / 2];
    applyWindow();
  }
  $('win-level').onchange = windowFromInputs; $('win-width').onchange = windowFromInputs;
  $('win-auto').onclick = () => {
    if (!state.modality) return;
    state.windows[state.modality] = state.summary.windows[state.modality].slice(); showWindow(); applyWindow();
  };
  $('opacity').oninput = () => {
    state.opacity = parseFloat($('opacity').value);
    for (const nv of [nvMain, nvRef]) {
      nv.volumes.forEach((v, i) => {
        if (v.name.startsWith('pred_outline') || (i === 0 && state.modality)) return;
        const fill = nv === nvMain && state.compare === 'outline' && state.summary.has_reference;
        nv.setOpacity(i, fill ? state.opacity / 2 : state.opacity);
      });
    }
  };
  function recolour() {
    for (const nv of [nvMain, nvRef, nv3d]) {
      nv.volumes.forEach((v) => { if (v.colormapLabel) v.setColormapLabel(labelColormap()); });
      nv.updateGLVolume();
    }
  }
  $('modality').onchange = async () => {
    state.modality = $('modality').value; showWindow();
    await loadScene(true); await refreshLookup(); nvMain.createOnLocationChange();
  };
  $('compare').onchange = async () => { state.compare = $('compare').value; await loadScene(true); };
  function zoom(factor) {
    for (const nv of [nvMain, nvRef]) {
      const p = nv.scene.pan2Dxyzmm.slice();
      nv.setPan2Dxyzmm(factor ? [p[0], p[1], p[2], Math.min(Math.max(p[3] * factor, 0.25), 16)] : [0, 0, 0, 1]);
    }
  }
  $('zoom-in').onclick = () => zoom(1.25); $('zoom-out').onclick = () => zoom(0.8); $('zoom-reset').onclick = () => zoom(0);

  async function openCase(id) {
    let s;
    try { s = await caseSummary(id); } catch (e) { $('title').textContent = 'No case ' + id; return; }
    const token = {}; state.loading = token;
    await ensureViewers();
    state.summary = s; state.ready = false;
    if (!STATIC) location.hash = 'case=' + enc(id);
    document.querySelectorAll('tr.case').forEach((t) => t.classList.toggle('sel', t.dataset.case === id));
    $('title').textContent = id; $('controls').hidden = false;
    const dl = $('download');
    if (STATIC) dl.hidden = true; else dl.href = 'api/mask/' + enc(id);
    const mod = $('modality'); mod.innerHTML = '';
    for (const name of s.modalities) { const o = document.createElement('option'); o.value = o.textContent = name; mod.appendChild(o); }
    mod.disabled = !s.modalities.length;
    state.modality = s.modalities.includes(state.modality) ? state.modality : (s.modalities[0] || null);
    mod.value = state.modality || '';
    state.windows = {};
    for (const [k, w] of Object.entries(s.windows)) state.windows[k] = w.slice();
    if (state.modality) showWindow();
    $('compare').disabled = !s.has_reference;
    const lg = $('legend'); lg.innerHTML = '';
    for (const l of s.labels) {
      const el = document.createElement('label');
      el.innerHTML = `<input type="checkbox" class="cls" value="${l.name}" ${state.hidden.has(l.name) ? '' : 'checked'}>` +
        `<span class="sw" style="background:rgb(${l.colour.join(',')})"></span>${l.name}`;
      lg.appendChild(el);
    }
    document.querySelectorAll('.cls').forEach((e) => {
      e.onchange = () => { if (e.checked) state.hidden.delete(e.value); else state.hidden.add(e.value); recolour(); };
    });
    await loadScene(false);
    if (state.loading !== token) return;
    await load3d();
    await refreshLookup();
    nvMain.createOnLocationChange();
    state.ready = true;
  }

  // -- uploads (served page only) ---------------------------------------------------------
  if ($('upload')) {
    $('upload').onsubmit = async (ev) => {
      ev.preventDefault();
      const st = $('job-status'); st.className = ''; st.textContent = 'uploading...'; $('job-progress').value = 0;
      let r;
      const token = document.querySelector('meta[name="tumorseg-token"]').content;
      try { r = await fetch('api/upload', { method: 'POST', headers: { 'X-Tumorseg-Token': token }, body: new FormData($('upload')) }); }
      catch (e) { st.className = 'err'; st.textContent = 'upload failed: ' + e; return; }
      let d; try { d = await r.json(); } catch (e) { d = { error: r.status + ' ' + r.statusText }; }
      if (!r.ok) { st.className = 'err'; st.textContent = 'refused: ' + d.error; return; }
      poll(d.job_id);
    };
  }
  async function poll(job) {
    const d = await getJSON('api/jobs/' + job); const st = $('job-status');
    $('job-progress').value = d.progress; st.textContent = d.state + ': ' + d.stage + ' (' + d.seconds + ' s)';
    if (d.state === 'done') { await loadCases(d.case_id); return; }
    if (d.state === 'failed') { st.className = 'err'; st.textContent = 'failed: ' + d.error; return; }
    setTimeout(() => poll(job), 500);
  }
  loadCases().catch((e) => { $('title').textContent = 'error: ' + e.message; });
})();
