// The check every conformance script makes: it prints `ok` or `FAIL` for each, and the first
// failure ends the run; `summary` prints the line the Rust tests look for.
let passed = 0;

export function check(name, actual, expected) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) {
    console.log(`FAIL ${name}: expected ${e}, got ${a}`);
    process.exit(1);
  }
  passed += 1;
  console.log(`ok   ${name}`);
}

export function summary() {
  console.log(`${passed} passed, 0 failed`);
}
