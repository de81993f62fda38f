// The fixed build (read-only): a minimal bundler with nothing but Node's standard library.
// It strips comments and indentation from src/index.js and writes dist/bundle.js.
const fs = require('fs');
const path = require('path');

const source = fs.readFileSync(path.join(__dirname, 'src', 'index.js'), 'utf8');
const stripped = source
  .replace(/\/\*[\s\S]*?\*\//g, '')
  .split('\n')
  .map((line) => line.replace(/^\s*\/\/.*$/, '').trim())
  .filter((line) => line.length > 0)
  .join('\n');
fs.mkdirSync(path.join(__dirname, 'dist'), { recursive: true });
fs.writeFileSync(path.join(__dirname, 'dist', 'bundle.js'), stripped + '\n');
console.log(`bundle: ${Buffer.byteLength(stripped) + 1} bytes`);
