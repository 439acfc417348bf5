// The relay's dashboard: a snapshot of the relay from dashboard/feed (Server-Sent Events),
// shown as it comes; what the plots (uPlot) need of the last HISTORY snapshots is kept. The
// feed's URL, with the page's token if it had one, is the body's data-feed.
"use strict";

(() => {
  const HISTORY = 300; // points the plots show: 5 minutes at a snapshot a second
  const STAGES = ["accept", "broker", "queue", "write"];
  const COLUMNS = ["name", "mode", "producers", "consumers", "messages_in", "messages_out",
    "rate_in", "rate_out", "dropped", "buffered"];
  const $ = (id) => document.getElementById(id);
  // For tests and the curious: what came, and the feed's state.
  const dashboard = (window.dashboard = { history: [], last: null, feed: "connecting" });

  const text = (value) => {
    if (value === null || value === undefined) return "–";
    if (typeof value === "number") {
      return Number.isInteger(value) ? value.toLocaleString("en-US") : value.toFixed(1);
    }
    return String(value);
  };
  const ms = (seconds) => (seconds === null || seconds === undefined ? null : seconds * 1000);
  const milliseconds = (seconds) => {
    const value = ms(seconds);
    return value === null ? "–" : value.toFixed(value < 1 ? 3 : 1);
  };

  function element(tag, content, attributes = {}) {
    const made = document.createElement(tag);
    made.textContent = content;
    for (const [name, value] of Object.entries(attributes)) made.setAttribute(name, value);
    return made;
  }

  function definitions(list, entries) {
    list.replaceChildren(...entries.flatMap(([term, value]) => [
      element("dt", term), element("dd", text(value), { "data-field": term }),
    ]));
  }

  function plot(target, labels, colors, dashes = []) {
    const series = [{}, ...labels.map((label, i) => ({
      label, stroke: colors[i], width: 2, spanGaps: true, dash: dashes[i],
    }))];
    const options = { width: target.clientWidth, height: 220, series, scales: { x: { time: true } } };
    return new uPlot(options, [[], ...labels.map(() => [])], target);
  }

  const rates = plot($("rates"), ["in", "out"], ["#2a7ae2", "#e2762a"], [undefined, [6, 4]]);
  const latency = plot($("latency"), STAGES, ["#2a7ae2", "#8e44ad", "#e2762a", "#1f8f4e"]);
  window.addEventListener("resize", () => {
    for (const chart of [rates, latency]) {
      chart.setSize({ width: chart.root.parentElement.clientWidth, height: 220 });
    }
  });

  function row(channel) {
    const cells = COLUMNS.map((field) => element("td", text(channel[field]), { "data-field": field }));
    for (const stage of STAGES) {
      cells.push(element("td", milliseconds(channel.p99[stage]), { "data-field": `p99_${stage}` }));
    }
    const tr = element("tr", "", { "data-channel": channel.name });
    tr.replaceChildren(...cells);
    return tr;
  }

  function show(snapshot) {
    const status = $("status");
    status.textContent = snapshot.status;
    status.className = `badge ${snapshot.status === "ok" ? "ok" : "bad"}`;
    $("updated").textContent = `at ${new Date(snapshot.time * 1000).toLocaleTimeString()}`;
    $("channels-live").textContent = text(snapshot.channels_live);
    const totals = snapshot.totals;
    $("totals").textContent = `${text(totals.messages_in)} in, ${text(totals.messages_out)} out`;
    definitions($("connections"), Object.entries(snapshot.connections));
    definitions($("broker"), Object.entries(snapshot.broker));
    definitions($("tasks"), Object.entries(snapshot.tasks).map(([name, task]) => [
      name, task.running ? `running, ${task.restarts} restarts`
        : task.last_error ? `down: ${task.last_error}` : "done (nothing to do)",
    ]));
    $("channels").replaceChildren(...snapshot.channels.map(row));
    $("shown").textContent = `(${snapshot.channels.length} of ${snapshot.channels_live})`;

    const kept = dashboard.history;
    const times = kept.map((point) => point.time);
    rates.setData([times, kept.map((point) => point.in), kept.map((point) => point.out)]);
    latency.setData([times, ...STAGES.map((stage) => kept.map((point) => ms(point.p99[stage])))]);
  }

  function setFeed(state) {
    dashboard.feed = state;
    $("feed").textContent = `feed: ${state}`;
  }

  const feed = new EventSource(document.body.dataset.feed);
  feed.onopen = () => setFeed("live");
  feed.onerror = () => setFeed(feed.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
  feed.addEventListener("snapshot", (event) => {
    const snapshot = JSON.parse(event.data);
    const { time, totals, p99 } = snapshot;
    dashboard.history.push({ time, in: totals.rate_in, out: totals.rate_out, p99 });
    if (dashboard.history.length > HISTORY) dashboard.history.shift();
    dashboard.last = snapshot;
    show(snapshot);
  });
})();
