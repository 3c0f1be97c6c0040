// The console's interactivity: the time-zone switch, chart/table views and the stacked charts
// (uPlot, vendored in static/vendor). Numbers in tables come from the server as exact text;
// the charts parse them only to draw.
(function () {
  "use strict";
  var ZONE_KEY = "otel-meter-zone";
  var zoneSelect = document.getElementById("time-zone");
  var zone = localStorage.getItem(ZONE_KEY) === "local" ? "local" : "utc";
  var charts = [];
  var COLORS = ["#0b57d0", "#e8710a", "#188038", "#a142f4", "#d93025", "#12b5cb", "#f9ab00", "#5f6368",
                "#9334e6", "#1e8e3e"];

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function formatTime(date) {
    if (zone === "utc") {
      return date.getUTCFullYear() + "-" + pad(date.getUTCMonth() + 1) + "-" + pad(date.getUTCDate()) + " " +
        pad(date.getUTCHours()) + ":" + pad(date.getUTCMinutes()) + " UTC";
    }
    return date.toLocaleString(undefined, {year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit",
                                           minute: "2-digit", timeZoneName: "short"});
  }

  function tick(seconds, span) {
    // an axis label in the chosen zone, 24-hour: month-day at midnight over more than two days, else hour:minute
    var date = new Date(seconds * 1000), utc = zone === "utc";
    var midnight = (utc ? date.getUTCHours() : date.getHours()) === 0 && (utc ? date.getUTCMinutes() : date.getMinutes()) === 0;
    if (span > 2 * 86400 && midnight) {
      return pad((utc ? date.getUTCMonth() : date.getMonth()) + 1) + "-" + pad(utc ? date.getUTCDate() : date.getDate());
    }
    return pad(utc ? date.getUTCHours() : date.getHours()) + ":" + pad(utc ? date.getUTCMinutes() : date.getMinutes());
  }

  function showTimes() {
    document.querySelectorAll("time[datetime]").forEach(function (element) {
      var date = new Date(element.getAttribute("datetime"));
      if (!isNaN(date)) { element.textContent = formatTime(date); }
    });
  }

  function stacked(labels, columns) {
    // Cumulative sums, drawn largest first so each band shows its own group.
    var names = Object.keys(columns), totals = labels.map(function () { return 0; }), data = [], series = [];
    names.forEach(function (name, index) {
      totals = totals.map(function (sum, i) { return sum + Number(columns[name][i]); });
      data.push(totals.slice());
      series.push({label: name || "(none)", stroke: COLORS[index % COLORS.length], width: 0,
                   fill: COLORS[index % COLORS.length], points: {show: false},
                   paths: uPlot.paths.bars({size: [0.8, 48], align: 1})});
    });
    return {data: data.reverse(), series: series.reverse()};
  }

  function drawChart(element, buckets, columns) {
    if (!element || typeof uPlot === "undefined") { return; }
    element.textContent = "";
    var times = buckets.map(function (iso) { return Date.parse(iso) / 1000; });
    var stack = stacked(times, columns);
    if (!times.length) { element.textContent = "No usage in this range."; return; }
    var options = {
      width: Math.max(280, element.clientWidth || 600), height: 260,
      tzDate: function (ts) { return zone === "utc" ? uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC") : new Date(ts * 1e3); },
      series: [{}].concat(stack.series), legend: {live: false},
      // the last bar starts at the last bucket: the axis runs one bucket further
      scales: {x: {time: true, range: function () {
        var step = times.length > 1 ? times[times.length - 1] - times[times.length - 2] : 3600;
        return [times[0], times[times.length - 1] + step];
      }}},
      axes: [{values: function (chart, splits) {
        var span = splits.length ? splits[splits.length - 1] - splits[0] : 0;
        return splits.map(function (seconds) { return tick(seconds, span); });
      }}, {size: 70}]
    };
    charts.push(new uPlot(options, [times].concat(stack.data), element));
  }

  function drawCharts() {
    var source = document.getElementById("series-data");
    charts.forEach(function (chart) { chart.destroy(); });
    charts = [];
    if (!source) { return; }
    var series = JSON.parse(source.textContent);
    // one spend chart per currency: amounts in different currencies are never stacked together
    document.querySelectorAll("[data-spend-currency].chart").forEach(function (element) {
      drawChart(element, series.buckets, series.spend[element.dataset.spendCurrency] || {});
    });
    drawChart(document.getElementById("chart-tokens"), series.buckets, series.tokens);
  }

  document.querySelectorAll(".view-switch button").forEach(function (button) {
    button.addEventListener("click", function () {
      var section = button.closest(".charts"), table = button.dataset.view === "table";
      section.querySelector(".chart-view").hidden = table;
      section.querySelector(".table-view").hidden = !table;
      section.querySelectorAll(".view-switch button").forEach(function (other) {
        other.setAttribute("aria-pressed", String(other === button));
      });
    });
  });

  var rangeSelect = document.getElementById("range"), bucketSelect = document.getElementById("bucket");
  if (rangeSelect && bucketSelect) {  // a new preset brings its usual bucket; the select may still change it
    rangeSelect.addEventListener("change", function () {
      if (rangeSelect.value !== "custom") { bucketSelect.value = rangeSelect.value === "24h" ? "hour" : "day"; }
    });
  }
  ["from", "to"].forEach(function (id) {
    var input = document.getElementById(id), range = document.getElementById("range");
    if (input && range) { input.addEventListener("change", function () { range.value = "custom"; }); }
  });

  if (zoneSelect) {
    zoneSelect.value = zone;
    zoneSelect.addEventListener("change", function () {
      zone = zoneSelect.value;
      localStorage.setItem(ZONE_KEY, zone);
      showTimes();
      drawCharts();
    });
  }
  var resizeTimer;
  window.addEventListener("resize", function () { clearTimeout(resizeTimer); resizeTimer = setTimeout(drawCharts, 150); });
  showTimes();
  drawCharts();
})();
