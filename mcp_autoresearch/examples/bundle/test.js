// The fixed behaviour check (read-only): the built bundle must still do its job.
const assert = require('assert');
const lib = require('./dist/bundle.js');

assert.strictEqual(lib.padLeft('7', 3, '0'), '007');
assert.strictEqual(lib.padLeft('abc', 2), 'abc');
assert.strictEqual(lib.padLeft(5, 3), '  5');
assert.strictEqual(lib.formatBytes(512), '512 B');
assert.strictEqual(lib.formatBytes(2048), '2.0 KB');
assert.strictEqual(lib.formatBytes(5 * 1024 * 1024), '5.0 MB');
console.log('tests passed');
