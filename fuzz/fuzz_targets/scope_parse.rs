//! Feeds arbitrary text to the SMART scope parser, as the `scope` parameter of an authorization
//! or token request. It must not panic, and what it grants must read back the same when written
//! out (the `scope` of a token response is parsed again at refresh).

#![no_main]

use libfuzzer_sys::fuzz_target;

use braid::auth::scope::{MAX_SCOPE_TEXT, parse_scopes};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(scopes) = parse_scopes(text) else { return };
    let written = scopes.text();
    let Ok(again) = parse_scopes(&written) else {
        // Only the length can grow: a filter's non-ASCII characters are written percent-encoded.
        assert!(written.len() > MAX_SCOPE_TEXT);
        return;
    };
    assert_eq!(again.granted, scopes.granted);
    assert!(again.unknown.is_empty());
    assert!(scopes.within(&scopes.granted));
});
