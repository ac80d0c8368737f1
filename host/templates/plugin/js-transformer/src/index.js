// {{name}}: a clickstream transform (contract {{contract}}, world `transformer`).
//
// A starting point that shows each outcome: it keeps page views with a
// `section` attribute (the first segment of the URL's path) and the country
// and city of the client address when no earlier transform set them, drops
// health checks, and rejects URLs that are neither http(s) nor a path. Edit
// `transformOne`, then run `clickstream plugin build` and `clickstream plugin test`.
//
// The world's functions are this module's exports, made by `defineTransformer`
// (src/clickstream-plugin.js, which hides the engines' differences: an s64
// such as `timestampMs` is a Number, a missing option is `null`). A record is
// an object with camelCase fields, and an outcome is `keep(event)`,
// `drop(reason)` or `reject(field, reason)`. The engine is QuickJS: there is
// no `console` (use the contract's `log` import), `URL`, `fetch` or timers.

import { lookupBatch } from 'clickstream:pipeline/geoip@{{contract}}';
import { defineTransformer, drop, keep, reject, setAttribute } from './clickstream-plugin.js';

export const { name, version, configure, transform } = defineTransformer({
  name: '{{name}}',
  version: '0.1.0',
  // The `settings` table of this transform in pipeline.toml, each key with
  // its default; the text there is read as the default's type (here a
  // comma-separated list: `settings = { health_paths = "/health,/ping" }`).
  // Any other key refuses the plugin, naming it.
  settings: {
    health_paths: ['/health'],
  },
  // One outcome per event, in order. The GeoIP lookup is one call for the
  // whole batch: each call crosses the sandbox boundary.
  transform(batch, settings) {
    const places = lookupBatch(batch.map((event) => event.ip));
    return batch.map((event, i) => transformOne(event, places[i], settings));
  },
});

function transformOne(event, place, settings) {
  const path = pathOf(event.url);
  if (path === null) {
    return reject('url', 'neither an http(s) URL nor a path');
  }
  if (settings.health_paths.some((prefix) => path.startsWith(prefix))) {
    return drop('health check');
  }
  const section = path.replace(/^\/+/, '').split(/[/?#]/)[0] || 'home';
  setAttribute(event, 'section', section);
  if (event.country === null && place != null) {
    event.country = place.country;
    event.city = place.city;
  }
  return keep(event);
}

// The path (with query) of an http(s) URL or of a bare path.
function pathOf(url) {
  if (url.startsWith('/')) return url;
  const m = /^https?:\/\/[^/?#]*(.*)$/.exec(url);
  if (!m) return null;
  return m[1] === '' || m[1].startsWith('?') || m[1].startsWith('#') ? '/' : m[1];
}
