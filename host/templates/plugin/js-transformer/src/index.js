// {{name}}: a clickstream transform (contract {{contract}}, world `transformer`).
//
// A starting point that shows each outcome: it keeps page views with a
// `section` attribute (the first segment of the URL's path) and the country
// and city of the client address when no earlier transform set them, drops
// health checks, and rejects URLs that are neither http(s) nor a path. Edit
// `transformOne`, then run `clickstream plugin build` and `clickstream plugin test`.
//
// The world's functions are this module's exports, in camelCase. A record
// is an object with camelCase fields, a variant is `{ tag, val }`, an option
// is a value or `null`, an s64 is a number, and `configure` refuses a
// setting by throwing a string. The engine is QuickJS: there is no
// `console` (use the contract's `log` import), `URL`, `fetch` or timers.

import { lookupBatch } from 'clickstream:pipeline/geoip@{{contract}}';

export function name() {
  return '{{name}}';
}

export function version() {
  return '0.1.0';
}

// The `settings` table of this transform in pipeline.toml, as [key, value]
// pairs. Refuse what you do not know: the host then refuses the plugin.
export function configure(settings) {
  if (settings.length > 0) {
    throw `unknown setting \`${settings[0][0]}\`: {{name}} takes none`;
  }
}

// One outcome per event, in order. The GeoIP lookup is one call for the
// whole batch: each call crosses the sandbox boundary.
export function transform(batch) {
  const places = lookupBatch(batch.map((event) => event.ip));
  return batch.map((event, i) => transformOne(event, places[i]));
}

function transformOne(event, place) {
  const path = pathOf(event.url);
  if (path === undefined) {
    return { tag: 'reject', val: { field: 'url', reason: 'neither an http(s) URL nor a path' } };
  }
  if (path.startsWith('/health')) {
    return { tag: 'drop', val: 'health check' };
  }
  const section = path.replace(/^\/+/, '').split(/[/?#]/)[0] || 'home';
  event.attributes.push({ key: 'section', value: { tag: 'str', val: section } });
  if (event.country == null && place != null) {
    event.country = place.country;
    event.city = place.city;
  }
  return { tag: 'keep', val: event };
}

// The path (with query) of an http(s) URL or of a bare path.
function pathOf(url) {
  if (url.startsWith('/')) return url;
  const m = /^https?:\/\/[^/?#]*(.*)$/.exec(url);
  if (!m) return undefined;
  return m[1] === '' || m[1].startsWith('?') || m[1].startsWith('#') ? '/' : m[1];
}
