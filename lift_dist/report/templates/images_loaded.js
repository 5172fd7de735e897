window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.dataset.imagesTotal = String(imgs.length);
  document.body.dataset.imagesLoaded = bad.length === 0 ? "true" : "false";
  if (bad.length) { document.body.dataset.imagesBroken = bad.map(function (i) { return i.getAttribute("src"); }).join(" "); }
});
