// Tests of clickstream-plugin.js in Node: `node --test sdk/js/`. The
// events are shaped as each engine gives them (componentize-qjs: Number
// s64s, `null` options; StarlingMonkey: BigInt s64s, `undefined` options).

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { defineTransformer, drop, getAttribute, keep, reject, removeAttribute, setAttribute } from './clickstream-plugin.js';

function event(engine, attributes = []) {
  const big = engine === 'starlingmonkey';
  const none = big ? undefined : null;
  return {
    eventId: 'e1',
    userId: 'u1',
    timestampMs: big ? 1795860000000n : 1795860000000,
    url: '/a',
    ip: '10.0.0.1',
    userAgent: 'Mozilla/5.0',
    referrer: none,
    sessionId: none,
    country: none,
    city: none,
    browser: none,
    os: none,
    device: none,
    attributes,
  };
}

const seen = [];
const plugin = defineTransformer({
  name: 'demo',
  version: '1.2.3',
  settings: { depth: 2, ratio: 0.5, strict: false, hosts: ['a.example'], label: null, home: { default: 'home', parse: (t) => t.toUpperCase() } },
  init(settings) {
    if (settings.depth > 9) throw new Error('depth: at most 9');
  },
  transform(batch, settings) {
    return batch.map((e) => {
      seen.push({ ts: e.timestampMs, referrer: e.referrer, n: getAttribute(e, 'n'), settings });
      setAttribute(e, 'minute', Math.floor(e.timestampMs / 60000) % 60);
      setAttribute(e, 'big', 2n ** 60n);
      setAttribute(e, 'cut', { tag: 'int', val: 2.7 });
      e.country = undefined;
      return keep(e);
    });
  },
});

const refused = (pairs) => {
  try {
    plugin.configure(pairs);
  } catch (e) {
    assert.equal(typeof e, 'string', 'configure throws a string, which both engines take');
    return e;
  }
  assert.fail('configure took ' + JSON.stringify(pairs));
};

test('the world exports', () => {
  assert.equal(plugin.name(), 'demo');
  assert.equal(plugin.version(), '1.2.3');
});

test('settings are read as their defaults’ types, and refused by name', () => {
  plugin.configure([['depth', ' 3 '], ['ratio', '0.25'], ['strict', 'true'], ['hosts', 'b.example, ,c.example'], ['label', 'x'], ['home', 'idx']]);
  seen.length = 0;
  plugin.transform([event('quickjs')]);
  assert.deepEqual(seen[0].settings, { depth: 3, ratio: 0.25, strict: true, hosts: ['b.example', 'c.example'], label: 'x', home: 'IDX' });
  plugin.configure([]);
  seen.length = 0;
  plugin.transform([event('quickjs')]);
  assert.deepEqual(seen[0].settings, { depth: 2, ratio: 0.5, strict: false, hosts: ['a.example'], label: null, home: 'home' });

  assert.equal(refused([['deph', '3']]), 'unknown setting `deph`: demo accepts depth, ratio, strict, hosts, label, home');
  assert.equal(refused([['toString', '3']]), 'unknown setting `toString`: demo accepts depth, ratio, strict, hosts, label, home');
  assert.equal(refused([['depth', '1.5']]), 'depth = `1.5`: expected a whole number');
  assert.equal(refused([['depth', '']]), 'depth = ``: expected a whole number');
  assert.equal(refused([['ratio', 'half']]), 'ratio = `half`: expected a number');
  assert.equal(refused([['strict', 'yes']]), 'strict = `yes`: expected `true` or `false`');
  assert.equal(refused([['depth', '10']]), 'depth: at most 9');
  const none = defineTransformer({ name: 'bare', version: '0', transform: (b) => b.map(keep) });
  assert.throws(() => none.configure([['x', '1']]), (e) => e === 'unknown setting `x`: bare takes none');
});

for (const engine of ['quickjs', 'starlingmonkey']) {
  test(`events from ${engine}: Numbers and nulls in, the engine's form out`, () => {
    plugin.configure([]);
    seen.length = 0;
    const input = event(engine, [{ key: 'n', value: { tag: 'int', val: engine === 'quickjs' ? 7 : 7n } }]);
    const [out] = plugin.transform([input]);
    assert.deepEqual(seen[0].ts, 1795860000000);
    assert.equal(seen[0].referrer, null);
    assert.equal(seen[0].n, 7);
    assert.equal(out.tag, 'keep');
    const big = engine === 'starlingmonkey';
    const e = out.val;
    assert.equal(e.timestampMs, big ? 1795860000000n : 1795860000000);
    assert.equal(e.country, null);
    const values = Object.fromEntries(e.attributes.map((a) => [a.key, a.value]));
    assert.deepEqual(values.n, { tag: 'int', val: big ? 7n : 7 });
    assert.deepEqual(values.minute, { tag: 'int', val: big ? 0n : 0 });
    assert.deepEqual(values.big, { tag: 'int', val: big ? 2n ** 60n : 2 ** 60 });
    assert.deepEqual(values.cut, { tag: 'int', val: big ? 2n : 2 });
  });
}

test('an int past 2^53 stays a BigInt', () => {
  seen.length = 0;
  plugin.transform([event('starlingmonkey', [{ key: 'n', value: { tag: 'int', val: 9007199254740993n } }])]);
  assert.equal(seen[0].n, 9007199254740993n);
});

test('outcomes and attributes', () => {
  assert.deepEqual(drop('bot'), { tag: 'drop', val: 'bot' });
  assert.deepEqual(reject('url', 'bad'), { tag: 'reject', val: { field: 'url', reason: 'bad' } });
  assert.deepEqual(reject('bad'), { tag: 'reject', val: { field: null, reason: 'bad' } });
  const e = event('quickjs', [{ key: 'a', value: { tag: 'str', val: 'x' } }, { key: 'b', value: { tag: 'str', val: 'y' } }]);
  setAttribute(e, 'a', 1.5);
  setAttribute(e, 'c', true);
  setAttribute(e, 'd', 3);
  setAttribute(e, 'f', { tag: 'float', val: 2 });
  assert.deepEqual(
    e.attributes.map((a) => [a.key, a.value.tag, a.value.val]),
    [['a', 'float', 1.5], ['b', 'str', 'y'], ['c', 'boolean', true], ['d', 'int', 3], ['f', 'float', 2]],
  );
  assert.equal(getAttribute(e, 'b'), 'y');
  assert.equal(getAttribute(e, 'z'), null);
  assert.equal(removeAttribute(e, 'b'), 'y');
  assert.equal(removeAttribute(e, 'b'), null);
  assert.throws(() => setAttribute(e, 'o', {}), TypeError);
});

test('a missing outcome is named', () => {
  const broken = defineTransformer({ name: 'broken', version: '0', transform: () => [undefined] });
  assert.throws(() => broken.transform([event('quickjs')]), /broken: transform returned undefined/);
});
