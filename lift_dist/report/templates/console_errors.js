(function () {
  function record(msg) {
    var d = document.documentElement.dataset;
    d.consoleErrors = (d.consoleErrors ? d.consoleErrors + " | " : "") + msg;
  }
  window.addEventListener("error", function (e) {
    record(e.message || ("failed to load " + ((e.target && (e.target.src || e.target.href)) || "a resource")));
  }, true);
  var original = console.error;
  console.error = function () { record(Array.prototype.join.call(arguments, " ")); original.apply(console, arguments); };
})();
