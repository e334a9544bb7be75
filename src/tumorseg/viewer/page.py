"""The viewer's single page: plain HTML and JavaScript, no external resources (works offline)."""

# The page is one string of HTML/JS; wrapping its lines at 100 columns would only hurt reading.
# ruff: noqa: E501

from __future__ import annotations

__all__ = ["PAGE", "TOKEN_PLACEHOLDER"]

#: Replaced by the session's token when the page is served; uploads send it back.
TOKEN_PLACEHOLDER = "@@TUMORSEG_TOKEN@@"

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tumorseg viewer</title>
<meta name="tumorseg-token" content="@@TUMORSEG_TOKEN@@">
<style>
body{font-family:system-ui,sans-serif;margin:0;display:flex;height:100vh;color:#222}
#side{width:360px;overflow:auto;border-right:1px solid #ccc;padding:8px;box-sizing:border-box}
#main{flex:1;overflow:auto;padding:8px}
table{border-collapse:collapse;font-size:12px;width:100%}
td,th{border-bottom:1px solid #eee;padding:2px 4px;text-align:right}
td:first-child,th:first-child{text-align:left}
tr.case{cursor:pointer} tr.case:hover{background:#eef} tr.sel{background:#dde}
.views{display:flex;flex-wrap:wrap;gap:12px}
.view{display:flex;flex-direction:column;align-items:center}
.view img{width:256px;image-rendering:pixelated;background:#000}
.pair{display:flex;gap:4px} .cap{font-size:11px;text-align:center}
.sw{display:inline-block;width:12px;height:12px;vertical-align:middle;margin:0 3px}
#controls label{margin-right:12px} .err{color:#b00}
fieldset{margin-top:12px;font-size:12px}
</style></head><body>
<div id="side">
 <h3>Cases</h3>
 <table><thead><tr><th>case</th><th>WT mL</th><th>TC mL</th><th>ET mL</th><th>Dice WT/TC/ET</th></tr>
 </thead><tbody id="cases"></tbody></table>
 <fieldset id="upload-box"><legend>Segment a new study</legend>
  <form id="upload">
   <div>Model <select name="model" id="model"></select></div>
   <div>FLAIR <input type="file" name="flair" id="up-flair" accept=".nii,.gz"></div>
   <div>T1 <input type="file" name="t1" id="up-t1" accept=".nii,.gz"></div>
   <div>T1ce <input type="file" name="t1ce" id="up-t1ce" accept=".nii,.gz"></div>
   <div>T2 <input type="file" name="t2" id="up-t2" accept=".nii,.gz"></div>
   <div>or a zip <input type="file" name="archive" id="up-archive" accept=".zip"></div>
   <button type="submit" id="up-submit">Upload and segment</button>
  </form>
  <progress id="job-progress" max="1" value="0"></progress>
  <div id="job-status"></div>
 </fieldset>
</div>
<div id="main">
 <h3 id="title">Select a case</h3>
 <div id="controls" hidden>
  <label>Modality <select id="modality"></select></label>
  <label>Opacity <input type="range" id="opacity" min="0" max="1" step="0.05" value="0.5"></label>
  <span id="legend"></span>
  <a id="download" href="#" download>Download mask</a>
 </div>
 <div class="views" id="views"></div>
</div>
<script>
const COLOURS={NCR:'rgb(230,30,30)',ED:'rgb(40,200,60)',ET:'rgb(250,220,20)'};
const NAMES={NCR:'necrosis',ED:'edema',ET:'enhancing'};
const VIEWS=[['axial',2],['coronal',1],['sagittal',0]];
let current=null;
const $=id=>document.getElementById(id);
function fmt(x){return x==null?'':Number(x).toFixed(2)}
async function loadCases(select){
  const r=await fetch('/api/cases'); const d=await r.json();
  const tb=$('cases'); tb.innerHTML='';
  for(const c of d.cases){
    const tr=document.createElement('tr'); tr.className='case'; tr.dataset.case=c.case_id;
    const v=c.volumes_ml||{}; const dc=c.dice;
    const dice=dc?[dc.WT,dc.TC,dc.ET].map(x=>fmt(x)).join(' / '):'';
    tr.innerHTML=`<td></td><td>${fmt(v.WT)}</td><td>${fmt(v.TC)}</td><td>${fmt(v.ET)}</td><td>${dice}</td>`;
    tr.firstChild.textContent=c.case_id+(c.error?' (unreadable)':'');
    tr.onclick=()=>openCase(c.case_id); tb.appendChild(tr);
  }
  const m=$('model'); m.innerHTML='';
  for(const name of d.models){const o=document.createElement('option');o.value=o.textContent=name;m.appendChild(o)}
  if(!d.models.length){$('upload-box').disabled=true;$('job-status').textContent='uploads disabled (no model)'}
  const want=select||decodeURIComponent((location.hash.match(/case=([^&]+)/)||[])[1]||'');
  if(want) await openCase(want); else if(d.cases.length&&!current) await openCase(d.cases[0].case_id);
}
function classes(){return [...document.querySelectorAll('.cls:checked')].map(e=>e.value).join(',')}
function src(view,source){
  const s=$('slider-'+view);
  const q=new URLSearchParams({view:view,index:s.value,source:source,modality:$('modality').value,
    opacity:$('opacity').value,classes:classes()});
  return '/api/slice/'+encodeURIComponent(current.case_id)+'?'+q;
}
function refresh(){
  if(!current) return;
  for(const [view] of VIEWS){
    $('img-pred-'+view).src=src(view,'pred');
    if(current.has_reference) $('img-ref-'+view).src=src(view,'ref');
    $('idx-'+view).textContent=$('slider-'+view).value;
  }
}
async function openCase(id){
  const r=await fetch('/api/cases/'+encodeURIComponent(id));
  if(!r.ok){$('title').textContent='No case '+id;return}
  current=await r.json();
  location.hash='case='+encodeURIComponent(id);
  document.querySelectorAll('tr.case').forEach(t=>t.classList.toggle('sel',t.dataset.case===id));
  $('title').textContent=id; $('controls').hidden=false;
  $('download').href='/api/mask/'+encodeURIComponent(id);
  const mod=$('modality'); mod.innerHTML='';
  for(const name of current.modalities){const o=document.createElement('option');o.value=o.textContent=name;mod.appendChild(o)}
  const lg=$('legend'); lg.innerHTML='';
  for(const c of ['NCR','ED','ET']){
    const l=document.createElement('label');
    l.innerHTML=`<input type="checkbox" class="cls" value="${c}" checked><span class="sw" style="background:${COLOURS[c]}"></span>${c} (${NAMES[c]})`;
    lg.appendChild(l);
  }
  document.querySelectorAll('.cls').forEach(e=>e.onchange=refresh);
  const vs=$('views'); vs.innerHTML='';
  for(const [view,axis] of VIEWS){
    const d=document.createElement('div'); d.className='view';
    const pair=`<div><img id="img-pred-${view}" alt="${view} prediction"><div class="cap">prediction</div></div>`+
      (current.has_reference?`<div><img id="img-ref-${view}" alt="${view} reference"><div class="cap">reference</div></div>`:'');
    d.innerHTML=`<b>${view}</b><div class="pair">${pair}</div>
      <input type="range" id="slider-${view}" min="0" max="${current.shape[axis]-1}" value="${current.focus[axis]}">
      <span>slice <span id="idx-${view}"></span></span>`;
    vs.appendChild(d);
    d.querySelector('input').oninput=refresh;
  }
  refresh();
}
$('opacity').oninput=refresh; $('modality').onchange=refresh;
$('upload').onsubmit=async ev=>{
  ev.preventDefault();
  const st=$('job-status'); st.className=''; st.textContent='uploading...'; $('job-progress').value=0;
  let r;
  const token=document.querySelector('meta[name="tumorseg-token"]').content;
  try{ r=await fetch('/api/upload',{method:'POST',headers:{'X-Tumorseg-Token':token},body:new FormData($('upload'))}); }
  catch(e){ st.className='err'; st.textContent='upload failed: '+e; return }
  let d; try{ d=await r.json(); }catch(e){ d={error:r.status+' '+r.statusText}; }
  if(!r.ok){st.className='err'; st.textContent='refused: '+d.error; return}
  poll(d.job_id);
};
async function poll(job){
  const r=await fetch('/api/jobs/'+job); const d=await r.json(); const st=$('job-status');
  $('job-progress').value=d.progress; st.textContent=d.state+': '+d.stage+' ('+d.seconds+' s)';
  if(d.state==='done'){ await loadCases(d.case_id); return }
  if(d.state==='failed'){ st.className='err'; st.textContent='failed: '+d.error; return }
  setTimeout(()=>poll(job),500);
}
loadCases();
</script></body></html>
"""
