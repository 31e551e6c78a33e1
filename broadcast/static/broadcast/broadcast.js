/*
 * BroadcastClient: the browser side of the broadcast hub. No build step, no
 * dependencies; load it with a <script> tag (it defines window.BroadcastClient)
 * or require() it.
 *
 *   const client = new BroadcastClient("/ws/broadcast/", {
 *     topics: ["prices.eurusd"],       // besides the global stream every client gets
 *     onMessage: (envelope) => ...,    // {id, type, topic, payload, timestamp}
 *     onStateChange: (state) => ...,   // "connecting" | "open" | "closed"
 *     onReset: (info) => ...,          // history did not reach back: reload state
 *     onSubscribed: (answer) => ...,   // {topics: [granted], denied: [...]}
 *   });
 *   client.subscribe(["orders"]);      // and client.unsubscribe([...])
 *
 * With a connect token, give tokenProvider: a function that returns a new token (or
 * a promise of one). The client calls it when the server warns that the token
 * expires (hub.expiring) and sends it in-band (hub.refresh), and before it
 * reconnects after the token expired (4001). A connection whose access was revoked
 * (4003), or whose token expired with no tokenProvider, is not reconnected: onError
 * is told, and connect() starts again.
 *
 * It reconnects after any close with exponential backoff and full jitter, and
 * resumes with the last id it saw (?last_id=N), so a reconnect misses nothing that
 * is still in the server's history. Beyond that history the server says hub.reset
 * and onReset is called. Its topics ride on every (re)connect (?topics=a,b), so a
 * resume replays the global stream and exactly those topics. See docs/receiving.md.
 */
(function (root) {
  "use strict";

  var DEFAULTS = {
    onMessage: function () {},
    onStateChange: function () {},
    onReset: function () {},
    onError: function () {},
    onSubscribed: function () {},
    topics: [],             // topics to subscribe to on every connect
    token: null,            // a connect token (broadcast.clients.tokens.connect_token)
    tokenProvider: null,    // () => a new token, or a promise of one (see above)
    lastId: null,           // resume from this id on the first connect
    baseDelay: 500,         // ms: the backoff's first ceiling
    maxDelay: 30000,        // ms: the backoff's cap
    stableAfter: 5000,      // ms open before the backoff starts again from baseDelay
    pingInterval: 25000,    // ms: a connection that answers nothing for this long is dropped
    WebSocket: null,        // a WebSocket implementation (defaults to the global one)
    random: Math.random,
  };

  /*
   * Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter"): a
   * uniformly random wait between 0 and min(cap, base * 2^attempt), so that clients
   * cut together by a restart do not come back together.
   */
  function backoffDelay(attempt, baseDelay, maxDelay, random) {
    var ceiling = Math.min(maxDelay, baseDelay * Math.pow(2, attempt));
    return Math.floor((random || Math.random)() * ceiling);
  }

  function absoluteUrl(url) {
    if (/^wss?:\/\//.test(url)) return url;
    var loc = root.location;
    var scheme = loc.protocol === "https:" ? "wss://" : "ws://";
    return scheme + loc.host + (url.charAt(0) === "/" ? url : "/" + url);
  }

  function BroadcastClient(url, options) {
    this.url = absoluteUrl(url);
    this.options = {};
    for (var key in DEFAULTS) {
      this.options[key] =
        options && options[key] !== undefined ? options[key] : DEFAULTS[key];
    }
    this.lastId = this.options.lastId;
    // The topics asked for: what a reconnect asks for again. The server's answers
    // (onSubscribed) say which were granted.
    this.topics = (this.options.topics || []).slice();
    this.state = "closed";
    this.attempt = 0;
    this.socket = null;
    this._stopped = false;
    this._retry = null;
    this._stable = null;
    this._ping = null;
    this._heard = false;
    this._tokenStale = false;
    this.connect();
  }

  BroadcastClient.backoffDelay = backoffDelay;

  BroadcastClient.prototype._setState = function (state) {
    if (state === this.state) return;
    this.state = state;
    this.options.onStateChange(state, this);
  };

  BroadcastClient.prototype.connect = function () {
    var self = this;
    if (this._tokenStale && this.options.tokenProvider) {
      // The token expired: a new one first, then the connect (resuming as ever).
      this._tokenStale = false;
      this._stopped = false;
      this._setState("connecting");
      this._freshToken(function () { self.connect(); }, function (err) {
        self.options.onError(err);
        self._dropped(4001, "no new token");
      });
      return;
    }
    if (this.socket) {
      // connect() on a live client starts over rather than leaving a socket behind.
      var old = this.socket;
      old.onopen = old.onmessage = old.onclose = null;
      old.close(1000);
      this.socket = null;
    }
    this._clearTimers();
    var Impl = this.options.WebSocket || root.WebSocket;
    var params = [];
    if (this.options.token) params.push("token=" + encodeURIComponent(this.options.token));
    if (this.topics.length) params.push("topics=" + this.topics.map(encodeURIComponent).join(","));
    if (this.lastId !== null && this.lastId !== undefined) {
      params.push("last_id=" + encodeURIComponent(this.lastId));
    }
    var url = this.url;
    if (params.length) url += (url.indexOf("?") === -1 ? "?" : "&") + params.join("&");
    var asked = this.topics.slice();
    this._stopped = false;
    this._setState("connecting");
    var socket = (this.socket = new Impl(url));
    socket.onopen = function () {
      if (socket !== self.socket) return;
      self._setState("open");
      // subscribe()/unsubscribe() calls made while the socket was connecting.
      var added = self.topics.filter(function (t) { return asked.indexOf(t) === -1; });
      var removed = asked.filter(function (t) { return self.topics.indexOf(t) === -1; });
      if (added.length) socket.send(JSON.stringify({ type: "hub.subscribe", topics: added }));
      if (removed.length) socket.send(JSON.stringify({ type: "hub.unsubscribe", topics: removed }));
      // Only a connection that stays up resets the backoff: a server that accepts
      // and then closes at once must not be hammered.
      self._stable = setTimeout(function () { self.attempt = 0; }, self.options.stableAfter);
      self._startPing();
    };
    socket.onmessage = function (event) {
      if (socket !== self.socket) return;
      self._heard = true;
      self._receive(event.data);
    };
    socket.onclose = function (event) {
      if (socket !== self.socket) return;
      self._dropped(event.code, event.reason);
    };
  };

  BroadcastClient.prototype._receive = function (data) {
    var envelope;
    try {
      envelope = JSON.parse(data);
    } catch (err) {
      this.options.onError(new Error("unreadable frame from the server"));
      return;
    }
    var type = envelope.type;
    var payload = envelope.payload || {};
    if (type === "hub.welcome") {
      // With nothing to resume, start from here; with a last id, the server
      // replays what followed it right after this frame.
      if (this.lastId === null || this.lastId === undefined) this.lastId = payload.last_id;
      return;
    }
    if (type === "hub.reset") {
      this.lastId = payload.last_id;
      this.options.onReset(payload, this);
      return;
    }
    if (type === "hub.resumed" || type === "hub.pong") {
      // The hub's position: the ids up to it that this client did not get were
      // other topics', so a later resume starts there (and not far behind).
      this._advance(payload.last_id);
      return;
    }
    if (type === "hub.subscribed") {
      var self = this;
      this.topics = this.topics.filter(function (t) { return payload.denied.indexOf(t) === -1; });
      this.options.onSubscribed(payload, self);
      return;
    }
    if (type === "hub.unsubscribed" || type === "hub.refreshed") return;
    if (type === "hub.expiring") {
      this._refresh();
      return;
    }
    if (type === "hub.error") {
      this.options.onError(new Error(payload.error));
      return;
    }
    if (typeof envelope.id === "number") {
      if (this.lastId !== null && this.lastId !== undefined && envelope.id <= this.lastId) return;
      this.lastId = envelope.id;
    }
    this.options.onMessage(envelope, this);
  };

  /* A new token from tokenProvider, sent in-band before the old one expires. */
  BroadcastClient.prototype._refresh = function () {
    var self = this;
    var socket = this.socket;
    if (!this.options.tokenProvider) return;
    this._freshToken(function (token) {
      if (socket === self.socket && socket.readyState === 1) {
        socket.send(JSON.stringify({ type: "hub.refresh", token: token }));
      }
    }, function (err) { self.options.onError(err); });
  };

  BroadcastClient.prototype._freshToken = function (done, failed) {
    var self = this;
    var token;
    try {
      token = this.options.tokenProvider();
    } catch (err) {
      failed(err);
      return;
    }
    Promise.resolve(token).then(function (value) {
      self.options.token = value;  // what every later connect carries
      done(value);
    }, failed);
  };

  BroadcastClient.prototype._advance = function (position) {
    if (typeof position !== "number") return;
    if (this.lastId === null || this.lastId === undefined || position > this.lastId) {
      this.lastId = position;
    }
  };

  /*
   * Subscribe to more topics: now (the server answers with onSubscribed) and on
   * every reconnect. Denied topics are dropped from what reconnects ask for.
   */
  BroadcastClient.prototype.subscribe = function (topics) {
    this._change("hub.subscribe", topics);
  };

  /* Stop receiving these topics, now and after reconnects. */
  BroadcastClient.prototype.unsubscribe = function (topics) {
    this._change("hub.unsubscribe", topics);
  };

  BroadcastClient.prototype._change = function (type, topics) {
    var list = [].concat(topics);
    for (var i = 0; i < list.length; i++) {
      var at = this.topics.indexOf(list[i]);
      if (type === "hub.subscribe" && at === -1) this.topics.push(list[i]);
      if (type === "hub.unsubscribe" && at !== -1) this.topics.splice(at, 1);
    }
    // Not open yet: the socket sends the difference once it opens (connect()).
    if (this.socket && this.socket.readyState === 1) {
      this.socket.send(JSON.stringify({ type: type, topics: list }));
    }
  };

  BroadcastClient.prototype._startPing = function () {
    var self = this;
    if (!this.options.pingInterval) return;
    this._heard = true;
    this._ping = setInterval(function () {
      if (!self._heard) {
        // Nothing at all since the last ping, not even its pong: a dead link
        // (a laptop waking up, a NAT that forgot us). Start over.
        self.socket.close();
        self._dropped(1006, "no answer to ping");
        return;
      }
      self._heard = false;
      if (self.socket.readyState === 1) self.socket.send('{"type":"hub.ping"}');
    }, this.options.pingInterval);
  };

  BroadcastClient.prototype._clearTimers = function () {
    clearTimeout(this._retry);
    clearTimeout(this._stable);
    clearInterval(this._ping);
    this._retry = this._stable = this._ping = null;
  };

  BroadcastClient.prototype._dropped = function (code, reason) {
    this._clearTimers();
    if (this.socket) {
      this.socket.onopen = this.socket.onmessage = this.socket.onclose = null;
    }
    this.socket = null;
    this._setState("closed");
    this.lastClose = { code: code, reason: reason };
    if (code === 4003) {
      // Access revoked: the same credentials must not come straight back.
      this._stopped = true;
      this.options.onError(new Error("access revoked (4003)"));
    }
    if (code === 4001) {
      if (this.options.tokenProvider) {
        this._tokenStale = true;
      } else {
        // The same token would be refused (403) on every retry: stop, as for 4003.
        this._stopped = true;
        this.options.onError(new Error("token expired (4001) and no tokenProvider"));
      }
    }
    if (this._stopped) return;
    var self = this;
    var delay = backoffDelay(this.attempt, this.options.baseDelay, this.options.maxDelay,
                             this.options.random);
    this.attempt += 1;
    this.retryIn = delay;
    this._retry = setTimeout(function () { self.connect(); }, delay);
  };

  /* Close for good: no reconnect until connect() is called again. */
  BroadcastClient.prototype.close = function () {
    this._stopped = true;
    var socket = this.socket;
    this._clearTimers();
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = null;
      socket.close(1000);
    }
    this.socket = null;
    this._setState("closed");
  };

  if (typeof module === "object" && module.exports) {
    module.exports = BroadcastClient;
  } else {
    root.BroadcastClient = BroadcastClient;
  }
})(typeof window !== "undefined" ? window : globalThis);
