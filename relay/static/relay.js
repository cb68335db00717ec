/*! relay.js: the browser half of relay's attribution (no dependencies).
 *
 * On every page: keeps the click ids of the landing URL (irclickid, fbclid,
 * gclid, ttclid, simmer_anonymous_id) in ONE first-party cookie, `relay_ids`
 * (Path=/, SameSite=Lax, Secure on https, 90 days by default, or
 * data-cookie-days="N" on the script tag). A newer click of the same kind
 * replaces the older one; each id keeps the time it was first seen.
 *
 * At checkout: Relay.metadata() returns the object to pass to the processor:
 *   Stripe Checkout    metadata and subscription_data.metadata
 *   Lemon Squeezy      checkout_data.custom, or Relay.lemonSqueezyUrl(url)
 *   Paddle.js          customData
 *   Chargebee          meta_data (API) or custom fields: Relay.metadata({prefix: "cf_"})
 * with the stored click ids, Meta's _fbp/_fbc cookies (fbc formed from the
 * fbclid and its first-seen time when the pixel set none), the GA4 client and
 * session ids (_ga and _ga_<container> cookies), and pagent's variables.
 * Values keep to Stripe's metadata limits (the strictest): at most 50 keys,
 * keys up to 40 characters, values up to 500; a longer value is left out,
 * never cut (a cut id would be a wrong id).
 *
 * The merchant's checkout endpoint adds what only a server knows:
 * client_user_agent, client_ip_address, event_source_url (README); a checkout
 * opened in the browser (Paddle.js) can take the first and last from the page
 * with Relay.metadata({page: true}).
 */
(function (window, document) {
  "use strict";

  var COOKIE = "relay_ids";
  var CLICK_IDS = ["irclickid", "fbclid", "gclid", "ttclid", "simmer_anonymous_id"];
  var MAX_KEYS = 50, MAX_KEY = 40, MAX_VALUE = 500;
  var script = document.currentScript;
  var days = parseInt((script && script.getAttribute("data-cookie-days")) || "90", 10);
  if (!(days > 0 && days <= 400)) days = 90;

  function cookie(name) {
    var parts = document.cookie ? document.cookie.split("; ") : [];
    for (var i = 0; i < parts.length; i++) {
      var eq = parts[i].indexOf("=");
      if (parts[i].slice(0, eq) === name) {
        try { return decodeURIComponent(parts[i].slice(eq + 1)); } catch (e) { return null; }
      }
    }
    return null;
  }

  function firstCookie(prefix) {
    var parts = document.cookie ? document.cookie.split("; ") : [];
    for (var i = 0; i < parts.length; i++) {
      if (parts[i].indexOf(prefix) === 0) return cookie(parts[i].slice(0, parts[i].indexOf("=")));
    }
    return null;
  }

  function stored() {
    try {
      var value = JSON.parse(cookie(COOKIE) || "{}");
      return value && typeof value === "object" ? value : {};
    } catch (e) { return {}; }
  }

  function plain(value) { // an id as processors and ad platforms take it: short, printable
    return typeof value === "string" && value.length > 0 && value.length <= MAX_VALUE &&
      /^[\x21-\x7e]+$/.test(value);
  }

  function capture() {
    var params = new URLSearchParams(window.location.search);
    var ids = stored(), changed = false, now = Date.now();
    CLICK_IDS.forEach(function (key) {
      var value = params.get(key);
      if (plain(value) && !(ids[key] && ids[key][0] === value)) {
        ids[key] = [value, now];
        changed = true;
      }
    });
    if (!changed) return;
    document.cookie = COOKIE + "=" + encodeURIComponent(JSON.stringify(ids)) +
      "; Max-Age=" + days * 86400 + "; Path=/; SameSite=Lax" +
      (window.location.protocol === "https:" ? "; Secure" : "");
  }

  function gaClientId() { // _ga = GA1.1.<random>.<timestamp>: the client id is the last two
    var ga = cookie("_ga"), m = ga && /^GA\d\.\d+\.(\d+\.\d+)$/.exec(ga);
    return m ? m[1] : null;
  }

  function gaSessionId(measurementId) { // _ga_<container>: GS1.1.<session>… or GS2.1.s<session>$…
    var name = measurementId ? "_ga_" + measurementId.replace(/^G-/, "") : null;
    var value = name ? cookie(name) : firstCookie("_ga_");
    var m = value && (/^GS1\.\d+\.(\d+)\./.exec(value) || /^GS2\.\d+\.s(\d+)/.exec(value));
    return m ? m[1] : null;
  }

  function pagent(label) {
    try {
      var vars = window._pgnt && window._pgnt.variables && window._pgnt.variables(label || "purchase");
      return vars && typeof vars === "object" ? JSON.stringify(vars) : null;
    } catch (e) { return null; }
  }

  function metadata(options) {
    options = options || {};
    var ids = stored(), out = {}, now = Date.now();
    var params = new URLSearchParams(window.location.search);
    CLICK_IDS.forEach(function (key) {
      var here = params.get(key);
      if (plain(here)) out[key] = here;
      else if (ids[key] && plain(ids[key][0])) out[key] = ids[key][0];
    });
    if (!out.simmer_anonymous_id && plain(cookie("simmer_id"))) out.simmer_anonymous_id = cookie("simmer_id");
    var fbp = cookie("_fbp"), fbc = cookie("_fbc");
    if (plain(fbp)) out.fbp = fbp;
    if (plain(fbc)) out.fbc = fbc;
    else if (out.fbclid) out.fbc = "fb.1." + ((ids.fbclid && ids.fbclid[0] === out.fbclid && ids.fbclid[1]) || now) + "." + out.fbclid;
    var cid = gaClientId(), sid = gaSessionId(options.ga4MeasurementId);
    if (cid) out.ga_client_id = cid;
    if (sid) out.ga_session_id = sid;
    var pg = pagent(options.pagentLabel);
    if (pg) out.pagent = pg;
    if (options.page) { // a checkout opened in the browser (Paddle.js): what the server would add
      out.client_user_agent = window.navigator.userAgent;
      out.event_source_url = window.location.origin + window.location.pathname;
    }
    var extra = options.extra || {};
    Object.keys(extra).forEach(function (key) { if (typeof extra[key] === "string") out[key] = extra[key]; });
    var prefix = options.prefix || "", result = {}, count = 0;
    Object.keys(out).forEach(function (key) {
      var name = prefix + key, value = out[key];
      if (count < MAX_KEYS && name.length <= MAX_KEY && value.length > 0 && value.length <= MAX_VALUE) {
        result[name] = value;
        count++;
      }
    });
    return result;
  }

  function lemonSqueezyUrl(url, options) {
    var link = new URL(url, window.location.href), meta = metadata(options);
    Object.keys(meta).forEach(function (key) { link.searchParams.set("checkout[custom][" + key + "]", meta[key]); });
    return link.toString();
  }

  capture();
  window.Relay = { metadata: metadata, lemonSqueezyUrl: lemonSqueezyUrl, cookieName: COOKIE, cookieDays: days };
})(window, document);
