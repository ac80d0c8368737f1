// clickstream-plugin: helpers for a clickstream transform in JavaScript
// (contract clickstream:pipeline@0.2.0, world `transformer`). One ES
// module, no dependencies; `clickstream plugin new --lang js` writes it into
// src/, and the build (componentize-qjs) bundles it with src/index.js.
//
//   export const { name, version, configure, transform } = defineTransformer({
//     name: 'sections', version: '0.1.0',
//     settings: { home: 'home', max_depth: 2 },
//     transform: (batch, settings) => batch.map((event) => keep(event)),
//   });
//
// The JavaScript engines give the contract's types differently; the module
// hides it at the boundary, so one source runs on both:
//
// - `s64` (`timestampMs`, `int` attribute values): componentize-qjs gives
//   and takes a Number (a BigInt traps it); componentize-js (StarlingMonkey)
//   gives a BigInt and traps on a fraction. Here `timestampMs` is a Number,
//   an `int` value a Number (a BigInt past 2^53, where a Number is not
//   exact), and either is accepted back (a fraction is cut to its whole part).
// - a missing `option` (`referrer`, `country`, ...): `null` from
//   componentize-qjs, `undefined` from StarlingMonkey; here always `null`.
// - `configure` refuses settings by throwing: componentize-qjs takes a
//   string or an Error, StarlingMonkey traps on an Error; here anything
//   thrown in `parse` or `init` is passed on as a string.

/** The fields of an event that are `option`s. */
const OPTIONS = ['referrer', 'sessionId', 'country', 'city', 'browser', 'os', 'device'];

/**
 * The four exports of the `transformer` world, from a definition:
 *
 * - `name`, `version`: the plugin's name and version.
 * - `settings`: the keys the `settings` table in pipeline.toml may have,
 *   each with its default (`key: default`, or `key: { default, parse }`).
 *   The text pipeline.toml gives is read as the default's type: a number
 *   (a whole one when the default is whole), `true`/`false`, a string, or
 *   an array of strings from a comma-separated list; `parse(text, key)`
 *   reads it any other way (throw to refuse it). A key not listed refuses
 *   the plugin, naming the key and those it accepts.
 * - `init(settings)` (optional): called once with the settings read,
 *   before any batch; throw a message to refuse them. What it returns, if
 *   anything, is what `transform` gets instead.
 * - `transform(batch, settings)`: one outcome per event, in order
 *   (`keep(event)`, `drop(reason)`, `reject(field, reason)`).
 */
export function defineTransformer(definition) {
  const { name, version, transform } = definition;
  const specs = {};
  for (const [key, spec] of Object.entries(definition.settings || {})) {
    const described = spec !== null && typeof spec === 'object' && !Array.isArray(spec);
    specs[key] = described ? spec : { default: spec };
  }
  let settings = defaults(specs);
  return {
    name: () => name,
    version: () => version,
    configure(pairs) {
      try {
        const next = defaults(specs);
        for (const [key, text] of pairs) {
          const spec = Object.prototype.hasOwnProperty.call(specs, key) ? specs[key] : undefined;
          if (spec === undefined) {
            const known = Object.keys(specs);
            throw `unknown setting \`${key}\`: ${name} ${known.length ? 'accepts ' + known.join(', ') : 'takes none'}`;
          }
          try {
            next[key] = (spec.parse || parser(spec.default))(text, key);
          } catch (e) {
            throw `${key} = \`${text}\`: ${message(e)}`;
          }
        }
        const made = definition.init ? definition.init(next) : undefined;
        settings = made === undefined ? next : made;
      } catch (e) {
        throw message(e);
      }
    },
    transform(batch) {
      const big = batch.length > 0 && typeof batch[0].timestampMs === 'bigint';
      for (const event of batch) fromHost(event);
      const outcomes = transform(batch, settings);
      for (const outcome of outcomes) {
        if (outcome === null || typeof outcome !== 'object' || typeof outcome.tag !== 'string') {
          throw new TypeError(`${name}: transform returned ${String(outcome)} for an event; expected keep(event), drop(reason) or reject(field, reason)`);
        }
        if (outcome.tag === 'keep') toHost(outcome.val, big);
        else if (outcome.tag === 'reject' && outcome.val.field === undefined) outcome.val.field = null;
      }
      return outcomes;
    },
  };
}

/** Keep the event (as modified) and pass it on. */
export function keep(event) {
  return { tag: 'keep', val: event };
}

/** Drop the event on purpose: not stored, not an error; `reason` is counted. */
export function drop(reason) {
  return { tag: 'drop', val: String(reason) };
}

/**
 * Refuse the event as invalid: dead-lettered as `field: reason`
 * (`reject(reason)` blames no field).
 */
export function reject(field, reason) {
  if (reason === undefined) return { tag: 'reject', val: { field: null, reason: String(field) } };
  return { tag: 'reject', val: { field: field == null ? null : String(field), reason: String(reason) } };
}

/**
 * Sets attribute `key` of `event`, replacing its value in place if the event
 * has it. A string is stored as `str`, a whole Number or a BigInt as `int`,
 * another Number as `float`, a boolean as `boolean`; `{ tag, val }` as given
 * (`{ tag: 'float', val: 2 }`). Returns the event.
 */
export function setAttribute(event, key, value) {
  const typed = valueOf(value);
  const existing = event.attributes.find((a) => a.key === key);
  if (existing) existing.value = typed;
  else event.attributes.push({ key, value: typed });
  return event;
}

/** The value of attribute `key` (`val`, untagged), or `null`. */
export function getAttribute(event, key) {
  const found = event.attributes.find((a) => a.key === key);
  return found ? found.value.val : null;
}

/** Removes attribute `key`; its value (untagged), or `null`. */
export function removeAttribute(event, key) {
  const at = event.attributes.findIndex((a) => a.key === key);
  if (at < 0) return null;
  return event.attributes.splice(at, 1)[0].value.val;
}

function valueOf(value) {
  switch (typeof value) {
    case 'string':
      return { tag: 'str', val: value };
    case 'bigint':
      return { tag: 'int', val: value };
    case 'number':
      return Number.isInteger(value) ? { tag: 'int', val: value } : { tag: 'float', val: value };
    case 'boolean':
      return { tag: 'boolean', val: value };
    default:
      if (value !== null && typeof value === 'object' && typeof value.tag === 'string') return value;
      throw new TypeError(`an attribute value is a string, number, bigint, boolean or { tag, val }, not ${String(value)}`);
  }
}

function defaults(specs) {
  const out = {};
  for (const [key, spec] of Object.entries(specs)) {
    out[key] = Array.isArray(spec.default) ? spec.default.slice() : spec.default;
  }
  return out;
}

/** How text is read for a setting whose default is `example`. */
function parser(example) {
  if (Array.isArray(example)) {
    return (text) => text.split(',').map((item) => item.trim()).filter((item) => item.length > 0);
  }
  switch (typeof example) {
    case 'boolean':
      return (text) => {
        if (text.trim() === 'true') return true;
        if (text.trim() === 'false') return false;
        throw 'expected `true` or `false`';
      };
    case 'number': {
      const whole = Number.isInteger(example);
      return (text) => {
        const n = text.trim() === '' ? NaN : Number(text.trim());
        if (!Number.isFinite(n) || (whole && !Number.isSafeInteger(n))) throw whole ? 'expected a whole number' : 'expected a number';
        return n;
      };
    }
    case 'bigint':
      return (text) => {
        try {
          return BigInt(text.trim());
        } catch (_) {
          throw 'expected a whole number';
        }
      };
    default:
      return (text) => text;
  }
}

function message(e) {
  if (typeof e === 'string') return e;
  if (e instanceof Error) return e.message;
  if (e !== null && typeof e === 'object' && typeof e.payload === 'string') return e.payload;
  return String(e);
}

/** The event as the helpers give it: options `null`, s64s Numbers. */
function fromHost(event) {
  for (const field of OPTIONS) if (event[field] === undefined) event[field] = null;
  if (typeof event.timestampMs === 'bigint') event.timestampMs = Number(event.timestampMs);
  for (const { value } of event.attributes) {
    if (value.tag === 'int' && typeof value.val === 'bigint' && Number.isSafeInteger(Number(value.val))) value.val = Number(value.val);
  }
}

/** The event as the engine takes it: s64s BigInts (`big`) or Numbers. */
function toHost(event, big) {
  for (const field of OPTIONS) if (event[field] === undefined) event[field] = null;
  event.timestampMs = s64(event.timestampMs, big);
  for (const { value } of event.attributes) {
    if (value.tag === 'int') value.val = s64(value.val, big);
    else if (value.tag === 'float' && typeof value.val === 'bigint') value.val = Number(value.val);
  }
}

function s64(n, big) {
  if (typeof n === 'bigint') return big ? n : Number(n);
  const whole = Math.trunc(n);
  return big ? BigInt(whole) : whole;
}
