// The demo page: one BroadcastClient, a feed that only ever uses textContent (a
// payload is data, never markup), and the live total refreshed on the heartbeat.
(function () {
  "use strict";
  var config = JSON.parse(document.getElementById("live-config").textContent);
  var feed = document.getElementById("feed");
  var stateEl = document.getElementById("state");
  var retryEl = document.getElementById("retry");
  var MAX_ITEMS = 200;

  function addItem(envelope) {
    var item = document.createElement("li");
    if (envelope.id !== null && envelope.id !== undefined) item.dataset.id = envelope.id;
    var time = document.createElement("time");
    time.dateTime = envelope.timestamp;
    time.textContent = envelope.timestamp.replace("T", " ").slice(0, 19);
    var type = document.createElement("span");
    type.className = "type";
    type.textContent = envelope.type;
    var payload = document.createElement("code");
    payload.className = "payload";
    payload.textContent = JSON.stringify(envelope.payload);
    item.append(time, " ", type, " ", payload);
    feed.prepend(item);
    while (feed.children.length > MAX_ITEMS) feed.lastElementChild.remove();
    document.getElementById("empty").hidden = true;
  }

  function notice(text) {
    addItem({ id: null, type: "hub.notice", payload: text, timestamp: new Date().toISOString() });
  }

  window.hubClient = new BroadcastClient("/ws/broadcast/", {
    lastId: config.lastId,
    onMessage: addItem,
    onReset: function () {
      notice("Some broadcasts are no longer in the server's history; the feed may have a gap.");
    },
    onStateChange: function (state, client) {
      stateEl.textContent = state;
      stateEl.dataset.state = state;
      retryEl.textContent =
        state === "closed" && client.retryIn !== undefined
          ? "(retrying in " + (client.retryIn / 1000).toFixed(1) + " s)"
          : "";
    },
  });

  function refreshTotal() {
    fetch(config.liveTotalUrl, { headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (body) {
        if (body) document.getElementById("live-total").textContent = body.live_total;
      })
      .catch(function () {});
  }
  setInterval(refreshTotal, Math.max(1000, config.refreshMs));
})();
