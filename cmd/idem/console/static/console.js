// The idem console's only script: it follows a running replay, polling the status of
// its job and updating the progress bar, then reloads the page once the replay ended.
// Every page works without it (a running replay's page then reloads itself).
(function () {
  'use strict';
  var job = document.getElementById('job');
  if (!job || job.dataset.state !== 'running') {
    return;
  }
  var url = job.dataset.status;
  function text(id, value) {
    var el = document.getElementById(id);
    if (el) {
      el.textContent = String(value);
    }
  }
  function poll() {
    fetch(url, {credentials: 'same-origin', headers: {'Accept': 'application/json'}})
      .then(function (r) {
        if (!r.ok) {
          throw new Error('status ' + r.status);
        }
        return r.json();
      })
      .then(function (s) {
        var bar = document.getElementById('progress');
        if (bar) {
          bar.max = Math.max(s.total, 1);
          bar.value = s.done;
        }
        text('done', s.done);
        text('total', s.total);
        if (s.state !== 'running') {
          window.location.reload();
          return;
        }
        window.setTimeout(poll, 500);
      })
      .catch(function () {
        window.setTimeout(poll, 2000);
      });
  }
  window.setTimeout(poll, 500);
}());
