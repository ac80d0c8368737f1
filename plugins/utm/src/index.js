// The utm transform: campaign attribution for each click. It reads the
// `utm_*` parameters of the page's query string and classes the referrer
// (search, social, email, internal, referral or direct), and adds both to
// the event's attributes, where the aggregates and the dead-letter list can
// read them. It keeps every event: a click without a campaign is still a click.
//
// Written in plain JavaScript against the contract's `transformer` world
// (sdk/rust/wit/v0.2.0): the exports are the world's functions in camelCase, a
// variant is `{ tag, val }`, and `configure` refuses a setting by throwing a
// string.

import { log } from 'clickstream:pipeline/log@0.2.0';

const NAME = 'utm';
const VERSION = '1.0.0';

// The campaign parameters copied into attributes, in this order.
const PARAMETERS = ['utm_source', 'utm_medium', 'utm_campaign', 'utm_term', 'utm_content'];

// Hosts (and their subdomains) of the common search engines and social
// networks; `search_hosts` and `social_hosts` add to them.
const SEARCH = ['google.', 'bing.com', 'duckduckgo.com', 'search.yahoo.com', 'yandex.', 'baidu.com', 'ecosia.org', 'search.brave.com', 'qwant.com'];
const SOCIAL = ['facebook.com', 'fb.com', 'instagram.com', 't.co', 'twitter.com', 'x.com', 'linkedin.com', 'lnkd.in', 'reddit.com', 'pinterest.com', 'youtube.com', 'tiktok.com', 'threads.net', 'mastodon.social', 'bsky.app'];
const EMAIL = ['mail.google.com', 'outlook.live.com', 'mail.yahoo.com', 'mail.proton.me'];

let settings = defaults();

function defaults() {
  return { internalHosts: [], search: SEARCH, social: SOCIAL, email: EMAIL, maxLength: 128, lowercase: true };
}

export function name() {
  return NAME;
}

export function version() {
  return VERSION;
}

// Settings (all optional):
//   internal_hosts = "shop.example.com,example.com"  referrers counted as internal, besides the page's own host
//   search_hosts, social_hosts = "..."                more hosts for those classes
//   max_length = "128"                                longest attribute value kept (longer ones are cut)
//   lowercase = "true"                                lower-case utm_source and utm_medium
export function configure(pairs) {
  const next = defaults();
  const hosts = (value) => value.split(',').map((h) => h.trim().toLowerCase()).filter((h) => h.length > 0);
  for (const [key, value] of pairs) {
    switch (key) {
      case 'internal_hosts':
        next.internalHosts = hosts(value);
        break;
      case 'search_hosts':
        next.search = SEARCH.concat(hosts(value));
        break;
      case 'social_hosts':
        next.social = SOCIAL.concat(hosts(value));
        break;
      case 'max_length': {
        const n = Number(value.trim());
        if (!Number.isInteger(n) || n < 1 || n > 1024) {
          throw `max_length = \`${value}\`: expected a whole number from 1 to 1024`;
        }
        next.maxLength = n;
        break;
      }
      case 'lowercase':
        if (value.trim() !== 'true' && value.trim() !== 'false') {
          throw `lowercase = \`${value}\`: expected true or false`;
        }
        next.lowercase = value.trim() === 'true';
        break;
      default:
        throw `unknown setting \`${key}\`; the utm plugin accepts: internal_hosts, search_hosts, social_hosts, max_length (default 128), lowercase (default true)`;
    }
  }
  settings = next;
}

export function transform(batch) {
  const outcomes = new Array(batch.length);
  let undecodable = 0;
  for (let i = 0; i < batch.length; i++) {
    const event = batch[i];
    const found = [];
    const query = parseQuery(event.url);
    for (const name of PARAMETERS) {
      let value = query.get(name);
      if (value === undefined || value === '') continue;
      if (value === null) {
        undecodable++;
        continue;
      }
      if (settings.lowercase && (name === 'utm_source' || name === 'utm_medium')) value = value.toLowerCase();
      found.push({ key: name, value: { tag: 'str', val: cut(value) } });
    }
    found.push({ key: 'referrer_class', value: { tag: 'str', val: referrerClass(event.referrer, event.url, query) } });
    event.attributes = merge(event.attributes, found);
    outcomes[i] = { tag: 'keep', val: event };
  }
  if (undecodable > 0) {
    log('debug', `${undecodable} utm parameters were not valid percent-encoding and were left out`);
  }
  return outcomes;
}

// The query parameters of `url`, first occurrence of each name. A value
// that is not valid percent-encoding maps to null.
function parseQuery(url) {
  const params = new Map();
  const start = url.indexOf('?');
  if (start < 0) return params;
  let end = url.indexOf('#', start);
  if (end < 0) end = url.length;
  for (const pair of url.slice(start + 1, end).split('&')) {
    if (pair.length === 0) continue;
    const eq = pair.indexOf('=');
    const key = decode(eq < 0 ? pair : pair.slice(0, eq));
    if (key === null || params.has(key.toLowerCase())) continue;
    params.set(key.toLowerCase(), eq < 0 ? '' : decode(pair.slice(eq + 1)));
  }
  return params;
}

function decode(text) {
  try {
    return decodeURIComponent(text.replace(/\+/g, ' ')).trim();
  } catch (_) {
    return null;
  }
}

// The host of an absolute http(s) URL, lower-cased and without `www.` or a
// port; '' when there is none.
function hostOf(url) {
  const m = /^[a-z][a-z0-9+.-]*:\/\/(?:[^@/?#]*@)?([^:/?#]+)/i.exec(url.trim());
  if (!m) return '';
  const host = m[1].toLowerCase();
  return host.startsWith('www.') ? host.slice(4) : host;
}

function matches(host, patterns) {
  return patterns.some((p) => (p.endsWith('.') ? host.startsWith(p) || host.includes('.' + p) : host === p || host.endsWith('.' + p)));
}

// search, social, email, internal, referral or direct. A campaign tagged
// `utm_medium=email` counts as email even when the mail client sent no referrer.
function referrerClass(referrer, url, query) {
  const medium = (query.get('utm_medium') || '').toLowerCase();
  const host = referrer ? hostOf(referrer) : '';
  if (host === '') return medium === 'email' ? 'email' : 'direct';
  const own = hostOf(url);
  if (host === own || matches(host, settings.internalHosts)) return 'internal';
  if (matches(host, settings.email)) return 'email';
  if (matches(host, settings.search)) return 'search';
  if (matches(host, settings.social)) return 'social';
  return medium === 'email' ? 'email' : 'referral';
}

// At most `max_length` characters (code points, so a pair of surrogates is
// never split).
function cut(value) {
  if (value.length <= settings.maxLength) return value;
  return Array.from(value).slice(0, settings.maxLength).join('');
}

// The event's attributes with `found` added; a key already present (from an
// earlier transform) takes the new value in place.
function merge(attributes, found) {
  if (attributes.length === 0) return found;
  const out = attributes.slice();
  for (const attribute of found) {
    const at = out.findIndex((a) => a.key === attribute.key);
    if (at < 0) out.push(attribute);
    else out[at] = attribute;
  }
  return out;
}
