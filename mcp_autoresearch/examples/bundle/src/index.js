// A tiny formatting library. This is the file the agent edits: the metric is the size of the built bundle,
// and test.js (read-only) checks that the behaviour is unchanged.

/**
 * Pads a string on the left to the given width with the given character.
 * This is a very verbose implementation written for clarity rather than size.
 */
function padLeft(text, width, character) {
  // Default the padding character to a space.
  if (character === undefined) {
    character = ' ';
  }
  // Convert whatever we were given to a string first.
  let result = String(text);
  // Keep adding characters until the width is reached.
  while (result.length < width) {
    result = character + result;
  }
  return result;
}

/**
 * Formats a number of bytes as a human readable string.
 */
function formatBytes(bytes) {
  // The units, from smallest to largest.
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let index = 0;
  let value = bytes;
  // Divide by 1024 until the value is small enough.
  while (value >= 1024 && index < units.length - 1) {
    value = value / 1024;
    index = index + 1;
  }
  // Show one decimal place for everything but bytes.
  const shown = index === 0 ? String(value) : value.toFixed(1);
  return shown + ' ' + units[index];
}

// An old helper that nothing uses any more.
function unusedLegacyHelper(a, b) {
  const sum = a + b;
  const product = a * b;
  return { sum: sum, product: product, ratio: b === 0 ? null : a / b };
}

module.exports = { padLeft, formatBytes };
